//! `ferry build`: reproducible bundles, the cache, and every bad input.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use fs_err as fs;

use crate::kit::{build_at, copy_elsewhere, ferry_cmd, is_root, run, sample_project, sh, tempdir, Project};

#[test]
fn same_tree_on_other_paths_mtimes_and_owners_gives_the_same_bytes() {
    let a = sample_project();
    // Another path, other owners (as root), and other mtimes (files and links).
    let b = copy_elsewhere(a.root());
    sh(&format!("find {} -exec touch -h -d @1700000000 {{}} +", b.path().display()));
    let one = a.build(&[]);
    let store_b = tempdir();
    let two = build_at(b.path(), store_b.path(), &[]);
    assert_eq!(one["id"], two["id"]);
    let (pa, pb) = (one["path"].as_str().unwrap(), two["path"].as_str().unwrap());
    assert_ne!(pa, pb);
    sh(&format!("cmp {pa} {pb}"));
    assert_eq!(one["files"], 6, "debug.log is excluded by default: {one}");
}

#[test]
fn gnu_tar_and_bsdtar_list_the_bundle() {
    let p = sample_project();
    let built = p.build(&[]);
    let path = built["path"].as_str().unwrap();
    let gnu = sh(&format!("tar --zstd -tf {path}"));
    let bsd = sh(&format!("bsdtar -tf {path}"));
    for listing in [&gnu, &bsd] {
        let names: Vec<&str> = listing.lines().map(|l| l.trim_end_matches('/')).collect();
        assert_eq!(&names[..3], [".ferry", ".ferry/manifest", ".ferry/release.json"], "{listing}");
        for want in ["app/main.py", "config/production/settings.env", "media/main-link.py"] {
            assert!(names.contains(&want), "{want} missing from\n{listing}");
        }
        assert!(!names.contains(&"app/debug.log"));
    }
    // GNU tar extracts it with the normalized mtime and the link intact.
    let out = tempdir();
    sh(&format!("tar --zstd -xf {path} -C {}", out.path().display()));
    let stat = sh(&format!("stat -c '%Y %a' {}/app/main.py {}/app/run.sh", out.path().display(), out.path().display()));
    assert_eq!(stat, "315532800 644\n315532800 755\n");
    assert_eq!(fs::read_link(out.path().join("media/main-link.py")).unwrap().to_str(), Some("../app/main.py"));
}

#[test]
fn a_rebuild_with_nothing_changed_reuses_everything() {
    let p = sample_project();
    // Files written just now are "racy" for the cache; age them like a checkout.
    sh(&format!("find {} -exec touch -h -d '-1 hour' {{}} +", p.root().display()));
    let first = p.build(&[]);
    assert_eq!(first["reused"], false);
    let second = p.build(&[]);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["reused"], true);
    assert_eq!(second["cache_hits"], first["files"], "{second}");
    // Touched but not changed: read again, and the stored release is the same one.
    sh(&format!("touch -d '-30 min' {}", p.path("app/main.py").display()));
    let touched = p.build(&[]);
    assert_eq!(touched["id"], first["id"]);
    assert_eq!(touched["reused"], true, "{touched}");
    assert_eq!(touched["cache_hits"].as_u64().unwrap() + 1, first["files"].as_u64().unwrap());
    // A change is seen even when size and mtime are kept (ctime and content differ).
    p.write("app/lib/util.py", "X = 2\n");
    sh(&format!("touch -d '-1 hour' {}", p.path("app/lib/util.py").display()));
    let third = p.build(&[]);
    assert_ne!(third["id"], first["id"]);
    assert_eq!(third["reused"], false);
    let diff = p.ferry(["diff", first["id"].as_str().unwrap(), third["id"].as_str().unwrap()]).ok().stdout;
    assert!(diff.contains("~ app/lib/util.py (content: 6 B → 6 B)"), "{diff}");
    assert!(diff.contains("0 added (0 B), 0 removed (0 B), 1 changed"), "{diff}");
}

