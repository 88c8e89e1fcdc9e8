//! `ferry push --dry-run` and `ferry deploy --dry-run`: what a push would
//! ship and change on each host, with real venvs (Django from PyPI's
//! wheels), real jars and real test hosts, and that the hosts are left
//! exactly as they were.

use std::path::{Path, PathBuf};
use std::process::Command;

use fs_err as fs;
use serde_json::Value;

use crate::kit::{build, ferry_bin, local_stage, run, sample_project, sh, Project};
use crate::testhosts::TestHosts;

/// The Django versions of the bench fixture's base and deps releases
/// (fixtures/bench/make-release.sh); scripts/test downloads their wheels.
const DJANGO_BASE: &str = "4.2.10";
const DJANGO_DEPS: &str = "4.2.11";

fn wheels() -> PathBuf {
    std::env::var_os("FERRY_PYPI_WHEELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pypi-wheels"))
}

/// `pip install --no-index` of `what` into the venv `dir`, from the wheels
/// scripts/test downloads.
#[track_caller]
fn pip_install(dir: &Path, what: &str) {
    let r = run(Command::new(dir.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--no-index", "--no-cache-dir", "--disable-pip-version-check"])
        .arg("--find-links")
        .arg(wheels())
        .arg(what)
        .env("PIP_NO_INPUT", "1"));
    assert_eq!(
        r.code,
        0,
        "pip install {what} from {} failed (run scripts/test, which downloads it): {}",
        wheels().display(),
        r.stderr
    );
}

/// Everything under `dir` as one text: each path with its type, mode,
/// size, mtime and link target, and each file's content hash. Two equal
/// texts: nothing was added, removed, written or touched.
fn tree(dir: &Path) -> String {
    if !dir.exists() {
        return "absent".into();
    }
    sh(&format!(
        "cd {} && find . -printf '%p %y %m %s %T@ %l\\n' | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r md5sum",
        dir.display()
    ))
}

/// Panics, naming the lines that differ, unless `after` is `before`.
#[track_caller]
fn unchanged(before: &str, after: &str, what: &str) {
    let gone: Vec<&str> = before.lines().filter(|l| !after.lines().any(|a| a == *l)).collect();
    let new: Vec<&str> = after.lines().filter(|l| !before.lines().any(|b| b == *l)).collect();
    assert!(gone.is_empty() && new.is_empty(), "{what} changed:\nbefore: {gone:#?}\nafter: {new:#?}");
}

/// The project's venv: a real one of Debian's python3, with Django
/// `version` and what it needs, from PyPI's wheels.
fn django_project(p: &Project, version: &str) {
    let venv = p.path("venv");
    let r = run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv));
    assert_eq!(r.code, 0, "python3 -m venv failed (scripts/test installs python3-venv): {}", r.stderr);
    pip_install(&venv, &format!("Django=={version}"));
}

/// The sample service with a venv, and an ssh stage `prod` of `hosts`
/// (the agent is this binary, so nothing is uploaded).
fn ssh_project(hosts: &TestHosts) -> Project {
    let p = sample_project();
    let toml =
        fs::read_to_string(p.path("ferry.toml")).unwrap().replace("code = \"app\"", "code = \"app\"\nvenv = \"venv\"");
    let stage = hosts.ssh_stage("prod", &format!("env = \"staging\"\nagent = \"{}\"\n", ferry_bin()));
    p.write("ferry.toml", format!("{toml}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n{stage}"));
    p
}

fn host_row<'a>(report: &'a Value, host: &str) -> &'a Value {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no {host}: {report:#}"))
}

