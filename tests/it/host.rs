//! The on-host side (`ferry host <verb>`) and the local fleet (`ferry push`,
//! `rollback`, `status`, `history` over a `transport = "local"` stage).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fs_err as fs;
use serde_json::Value;

use crate::kit::{ferry_cmd, noise, run, sample_project, sh, tempdir, Project, Run, Tmpfs};

/// The mtime every release file gets on a host (1980-01-01, as in the bundle).
const NORMALIZED_MTIME: i64 = 315_532_800;

// ---------------------------------------------------------------------------
// Helpers

/// `ferry host --deploy-to <dir>`.
fn host_cmd(dir: &Path) -> Command {
    let mut c = ferry_cmd();
    c.arg("host").arg("--deploy-to").arg(dir);
    c
}

/// `ferry host --deploy-to <dir> <args>`, to completion.
fn host(dir: &Path, args: &[&str]) -> Run {
    run(host_cmd(dir).args(args))
}

/// `ferry host --deploy-to <dir> <args>` with `input` on stdin.
fn host_stdin(dir: &Path, args: &[&str], input: &Path) -> Run {
    let file = fs::File::open(input).unwrap().into_file();
    let out = host_cmd(dir).args(args).stdin(file).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Builds the project's tree as `version` and returns the release id.
#[track_caller]
fn build(p: &Project, version: &str) -> String {
    let id = p.ferry(["build", "--quiet", "--version", version]).ok().stdout.trim().to_owned();
    assert_eq!(id.len(), 64, "not a release id: {id:?}");
    id
}

fn bundle(p: &Project, id: &str) -> PathBuf {
    p.store.path().join("bundles").join(format!("{id}.tar.zst"))
}

/// `ferry delta FROM TO`: the delta's path.
#[track_caller]
fn delta(p: &Project, from: &str, to: &str) -> PathBuf {
    PathBuf::from(p.ferry(["delta", from, to]).ok().stdout.trim())
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref()).unwrap()
}

/// The id `current` points at, if it exists; panics unless it is `releases/<id>`.
fn current(dir: &Path) -> Option<String> {
    let link = fs::read_link(dir.join("current")).ok()?;
    let text = link.to_str().unwrap();
    let id = text.strip_prefix("releases/").unwrap_or_else(|| panic!("current -> {text}, not releases/<id>"));
    Some(id.to_owned())
}

/// Every name in `releases/`, sorted.
fn release_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir.join("releases")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    names.sort();
    names
}

/// What killed or failed processes may leave: staging and pruning
/// directories, temporary files beside `current`.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut left: Vec<String> = release_names(dir).into_iter().filter(|n| n.starts_with('.')).collect();
    if let Ok(d) = fs::read_dir(dir) {
        left.extend(
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".tmp-")),
        );
    }
    left
}

/// The journal's records.
fn journal(dir: &Path) -> Vec<Value> {
    read(dir.join(".ferry/journal")).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

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

/// Writes `config/<env>/settings.json` of the sample project, saying `n`.
fn settings(p: &Project, n: u32) {
    p.write("config/staging/settings.json", format!("{{\"v\": {n}}}\n"))
        .write("config/production/settings.json", format!("{{\"v\": {n}, \"prod\": true}}\n"));
}

/// Stops the supervisord (and so the programs) of every host under a local
/// fleet's directory when dropped.
pub(crate) struct StopSupervisors(pub PathBuf);

impl Drop for StopSupervisors {
    fn drop(&mut self) {
        let Ok(hosts) = fs::read_dir(&self.0) else { return };
        for host in hosts.flatten() {
            let pidfile = host.path().join("srv/hello/.ferry/supervisord.pid");
            if let Ok(pid) = fs::read_to_string(&pidfile) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

/// A copy of fixtures/example (the embedded default: four local hosts) with
/// its virtualenv, and a store of its own.
pub(crate) fn example_project() -> Project {
    let p = Project { dir: tempdir(), store: tempdir() };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example");
    sh(&format!("cp -r {}/. {}", fixture.display(), p.root().display()));
    // Debian's interpreter, whose site sees Debian's gunicorn package (the
    // program runs `venv/bin/python -m gunicorn`): offline, as the quickstart.
    let r = run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--system-site-packages", "--without-pip"])
        .arg(p.path("venv")));
    assert_eq!(r.code, 0, "/usr/bin/python3 -m venv failed (scripts/test installs python3-venv): {}", r.stderr);
    p
}

// ---------------------------------------------------------------------------
// 1. Staging: bundles, deltas, hardlinks, modes, mtimes, verify

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
// 2. Rollback

#[test]
fn rollback_restores_code_and_config_and_goes_back_one_deploy_at_a_time() {
    let p = sample_project();
    let mut ids = Vec::new();
    for n in 1..=3 {
        p.write("app/main.py", format!("print('shop v{n}')\n"));
        settings(&p, n);
        ids.push(build(&p, &format!("v{n}")));
    }
    let [v1, v2, v3] = [&ids[0], &ids[1], &ids[2]];
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, v1)), "--env", "staging"]).ok();
    host(dir, &["stage", s(&delta(&p, v1, v2)), "--env", "staging"]).ok();
    host(dir, &["stage", s(&delta(&p, v2, v3)), "--env", "staging"]).ok();
    let running = |n: u32| {
        let code = read(dir.join("current/app/main.py"));
        let config = read(dir.join("current/config/active/settings.json"));
        assert_eq!(code, format!("print('shop v{n}')\n"), "code");
        assert_eq!(config, format!("{{\"v\": {n}}}\n"), "config");
    };
    let status = || host(dir, &["status", "--json"]).ok().json();

    host(dir, &["activate", v1, "--env", "staging"]).ok();
    running(1);
    host(dir, &["activate", v2, "--env", "staging"]).ok();
    running(2);
    assert_eq!(status()["previous"], v1.as_str());
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v1.as_str());
    assert_eq!(current(dir).as_deref(), Some(v1.as_str()));
    running(1);

    // Twice back is two releases back, not to and fro.
    host(dir, &["activate", v2, "--env", "staging"]).ok();
    host(dir, &["activate", v3, "--env", "staging"]).ok();
    running(3);
    assert_eq!(status()["previous"], v2.as_str());
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v2.as_str());
    running(2);
    assert_eq!(status()["previous"], v1.as_str(), "Capistrano's previous of v2 is v1, not v3");
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v1.as_str());
    running(1);
    // v1 was the first deploy: nothing before it.
    let err = host(dir, &["rollback"]).fails(2);
    assert!(err.contains("no previous release is recorded"), "{err}");
    running(1);
    // --to goes anywhere kept.
    host(dir, &["rollback", "--to", &v3[..10]]).ok();
    running(3);
    let rollbacks: Vec<(String, String)> = journal(dir)
        .iter()
        .filter(|r| r["action"] == "rollback" && r["result"] == "ok")
        .map(|r| (r["from"].as_str().unwrap()[..8].to_owned(), r["to"].as_str().unwrap()[..8].to_owned()))
        .collect();
    let short = |id: &str| id[..8].to_owned();
    assert_eq!(
        rollbacks,
        [(short(v2), short(v1)), (short(v3), short(v2)), (short(v2), short(v1)), (short(v1), short(v3))],
        "the journal's rollbacks"
    );
}