#[test]
fn the_human_output_prints_the_id_on_stdout() {
    let p = sample_project();
    let r = p.ferry(["build", "--version", "v1.2"]).ok();
    let id = r.stdout.trim();
    assert_eq!(id.len(), 64, "{}", r.stdout);
    assert!(r.stderr.contains(&format!("built shop v1.2 {}: 6 files", &id[..12])), "{}", r.stderr);
    let list = p.ferry(["bundles"]).ok().stdout;
    assert!(list.contains(&id[..12]) && list.contains("v1.2"), "{list}");
    // Ids work by unique prefix, as in git.
    let inspect = p.ferry(["inspect", &id[..6]]).ok().stdout;
    assert!(inspect.contains("version   v1.2"), "{inspect}");
    assert!(inspect.contains("config  config (production, staging)"), "{inspect}");
    assert!(inspect.contains("  l                 media/main-link.py -> ../app/main.py\n"), "{inspect}");
}

#[test]
fn unknown_and_ambiguous_ids_are_explained() {
    let p = sample_project();
    p.build(&[]);
    let err = p.ferry(["verify", "ffffffff"]).fails(2);
    assert!(
        err.contains("has \"ffffffff\" as its id prefix, version label, git tag or git commit; the 1 it has"),
        "{err}"
    );
    let err = p.ferry(["inspect", "xyz"]).fails(2);
    assert!(err.contains("has \"xyz\" as its version label or git tag (not hex digits, so no id prefix"), "{err}");
}

#[test]
fn missing_config_is_explained() {
    let dir = tempdir();
    let r = run(ferry_cmd().arg("build").current_dir(dir.path()));
    let err = r.fails(2);
    assert!(err.contains("cannot read the service config (ferry.toml)"), "{err}");
    assert!(err.contains("ferry.toml"), "{err}");
}

#[test]
fn broken_config_names_line_and_column() {
    let p = Project::new("service = \"shop\"\n[components]\ncode = \"app\"\nvenvv = \"venv\"\n");
    let err = p.ferry(["build"]).fails(2);
    assert!(err.contains("ferry.toml: TOML parse error at line 4, column 1"), "{err}");
    assert!(err.contains("unknown field `venvv`, expected one of `code`, `venv`, `jar`, `media`, `config`"), "{err}");
    assert!(p.store_files().is_empty());
    let p = Project::new("service = \"shop\"\n[components]\ncode = \"app\"\n");
    let err = p.ferry(["build"]).fails(2);
    assert!(err.contains("component code \"app\":") && err.contains("does not exist"), "{err}");
}

/// Builds `p`, expecting failure, and checks that the store holds no bundle.
#[track_caller]
fn build_fails(p: &Project) -> String {
    let err = p.ferry(["build"]).fails(2);
    let files = p.store_files();
    assert!(!files.iter().any(|f| f.ends_with(".tar.zst") || f.starts_with(".tmp-")), "left behind: {files:?}");
    err
}

#[test]
fn a_path_that_is_not_utf8_is_named() {
    let p = sample_project();
    let bad = p.path("app").join(std::ffi::OsStr::from_bytes(b"caf\xe9.py"));
    fs::write(&bad, b"x").unwrap();
    let err = build_fails(&p);
    assert!(err.contains("app/caf\u{fffd}.py: the path is not UTF-8"), "{err}");
}

#[test]
fn special_files_are_refused() {
    let p = sample_project();
    sh(&format!("mkfifo {}", p.path("app/queue").display()));
    let err = build_fails(&p);
    assert!(err.contains("app/queue: is a fifo; a release holds only files, directories and symlinks"), "{err}");
}

#[test]
fn a_symlink_out_of_the_tree_is_refused() {
    let p = sample_project();
    std::os::unix::fs::symlink("../../etc/passwd", p.path("app/passwd")).unwrap();
    let err = build_fails(&p);
    assert!(
        err.contains("manifest entry \"app/passwd\": symlink to \"../../etc/passwd\" resolves outside the release"),
        "{err}"
    );
    let p = sample_project();
    std::os::unix::fs::symlink("/etc/passwd", p.path("app/passwd")).unwrap();
    let err = build_fails(&p);
    assert!(err.contains("\"app/passwd\": symlink to \"/etc/passwd\" points outside the release"), "{err}");
}

#[test]
fn setuid_files_are_refused() {
    let p = sample_project();
    sh(&format!("chmod 4755 {}", p.path("app/run.sh").display()));
    let err = build_fails(&p);
    assert!(err.contains("app/run.sh: has the setuid bit"), "{err}");
}

