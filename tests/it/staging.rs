//! Staging on a host (`ferry host stage`, `verify`): bundles and deltas,
//! hardlinks, modes and mtimes, what is refused and what a refusal leaves.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::kit::{
    build, bundle, current, delta, host, host_stdin, journal, leftovers, noise, nothing_left, read, release_names, s,
    sample_project, settings, sh, tempdir, Tmpfs, NORMALIZED_MTIME,
};

/// The regular files below `dir`, not following symlinks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn ino(path: impl AsRef<Path>) -> u64 {
    fs::symlink_metadata(path.as_ref()).unwrap().ino()
}

fn mode(path: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(path.as_ref()).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------
// Bundles, deltas, hardlinks, modes, mtimes, verify

#[test]
fn a_delta_staged_after_a_bundle_hardlinks_unchanged_files_read_only_with_the_normalized_mtime() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n");
    // Same content, another mode: must not share an inode with v1's.
    sh(&format!("chmod 644 {}", p.path("app/run.sh").display()));
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();

    let staged = host(dir, &["stage", s(&bundle(&p, &v1)), "--json"]).ok().json();
    assert_eq!(staged["id"], v1.as_str(), "{staged}");
    assert_eq!((staged["written"].as_u64(), staged["linked"].as_u64()), (Some(6), Some(0)), "{staged}");
    // The delta on stdin, told from a bundle by its magic.
    let staged = host_stdin(dir, &["stage", "-", "--json"], &delta(&p, &v1, &v2)).ok().json();
    assert_eq!(staged["id"], v2.as_str(), "{staged}");
    assert_eq!(staged["written"], 1, "only app/main.py changed: {staged}");
    assert_eq!(staged["copied"], 1, "app/run.sh changed mode only: {staged}");
    assert_eq!(staged["linked"], 4, "{staged}");

    let (r1, r2) = (dir.join("releases").join(&v1), dir.join("releases").join(&v2));
    for same in ["app/lib/util.py", "config/staging/settings.env", "config/production/settings.env", "media/logo.svg"] {
        assert_eq!(ino(r1.join(same)), ino(r2.join(same)), "{same} is not hardlinked between the releases");
    }
    assert_ne!(ino(r1.join("app/main.py")), ino(r2.join("app/main.py")));
    assert_ne!(ino(r1.join("app/run.sh")), ino(r2.join("app/run.sh")), "a file of another mode shares the inode");
    assert_eq!(mode(r1.join("app/run.sh")), 0o555);
    assert_eq!(mode(r2.join("app/run.sh")), 0o444);
    assert_eq!(mode(r2.join("app/lib/util.py")), 0o444);
    assert_eq!(read(r2.join("app/main.py")), "print('shop v2')\n");
    assert_eq!(fs::read_link(r2.join("media/main-link.py")).unwrap(), Path::new("../app/main.py"));
    for release in [&r1, &r2] {
        let files = files_under(release);
        assert_eq!(files.len(), 10, "6 files and the .ferry head: {files:?}");
        for head in [".ferry/manifest", ".ferry/release.json", ".ferry/staged.json", ".ferry/verified.json"] {
            assert!(release.join(head).is_file(), "{head}");
        }
        for f in files {
            let m = fs::symlink_metadata(&f).unwrap();
            assert_eq!(m.mode() & 0o222, 0, "{} is writable: {:o}", f.display(), m.mode());
            assert_eq!(m.mtime(), NORMALIZED_MTIME, "{} has mtime {}", f.display(), m.mtime());
        }
    }
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));

    for id in [&v1, &v2] {
        let out = host(dir, &["verify", &id[..8]]).ok().stdout;
        assert!(out.contains(&format!("release {id} ok: 6 files")), "{out}");
    }
    let err = host(dir, &["verify"]).fails(2);
    assert!(err.contains("has no current release"), "{err}");
    host(dir, &["activate", &v2]).ok();
    host(dir, &["verify"]).ok();

    // Verify re-hashes: a file changed in place (in both releases: it is one inode) is named.
    let util = r1.join("app/lib/util.py");
    sh(&format!("chmod u+w {u} && printf 'X = 9\\n' > {u} && chmod u-w {u}", u = util.display()));
    for id in [&v1, &v2] {
        let err = host(dir, &["verify", id]).fails(2);
        assert!(err.starts_with("ferry: error:") && err.contains("app/lib/util.py: content hashes to"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// Refusals

#[test]
fn refused_deltas_and_bundles_leave_no_partial_release() {
    let p = sample_project();
    settings(&p, 1);
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n").write("media/new.bin", vec![7u8; 5000]);
    settings(&p, 2);
    let v2 = build(&p, "v2");
    p.write("app/lib/util.py", "X = 3\n");
    let v3 = build(&p, "v3");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1)), "--env", "staging"]).ok();
    host(dir, &["activate", &v1, "--env", "staging"]).ok();
    let files = tempdir();

    // A delta from a base the host lacks names the base.
    let err = host(dir, &["stage", s(&delta(&p, &v2, &v3))]).fails(2);
    assert!(err.starts_with("ferry: error:"), "{err}");
    assert!(err.contains(&format!("the delta goes from release {v2}, which this host does not have")), "{err}");
    nothing_left(dir, &v3, &v1, "missing base");

    let good = fs::read(delta(&p, &v1, &v2)).unwrap();
    assert!(good.len() > 200, "a delta of {} bytes", good.len());
    // A flipped byte in the ops, in the head, and in the trailing hash.
    for at in [good.len() / 2, 80, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        let path = files.path().join(format!("flipped-{at}"));
        fs::write(&path, &bad).unwrap();
        let err = host(dir, &["stage", s(&path), "--env", "staging"]).fails(2);
        assert!(err.contains("the delta is refused"), "byte {at}: {err}");
        nothing_left(dir, &v2, &v1, &format!("byte {at} flipped"));
    }
    // Cut short anywhere, on stdin too.
    for len in [good.len() - 1, good.len() - 33, good.len() / 2, 90, 50] {
        let path = files.path().join(format!("cut-{len}"));
        fs::write(&path, &good[..len]).unwrap();
        let err = host_stdin(dir, &["stage", "-", "--env", "staging"], &path).fails(2);
        assert!(err.contains("the delta is refused") || err.contains("truncated"), "{len} bytes: {err}");
        nothing_left(dir, &v2, &v1, &format!("cut to {len} bytes"));
    }
    // A bundle cut short after its head: staging had begun.
    let whole = fs::read(bundle(&p, &v2)).unwrap();
    let path = files.path().join("cut.tar.zst");
    fs::write(&path, &whole[..whole.len() * 3 / 4]).unwrap();
    let err = host(dir, &["stage", s(&path), "--env", "staging"]).fails(2);
    assert!(err.contains("cannot stage into"), "{err}");
    nothing_left(dir, &v2, &v1, "bundle cut short");
    // A release without the host's environment is refused before anything is written.
    let err = host(dir, &["stage", s(&bundle(&p, &v2)), "--env", "qa"]).fails(2);
    assert!(err.contains("has no config for environment \"qa\" (it has: production, staging)"), "{err}");
    nothing_left(dir, &v2, &v1, "unknown environment");
    let failed = journal(dir).iter().filter(|r| r["result"] == "failed").count();
    assert!(failed >= 1, "the failed stage after staging began is journaled");

    // The good delta still applies, and nothing of the failures is left.
    let staged = host(dir, &["stage", s(&delta(&p, &v1, &v2)), "--env", "staging"]).ok();
    assert_eq!(staged.stdout.trim(), v2);
    host(dir, &["verify", &v2]).ok();
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
    assert_eq!(release_names(dir), {
        let mut v = vec![v1.clone(), v2.clone()];
        v.sort();
        v
    });
    assert_eq!(current(dir).as_deref(), Some(v1.as_str()));
}