// ---------------------------------------------------------------------------
// 3. Prune

#[test]
fn a_release_rolled_back_from_does_not_count_toward_keep_and_goes_at_the_next_prune() {
    let p = sample_project();
    let ids: Vec<String> = (1..=4).map(|n| build(&p, &format!("r{n}"))).collect();
    let h = tempdir();
    let dir = h.path();
    for id in &ids[..3] {
        host(dir, &["stage", s(&bundle(&p, id))]).ok();
        host(dir, &["activate", id]).ok();
    }
    // r3 was bad: back to r2. Then r4 goes out.
    host(dir, &["rollback"]).ok();
    host(dir, &["stage", s(&bundle(&p, &ids[3]))]).ok();
    host(dir, &["activate", &ids[3]]).ok();
    let pruned = host(dir, &["prune", "--keep", "3", "--json"]).ok().json();
    // Newest first, r3 is second only to r4; but it failed, so the three
    // kept are the good ones: r4, r2 and r1.
    assert_eq!(pruned["removed"], serde_json::json!([ids[2]]), "{pruned}");
    let mut kept = vec![ids[0].clone(), ids[1].clone(), ids[3].clone()];
    kept.sort();
    assert_eq!(release_names(dir), kept);
}

#[test]
fn prune_keeps_current_previous_and_pinned_releases() {
    let p = sample_project();
    let ids: Vec<String> = (1..=5).map(|n| build(&p, &format!("r{n}"))).collect();
    let h = tempdir();
    let dir = h.path();
    for id in &ids {
        host(dir, &["stage", s(&bundle(&p, id))]).ok();
    }
    host(dir, &["activate", &ids[3]]).ok();
    host(dir, &["activate", &ids[4]]).ok();
    host(dir, &["pin", &ids[1][..8]]).ok();
    let status = host(dir, &["status", "--json"]).ok().json();
    assert_eq!((&status["current"], &status["previous"]), (&Value::from(ids[4].clone()), &Value::from(ids[3].clone())));
    let pinned: Vec<&str> = status["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pinned"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(pinned, [ids[1].as_str()]);

    let pruned = host(dir, &["prune", "--keep", "1", "--json"]).ok().json();
    let set = |v: &Value| v.as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    let removed: BTreeSet<String> = [ids[0].clone(), ids[2].clone()].into();
    let kept: BTreeSet<String> = [ids[1].clone(), ids[3].clone(), ids[4].clone()].into();
    assert_eq!(set(&pruned["removed"]), removed, "{pruned}");
    assert_eq!(set(&pruned["kept"]), kept, "{pruned}");
    assert_eq!(release_names(dir).into_iter().collect::<BTreeSet<_>>(), kept, "no .pruning-* left either");
    let records: BTreeSet<String> = journal(dir)
        .iter()
        .filter(|r| r["action"] == "prune" && r["result"] == "ok")
        .map(|r| r["from"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(records, removed, "the journal records each removal");
    // What was hardlinked from the removed releases is intact in the kept ones.
    for id in &kept {
        host(dir, &["verify", id]).ok();
    }
    assert_eq!(current(dir).as_deref(), Some(ids[4].as_str()));

    // Unpinned, it goes; current and previous still stay with --keep 1.
    host(dir, &["unpin", &ids[1]]).ok();
    let pruned = host(dir, &["prune", "--keep", "1", "--json"]).ok().json();
    assert_eq!(set(&pruned["removed"]), [ids[1].clone()].into(), "{pruned}");
    assert_eq!(release_names(dir), {
        let mut v = vec![ids[3].clone(), ids[4].clone()];
        v.sort();
        v
    });
    let err = host(dir, &["pin", &ids[0]]).fails(2);
    assert!(err.contains("no release on") && err.contains(&format!("{:?}", ids[0])), "{err}");
}

// ---------------------------------------------------------------------------
// 4. Refusals

/// Asserts a failed stage of `target` left nothing, and `current` is `cur`.
#[track_caller]
fn nothing_left(dir: &Path, target: &str, cur: &str, what: &str) {
    assert!(!dir.join("releases").join(target).exists(), "{what}: releases/{target} exists");
    assert!(leftovers(dir).is_empty(), "{what}: left {:?}", leftovers(dir));
    assert_eq!(current(dir).as_deref(), Some(cur), "{what}: current moved");
}

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

// ---------------------------------------------------------------------------
// 5. Locks

/// The sample project with a local stage of two hosts under fleet/.
fn sample_with_stage() -> Project {
    let p = sample_project();
    let toml = read(p.path("ferry.toml"));
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.local]\ntransport = \"local\"\nhosts = [\"fleet/web1\", \"fleet/web2\"]\nenv = \"staging\"\n"
        ),
    );
    p
}