#[test]
fn an_unreadable_file_is_named() {
    let p = sample_project();
    let secret = p.path("app/secret.key");
    fs::write(&secret, b"k").unwrap();
    sh(&format!("chmod 000 {}", secret.display()));
    let r = if is_root() {
        // Root reads anything: drop to nobody, who can read all but the one file.
        sh(&format!(
            "chmod -R a+rX {} && chmod 000 {} && chmod 777 {}",
            p.root().display(),
            secret.display(),
            p.store.path().display()
        ));
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(crate::kit::ferry_bin())
            .args(["build", "--store"])
            .arg(p.store.path())
            .arg("-c")
            .arg(p.path("ferry.toml")))
    } else {
        p.ferry(["build"])
    };
    let err = r.fails(2);
    assert!(err.contains("app/secret.key") && err.contains("Permission denied"), "{err}");
    assert!(p.store_files().iter().all(|f| !f.ends_with(".tar.zst")));
}

#[test]
fn a_full_disk_leaves_no_bundle() {
    assert!(is_root(), "this test mounts a small tmpfs in a private mount namespace and needs root (CI runs as root)");
    let p = sample_project();
    sh(&format!("head -c 3000000 /dev/urandom > {}", p.path("media/big.bin").display()));
    let store = p.store.path().display();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {store} && {ferry} build --store {store} -c {cfg}; code=$?; ls -A {store}/bundles; exit $code",
        ferry = crate::kit::ferry_bin(),
        cfg = p.path("ferry.toml").display(),
    );
    let r = run(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("writing {store}/bundles: cannot write the bundle: No space left")),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout.trim(), "", "the store kept something: {}", r.stdout);
}

