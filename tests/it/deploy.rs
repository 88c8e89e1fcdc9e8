//! `ferry deploy`: a real git repository (and a bare remote) in the test's
//! temp dir, deployed to a local fleet: `stable` picks the newest release
//! tag, a successful push tags the deployed commit with the date and pushes
//! the tag, a failed one makes none, a dirty tree is refused.

use fs_err as fs;

use crate::kit::{local_stage, sh, Project};

fn git(p: &Project, args: &str) -> String {
    sh(&format!("cd {} && git -c user.name=t -c user.email=t@example.com {args}", p.root().display()))
}

/// The sample service as a git repository with tags v1.0.0, v1.1.0 and a
/// newer pre-release v1.2.0-rc1, and a bare remote `origin` that has them;
/// its stage `web` (4 local hosts) deploys `stable` from `v*` and tags.
fn repo(extra: &str) -> (Project, tempfile::TempDir) {
    let p = local_stage(&["a", "b", "c", "d"], &format!("stable_tags = \"v*\"\ntag = true\n{extra}"));
    p.write(".gitignore", "fleet/\n.ferry/\n");
    git(&p, "init -q -b main");
    // Who tags: the repository's own identity (a CI runner has one too).
    git(&p, "config user.name deployer");
    git(&p, "config user.email deployer@example.com");
    git(&p, "add -A");
    git(&p, "commit -qm v1.0.0");
    git(&p, "tag v1.0.0");
    p.write("app/main.py", "print('shop v1.1')\n");
    git(&p, "commit -qam v1.1.0");
    git(&p, "tag -a v1.1.0 -m 'release 1.1'");
    p.write("app/main.py", "print('shop v1.2 rc')\n");
    git(&p, "commit -qam v1.2.0-rc1");
    git(&p, "tag v1.2.0-rc1");
    let remote = tempfile::tempdir().unwrap();
    sh(&format!("git init -q --bare {}", remote.path().display()));
    git(&p, &format!("remote add origin {}", remote.path().display()));
    git(&p, "push -q origin main --tags");
    (p, remote)
}

fn current(p: &Project, host: &str) -> Option<String> {
    let link = fs::read_link(p.path(&format!("fleet/{host}/srv/shop/current"))).ok()?;
    Some(link.to_str().unwrap().trim_start_matches("releases/").to_owned())
}

fn today() -> String {
    sh("date -u +%F").trim().to_owned()
}

#[test]
fn deploy_stable_builds_the_newest_release_tag_pushes_it_and_tags_the_day() {
    let (p, remote) = repo("");
    let report = p.ferry(["deploy", "web", "stable", "--json"]).ok().json();
    let deploy = &report["deploy"];
    assert_eq!(deploy["resolved"], "v1.1.0", "{report:#}");
    let commit = git(&p, "rev-parse v1.1.0^{commit}").trim().to_owned();
    assert_eq!(deploy["commit"], commit.as_str());
    let id = deploy["release"].as_str().unwrap().to_owned();
    for h in ["a", "b", "c", "d"] {
        assert_eq!(current(&p, h).as_deref(), Some(id.as_str()), "{h}");
    }
    let main = fs::read_to_string(p.path(&format!("fleet/a/srv/shop/releases/{id}/app/main.py"))).unwrap();
    assert_eq!(main, "print('shop v1.1')\n", "the tag's tree, not the work tree's");
    let bundles = p.ferry(["bundles", "--json"]).ok().json();
    assert_eq!(bundles[0]["version"], "v1.1.0", "{bundles:#}");

    // The dated tag: annotated, on the deployed commit, naming the release
    // and the hosts, and on the remote.
    let tag = format!("web-{}", today());
    assert_eq!(deploy["tag"]["name"], tag.as_str(), "{report:#}");
    assert_eq!(deploy["tag"]["pushed"], true, "{report:#}");
    assert_eq!(git(&p, &format!("rev-parse {tag}^{{commit}}")).trim(), commit);
    assert_eq!(git(&p, &format!("cat-file -t {tag}")).trim(), "tag", "annotated");
    let message = git(&p, &format!("tag -l --format='%(contents)' {tag}"));
    assert!(message.contains(&id) && message.contains("4 host(s): a, b, c, d"), "{message}");
    let on_remote = sh(&format!("git -C {} tag -l", remote.path().display()));
    assert!(on_remote.lines().any(|t| t == tag), "{on_remote}");

    // The same day again: -2.
    let report = p.ferry(["deploy", "web", "v1.0.0", "--json"]).ok().json();
    assert_eq!(report["deploy"]["tag"]["name"], format!("{tag}-2").as_str(), "{report:#}");
    assert_eq!(report["deploy"]["resolved"], "v1.0.0");
}