#[test]
fn a_push_to_a_locked_host_fails_naming_the_holder_and_changes_nothing() {
    let p = sample_with_stage();
    let v1 = build(&p, "v1");
    let web1 = p.path("fleet/web1/srv/shop");
    let web2 = p.path("fleet/web2/srv/shop");
    // A real ferry holds web2's lock: it takes it before reading its input,
    // and the input never comes while the pipe is open.
    let mut holder = host_cmd(&web2)
        .args(["stage", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = holder.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let st = host(&web2, &["status", "--json"]).ok().json();
        if !st["lock"].is_null() {
            break st;
        }
        assert!(Instant::now() < deadline, "the holder never took the lock: {st}");
        assert!(holder.try_wait().unwrap().is_none(), "the holder exited");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status["lock"]["command"], "ferry host stage", "{status}");
    assert_eq!(status["lock"]["pid"], pid, "{status}");
    let human = host(&web2, &["status"]).ok().stdout;
    assert!(human.contains("lock       `ferry host stage` (") && human.contains(&format!("pid {pid})")), "{human}");

    let r = p.ferry(["push", "local", &v1, "--json"]);
    assert_eq!(r.code, 2, "{r:?}");
    let report = r.json();
    assert_eq!(report["ok"], false);
    let hosts = report["hosts"].as_array().unwrap();
    let w2 =
        hosts.iter().find(|h| h["host"] == "fleet/web2" || h["host"] == "web2").unwrap_or_else(|| panic!("{report}"));
    let err = w2["error"].as_str().unwrap_or_default();
    assert!(err.contains("is locked by `ferry host stage`") && err.contains(&format!("pid {pid})")), "{report}");
    assert_eq!(w2["step"], "connect", "{report}");
    let w1 = hosts.iter().find(|h| h != &w2).unwrap();
    assert_eq!(w1["result"], "skipped", "{report}");
    // Without --json, the same on stderr.
    let err = p.ferry(["push", "local", &v1]).fails(2);
    assert!(err.contains("connect failed") && err.contains(&format!("pid {pid})")), "{err}");
    // The stage's status shows the holder meanwhile.
    let st = p.ferry(["status", "local", "--json"]).ok().json();
    let locks: Vec<&Value> = st["hosts"].as_array().unwrap().iter().map(|h| &h["status"]["lock"]).collect();
    assert!(locks[0].is_null() && locks[1]["pid"] == pid, "{st}");
    // Nothing was staged anywhere.
    for d in [&web1, &web2] {
        assert_eq!(release_names(d), Vec::<String>::new(), "{}", d.display());
        assert_eq!(current(d), None);
    }

    // The holder's input ends (empty): it fails and lets go; the push goes through.
    drop(holder.stdin.take());
    let out = holder.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the input is empty"));
    assert!(host(&web2, &["status", "--json"]).ok().json()["lock"].is_null());
    let report = p.ferry(["push", "local", &v1, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    for d in [&web1, &web2] {
        assert_eq!(current(d).as_deref(), Some(v1.as_str()));
    }
}

// ---------------------------------------------------------------------------
// 6. Linked dirs and files

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

/// A flip renames `current` first and journals it after; when the journal
/// cannot be written (a full disk, an I/O error; here it is a directory),
/// the flip is undone, so `activate` exiting 2 means `current` did not move
/// (and `ferry push`, which reverts only hosts that succeeded, is right).
#[test]
fn an_activate_that_fails_leaves_current_where_it_was() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["stage", s(&bundle(&p, &v2))]).ok();
    host(dir, &["activate", &v1]).ok();
    // A journal that cannot be appended to.
    fs::rename(dir.join(".ferry/journal"), dir.join(".ferry/journal.saved")).unwrap();
    fs::create_dir(dir.join(".ferry/journal")).unwrap();
    let r = host(dir, &["activate", &v2]);
    if r.code != 0 {
        assert!(r.stderr.contains("journal"), "{}", r.stderr);
        assert_eq!(
            current(dir).as_deref(),
            Some(v1.as_str()),
            "activate failed ({}) but current moved to v2",
            r.stderr.trim()
        );
    }
}

// ---------------------------------------------------------------------------
// 7. The kill test

/// xorshift64*: deterministic, and enough to scatter kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One entry of a release tree as the source had it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { content: Vec<u8>, exec: bool },
    Link(String),
}