#[test]
fn a_dry_run_shows_djangos_change_files_and_bytes_per_host_changes_nothing_and_ships_what_the_push_ships() {
    let _one = crate::kit::one_at_a_time();
    let hosts = TestHosts::start(3);
    let p = ssh_project(&hosts);
    django_project(&p, DJANGO_BASE);
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // The next release: Django upgraded in the same venv, one config file
    // of the stage's environment changed, one of another environment.
    pip_install(&p.path("venv"), &format!("Django=={DJANGO_DEPS}"));
    p.write("config/staging/settings.env", "DEBUG=0\n").write("config/production/settings.env", "DEBUG=2\n");
    let v2 = build(&p, "v2");
    let names: Vec<String> = hosts.hosts.iter().map(|h| format!("root@{}", h.addr)).collect();
    let before: Vec<String> = hosts.hosts.iter().map(|h| tree(&h.srv)).collect();

    let shown = p.ferry(["push", "prod", &v2, "--dry-run"]).ok();
    let out = &shown.stdout;
    for name in &names {
        let from = format!("{name}  {} (v1) → {} (v2)", &v1[..12], &v2[..12]);
        assert!(out.contains(&from), "{from:?} in:\n{out}");
    }
    assert_eq!(out.matches(&format!("packages  Django {DJANGO_BASE} → {DJANGO_DEPS}")).count(), 3, "{out}");
    assert_eq!(out.matches("config    staging: ~ config/staging/settings.env").count(), 3, "{out}");
    assert!(!out.contains("config/production"), "only the stage's environment: {out}");
    assert_eq!(out.matches("  ships     delta, ").count(), 3, "{out}");
    assert!(shown.stderr.contains("nothing was changed"), "{}", shown.stderr);

    let preview = p.ferry(["push", "prod", &v2, "--dry-run", "--json"]).ok().json();
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["ok"], true);
    assert_eq!(preview["summary"]["unreachable"], serde_json::json!([]));
    let mut previewed = Vec::new();
    for name in &names {
        let h = host_row(&preview, name);
        assert_eq!(h["reachable"], true, "{h:#}");
        assert_eq!(h["from"], v1.as_str());
        assert_eq!(h["to"], v2.as_str());
        assert_eq!(h["ship"]["kind"], "delta", "{h:#}");
        let bytes = h["bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes == h["ship"]["bytes"].as_u64().unwrap(), "{h:#}");
        // Django's files changed; its dist-info was renamed (added and removed).
        assert!(h["files"]["changed"].as_u64().unwrap() >= 2, "{h:#}");
        assert!(h["files"]["added"].as_u64().unwrap() >= 1 && h["files"]["removed"].as_u64().unwrap() >= 1, "{h:#}");
        assert_eq!(
            h["packages"]["changes"],
            serde_json::json!([{"change": "changed", "ecosystem": "python", "name": "Django", "from": DJANGO_BASE, "to": DJANGO_DEPS}]),
            "asgiref and sqlparse did not change: {h:#}"
        );
        assert_eq!(h["packages"]["known"], true);
        assert_eq!(
            h["config"],
            serde_json::json!({"env": "staging", "changes": [{"change": "changed", "path": "config/staging/settings.env"}]})
        );
        previewed.push(bytes);
    }
    // One diff for the three hosts on v1, listing every path.
    let diffs = preview["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    let paths: Vec<&str> = diffs[0]["paths"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    for path in [
        "venv/lib/python3.11/site-packages/django/__init__.py".to_owned(),
        format!("venv/lib/python3.11/site-packages/Django-{DJANGO_DEPS}.dist-info/METADATA"),
        format!("venv/lib/python3.11/site-packages/Django-{DJANGO_BASE}.dist-info/METADATA"),
    ] {
        assert!(paths.contains(&path.as_str()), "{path} in {paths:#?}");
    }
    assert_eq!(preview["summary"]["bytes"].as_u64().unwrap(), previewed.iter().sum::<u64>());

    // The hosts: byte for byte as they were (current, releases, journal,
    // lock, no staging left).
    for (h, before) in hosts.hosts.iter().zip(&before) {
        unchanged(before, &tree(&h.srv), &h.name);
        assert_eq!(fs::read_link(h.srv.join("shop/current")).unwrap(), PathBuf::from(format!("releases/{v1}")));
    }

    // The push ships what the preview said, to the byte.
    let pushed = p.ferry(["push", "prod", &v2, "--json"]).ok().json();
    for (name, bytes) in names.iter().zip(&previewed) {
        let h = host_row(&pushed, name);
        assert_eq!(h["shipped"], "delta", "{h:#}");
        assert_eq!(h["bytes"].as_u64(), Some(*bytes), "previewed {bytes} bytes for {name}: {h:#}");
    }
}

#[test]
fn a_dry_run_names_the_hosts_it_cannot_reach_and_shows_the_rest() {
    let mut hosts = TestHosts::start(3);
    let p = ssh_project(&hosts);
    // No venv here: the sample service alone.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap().replace("venv = \"venv\"\n", "");
    p.write("ferry.toml", toml);
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    hosts.stop(1);
    let before: Vec<String> = hosts.hosts.iter().map(|h| tree(&h.srv)).collect();
    let shown = p.ferry(["push", "prod", &v2, "--dry-run"]);
    assert_eq!(shown.code, 1, "incomplete preview: {}{}", shown.stdout, shown.stderr);
    let down = format!("root@{}", hosts.hosts[1].addr);
    let line = shown.stdout.lines().find(|l| l.starts_with(&down)).unwrap_or_else(|| panic!("{}", shown.stdout));
    assert!(line.contains("UNREACHABLE") && line.contains("Connection refused"), "{line}");
    assert!(shown.stderr.contains(&format!("1 host could not be reached ({down})")), "{}", shown.stderr);
    for i in [0, 2] {
        let name = format!("root@{}", hosts.hosts[i].addr);
        assert!(shown.stdout.contains(&format!("{name}  ")), "{}", shown.stdout);
    }
    assert_eq!(shown.stdout.matches("  ships     delta, ").count(), 2, "{}", shown.stdout);
    // No venv or jar in either release: nothing said of packages.
    assert!(!shown.stdout.contains("packages"), "{}", shown.stdout);
    let json = p.ferry(["push", "prod", &v2, "--dry-run", "--json"]);
    assert_eq!(json.code, 1);
    let json = json.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["summary"]["unreachable"], serde_json::json!([down]));
    let row = host_row(&json, &down);
    assert_eq!(row["reachable"], false);
    assert!(row["error"].as_str().unwrap().contains("Connection refused"), "{row}");
    assert_eq!(json["hosts"].as_array().unwrap().iter().filter(|h| h["reachable"] == true).count(), 2);
    for (h, before) in hosts.hosts.iter().zip(&before) {
        unchanged(before, &tree(&h.srv), &h.name);
    }
}