#[test]
fn an_interrupted_build_leaves_no_bundle_and_the_next_cleans_up() {
    let p = sample_project();
    // Slow enough to be caught mid-write: incompressible data at zstd's slowest level.
    sh(&format!("head -c 48000000 /dev/urandom > {}", p.path("media/big.bin").display()));
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}\n[release]\ncompression_level = 19\n"));
    let mut child = ferry_cmd()
        .args(["build", "--quiet", "--store"])
        .arg(p.store.path())
        .arg("-c")
        .arg(p.path("ferry.toml"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.store_files().iter().any(|f| f.starts_with(".tmp-")) {
        assert!(Instant::now() < deadline, "the build never started writing");
        assert!(child.try_wait().unwrap().is_none(), "the build finished before it could be interrupted");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let files = p.store_files();
    assert!(files.iter().all(|f| !f.ends_with(".tar.zst") && !f.ends_with(".json")), "{files:?}");
    assert!(p.ferry(["bundles"]).ok().stderr.contains("no bundles"));
    // The next build clears the dead build's temporary file.
    p.write("ferry.toml", format!("{toml}\n[release]\ncompression_level = 1\n"));
    let built = p.build(&[]);
    let files = p.store_files();
    assert!(!files.iter().any(|f| f.starts_with(".tmp-")), "{files:?}");
    p.ferry(["verify", built["id"].as_str().unwrap()]).ok();
}

#[test]
fn git_ref_builds_a_clean_export_and_records_the_commit() {
    let p = sample_project();
    let root = p.root().display();
    sh(&format!(
        "cd {root} && git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm one && git tag v7"
    ));
    let commit = sh(&format!("git -C {root} rev-parse HEAD")).trim().to_owned();
    // A normal build first, so the cache has something to lose.
    sh(&format!("find {root} -path '*/.git' -prune -o -exec touch -h -d '-1 hour' {{}} +"));
    let files = p.build(&[])["files"].clone();
    // Work-tree changes and untracked files are not part of the export.
    p.write("app/main.py", "print('uncommitted')\n").write("app/untracked.py", "x\n");
    let built = p.build(&["--git-ref", "v7"]);
    assert_eq!(built["git_commit"], commit.as_str());
    assert_eq!(built["git_tag"], "v7", "the tag is recorded in the store");
    assert_eq!(built["version"], serde_json::Value::Null, "a tag is not a version: tags come and go");
    let head = p.ferry(["inspect", "--json", built["id"].as_str().unwrap()]).ok().json();
    let paths: Vec<&str> = head["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(!paths.contains(&"app/untracked.py"), "{paths:?}");
    assert_eq!(head["meta"]["git"], serde_json::json!({"commit": commit}));
    assert!(p.ferry(["bundles"]).ok().stdout.contains(" v7 "), "the listing shows the tag");
    // The same commit is the same release, whatever the work tree or the tags say.
    sh(&format!("git -C {root} tag later"));
    let again = p.build(&["--git-ref", &commit]);
    assert_eq!(again["id"], built["id"]);
    // The exports did not clobber the work tree's build cache.
    sh(&format!("git -C {root} checkout -q app/main.py && rm {root}/app/untracked.py"));
    sh(&format!("touch -d '-1 hour' {root}/app/main.py"));
    let normal = p.build(&[]);
    assert_eq!(normal["cache_hits"].as_u64().unwrap() + 1, files.as_u64().unwrap(), "{normal}");
    let err = p.ferry(["build", "--git-ref", "no-such-ref"]).fails(2);
    assert!(err.contains("git ref \"no-such-ref\" does not name a commit"), "{err}");
}

#[test]
fn a_truncated_bundle_in_the_store_is_written_again() {
    let p = sample_project();
    let first = p.build(&[]);
    let path = first["path"].as_str().unwrap();
    let len = fs::metadata(path).unwrap().len();
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
    let again = p.build(&[]);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["reused"], false, "a damaged bundle is not reused");
    p.ferry(["verify", first["id"].as_str().unwrap()]).ok();
}

#[test]
fn a_cold_build_packing_as_it_walks_gives_the_bytes_of_one_that_walked_first() {
    // 80 directories below app/lib: the walk goes parallel there. Names that
    // sort before `/` (p00.py, p00-1.0.dist-info) put each package's subtree
    // after its siblings; each package has a timestamp pyc in its
    // __pycache__, and app/lib/__pycache__ (a subtree of its own) has one
    // whose source, app/lib/z.py, comes after it.
    let p = Project::new("service = \"wide\"\n\n[components]\ncode = \"app\"\n");
    let mut modules = vec![("app/lib".to_owned(), "z".to_owned())];
    for i in 0..40 {
        p.write(&format!("app/lib/p{i:02}.py"), "");
        p.write(&format!("app/lib/p{i:02}-1.0.dist-info/RECORD"), "");
        modules.push((format!("app/lib/p{i:02}"), "m".to_owned()));
    }
    for (dir, module) in &modules {
        p.write(&format!("{dir}/{module}.py"), format!("X = {dir:?}\n"));
    }
    sh(&format!("find {} -exec touch -h -d '-1 hour' {{}} +", p.root().display()));
    for (dir, module) in &modules {
        let source = fs::metadata(p.path(&format!("{dir}/{module}.py"))).unwrap();
        let mut pyc = vec![0xa7, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0];
        pyc.extend_from_slice(&(std::os::unix::fs::MetadataExt::mtime(&source) as u32).to_le_bytes());
        pyc.extend_from_slice(&(source.len() as u32).to_le_bytes());
        pyc.extend_from_slice(b"code");
        p.write(&format!("{dir}/__pycache__/{module}.cpython-311.pyc"), pyc);
    }
    let cold = p.build(&[]);
    assert_eq!((cold["cache_hits"].as_u64(), cold["reused"].as_bool()), (Some(0), Some(false)), "{cold}");
    assert_eq!(cold["pycs_normalized"], 41, "every pyc found its source: {cold}");
    assert_eq!(cold["stale_pycs"], serde_json::json!([]));
    let kept = tempdir();
    let first = kept.path().join("first.tar.zst");
    fs::rename(cold["path"].as_str().unwrap(), &first).unwrap();
    let record = cold["path"].as_str().unwrap().replace(".tar.zst", ".json");
    fs::remove_file(record).unwrap();
    // The cache is not empty now, and a chmod changes every file's ctime: this
    // build walks the whole tree, misses the cache for every file, then packs.
    sh(&format!("find {} -exec chmod u+w {{}} +", p.path("app").display()));
    let walked = p.build(&[]);
    assert_eq!((walked["cache_hits"].as_u64(), walked["reused"].as_bool()), (Some(0), Some(false)), "{walked}");
    assert_eq!(walked["id"], cold["id"]);
    assert_eq!(walked["pycs_normalized"], 41);
    sh(&format!("cmp {} {}", first.display(), walked["path"].as_str().unwrap()));
}

#[test]
fn a_cold_build_of_components_inside_others_packs_each_path_once() {
    // `config` inside `code`: a walk that streamed both would hand out
    // app/config/ twice ("duplicate path").
    let p = Project::new("service = \"nested\"\n\n[components]\ncode = \"app\"\nconfig = \"app/config\"\n");
    for i in 0..40 {
        p.write(&format!("app/lib/p{i:02}/m.py"), format!("X = {i}\n"));
    }
    p.write("app/config/production/settings.toml", "debug = false\n");
    p.write("app/config/staging/settings.toml", "debug = true\n");
    let cold = p.build(&[]);
    assert_eq!((cold["cache_hits"].as_u64(), cold["reused"].as_bool()), (Some(0), Some(false)), "{cold}");
    let listing = sh(&format!("zstd -dc {} | tar -t", cold["path"].as_str().unwrap()));
    let settings = listing.lines().filter(|l| l.ends_with("production/settings.toml")).count();
    assert_eq!(settings, 1, "{listing}");
    // And the bytes of a build that walked the whole tree first (a cache
    // that misses every file: the chmod changes each ctime).
    let kept = tempdir();
    let first = kept.path().join("first.tar.zst");
    fs::rename(cold["path"].as_str().unwrap(), &first).unwrap();
    fs::remove_file(cold["path"].as_str().unwrap().replace(".tar.zst", ".json")).unwrap();
    sh(&format!("find {} -exec chmod u+w {{}} +", p.path("app").display()));
    let walked = p.build(&[]);
    assert_eq!((walked["cache_hits"].as_u64(), walked["reused"].as_bool()), (Some(0), Some(false)), "{walked}");
    assert_eq!(walked["id"], cold["id"]);
    sh(&format!("cmp {} {}", first.display(), walked["path"].as_str().unwrap()));
}

/// `ferry build` starts itself again with glibc's huge pages when the kernel
/// gives them on request (src/huge_pages.rs); the programs it runs, here a
/// build step, get the environment as it was. Off with FERRY_HUGE_PAGES=0:
/// the same scenario without the feature, where ferry's own environment
/// lacks the tunable.
#[test]
fn a_build_asks_glibc_for_huge_pages_and_its_steps_see_the_environment_as_it_was() {
    let out = tempdir();
    let o = out.path().display();
    let p = Project::new(&format!(
        r#"service = "hp"

[components]
code = "app"

[[build.steps]]
name = "env"
run = "tr '\\0' '\\n' < /proc/$PPID/environ | grep '^GLIBC_TUNABLES=' > {o}/ferry; env | grep '^GLIBC_TUNABLES=' > {o}/step; true"
"#
    ));
    p.write("app/main.py", "print('hi')\n");
    let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let asks = thp.contains("[madvise]");
    let seen = |env: &[(&str, &str)]| {
        let mut cmd = ferry_cmd();
        cmd.env_remove("GLIBC_TUNABLES").env_remove("FERRY_HUGE_PAGES");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = run(cmd.args(["build", "--json", "--store"]).arg(p.store.path()).arg("-c").arg(p.path("ferry.toml")));
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let read = |name: &str| fs::read_to_string(out.path().join(name)).unwrap().trim().to_owned();
        (read("ferry"), read("step"))
    };
    let huge = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1";
    let (ferry, step) = seen(&[]);
    assert_eq!(ferry, if asks { huge } else { "" }, "transparent_hugepage: {thp}");
    assert_eq!(step, "");
    // A user's tunables are kept, for ferry and for what it runs. (glibc
    // ends the variable where it read it after its first tunable, which is
    // ferry's.)
    let (ferry, step) = seen(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=7")]);
    assert_eq!(ferry, if asks { huge } else { "GLIBC_TUNABLES=glibc.malloc.tcache_count=7" });
    assert_eq!(step, "GLIBC_TUNABLES=glibc.malloc.tcache_count=7");
    let (ferry, step) = seen(&[("FERRY_HUGE_PAGES", "0")]);
    assert_eq!((ferry.as_str(), step.as_str()), ("", ""));
}