/// Path (relative, `/`-separated) to entry.
type Tree = BTreeMap<String, Node>;

/// The entries below `root/top`, as a release holds them.
fn snapshot(root: &Path, tops: &[&str]) -> Tree {
    fn walk(root: &Path, rel: &str, out: &mut Tree) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let path = format!("{rel}/{}", e.file_name().to_str().unwrap());
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                out.insert(path.clone(), Node::Dir);
                walk(root, &path, out);
            } else if m.file_type().is_symlink() {
                out.insert(path, Node::Link(fs::read_link(e.path()).unwrap().to_str().unwrap().to_owned()));
            } else {
                let exec = m.mode() & 0o100 != 0;
                out.insert(path, Node::File { content: fs::read(e.path()).unwrap(), exec });
            }
        }
    }
    let mut tree = Tree::new();
    for top in tops {
        tree.insert((*top).to_owned(), Node::Dir);
        walk(root, top, &mut tree);
    }
    tree
}

/// Checks that `release` is complete: every entry of `want` with its content
/// and read-only mode and the normalized mtime, ferry's head, the config
/// link and the log link, and nothing else.
fn check_release(release: &Path, want: &Tree) -> Result<(), String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, (Node, u32, i64)>) -> Result<(), String> {
        let entries = fs::read_dir(dir.join(rel)).map_err(|e| e.to_string())?;
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_str().unwrap().to_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
            let node = if m.is_dir() {
                walk(dir, &path, out)?;
                Node::Dir
            } else if m.file_type().is_symlink() {
                Node::Link(fs::read_link(e.path()).map_err(|e| e.to_string())?.to_str().unwrap().to_owned())
            } else {
                let content = fs::read(e.path()).map_err(|e| e.to_string())?;
                Node::File { content, exec: m.mode() & 0o100 != 0 }
            };
            out.insert(path, (node, m.mode() & 0o7777, m.mtime()));
        }
        Ok(())
    }
    let mut got = BTreeMap::new();
    walk(release, "", &mut got)?;
    for (path, node) in want {
        let Some((have, mode, mtime)) = got.remove(path) else { return Err(format!("{path} is missing")) };
        if &have != node {
            let show = |n: &Node| match n {
                Node::File { content, exec } => format!("file of {} bytes, exec {exec}", content.len()),
                other => format!("{other:?}"),
            };
            return Err(format!("{path} is {}, not {}", show(&have), show(node)));
        }
        if let Node::File { exec, .. } = node {
            let expected = if *exec { 0o555 } else { 0o444 };
            if mode != expected || mtime != NORMALIZED_MTIME {
                return Err(format!("{path} has mode {mode:o} and mtime {mtime}"));
            }
        }
    }
    for (path, (node, ..)) in &got {
        let ok = match path.as_str() {
            ".ferry" => node == &Node::Dir,
            ".ferry/manifest" | ".ferry/release.json" | ".ferry/staged.json" | ".ferry/verified.json" => {
                matches!(node, Node::File { content, .. } if !content.is_empty())
            }
            "config/active" => node == &Node::Link("staging".into()),
            "log" => node == &Node::Link("../../shared/log".into()),
            _ => false,
        };
        if !ok {
            return Err(format!("{path} should not be there ({node:?})"));
        }
    }
    for head in
        [".ferry/manifest", ".ferry/release.json", ".ferry/staged.json", ".ferry/verified.json", "config/active", "log"]
    {
        if fs::symlink_metadata(release.join(head)).is_err() {
            return Err(format!("{head} is missing"));
        }
    }
    Ok(())
}

/// The tree for the kill test: enough files that staging takes a while.
fn write_tree(p: &Project, rng: &mut Rng, dirs: usize, per_dir: usize) {
    for d in 0..dirs {
        for f in 0..per_dir {
            let words: Vec<String> = (0..24).map(|_| format!("{:x}", rng.next())).collect();
            p.write(&format!("app/m{d}/f{f}.py"), format!("# m{d}/f{f}\n{}\n", words.join(" ")));
        }
    }
    p.write("app/bin/run.sh", "#!/bin/sh\nexec python3 -m m0.f0\n");
    sh(&format!("chmod 755 {}", p.path("app/bin/run.sh").display()));
    std::os::unix::fs::symlink("m0/f0.py", p.path("app/entry.py")).unwrap();
    p.write("config/staging/settings.json", "{\"release\": \"a\"}\n")
        .write("config/production/settings.json", "{\"release\": \"a\", \"prod\": true}\n");
}