#[test]
fn a_deploy_whose_gate_fails_makes_no_tag() {
    let (p, _remote) = repo("[stages.web.health.command]\nrun = \"test ! -e \\\"$FERRY_FAIL_MARK\\\"\"\n");
    let mark = p.path("fail-the-gate");
    let first = p.ferry(["deploy", "web", "v1.0.0", "--json"]).ok().json();
    let v1 = first["deploy"]["release"].as_str().unwrap().to_owned();
    let tag = format!("web-{}", today());
    assert_eq!(git(&p, "tag -l 'web-*'").trim(), tag);
    fs::write(&mark, "").unwrap();
    let mut cmd = crate::kit::ferry_cmd();
    cmd.current_dir(p.root()).env("FERRY_FAIL_MARK", &mark).args(["deploy", "web", "stable"]);
    let run = crate::kit::run(&mut cmd);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("gate command failed"), "{}", run.stderr);
    assert_eq!(git(&p, "tag -l 'web-*'").trim(), tag, "a failed deploy made a tag");
    for h in ["a", "b", "c", "d"] {
        assert_eq!(current(&p, h).as_deref(), Some(v1.as_str()), "{h} is back on (or still on) v1.0.0");
    }
}

#[test]
fn what_a_deploy_refuses_and_a_remote_that_refuses_the_tag() {
    let (p, remote) = repo("");
    // A ref that names nothing.
    let err = p.ferry(["deploy", "web", "v9.9.9"]).fails(2);
    assert!(err.contains("git ref \"v9.9.9\" does not name a commit"), "{err}");
    // No ref and no stage ref.
    let err = p.ferry(["deploy", "web"]).fails(2);
    assert!(err.contains("which ref?") && err.contains("ref = \"main\""), "{err}");
    // A dirty tree, then --allow-dirty, which the tag says.
    p.write("app/main.py", "print('uncommitted')\n");
    let err = p.ferry(["deploy", "web", "main"]).fails(2);
    assert!(
        err.contains("uncommitted changes to 1 tracked file(s) (app/main.py)") && err.contains("--allow-dirty"),
        "{err}"
    );
    assert!(current(&p, "a").is_none(), "nothing moved");
    // A remote that refuses tags: the deploy still succeeds, with a warning.
    let hook = remote.path().join("hooks/pre-receive");
    fs::write(&hook, "#!/bin/sh\necho 'tags are frozen' >&2\nexit 1\n").unwrap();
    sh(&format!("chmod 755 {}", hook.display()));
    let out = p.ferry(["deploy", "web", "main", "--allow-dirty"]).ok();
    assert!(out.stderr.contains("not pushed") && out.stderr.contains("tags are frozen"), "{}", out.stderr);
    let tag = format!("web-{}", today());
    let message = git(&p, &format!("tag -l --format='%(contents)' {tag}"));
    assert!(message.contains("deployed with --allow-dirty") && message.contains("app/main.py"), "{message}");
    // No stable tag matches.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("stable_tags = \"v*\"", "stable_tags = \"release-*\""));
    git(&p, "checkout -q -- app/main.py");
    let err = p.ferry(["deploy", "web", "stable"]).fails(2);
    assert!(err.contains("no tag matches stable_tags \"release-*\""), "{err}");
}

