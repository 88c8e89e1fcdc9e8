//! Linked dirs and files (`shared/`): at stage, activate and verify, and
//! refused when they overlap.

use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::kit::{build, bundle, current, host, nothing_left, read, s, sample_project, tempdir};

#[test]
fn a_missing_linked_file_is_named_and_nothing_flips_until_it_exists() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n").write("log/keep", "from the release\n");
    let v2 = build(&p, "v2");
    p.write("app/main.py", "print('shop v3')\n");
    let v3 = build(&p, "v3");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    let linked = ["--linked-file", "secret.env", "--linked-file", "config/db.env", "--linked-dir", "log"];

    let bundle_v2 = bundle(&p, &v2);
    let stage_v2: Vec<&str> = ["stage", s(&bundle_v2)].into_iter().chain(linked).collect();
    let err = host(dir, &stage_v2).fails(2);
    let missing = dir.join("shared/secret.env");
    assert!(err.contains(&format!("linked file {} is missing", missing.display())), "{err}");
    nothing_left(dir, &v2, &v1, "linked file missing");

    fs::write(&missing, "TOKEN=1\n").unwrap();
    let err = host(dir, &stage_v2).fails(2);
    assert!(err.contains(&format!("linked file {} is missing", dir.join("shared/config/db.env").display())), "{err}");
    nothing_left(dir, &v2, &v1, "nested linked file missing");
    fs::create_dir_all(dir.join("shared/config")).unwrap();
    fs::write(dir.join("shared/config/db.env"), "DB=x\n").unwrap();

    host(dir, &stage_v2).ok();
    let activate_v2: Vec<&str> = ["activate", &v2].into_iter().chain(linked).collect();
    host(dir, &activate_v2).ok();
    let r = dir.join("releases").join(&v2);
    assert_eq!(fs::read_link(r.join("secret.env")).unwrap(), Path::new("../../shared/secret.env"));
    assert_eq!(fs::read_link(r.join("config/db.env")).unwrap(), Path::new("../../../shared/config/db.env"));
    assert_eq!(fs::read_link(r.join("log")).unwrap(), Path::new("../../shared/log"));
    assert_eq!(read(dir.join("current/secret.env")), "TOKEN=1\n");
    assert_eq!(read(dir.join("current/config/db.env")), "DB=x\n");
    assert!(dir.join("shared/log").is_dir());
    fs::write(dir.join("current/log/app.log"), "written through the link\n").unwrap();
    assert_eq!(read(dir.join("shared/log/app.log")), "written through the link\n");
    host(dir, &["verify"]).ok();

    // Staged with its links, v3 still does not flip while a linked file is gone.
    let bundle_v3 = bundle(&p, &v3);
    let stage_v3: Vec<&str> = ["stage", s(&bundle_v3)].into_iter().chain(linked).collect();
    host(dir, &stage_v3).ok();
    fs::remove_file(&missing).unwrap();
    let activate_v3: Vec<&str> = ["activate", &v3].into_iter().chain(linked).collect();
    let err = host(dir, &activate_v3).fails(2);
    assert!(err.contains(&format!("linked file {} is missing", missing.display())), "{err}");
    assert_eq!(current(dir).as_deref(), Some(v2.as_str()));
    fs::write(&missing, "TOKEN=2\n").unwrap();
    host(dir, &activate_v3).ok();
    assert_eq!(read(dir.join("current/secret.env")), "TOKEN=2\n");
}

/// `activate --linked-file P` checks that the release links P, not only
/// that `shared/P` exists: a release staged before P was a linked file (an
/// earlier push, a `push` retried after adding `linked_files`) must not be
/// flipped to without the link. The environment is checked the same way.
#[test]
fn a_release_staged_without_a_linked_file_is_not_activated_without_its_link() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    fs::create_dir_all(dir.join("shared")).unwrap();
    fs::write(dir.join("shared/secret.env"), "TOKEN=1\n").unwrap();
    let r = host(dir, &["activate", &v1, "--linked-file", "secret.env"]);
    if r.code == 0 {
        assert_eq!(
            fs::read_link(dir.join("current/secret.env")).ok(),
            Some(PathBuf::from("../../shared/secret.env")),
            "activate --linked-file secret.env flipped to a release that has no secret.env link"
        );
    } else {
        let err = r.fails(2);
        assert!(err.contains("secret.env"), "{err}");
        assert_eq!(current(dir), None);
    }
}

#[test]
fn overlapping_linked_paths_are_refused_before_anything_is_written() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let h = tempdir();
    let dir = h.path();
    fs::create_dir_all(dir.join("shared/log/archive")).unwrap();
    fs::write(dir.join("shared/log/archive/old.log"), "keep me\n").unwrap();
    let b1 = bundle(&p, &v1);
    for (args, want) in [
        (["--linked-dir", "log", "--linked-dir", "log/archive"], "linked paths log and log/archive overlap"),
        (
            ["--linked-dir", "config", "--linked-dir", "media"],
            "linked path config overlaps the config directory config",
        ),
        (["--linked-dir", "config/active", "--linked-dir", "media"], "overlaps the config directory config"),
    ] {
        let stage: Vec<&str> = ["stage", s(&b1), "--env", "staging"].into_iter().chain(args).collect();
        let err = host(dir, &stage).fails(2);
        assert!(err.contains(want), "{err}");
        assert!(!dir.join("releases").join(&v1).exists());
    }
    assert_eq!(read(dir.join("shared/log/archive/old.log")), "keep me\n", "shared data untouched");

    // The controller refuses the same in ferry.toml, naming the file, line and column.
    let toml = read(p.path("ferry.toml"));
    p.write("ferry.toml", format!("{toml}\n[deploy]\nlinked_dirs = [\"log\", \"log/archive\"]\n"));
    let err = p.ferry(["status", "any"]).fails(2);
    let at = format!(
        "{}:{}:23: [deploy] linked paths log and log/archive overlap",
        p.path("ferry.toml").display(),
        toml.lines().count() + 3
    );
    assert!(err.contains(&at), "{err}\nwanted: {at}");
}

#[test]
fn files_a_release_ships_under_a_linked_dir_do_not_break_the_next_stage_or_verify() {
    let p = sample_project();
    p.write("log/.keep", "");
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1)), "--linked-dir", "log"]).ok();
    host(dir, &["activate", &v1]).ok();
    host(dir, &["verify"]).ok();
    // log/.keep of v1 is shared/log/.keep now: neither a source to link from
    // nor a base to patch against.
    host(dir, &["stage", s(&bundle(&p, &v2)), "--linked-dir", "log"]).ok();
    host(dir, &["verify", &v2]).ok();
    let r2 = dir.join("releases").join(&v2);
    assert_eq!(fs::read_link(r2.join("log")).unwrap(), Path::new("../../shared/log"));
}

#[test]
fn verify_accepts_only_the_shared_links_the_release_was_staged_with() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    let main = dir.join("releases").join(&v1).join("app/main.py");
    // Swap a release file for a link into some other "shared/" directory.
    let elsewhere = tempdir();
    fs::create_dir_all(elsewhere.path().join("shared")).unwrap();
    fs::write(elsewhere.path().join("shared/main.py"), "print('evil')\n").unwrap();
    fs::remove_file(&main).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("shared/main.py"), &main).unwrap();
    let err = host(dir, &["verify", &v1]).fails(2);
    assert!(err.contains("app/main.py is not a file"), "{err}");
}