/// Releases a to d of the kill test's service, each a change of the one
/// before: changed, added, removed and moved files, a retargeted link, a
/// mode change, a duplicate content; and what each holds.
fn kill_releases(p: &Project) -> (Vec<String>, Vec<Tree>) {
    const DIRS: usize = 12;
    write_tree(p, &mut Rng(7), DIRS, 30);
    let tops = ["app", "config"];
    let mut trees = vec![snapshot(p.root(), &tops)];
    let mut ids = vec![build(p, "a")];
    for (n, name) in ["b", "c", "d"].into_iter().enumerate() {
        for f in 0..20 {
            let d = (f + 5 * n) % DIRS;
            p.write(&format!("app/m{d}/f{}.py", (f + 7 * n) % 30), format!("# changed in {name} {f}\n"));
        }
        for f in 0..5 {
            p.write(&format!("app/new{name}/n{f}.py"), format!("# new in {name}\n{}\n", "x".repeat(f * 300)));
        }
        match name {
            "b" => {
                for f in 20..25 {
                    fs::remove_file(p.path(&format!("app/m3/f{f}.py"))).unwrap();
                }
                fs::remove_file(p.path("app/entry.py")).unwrap();
                std::os::unix::fs::symlink("newb/n1.py", p.path("app/entry.py")).unwrap();
            }
            "c" => {
                sh(&format!("chmod 644 {}", p.path("app/bin/run.sh").display()));
                sh(&format!("mv {} {}", p.path("app/m11").display(), p.path("app/moved").display()));
                p.write("app/dup.py", read(p.path("app/m0/f5.py")));
            }
            _ => {
                sh(&format!("rm -r {}", p.path("app/newb").display()));
                sh(&format!("chmod 755 {}", p.path("app/dup.py").display()));
            }
        }
        p.write("config/staging/settings.json", format!("{{\"release\": \"{name}\"}}\n"));
        trees.push(snapshot(p.root(), &tops));
        ids.push(build(p, name));
    }
    (ids, trees)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// Stage release i, from a delta against release `base` or from the
    /// bundle; on stdin or as a path.
    Stage {
        i: usize,
        base: Option<usize>,
        stdin: bool,
    },
    Activate(usize),
    /// `rollback --to` the previous release (so that a re-run converges).
    Rollback(usize),
    Prune,
}

impl Verb {
    fn kind(self) -> &'static str {
        match self {
            Verb::Stage { base: None, .. } => "bundle",
            Verb::Stage { base: Some(_), .. } => "delta",
            Verb::Activate(_) | Verb::Rollback(_) => "flip",
            Verb::Prune => "prune",
        }
    }
}

/// A host, the releases it goes through, and how to run each verb there.
struct KillRig {
    p: Project,
    dir: PathBuf,
    ids: Vec<String>,
    trees: Vec<Tree>,
    /// (from, to) → path, made on first use.
    deltas: BTreeMap<(usize, usize), PathBuf>,
}

/// A `ferry host` command line and its stdin.
struct Invocation {
    args: Vec<OsString>,
    stdin: Option<PathBuf>,
}

impl KillRig {
    fn invocation(&mut self, verb: Verb) -> Invocation {
        let (args, stdin): (Vec<String>, Option<PathBuf>) = match verb {
            Verb::Stage { i, base, stdin } => {
                let payload = match base {
                    Some(j) => {
                        let (p, ids) = (&self.p, &self.ids);
                        self.deltas.entry((j, i)).or_insert_with(|| delta(p, &ids[j], &ids[i])).clone()
                    }
                    None => bundle(&self.p, &self.ids[i]),
                };
                let (input, stdin) = if stdin { ("-".into(), Some(payload)) } else { (s(&payload).into(), None) };
                (
                    vec!["stage".into(), input, "--env".into(), "staging".into(), "--linked-dir".into(), "log".into()],
                    stdin,
                )
            }
            Verb::Activate(i) => (vec!["activate".into(), self.ids[i].clone(), "--env".into(), "staging".into()], None),
            Verb::Rollback(i) => (vec!["rollback".into(), "--to".into(), self.ids[i].clone()], None),
            Verb::Prune => (vec!["prune".into(), "--keep".into(), "1".into()], None),
        };
        Invocation { args: args.into_iter().map(OsString::from).collect(), stdin }
    }

    fn spawn(&self, inv: &Invocation, quiet: bool) -> std::process::Child {
        let mut cmd = host_cmd(&self.dir);
        cmd.args(&inv.args);
        cmd.stdin(match &inv.stdin {
            Some(path) => Stdio::from(fs::File::open(path).unwrap().into_file()),
            None => Stdio::null(),
        });
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        cmd.spawn().unwrap()
    }

    /// Runs `inv` to the end; panics unless it succeeds. Returns how long it
    /// took and whether it found its work already done.
    fn complete(&self, inv: &Invocation, context: &dyn Fn() -> String) -> (Duration, bool) {
        let t = Instant::now();
        let out = self.spawn(inv, false).wait_with_output().unwrap();
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: the re-run failed: {stderr}", context());
        (took, stderr.contains("already"))
    }