/// A full disk: the stage fails naming the file it could not write, removes
/// its staging directory, and `current` stays. Needs root, for a small tmpfs.
#[test]
fn a_full_disk_fails_the_stage_and_leaves_current_alone() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    // 3 MiB that zstd cannot shrink: the bundle fits nowhere near 1 MiB of disk.
    p.write("media/noise.bin", noise(3 << 20));
    let v2 = build(&p, "v2");

    let disk = tempdir();
    let _disk = Tmpfs::mount(disk.path(), "1m");
    let dir = disk.path().join("srv/shop");
    host(&dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(&dir, &["activate", &v1]).ok();

    for (what, input) in [("bundle", bundle(&p, &v2)), ("delta", delta(&p, &v1, &v2))] {
        // Refused before a byte is written: the files it declares do not fit.
        let err = host(&dir, &["stage", s(&input)]).fails(2);
        assert!(err.contains(&format!("release {v2} needs ")), "{what}: {err}");
        assert!(err.contains("are free; free some space"), "{what}: the message says what to do: {err}");
        nothing_left(&dir, &v2, &v1, what);
        host(&dir, &["verify"]).ok();
    }
    let journal = journal(&dir);
    let last = journal.last().unwrap();
    assert_eq!((last["action"].as_str(), last["result"].as_str()), (Some("stage"), Some("failed")), "{last}");
}