/// Issue 14 end to end, on the example service (gunicorn under its own
/// supervisord, on a local stage `production` of two hosts): a git
/// repository with a bare remote, tags v1.0.0, v1.1.0 and v1.2.0-rc1, and
/// a venv made by a build step from `requirements.txt` (gunicorn from the
/// wheel scripts/test downloads: offline). `ferry deploy production stable`
/// deploys v1.1.0, whose hosts then answer "hello from v1.1.0", and pushes
/// `production-<today>`; a second deploy that day (of v1.0.0, the venv
/// step reused from the cache) makes `-2`; a stable release whose every
/// answer is a 500 is caught by the gate, reverted, and tagged nowhere.
#[test]
fn the_example_service_deploys_stable_from_git_with_its_venv_made_by_a_build_step() {
    let p = crate::kit::example_project();
    let _stop = crate::kit::StopSupervisors(p.path("fleet"));
    let wheels = std::env::var_os("FERRY_PYPI_WHEELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pypi-wheels"));
    let ports = crate::kit::local_ports(2);
    let (p1, p2) = (ports[0], ports[1]);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let (head, rest) = toml.split_once("[[build.steps]]").unwrap();
    let (_, rest) = rest.split_once("\n\n").unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{head}[[build.steps]]\nname = \"venv\"\nrun = \"/usr/bin/python3 -m venv venv && venv/bin/pip install \
             --quiet --no-index --disable-pip-version-check --find-links {} -r requirements.txt\"\n\
             inputs = [\"requirements.txt\"]\noutputs = [\"venv\"]\ntimeout = 300\n\n{rest}\n\
             [stages.production]\ntransport = \"local\"\nhosts = [\"fleet/p1\", \"fleet/p2\"]\nstrategy = [\"1\", \"100%\"]\n\
             stable_tags = \"v*\"\ntag = true\n\
             host_env = {{ \"fleet/p1\" = {{ PORT = \"{p1}\" }}, \"fleet/p2\" = {{ PORT = \"{p2}\" }} }}\n\n\
             [stages.production.health.http]\nurl = \"http://127.0.0.1:{p1}/health\"\n\
             urls = {{ \"fleet/p2\" = \"http://127.0.0.1:{p2}/health\" }}\ntimeout = 2\nretries = 5\n",
            wheels.display()
        ),
    );
    p.write("requirements.txt", format!("gunicorn=={}\n", crate::kit::PYPI_GUNICORN));
    p.write(".gitignore", "venv/\nfleet/\n.ferry/\n__pycache__/\n");
    fs::remove_dir_all(p.path("venv")).unwrap();
    let version = |v: &str| {
        let hello = fs::read_to_string(p.path("app/hello.py")).unwrap();
        let line = hello.lines().find(|l| l.starts_with("VERSION = ")).unwrap().to_owned();
        p.write("app/hello.py", hello.replace(&line, &format!("VERSION = \"{v}\"")));
    };
    git(&p, "init -q -b main");
    git(&p, "config user.name deployer");
    git(&p, "config user.email deployer@example.com");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0-rc1"] {
        version(v);
        git(&p, "add -A");
        git(&p, &format!("commit -qm {v}"));
        git(&p, &format!("tag -a {v} -m {v}"));
    }
    let remote = tempfile::tempdir().unwrap();
    sh(&format!("git init -q --bare {}", remote.path().display()));
    git(&p, &format!("remote add origin {}", remote.path().display()));
    git(&p, "push -q origin main --tags");
    let serves = |port: u32| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port as u16)).expect("the service answers");
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    };

    let report = p.ferry(["deploy", "production", "stable", "--json"]).ok().json();
    assert_eq!(report["deploy"]["resolved"], "v1.1.0", "{report:#}");
    assert_eq!(report["deploy"]["steps"][0]["cached"], false, "{report:#}");
    for port in [p1, p2] {
        assert!(serves(port).starts_with("hello from v1.1.0 "), "{}", serves(port));
    }
    let tag = format!("production-{}", today());
    assert_eq!(report["deploy"]["tag"]["name"], tag.as_str(), "{report:#}");
    let on_remote = sh(&format!("git -C {} tag -l", remote.path().display()));
    assert!(on_remote.lines().any(|t| t == tag), "{on_remote}");

    let report = p.ferry(["deploy", "production", "v1.0.0", "--json"]).ok().json();
    assert_eq!(report["deploy"]["steps"][0]["cached"], true, "the venv's requirements did not change: {report:#}");
    assert_eq!(report["deploy"]["tag"]["name"], format!("{tag}-2").as_str(), "{report:#}");
    assert!(serves(p1).starts_with("hello from v1.0.0 "), "{}", serves(p1));

    // v1.3.0 answers every request with a 500: the canary's gate fails.
    version("v1.3.0");
    p.write("app/BAD", "");
    git(&p, "add -A");
    git(&p, "commit -qm v1.3.0");
    git(&p, "tag -a v1.3.0 -m v1.3.0");
    let out = p.ferry(["deploy", "production", "stable"]).fails(1);
    assert!(out.contains("gate http failed"), "{out}");
    assert!(!git(&p, "tag -l").lines().any(|t| t == format!("{tag}-3")), "a failed deploy made a tag");
    for port in [p1, p2] {
        assert!(serves(port).starts_with("hello from v1.0.0 "), "{}", serves(port));
    }
}