/// The local stage's host directory of `host`.
fn local_host(p: &Project, host: &str) -> PathBuf {
    p.path(&format!("fleet/{host}"))
}

#[test]
fn a_venv_without_dist_info_says_packages_unknown_not_no_changes() {
    let p = local_stage(&["a"], "");
    let toml =
        fs::read_to_string(p.path("ferry.toml")).unwrap().replace("code = \"app\"", "code = \"app\"\nvenv = \"venv\"");
    p.write("ferry.toml", toml);
    // A real venv, without pip: it has no *.dist-info at all.
    let r = run(Command::new("/usr/bin/python3").args(["-m", "venv", "--without-pip"]).arg(p.path("venv")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    build(&p, "v1");
    p.ferry(["push", "web"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let before = tree(&local_host(&p, "a"));
    let out = p.ferry(["push", "web", &v2, "--dry-run"]).ok().stdout;
    assert!(out.contains("packages  unknown: ") && out.contains("the venv venv has no *.dist-info/METADATA"), "{out}");
    assert!(!out.contains("packages  no changes"), "{out}");
    let json = p.ferry(["push", "web", &v2, "--dry-run", "--json"]).ok().json();
    let h = &json["hosts"][0];
    assert_eq!(h["packages"]["known"], false, "{h:#}");
    assert_eq!(h["files"]["changed"], 1, "app/main.py: {h:#}");
    unchanged(&before, &tree(&local_host(&p, "a")), "host a");
}

/// A jar made by the JDK's `jar` tool, carrying Maven's pom.properties of
/// `org.example:hello` at `version`.
fn make_jar(p: &Project, version: &str) {
    let src = p.path("jarsrc");
    let _ = fs::remove_dir_all(&src);
    p.write(
        "jarsrc/META-INF/maven/org.example/hello/pom.properties",
        format!("#Generated by Maven\ngroupId=org.example\nartifactId=hello\nversion={version}\n"),
    );
    p.write("jarsrc/org/example/Hello.txt", format!("hello {version}\n"));
    let _ = fs::remove_file(p.path("hello.jar"));
    let r = run(Command::new("jar").arg("cf").arg(p.path("hello.jar")).arg("-C").arg(&src).arg("."));
    assert_eq!(r.code, 0, "jar: {}", r.stderr);
}

#[test]
fn jars_first_releases_and_current_hosts_are_previewed_as_the_push_would_treat_them() {
    let p = local_stage(&["a", "b"], "");
    let toml = fs::read_to_string(p.path("ferry.toml"))
        .unwrap()
        .replace("code = \"app\"", "code = \"app\"\njar = \"hello.jar\"");
    p.write("ferry.toml", toml);
    make_jar(&p, "1.0.0");
    build(&p, "v1");
    p.ferry(["push", "web", "--hosts", "fleet/a"]).ok();
    make_jar(&p, "1.1.0");
    let v2 = build(&p, "v2");
    let before = (tree(&local_host(&p, "a")), tree(&local_host(&p, "b")));
    let shown = p.ferry(["push", "web", &v2, "--dry-run"]).ok();
    assert!(shown.stdout.contains("packages  org.example:hello 1.0.0 → 1.1.0"), "{}", shown.stdout);
    let bundle = fs::metadata(p.store.path().join(format!("bundles/{v2}.tar.zst"))).unwrap().len();
    assert!(shown.stdout.contains(&format!("b  nothing → {} (v2)", &v2[..12])), "{}", shown.stdout);
    assert!(
        shown.stdout.contains("first release: whole bundle, ") && shown.stdout.contains(&format!("({bundle} bytes)")),
        "{}",
        shown.stdout
    );
    unchanged(&before.0, &tree(&local_host(&p, "a")), "host a");
    unchanged(&before.1, &tree(&local_host(&p, "b")), "host b");

    // The push ships what the preview said to each host, the bundle included.
    let preview = p.ferry(["push", "web", &v2, "--dry-run", "--json"]).ok().json();
    let pushed = p.ferry(["push", "web", &v2, "--json"]).ok().json();
    for host in ["a", "b"] {
        assert_eq!(host_row(&pushed, host)["bytes"], host_row(&preview, host)["bytes"], "{host}: {pushed:#}");
    }
    assert_eq!(host_row(&preview, "b")["ship"], serde_json::json!({"kind": "bundle", "bytes": bundle}));
    // Now both run it.
    let again = p.ferry(["push", "web", &v2, "--dry-run"]).ok().stdout;
    assert_eq!(again.matches("ships     nothing: already current\n").count(), 2, "{again}");
    let forced = p.ferry(["push", "web", &v2, "--dry-run", "--force"]).ok().stdout;
    assert_eq!(
        forced.matches("already current (--force: it is restarted and its hooks run again)").count(),
        2,
        "{forced}"
    );
}

fn git(p: &Project, args: &str) -> String {
    sh(&format!("cd {} && git -c user.name=t -c user.email=t@example.com {args}", p.root().display()))
}

#[test]
fn deploy_dry_run_builds_the_ref_but_touches_no_host_and_makes_no_tag() {
    let p = local_stage(&["a"], "tag = true\n");
    p.write(".gitignore", "fleet/\n.ferry/\n");
    git(&p, "init -q -b main");
    git(&p, "add -A");
    git(&p, "commit -qm one");
    let before = tree(p.root());
    let run = p.ferry(["deploy", "web", "main", "--dry-run", "--json"]).ok();
    let json = run.json();
    assert_eq!(json["dry_run"], true, "{json:#}");
    let id = json["deploy"]["release"].as_str().unwrap().to_owned();
    assert_eq!(json["deploy"]["tag"], Value::Null);
    assert_eq!(json["hosts"][0]["ship"]["kind"], "bundle", "a first release: {json:#}");
    // The store has the build; no tag, no host.
    assert!(p.store.path().join(format!("bundles/{id}.tar.zst")).is_file());
    assert_eq!(git(&p, "tag -l"), "");
    assert!(!local_host(&p, "a").exists(), "the host was not made");
    let after = tree(p.root());
    let changed: Vec<&str> =
        after.lines().filter(|l| !before.contains(*l) && !l.contains("./.git") && !l.starts_with(". ")).collect();
    assert!(changed.is_empty(), "only the store and git's own files changed: {changed:#?}");
}

#[test]
fn a_host_on_a_release_the_store_lacks_is_said_to_get_an_rsync_delta_of_unknown_size() {
    let p = local_stage(&["a"], "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "web"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    fs::remove_file(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap();
    let before = tree(&local_host(&p, "a"));
    let out = p.ferry(["push", "web", &v2, "--dry-run"]).ok().stdout;
    assert!(out.contains("ships     rsync delta, size unknown"), "{out}");
    assert!(out.contains(&format!("files     unknown: the store does not have {}", &v1[..12])), "{out}");
    let json = p.ferry(["push", "web", &v2, "--dry-run", "--json"]).ok().json();
    let h = &json["hosts"][0];
    assert_eq!(h["ship"]["kind"], "rsync", "{h:#}");
    assert_eq!(h["bytes"], Value::Null, "not known without the host's signature: {h:#}");
    // Signing would take the host's lock and write .ferry/signature: not done.
    unchanged(&before, &tree(&local_host(&p, "a")), "host a");
    // The push does sign it and sends an rsync delta.
    let pushed = p.ferry(["push", "web", &v2, "--json"]).ok().json();
    assert_eq!(pushed["hosts"][0]["shipped"], "rsync", "{pushed:#}");
}