/// `ferry host verify` checks modes with types, sizes, link targets and
/// hashes: a release file made writable (or executable) fails it.
#[test]
fn verify_notices_a_release_file_whose_mode_changed() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    let file = dir.join("releases").join(&v1).join("app/main.py");
    fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = host(dir, &["verify", &v1]);
    assert_eq!(r.code, 2, "verify passed a release whose app/main.py is now mode 0666: {}", r.stdout);
    assert!(r.stderr.contains("app/main.py"), "{}", r.stderr);
}

#[test]
fn a_release_staged_with_other_options_is_staged_anew_unless_it_is_current() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1)), "--env", "staging"]).ok();
    host(dir, &["activate", &v1, "--env", "staging"]).ok();
    host(dir, &["stage", s(&bundle(&p, &v2))]).ok();
    // v2 was staged without an environment: staging it for one redoes it.
    let staged = host(dir, &["stage", s(&bundle(&p, &v2)), "--env", "staging", "--json"]).ok().json();
    assert_eq!(staged["already"], false, "{staged}");
    host(dir, &["activate", &v2, "--env", "staging"]).ok();
    assert_eq!(fs::read_link(dir.join("current/config/active")).unwrap(), Path::new("staging"));
    // The same again is a no-op; for another environment, current is refused.
    let staged = host(dir, &["stage", s(&bundle(&p, &v2)), "--env", "staging", "--json"]).ok().json();
    assert_eq!(staged["already"], true, "{staged}");
    let err = host(dir, &["stage", s(&bundle(&p, &v2)), "--env", "production"]).fails(2);
    assert!(err.contains("it is current, staged with other options"), "{err}");
    assert_eq!(current(dir).as_deref(), Some(v2.as_str()));
    host(dir, &["verify"]).ok();
}

/// Staging hashes every file it takes from a kept release: one changed in
/// place on the host — same size, mode and mtime — is caught, not spread.
#[test]
fn a_kept_file_changed_in_place_is_caught_not_linked_into_the_next_release() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    // util.py is the same in v2: staging v2 would hardlink it from v1.
    let util = dir.join("releases").join(&v1).join("app/lib/util.py");
    sh(&format!(
        "chmod u+w {u} && printf 'X = 2\\n' > {u} && chmod 444 {u} && touch -d @315532800 {u}",
        u = util.display()
    ));
    for input in [bundle(&p, &v2), delta(&p, &v1, &v2)] {
        let err = host(dir, &["stage", s(&input)]).fails(2);
        assert!(err.contains("app/lib/util.py: a kept release's copy hashes to"), "{err}");
        assert!(err.contains("that release was changed on this host"), "{err}");
        assert!(!dir.join("releases").join(&v2).exists());
    }
}