    /// `current` (as an index) and which releases are on the host.
    fn observe(&self) -> (Option<usize>, Vec<bool>) {
        let cur = current(&self.dir).map(|c| self.ids.iter().position(|i| *i == c).expect("a known release"));
        let names = release_names(&self.dir);
        (cur, self.ids.iter().map(|id| names.contains(id)).collect())
    }

    /// What holds whenever no ferry runs, however the last one ended:
    /// `current` is `releases/<id>` of a complete release, and every
    /// directory named like a release is complete.
    fn check(&self) -> Result<(), String> {
        let link = fs::read_link(self.dir.join("current")).map_err(|e| format!("current: {e}"))?;
        let cur = link
            .to_str()
            .and_then(|t| t.strip_prefix("releases/"))
            .filter(|id| self.ids.iter().any(|i| i == id))
            .ok_or_else(|| format!("current -> {}, not releases/<one of the releases>", link.display()))?;
        if !self.dir.join("releases").join(cur).is_dir() {
            return Err(format!("current -> {}, which does not exist", link.display()));
        }
        for name in release_names(&self.dir) {
            if name.starts_with(".staging-") || name.starts_with(".pruning-") {
                continue;
            }
            let Some(i) = self.ids.iter().position(|id| *id == name) else {
                return Err(format!("releases/{name}: not a release of this test"));
            };
            check_release(&self.dir.join("releases").join(&name), &self.trees[i])
                .map_err(|e| format!("releases/{name} (release {i}) is incomplete: {e}"))?;
        }
        Ok(())
    }

    /// A verb that makes sense on the host as it is.
    fn choose(&self, rng: &mut Rng) -> Verb {
        let n = self.ids.len();
        let (cur, present) = self.observe();
        let cur = cur.expect("current always exists");
        let missing: Vec<usize> = (0..n).filter(|i| !present[*i]).collect();
        let others: Vec<usize> = (0..n).filter(|i| present[*i] && *i != cur).collect();
        let roll = rng.below(100);
        if !missing.is_empty() && (roll < 55 || others.is_empty()) {
            let i = rng.pick(&missing);
            let bases: Vec<usize> = (0..n).filter(|j| present[*j]).collect();
            let base = if rng.below(3) == 0 { None } else { Some(rng.pick(&bases)) };
            return Verb::Stage { i, base, stdin: rng.below(2) == 0 };
        }
        if roll < 75 && others.len() >= 2 {
            return Verb::Prune;
        }
        if roll < 88 {
            let st = host(&self.dir, &["status", "--json"]).ok().json();
            if let Some(prev) = st["previous"].as_str().and_then(|p| self.ids.iter().position(|i| i == p)) {
                return Verb::Rollback(prev);
            }
        }
        Verb::Activate(rng.pick(&others))
    }
}

