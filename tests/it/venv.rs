//! A real virtualenv, built at one path, run from another after a bundle round trip.

use std::path::Path;
use std::process::Command;

use fs_err as fs;

use crate::kit::{build_at, copy_elsewhere, ferry_cmd, pypi_gunicorn_venv, run, sh, tempdir, Project, PYPI_GUNICORN};

/// A venv at `<project>/venv` with a package `greet` (timestamp-based pycs,
/// as `pip install` writes without SOURCE_DATE_EPOCH) and a console script.
fn project_with_venv() -> Project {
    let p = Project::new("service = \"greeter\"\n\n[components]\ncode = \"app\"\nvenv = \"venv\"\n");
    p.write("app/main.py", "import greet\n");
    let venv = p.path("venv");
    let r = run(Command::new("python3").args(["-m", "venv", "--without-pip"]).arg(&venv));
    assert_eq!(r.code, 0, "python3 -m venv failed (scripts/test installs python3-venv): {}", r.stderr);
    let site =
        sh(&format!("{}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'", venv.display()));
    let site = Path::new(site.trim());
    fs::create_dir_all(site.join("greet")).unwrap();
    fs::write(site.join("greet/__init__.py"), "from .words import hello\n").unwrap();
    fs::write(site.join("greet/words.py"), "def hello():\n    return 'hello'\n").unwrap();
    let script =
        format!("#!{}/bin/python\nimport sys\nfrom greet import hello\nprint(hello(), sys.prefix)\n", venv.display());
    p.write("venv/bin/greet", script);
    sh(&format!("chmod 755 {}/bin/greet", venv.display()));
    // Age the sources like a CI checkout, then compile as pip does, with timestamps.
    sh(&format!("find {} -exec touch -h -d '-1 hour' {{}} +", p.root().display()));
    let r = run(Command::new(venv.join("bin/python"))
        .args(["-m", "compileall", "-q", "--invalidation-mode", "timestamp"])
        .arg(site)
        .env_remove("SOURCE_DATE_EPOCH"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    p
}

/// Unpacks a bundle with GNU tar (which sets each file's mtime from the tar
/// header, as ferry's host side does), read-only, at `dest`.
fn unpack(bundle: &str, dest: &Path, extra: &str) {
    fs::create_dir_all(dest).unwrap();
    sh(&format!("tar --zstd -xf {bundle} -C {} {extra} && chmod -R a-w {}", dest.display(), dest.display()));
}

#[test]
fn the_venv_runs_from_another_path_and_imports_without_recompiling() {
    let p = project_with_venv();
    let built = p.build(&["--strict"]);
    assert!(built["pycs_normalized"].as_u64().unwrap() >= 2, "{built}");
    assert!(built["scripts_relocated"].as_u64().unwrap() >= 4, "greet and the activate scripts: {built}");
    assert_eq!(built["unrelocated"], serde_json::json!([]));
    let bundle = built["path"].as_str().unwrap().to_owned();
    // The build path is gone: nothing can quietly fall back to it.
    fs::remove_dir_all(p.path("venv")).unwrap();

    let hosts = tempdir();
    let release = hosts.path().join("releases/r1");
    unpack(&bundle, &release, "");
    let venv = release.join("venv");
    let out = sh(&format!("{}/bin/greet", venv.display()));
    assert_eq!(out, format!("hello {}\n", venv.display()), "the console script ran the release's own venv");
    let activated = sh(&format!("bash -c '. {}/bin/activate && echo $VIRTUAL_ENV'", venv.display()));
    assert_eq!(activated.trim(), venv.display().to_string());

    // `python -v` says where each module came from.
    let trace = |venv: &Path| {
        let r = run(Command::new(venv.join("bin/python")).args(["-v", "-c", "import greet"]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stderr
    };
    let log = trace(&venv);
    assert!(log.contains("/greet/__pycache__/words.cpython-") && log.contains("# code object from"), "{log}");
    assert!(!log.contains("bytecode is stale"), "Python recompiled: {log}");

    // The control: the same release with mtimes of now is stale, which is what
    // normalizing the pyc timestamps prevents.
    let touched = hosts.path().join("releases/r2");
    unpack(&bundle, &touched, "--touch");
    let log = trace(&touched.join("venv"));
    assert!(log.contains("bytecode is stale for 'greet.words'"), "{log}");
}

#[test]
fn strict_fails_on_a_venv_file_that_names_the_build_path() {
    let p = project_with_venv();
    let pth = format!("{}\n", p.path("venv/src/editable").display());
    let site = sh(&format!(
        "{}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'",
        p.path("venv").display()
    ));
    fs::write(Path::new(site.trim()).join("editable.pth"), pth).unwrap();
    let built = p.build(&[]);
    let unrelocated = built["unrelocated"].as_array().unwrap();
    assert_eq!(unrelocated.len(), 1, "{built}");
    assert!(unrelocated[0].as_str().unwrap().ends_with("site-packages/editable.pth"));
    let err = p.ferry(["build", "--strict"]).fails(2);
    assert!(err.contains("1 file(s) of the venv still name the build path (--strict): venv/lib/python3"), "{err}");
}

/// A big file is read, hashed and compressed a megabyte at a time: the build
/// path is still found where a piece ends inside it, and the bytes are the
/// file's.
#[test]
fn a_big_library_that_names_the_build_path_across_a_piece_boundary_is_reported() {
    let p = project_with_venv();
    let venv = p.path("venv");
    let rpath = venv.join("lib").display().to_string();
    let site =
        sh(&format!("{}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'", venv.display()));
    let site = Path::new(site.trim());
    let filler = |len: usize| (0..len).map(|i| (i * 31 % 253) as u8).collect::<Vec<u8>>();
    // The path starts 5 bytes before the first megabyte ends.
    let mut named = filler((1 << 20) - 5);
    named.extend_from_slice(rpath.as_bytes());
    named.extend_from_slice(&filler(2 << 20));
    fs::write(site.join("_named.so"), &named).unwrap();
    let plain = filler((3 << 20) + 17);
    fs::write(site.join("_plain.so"), &plain).unwrap();
    let built = p.build(&[]);
    let reported: Vec<&str> = built["unrelocated"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(reported.iter().any(|f| f.ends_with("site-packages/_named.so")), "{built}");
    assert!(!reported.iter().any(|f| f.ends_with("site-packages/_plain.so")), "{built}");
    let release = tempdir();
    unpack(built["path"].as_str().unwrap(), release.path(), "");
    let rel = site.strip_prefix(p.root()).unwrap();
    assert!(fs::read(release.path().join(rel).join("_named.so")).unwrap() == named);
    assert!(fs::read(release.path().join(rel).join("_plain.so")).unwrap() == plain);
}

#[test]
fn a_venv_copied_elsewhere_with_other_owners_builds_the_same_bytes() {
    let p = project_with_venv();
    let one = p.build(&[]);
    // cp -a keeps mtimes, so every pyc stays valid for its source; the path and,
    // as root, the owners differ.
    let copy = copy_elsewhere(p.root());
    let store = tempdir();
    let two = build_at(copy.path(), store.path(), &[]);
    assert_eq!(one["id"], two["id"]);
    assert!(one["pycs_normalized"].as_u64().unwrap() >= 2);
    sh(&format!("cmp {} {}", one["path"].as_str().unwrap(), two["path"].as_str().unwrap()));
}

/// As docs/ferry-toml.md promises: every text file of the release that still
/// names the venv's build path is among the build's unrelocated files. A
/// venv names it in `pyvenv.cfg` too (`command = … -m venv <path>`, since
/// CPython 3.11), which the builder rewrites to the venv's path in the release.
#[test]
fn every_text_file_that_names_the_build_path_is_reported() {
    let p = project_with_venv();
    let venv = p.path("venv");
    let cfg = fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let made = format!(" -m venv --without-pip {}\n", venv.display());
    assert!(cfg.contains(&made), "python3 -m venv records how it was made: {cfg}");
    let built = p.build(&[]);
    let reported: Vec<&str> = built["unrelocated"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let release = tempdir();
    unpack(built["path"].as_str().unwrap(), release.path(), "");
    // Text files only (-I): bytecode names the path too, but Python replaces
    // it with the real source path when it loads a pyc.
    let r = run(Command::new("grep").arg("-rlIF").arg(venv.as_os_str()).arg(release.path()));
    assert!(r.code <= 1, "{}", r.stderr);
    for file in r.stdout.lines() {
        let rel = file.strip_prefix(&format!("{}/", release.path().display())).unwrap();
        assert!(reported.contains(&rel), "{rel} names the build path and is not reported: {built}");
    }
    let cfg = fs::read_to_string(release.path().join("venv/pyvenv.cfg")).unwrap();
    assert!(cfg.contains(" -m venv --without-pip venv\n"), "made again from the release's root: {cfg}");
}

/// pip's own console script, from PyPI's gunicorn wheel, runs from a release
/// staged on a host: the builder's trampoline replaced the shebang that named
/// the build machine's venv.
#[test]
fn pips_gunicorn_script_runs_from_a_staged_release() {
    let p = Project::new("service = \"pypi\"\n\n[components]\nvenv = \"venv\"\n");
    let venv = p.path("venv");
    pypi_gunicorn_venv(&venv);
    let script = fs::read_to_string(venv.join("bin/gunicorn")).unwrap();
    assert!(script.starts_with(&format!("#!{}/bin/python", venv.display())), "pip's script: {script}");
    let built = p.build(&["--strict"]);
    // The build path is gone: nothing can quietly fall back to it.
    fs::remove_dir_all(&venv).unwrap();

    let host = tempdir();
    let staged = run(ferry_cmd().arg("host").arg("--deploy-to").arg(host.path()).args([
        "stage",
        built["path"].as_str().unwrap(),
        "--json",
    ]))
    .ok()
    .json();
    let release = fs::canonicalize(host.path().join("releases").join(staged["id"].as_str().unwrap())).unwrap();
    // PYTHONVERBOSE: Python says where each module came from.
    let r = run(Command::new(release.join("venv/bin/gunicorn")).arg("--version").env("PYTHONVERBOSE", "1"));
    assert_eq!((r.code, r.stdout.trim()), (0, &*format!("gunicorn (version {PYPI_GUNICORN})")), "{}", r.stderr);
    let site = format!("{}/venv/lib/python3", release.display());
    assert!(r.stderr.contains(&site) && r.stderr.contains("/site-packages/gunicorn/"), "{}", r.stderr);
}