/// SIGKILLs `ferry host stage/activate/rollback/prune` at random moments,
/// hundreds of times, and checks after each kill that `current` is a
/// complete release and that every release on the host is complete, and
/// that running the same command again converges.
#[test]
fn sigkill_at_any_moment_leaves_a_complete_current_and_a_rerun_converges() {
    const WANT_KILLS: usize = 200;
    const MAX_ITERATIONS: usize = 600;
    let seed: u64 = std::env::var("FERRY_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = Rng(seed);
    let started = Instant::now();
    let p = Project::new("service = \"killme\"\n\n[components]\ncode = \"app\"\nconfig = \"config\"\n");
    let (ids, trees) = kill_releases(&p);
    let h = tempdir();
    let mut rig = KillRig { p, dir: h.path().to_owned(), ids, trees, deltas: BTreeMap::new() };
    let setup = started.elapsed();

    // Calibration: how long each kind of command takes here, whole.
    let no_context = || "setting up".to_owned();
    let mut typical: BTreeMap<&str, Duration> = BTreeMap::new();
    let inv = rig.invocation(Verb::Stage { i: 0, base: None, stdin: false });
    typical.insert("bundle", rig.complete(&inv, &no_context).0);
    let inv = rig.invocation(Verb::Stage { i: 1, base: Some(0), stdin: false });
    typical.insert("delta", rig.complete(&inv, &no_context).0);
    let inv = rig.invocation(Verb::Activate(0));
    typical.insert("flip", rig.complete(&inv, &no_context).0);
    typical.insert("prune", typical["flip"]);
    rig.check().unwrap();

    let mut landed = 0usize;
    let mut kills = BTreeMap::<&str, usize>::new();
    let mut iterations = 0;
    let mut mid_stage = 0;
    while landed < WANT_KILLS && iterations < MAX_ITERATIONS {
        iterations += 1;
        let verb = rig.choose(&mut rng);
        let before = rig.observe().0.unwrap();
        let inv = rig.invocation(verb);
        let context = || format!("seed {seed} (FERRY_KILL_SEED={seed} reruns it), iteration {iterations}, {verb:?}");

        // Killed at a random moment of its typical run.
        let budget = typical[verb.kind()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(budget + 1));
        let mut child = rig.spawn(&inv, true);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            landed += 1;
            *kills.entry(verb.kind()).or_default() += 1;
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        if leftovers(&rig.dir).iter().any(|n| n.starts_with(".staging-")) {
            mid_stage += 1;
        }
        if let Err(e) = rig.check() {
            panic!("after a SIGKILL {delay:?} into {}: {e}", context());
        }

        // The same command again, unharmed, converges (and clears what the
        // killed one left).
        let (took, already) = rig.complete(&inv, &context);
        if !already {
            let t = typical.get_mut(verb.kind()).unwrap();
            *t = (*t * 3 + took) / 4;
        }
        let left = leftovers(&rig.dir);
        assert!(left.is_empty(), "{}: the re-run left {left:?}", context());
        let (now, present) = rig.observe();
        let now = now.unwrap_or_else(|| panic!("{}: no current", context()));
        match verb {
            Verb::Stage { i, .. } => {
                assert!(present[i], "{}: not staged", context());
                let staged = check_release(&rig.dir.join("releases").join(&rig.ids[i]), &rig.trees[i]);
                staged.unwrap_or_else(|e| panic!("{}: the staged release: {e}", context()));
                assert_eq!(now, before, "{}: stage moved current", context());
            }
            Verb::Activate(i) | Verb::Rollback(i) => assert_eq!(now, i, "{}", context()),
            Verb::Prune => assert_eq!(now, before, "{}: prune moved current", context()),
        }
        if iterations % 10 == 0 {
            let r = host(&rig.dir, &["verify"]);
            assert_eq!(r.code, 0, "{}: ferry host verify: {}", context(), r.stderr);
        }
    }
    eprintln!(
        "kill test: seed {seed}, {iterations} iterations, {landed} kills while ferry ran {kills:?}, \
         {mid_stage} left a staging directory; typical run {typical:?}; setup {:.1}s, all {:.1}s",
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(landed >= 200, "only {landed} of {iterations} kills landed while ferry ran (seed {seed})");
    assert!(mid_stage > 0, "no kill landed mid-stage (seed {seed})");
    rig.check().unwrap();
    for id in
        &rig.observe().1.iter().enumerate().filter(|(_, p)| **p).map(|(i, _)| rig.ids[i].clone()).collect::<Vec<_>>()
    {
        host(&rig.dir, &["verify", id]).ok();
    }
}

// ---------------------------------------------------------------------------
// 8. The local fleet, end to end

#[test]
fn push_to_a_local_fleet_ships_a_bundle_then_a_delta_in_batches_and_rolls_back() {
    let p = example_project();
    // The example runs under a supervisord per host, on this machine: on
    // ports of this test's own (not the quickstart's 8101-8104).
    let base = 20000 + std::process::id() % 20000;
    let toml = read(p.path("ferry.toml"));
    let toml = (1..=4).fold(toml, |t, n| t.replace(&format!("810{n}"), &(base + n).to_string()));
    p.write("ferry.toml", toml);
    let _stop = StopSupervisors(p.path("fleet"));
    let v1 = build(&p, "v1");
    let report = p.ferry(["push", "local", &v1, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    let bundle_bytes = fs::metadata(bundle(&p, &v1)).unwrap().len();
    let names = ["web1", "web2", "web3", "web4"];
    let hosts = |report: &Value| -> Vec<Value> { report["hosts"].as_array().unwrap().clone() };
    for h in hosts(&report) {
        assert_eq!((h["shipped"].as_str(), h["result"].as_str()), (Some("bundle"), Some("ok")), "{h}");
        assert_eq!(h["bytes"], bundle_bytes, "{h}");
    }
    let host_dir = |name: &str| p.path(&format!("fleet/{name}/srv/hello"));

    p.write("app/hello.py", read(p.path("app/hello.py")).replace("VERSION = \"v1\"", "VERSION = \"v2\""));
    let fixture_settings = read(p.path("config/staging/settings.json"));
    p.write("config/staging/settings.json", "{\"greeting\": \"staging, now v2\"}\n");
    let v2 = build(&p, "v2");
    let r = p.ferry(["push", "local", &v2, "--json"]).ok();
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["release"], v2.as_str());
    let batches: Vec<Vec<String>> = serde_json::from_value(report["batches"].clone()).unwrap();
    let short = |b: &[String]| -> Vec<String> { b.iter().map(|h| h.rsplit('/').next().unwrap().to_owned()).collect() };
    assert_eq!(
        batches.iter().map(|b| short(b)).collect::<Vec<_>>(),
        [vec!["web1"], vec!["web2"], vec!["web3", "web4"]]
    );
    for h in hosts(&report) {
        assert_eq!(h["shipped"], "delta", "{h}");
        assert_eq!(h["from"], v1.as_str(), "{h}");
        let bytes = h["bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes * 4 < bundle_bytes, "a delta of {bytes} bytes for a bundle of {bundle_bytes}: {h}");
    }
    for name in names {
        let dir = host_dir(name);
        assert_eq!(current(&dir).as_deref(), Some(v2.as_str()), "{name}");
        assert_eq!(read(dir.join("current/config/active/settings.json")), "{\"greeting\": \"staging, now v2\"}\n");
        assert_eq!(fs::read_link(dir.join("current/log")).unwrap(), Path::new("../../shared/log"));
        assert!(dir.join("shared/log").is_dir());
    }
    // The service answers from web3's current release with its own venv and config.
    let web3 = host_dir("web3");
    let answer = sh(&format!(
        "cd {} && current/venv/bin/python -c 'import sys; sys.path.insert(0, \"current/app\"); import hello; \
         print(hello.application({{\"PATH_INFO\": \"/\"}}, lambda *a: None)[0].decode(), end=\"\")'",
        web3.display()
    ));
    assert_eq!(answer, "hello from v2 (staging, now v2)\n");

    // The merged history: each push's deploys in batch order.
    let history: Vec<Value> =
        p.ferry(["history", "local", "--json"]).ok().stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for id in [&v1, &v2] {
        let deploys: BTreeMap<String, String> = history
            .iter()
            .filter(|r| r["action"] == "deploy" && r["to"] == id.as_str() && r["result"] == "ok")
            .map(|r| {
                (
                    r["host"].as_str().unwrap().rsplit('/').next().unwrap().to_owned(),
                    r["time"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(deploys.keys().map(String::as_str).collect::<Vec<_>>(), names, "{history:?}");
        let t = |h: &str| deploys[h].as_str();
        assert!(t("web1") <= t("web2") && t("web2") <= t("web3") && t("web2") <= t("web4"), "{deploys:?}");
    }
    let times: Vec<&str> = history.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "history is in time order: {times:?}");

    let status = p.ferry(["status", "local", "--json"]).ok().json();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(
            (&h["status"]["current"], &h["status"]["previous"]),
            (&Value::from(v2.clone()), &Value::from(v1.clone())),
            "{h}"
        );
        // The program runs the interpreter of the release's own venv,
        // through current (its relative command resolved by the host).
        let name = h["host"].as_str().unwrap().rsplit('/').next().unwrap();
        let pid = h["status"]["programs"][0]["pid"].as_u64().unwrap();
        let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        let python = host_dir(name).join("current/venv/bin/python");
        assert_eq!(
            cmdline.trim_end(),
            format!("{} -m gunicorn --workers 2 hello:application", python.display()),
            "{h}"
        );
        assert_eq!(fs::read_link(format!("/proc/{pid}/exe")).unwrap(), fs::canonicalize(&python).unwrap());
    }
    let report = p.ferry(["rollback", "local", "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["release"], v1.as_str());
    for name in names {
        let dir = host_dir(name);
        assert_eq!(current(&dir).as_deref(), Some(v1.as_str()), "{name}");
        assert_eq!(read(dir.join("current/config/active/settings.json")), fixture_settings);
        host(&dir, &["verify"]).ok();
    }
}

// ---------------------------------------------------------------------------
// Linked paths and the releases around them

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

    // The controller refuses the same in ferry.toml, naming the file.
    let toml = read(p.path("ferry.toml"));
    p.write("ferry.toml", format!("{toml}\n[deploy]\nlinked_dirs = [\"log\", \"log/archive\"]\n"));
    let err = p.ferry(["status", "any"]).fails(2);
    assert!(err.contains("ferry.toml: [deploy] linked paths log and log/archive overlap"), "{err}");
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

/// A host whose disk is full fails its stage: the push reports that host and
/// step, exits 1, and no host flips — the other host keeps the staged
/// release for the next push. Needs root, for a small tmpfs.
#[test]
fn a_push_where_one_host_cannot_stage_exits_1_and_flips_nothing() {
    let p = sample_with_stage();
    let v1 = build(&p, "v1");
    p.ferry(["push", "local"]).ok();
    p.write("media/noise.bin", noise(3 << 20));
    let v2 = build(&p, "v2");

    // web2's /srv is a full disk from now on (its v1 release moves onto it).
    let web2 = p.path("fleet/web2/srv");
    let saved = tempdir();
    sh(&format!("cp -a {}/. {}", web2.display(), saved.path().display()));
    let _disk = Tmpfs::mount(&web2, "1m");
    sh(&format!("cp -a {}/. {}", saved.path().display(), web2.display()));

    let run = p.ferry(["push", "local", "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    let hosts = report["hosts"].as_array().unwrap();
    let web2 = hosts.iter().find(|h| h["host"] == "web2").unwrap();
    assert_eq!((web2["step"].as_str(), web2["result"].as_str()), (Some("stage"), Some("failed")), "{web2}");
    // Refused before a byte is written: v2's files do not fit in what is free.
    assert!(web2["error"].as_str().unwrap().contains(&format!("release {v2} needs ")), "{web2}");
    assert!(web2["error"].as_str().unwrap().contains("free some space"), "{web2}");
    assert!(report["batches"].as_array().unwrap().is_empty(), "no batch started: {report}");
    for host in ["web1", "web2"] {
        let dir = p.path(&format!("fleet/{host}/srv/shop"));
        assert_eq!(current(&dir).as_deref(), Some(v1.as_str()), "{host} did not flip");
    }
    assert!(p.path(&format!("fleet/web1/srv/shop/releases/{v2}")).exists(), "web1 keeps v2 staged");
    assert!(leftovers(&p.path("fleet/web2/srv/shop")).is_empty());
    // The text report names the host and the step.
    let err = p.ferry(["push", "local"]).fails(1);
    assert!(err.contains("web2: stage failed:") && err.contains("free some space"), "{err}");
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
