//! Hostile and corrupt inputs to `ferry verify` and `ferry host stage`
//! (issue 11): each is refused before it changes anything, nothing is made
//! outside the staging directory, and the cost of refusing is bounded.
//!
//! The inputs are crafted in-process with the formats crate's writers; a
//! [`Head`] is put together by hand where the checks of [`Head::new`] would
//! refuse it, since that is what a hostile builder does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_formats::bundle::{self, Head, WriteOptions};
use ferry_formats::release::FORMAT_VERSION;
use ferry_formats::{
    delta, BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta,
};
use fs_err as fs;

use crate::kit::{ferry_cmd, run, sh, tempdir, Run, Tmpfs};

fn dir(p: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Dir { mode: 0o755 } }
}

fn file(p: &str, content: &[u8]) -> Entry {
    let kind = EntryKind::File { mode: 0o644, size: content.len() as u64, hash: BlobHash::of(content) };
    Entry { path: RelPath::new(p).unwrap(), kind }
}

fn link(p: &str, target: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Symlink { target: target.into() } }
}

fn component(kind: ComponentKind, p: &str, envs: &[&str]) -> Component {
    Component { kind, path: RelPath::new(p).unwrap(), environments: envs.iter().map(ToString::to_string).collect() }
}

fn meta(version: &str, components: Vec<Component>) -> ReleaseMeta {
    ReleaseMeta { format: FORMAT_VERSION, service: "shop".into(), version: Some(version.into()), git: None, components }
}

/// A head as a hostile builder makes it: the manifest's own rules hold (it
/// parses), nothing else is checked.
fn raw_head(entries: Vec<Entry>, meta: ReleaseMeta) -> Head {
    let manifest = Manifest::from_entries(entries).unwrap();
    let id = ReleaseId::compute(&manifest.to_text(), &meta.to_canonical());
    Head { id, manifest, meta }
}

/// Writes the bundle of `head` with these file contents to `dir/<id>.tar.zst`.
fn write_bundle(dir: &Path, head: &Head, files: &BTreeMap<&str, Vec<u8>>) -> PathBuf {
    let path = dir.join(format!("{}.tar.zst", head.id));
    let opts = WriteOptions { level: 1, workers: 2 };
    let bytes = bundle::write(Vec::new(), head, &opts, |e| Ok(&files[e.path.as_str()][..])).unwrap();
    fs::write(&path, bytes).unwrap();
    path
}

fn host(dir: &Path, args: &[&str]) -> Run {
    run(ferry_cmd().arg("host").arg("--deploy-to").arg(dir).args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Dot-names under releases/: staging and pruning directories left behind.
fn leftovers(deploy: &Path) -> Vec<String> {
    let Ok(d) = fs::read_dir(deploy.join("releases")) else { return vec![] };
    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect()
}

/// A small release: `app/main.py`, `config/{prod,qa}/settings`.
fn small(version: &str) -> (Head, BTreeMap<&'static str, Vec<u8>>) {
    let files: BTreeMap<&str, Vec<u8>> = [
        ("app/main.py", format!("print('{version}')\n").into_bytes()),
        ("config/prod/settings", b"PROD=1\n".to_vec()),
        ("config/qa/settings", b"QA=1\n".to_vec()),
    ]
    .into();
    let mut entries = vec![dir("app"), dir("config"), dir("config/prod"), dir("config/qa")];
    entries.extend(files.iter().map(|(p, c)| file(p, c)));
    let components =
        vec![component(ComponentKind::Code, "app", &[]), component(ComponentKind::Config, "config", &["prod", "qa"])];
    (Head::new(Manifest::from_entries(entries).unwrap(), meta(version, components)).unwrap(), files)
}

/// What a run of `ferry` cost: CPU seconds (user + system) and peak RSS, as
/// `/usr/bin/time` has them from wait4(2) — not wall time, which a loaded
/// machine stretches.
#[derive(Debug, Clone, Copy)]
struct Cost {
    cpu: f64,
    max_rss_kib: u64,
}

fn measured(args: &[&str], deploy: Option<&Path>) -> (Run, Cost) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%U %S %M").arg("-o").arg(report.path()).arg(crate::kit::ferry_bin());
    cmd.env_remove("FERRY_STORE").env_remove("FERRY_CONFIG");
    if let Some(d) = deploy {
        cmd.arg("host").arg("--deploy-to").arg(d);
    }
    let r = run(cmd.args(args));
    let text = fs::read_to_string(report.path()).unwrap();
    let f: Vec<&str> = text.lines().last().unwrap().split_whitespace().collect();
    let cost =
        Cost { cpu: f[0].parse::<f64>().unwrap() + f[1].parse::<f64>().unwrap(), max_rss_kib: f[2].parse().unwrap() };
    (r, cost)
}

/// The bounds: under 1 s of CPU and 64 MiB more memory than `ferry`
/// needs to verify a small bundle.
#[track_caller]
fn assert_cheap(what: &str, cost: Cost, baseline: Cost) {
    let extra = cost.max_rss_kib.saturating_sub(baseline.max_rss_kib);
    eprintln!("{what}: {:.2}s CPU, {} KiB peak ({} KiB over the baseline)", cost.cpu, cost.max_rss_kib, extra);
    assert!(cost.cpu < 1.0, "{what}: {:.2}s of CPU", cost.cpu);
    assert!(extra < 64 << 10, "{what}: {extra} KiB of memory over the baseline");
}

fn baseline() -> Cost {
    let files = tempdir();
    let (head, contents) = small("v1");
    let path = write_bundle(files.path(), &head, &contents);
    let (r, cost) = measured(&["verify", s(&path)], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    cost
}

// ---------------------------------------------------------------------------
// Hole 1: a component reached through a symlink

#[test]
fn a_config_component_that_is_a_link_outside_is_refused_by_verify_and_stage() {
    let t = tempdir();
    // What the link points at: a directory outside the deploy directory,
    // named like an interpreter so the venv rule lets the link out.
    let outside = t.path().join("usr/lib/python3");
    fs::create_dir_all(&outside).unwrap();
    let target = s(&outside).to_owned();
    let entries =
        vec![dir("app"), file("app/main.py", b"x\n"), dir("venv"), dir("venv/bin"), link("venv/bin/python-x", &target)];
    let components = vec![
        component(ComponentKind::Code, "app", &[]),
        component(ComponentKind::Venv, "venv", &[]),
        component(ComponentKind::Config, "venv/bin/python-x", &["prod"]),
    ];
    let head = raw_head(entries, meta("v1", components));
    let files: BTreeMap<&str, Vec<u8>> = [("app/main.py", b"x\n".to_vec())].into();
    let bundle = write_bundle(t.path(), &head, &files);

    let err = run(ferry_cmd().arg("verify").arg(&bundle)).fails(2);
    assert!(err.contains("component venv/bin/python-x (config) is a symlink; it must be a directory"), "{err}");
    let deploy = t.path().join("srv/shop");
    let err = host(&deploy, &["stage", s(&bundle), "--env", "prod"]).fails(2);
    assert!(err.contains("component venv/bin/python-x (config) is a symlink"), "{err}");
    assert!(fs::read_dir(&outside).unwrap().next().is_none(), "something was made in {}", outside.display());
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));

    // A component the manifest does not have at all.
    let (good, files) = small("v1");
    let mut m = good.meta.clone();
    m.components.push(component(ComponentKind::Media, "media", &[]));
    let head = raw_head(good.manifest.entries().to_vec(), m);
    let bundle = write_bundle(t.path(), &head, &files);
    let err = run(ferry_cmd().arg("verify").arg(&bundle)).fails(2);
    assert!(err.contains("component media (media) is not in the manifest"), "{err}");
}

// ---------------------------------------------------------------------------
// Hole 2: a delta's reuse trusts the size; activate takes an unverified release

#[test]
fn a_delta_that_gives_a_reused_content_another_size_is_refused() {
    let t = tempdir();
    let (v1, files) = small("v1");
    let b1 = write_bundle(t.path(), &v1, &files);
    let deploy = t.path().join("srv/shop");
    host(&deploy, &["stage", s(&b1), "--env", "prod"]).ok();
    host(&deploy, &["activate", &v1.id.to_hex(), "--env", "prod"]).ok();

    // v2: the same files, but app/main.py's size is a lie (its hash is v1's).
    let entries: Vec<Entry> = v1
        .manifest
        .entries()
        .iter()
        .cloned()
        .map(|mut e| {
            if let EntryKind::File { size, .. } = &mut e.kind {
                if e.path.as_str() == "app/main.py" {
                    *size += 1000;
                }
            }
            e
        })
        .collect();
    let mut m = v1.meta.clone();
    m.version = Some("v2".into());
    let v2 = raw_head(entries, m);
    let head = delta::encode_head(&v1, &v2, 3).unwrap();
    let path = t.path().join("v2.delta");
    let mut out = Vec::new();
    delta::write(&mut out, delta::Ends { base: v1.id, target: v2.id }, &head, &[]).unwrap();
    fs::write(&path, out).unwrap();

    let err = host(&deploy, &["stage", s(&path), "--env", "prod"]).fails(2);
    assert!(
        err.contains(&format!(
            "the target manifest's entry \"app/main.py\": it gives content {} 1012 bytes, but the base has that content with 12 bytes",
            BlobHash::of(b"print('v1')\n")
        )),
        "{err}"
    );
    assert!(!deploy.join("releases").join(v2.id.to_hex()).exists(), "v2 was staged");
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
}

#[test]
fn a_release_without_a_record_of_its_verified_stage_is_checked_at_its_flip_and_refused_if_it_does_not_match() {
    let t = tempdir();
    let (v1, files) = small("v1");
    let b1 = write_bundle(t.path(), &v1, &files);
    let deploy = t.path().join("srv/shop");
    host(&deploy, &["stage", s(&b1), "--env", "prod"]).ok();
    let id = v1.id.to_hex();
    let record = deploy.join("releases").join(&id).join(".ferry/verified.json");
    assert!(record.exists(), "the stage records that it verified the release");
    // As a release staged by an older ferry, or by hand, has none: it is
    // checked now, and one whose files do not match is refused.
    fs::remove_file(&record).unwrap();
    let main = deploy.join("releases").join(&id).join("app/main.py");
    let mode = fs::metadata(&main).unwrap().permissions();
    fs::set_permissions(&main, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&main, "print('changed by hand')\n").unwrap();
    let err = host(&deploy, &["activate", &id, "--env", "prod"]).fails(2);
    assert!(err.contains("it has no record that it was verified as staged"), "{err}");
    assert!(err.contains("does not match its manifest") && err.contains("app/main.py"), "{err}");
    assert!(!deploy.join("current").exists(), "current was made");
    fs::write(&main, "print('v1')\n").unwrap();
    fs::set_permissions(&main, mode).unwrap();
    // A record of another release is no record of this one.
    fs::write(&record, format!("{{\"id\":\"{}\",\"files\":3,\"bytes\":31}}", "ab".repeat(32))).unwrap();
    let err = host(&deploy, &["activate", &id, "--env", "prod"]).fails(2);
    assert!(err.contains("its record of a verified stage"), "{err}");
    fs::remove_file(&record).unwrap();
    // Intact, it is checked on the way and flipped to, and recorded.
    host(&deploy, &["activate", &id, "--env", "prod"]).ok();
    assert!(record.exists(), "the check on the way is recorded");
}

// ---------------------------------------------------------------------------
// Holes 3 and 7: a corrupt input naming a release the host has

/// The 76 bytes of a delta's fixed header, and nothing else.
fn header_only_delta(base: &ReleaseId, target: &ReleaseId) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&delta::MAGIC);
    out.extend_from_slice(&delta::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out
}

#[test]
fn a_corrupt_input_naming_a_kept_release_removes_nothing_and_says_what_it_did_not_read() {
    let t = tempdir();
    let deploy = t.path().join("srv/shop");
    let mut ids = Vec::new();
    let mut bundles = Vec::new();
    for v in ["v0", "v1", "v2"] {
        let (head, files) = small(v);
        let b = write_bundle(t.path(), &head, &files);
        host(&deploy, &["stage", s(&b), "--env", "prod"]).ok();
        host(&deploy, &["activate", &head.id.to_hex(), "--env", "prod"]).ok();
        ids.push(head.id);
        bundles.push(b);
    }
    // current v2, previous v1, and v0 kept.
    for (name, target) in [("previous", ids[1]), ("older", ids[0])] {
        let corrupt = t.path().join(format!("{name}.delta"));
        fs::write(&corrupt, header_only_delta(&ids[2], &target)).unwrap();
        assert_eq!(fs::metadata(&corrupt).unwrap().len(), 76);
        // Without --env: other options than it was staged with.
        let err = host(&deploy, &["stage", s(&corrupt)]).fails(2);
        assert!(err.contains("cannot stage into"), "{name}: {err}");
        assert!(deploy.join("releases").join(target.to_hex()).join(".ferry/manifest").exists(), "{name}: removed");
        host(&deploy, &["verify", &target.to_hex()]).ok();
        assert!(leftovers(&deploy).is_empty(), "{name}: {:?}", leftovers(&deploy));
    }
    let err = host(&deploy, &["stage", s(&t.path().join("previous.delta"))]).fails(2);
    assert!(
        err.contains("it is the previous release (what a rollback goes back to), staged with other options"),
        "{err}"
    );
    // A bundle cut just after its head (the metadata frame).
    let whole = fs::read(&bundles[0]).unwrap();
    let head_end = zstd::zstd_safe::find_frame_compressed_size(&whole).unwrap();
    let cut = t.path().join("cut.tar.zst");
    fs::write(&cut, &whole[..head_end + 10]).unwrap();
    host(&deploy, &["stage", s(&cut)]).fails(2);
    assert!(deploy.join("releases").join(ids[0].to_hex()).join(".ferry/manifest").exists(), "v0 removed");
    host(&deploy, &["rollback"]).ok();
    assert_eq!(fs::read_link(deploy.join("current")).unwrap(), Path::new(&format!("releases/{}", ids[1])));

    // Hole 7: with the options it was staged with, the input is not read: said so.
    let corrupt = t.path().join("older.delta");
    let r = host(&deploy, &["stage", s(&corrupt), "--env", "prod"]).ok();
    assert!(r.stderr.contains("the input was not read past its head"), "{}", r.stderr);
    let r = host(&deploy, &["stage", s(&corrupt), "--env", "prod", "--json"]).ok();
    let json = r.json();
    assert_eq!((json["already"].as_bool(), json["input_unread"].as_bool()), (Some(true), Some(true)), "{json}");
}

// ---------------------------------------------------------------------------
// Hole 6: a refused stage leaves no staging directory

#[test]
fn a_path_too_long_for_the_file_system_leaves_no_staging_directory() {
    let t = tempdir();
    // 16 levels of 250 bytes: a valid release path of 4,015 bytes, past
    // PATH_MAX once under <deploy_to>/releases/.staging-<id>/.
    let mut entries = vec![dir("app"), file("app/main.py", b"x\n")];
    let mut p = String::new();
    for i in 0..16 {
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str(&format!("{i:x}").repeat(250)[..250]);
        entries.push(dir(&p));
    }
    let head = Head::new(
        Manifest::from_entries(entries).unwrap(),
        meta("v1", vec![component(ComponentKind::Code, "app", &[])]),
    )
    .unwrap();
    let bundle = write_bundle(t.path(), &head, &[("app/main.py", b"x\n".to_vec())].into());
    let deploy = t.path().join("srv/shop");
    let err = host(&deploy, &["stage", s(&bundle)]).fails(2);
    assert!(err.contains("File name too long"), "{err}");
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
}

// ---------------------------------------------------------------------------
// Hole 8: a FIFO as the input

#[test]
fn a_fifo_given_as_the_input_is_refused_without_blocking_or_locking() {
    let t = tempdir();
    let fifo = t.path().join("input.tar.zst");
    sh(&format!("mkfifo {}", fifo.display()));
    let deploy = t.path().join("srv/shop");
    fs::create_dir_all(&deploy).unwrap();
    for args in [vec!["verify".to_owned(), s(&fifo).to_owned()], {
        let mut a: Vec<String> = ["host", "--deploy-to", s(&deploy), "stage"].map(String::from).to_vec();
        a.push(s(&fifo).to_owned());
        a
    }] {
        let mut child = ferry_cmd().args(&args).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("ferry {args:?} still blocks on a FIFO after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("{} is a FIFO: give a bundle or delta file", fifo.display())), "{err}");
    }
    // The lock was never taken: no holder recorded.
    let lock = fs::read_to_string(deploy.join(".ferry/lock")).unwrap_or_default();
    assert!(lock.is_empty(), "the lock names {lock:?}");
}

// ---------------------------------------------------------------------------
// Hole 5: what a small input expands to

#[test]
fn a_release_larger_than_the_free_space_is_refused_before_anything_is_written() {
    let t = tempdir();
    // 64 MiB of zeros: a bundle of a few KiB.
    let big = vec![0u8; 64 << 20];
    let entries = vec![dir("app"), file("app/main.py", b"x\n"), file("app/zeros", &big)];
    let head = Head::new(
        Manifest::from_entries(entries).unwrap(),
        meta("v1", vec![component(ComponentKind::Code, "app", &[])]),
    )
    .unwrap();
    let bundle = write_bundle(t.path(), &head, &[("app/main.py", b"x\n".to_vec()), ("app/zeros", big)].into());
    let head_id = head.id;
    assert!(fs::metadata(&bundle).unwrap().len() < 64 << 10);
    let disk = t.path().join("disk");
    fs::create_dir(&disk).unwrap();
    let _disk = Tmpfs::mount(&disk, "16m");
    let deploy = disk.join("srv/shop");
    let base = baseline();
    let (r, cost) = measured(&["stage", s(&bundle)], Some(&deploy));
    let err = r.fails(2);
    // 64 MiB, a block for app/main.py, one for app/, and the 64 KiB margin.
    let need = (64 << 20) + 2 * 4096 + (64 << 10);
    assert!(err.contains(&format!("release {head_id} needs {need} bytes (64.1 MiB) on the file system of")), "{err}");
    assert!(err.contains("free some space"), "{err}");
    assert_cheap("stage of 64 MiB onto 16 MiB", cost, base);
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
    let used = sh(&format!("du -sk {} | cut -f1", disk.display()));
    assert!(used.trim().parse::<u64>().unwrap() < 256, "{} KiB written", used.trim());
}

/// A bundle of a head of `n` directories and not one tar entry.
fn head_only(out: &Path, n: usize) -> PathBuf {
    let mut entries = vec![dir("d")];
    for i in 0..n {
        entries.push(dir(&format!("d/{i:06}")));
    }
    let head = raw_head(entries, meta("v1", vec![]));
    let whole = write_bundle(out, &head, &BTreeMap::new());
    let bytes = fs::read(&whole).unwrap();
    let meta_frame = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap();
    let cut = out.join(format!("head-only-{n}.tar.zst"));
    fs::write(&cut, &bytes[..meta_frame]).unwrap();
    eprintln!("a head of {n} directories: {meta_frame} bytes");
    cut
}

#[test]
fn a_bundle_cut_after_a_head_of_many_directories_makes_none() {
    let t = tempdir();
    let base = baseline();
    let deploy = t.path().join("srv/shop");
    // 500,000: more entries than a manifest may have, refused before parsing.
    let cut = head_only(t.path(), 500_000);
    let (r, cost) = measured(&["stage", s(&cut)], Some(&deploy));
    let err = r.fails(2);
    assert!(err.contains("500001 entries; at most 250000 are accepted"), "{err}");
    assert_cheap("stage of a head of 500,000 directories", cost, base);
    let (r, cost) = measured(&["verify", s(&cut)], None);
    assert!(r.fails(2).contains("500001 entries; at most 250000 are accepted"));
    assert_cheap("verify of a head of 500,000 directories", cost, base);

    // Just under the cap: read, and refused where the entries should begin,
    // with no directory made.
    let cut = head_only(t.path(), 240_000);
    let (r, cost) = measured(&["stage", s(&cut)], Some(&deploy));
    let err = r.fails(2);
    assert!(err.contains("the bundle is corrupt or truncated") || err.contains("ends early"), "{err}");
    assert_cheap("stage of a head of 240,000 directories", cost, base);
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
    let (r, cost) = measured(&["verify", s(&cut)], None);
    r.fails(2);
    assert_cheap("verify of a head of 240,000 directories", cost, base);
    let _ = std::io::stderr().flush();
}

#[test]
fn a_delta_head_that_decodes_to_hundreds_of_mib_is_refused_undecoded() {
    let t = tempdir();
    let (v1, files) = small("v1");
    let b1 = write_bundle(t.path(), &v1, &files);
    let deploy = t.path().join("srv/shop");
    host(&deploy, &["stage", s(&b1), "--env", "prod"]).ok();
    // A head frame of 200 MiB of zeros, which states its size: a few KiB.
    let len: u64 = 200 << 20;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_contentsize(true).unwrap();
    enc.set_pledged_src_size(Some(len)).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..(len >> 20) {
        enc.write_all(&chunk).unwrap();
    }
    let frame = enc.finish().unwrap();
    let path = t.path().join("bomb.delta");
    let mut out = Vec::new();
    let target = ReleaseId::from_bytes([7; 32]);
    delta::write(&mut out, delta::Ends { base: v1.id, target }, &frame, &[]).unwrap();
    fs::write(&path, &out).unwrap();
    eprintln!("the delta: {} bytes", out.len());

    let base = baseline();
    let (r, cost) = measured(&["stage", s(&path), "--env", "prod"], Some(&deploy));
    let err = r.fails(2);
    assert!(err.contains(&format!("the head: it decodes to {len} bytes; a head is at most")), "{err}");
    assert_cheap("stage of a delta whose head decodes to 200 MiB", cost, base);
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
}

// ---------------------------------------------------------------------------
// Hole 4: symlink checking that is super-linear

#[test]
fn links_walked_again_and_again_are_refused_within_a_cpu_budget() {
    // A directory 3,764 bytes deep holding a link to itself, a link to it at
    // the top, and 3,000 links through both 2,047 times each: each walk lands
    // on the long path at every step (the 137 KB bundle, scaled).
    let mut entries = vec![dir("app"), file("app/main.py", b"x\n")];
    let mut deep = String::new();
    for i in 0..15u8 {
        if !deep.is_empty() {
            deep.push('/');
        }
        deep.push_str(&char::from(b'b' + i).to_string().repeat(250));
        entries.push(dir(&deep));
    }
    entries.push(link(&format!("{deep}/L"), "."));
    entries.push(link("L", &deep));
    let through = vec!["L"; 2047].join("/");
    for i in 0..3000 {
        entries.push(link(&format!("x{i:05}"), &through));
    }
    let t = tempdir();
    let head = raw_head(entries, meta("v1", vec![component(ComponentKind::Code, "app", &[])]));
    let bundle = write_bundle(t.path(), &head, &[("app/main.py", b"x\n".to_vec())].into());
    eprintln!("the bundle: {} bytes", fs::metadata(&bundle).unwrap().len());
    let base = baseline();
    let (r, cost) = measured(&["verify", s(&bundle)], None);
    let err = r.fails(2);
    assert!(err.contains("resolving the manifest's symlinks takes more work than"), "{err}");
    assert_cheap("verify of 3,000 links through long paths", cost, base);
    let deploy = t.path().join("srv/shop");
    let (r, cost) = measured(&["stage", s(&bundle)], Some(&deploy));
    let err = r.fails(2);
    assert!(err.contains("resolving the manifest's symlinks takes more work than"), "{err}");
    assert_cheap("stage of 3,000 links through long paths", cost, base);
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
}

/// A bundle of only a head of directories with long names, `n` of them.
fn head_only_long(out: &Path, n: usize) -> PathBuf {
    let mut entries = vec![dir("d")];
    for i in 0..n {
        entries.push(dir(&format!("d/{i:06}-{}", "x".repeat(180))));
    }
    let head = raw_head(entries, meta("v1", vec![]));
    let whole = write_bundle(out, &head, &BTreeMap::new());
    let bytes = fs::read(&whole).unwrap();
    let meta_frame = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap();
    let cut = out.join(format!("long-{n}.tar.zst"));
    fs::write(&cut, &bytes[..meta_frame]).unwrap();
    eprintln!(
        "a head of {n} long directory names: {meta_frame} bytes, a manifest of {}",
        head.manifest.to_text().len()
    );
    cut
}

#[test]
fn a_head_of_long_paths_is_bounded_by_the_manifest_size_cap() {
    let t = tempdir();
    let base = baseline();
    let deploy = t.path().join("srv/shop");
    // 249,000 paths of 194 bytes: 47 MiB of manifest from 300 KB, refused
    // from its tar header.
    let cut = head_only_long(t.path(), 249_000);
    let (r, cost) = measured(&["stage", s(&cut)], Some(&deploy));
    let err = r.fails(2);
    assert!(err.contains(".ferry/manifest: 48804025 bytes; at most 16777216 are accepted"), "{err}");
    assert_cheap("stage of a head of 47 MiB", cost, base);
    // 85,000 of them: just under the cap, read, and refused where the
    // entries should begin.
    let cut = head_only_long(t.path(), 85_000);
    for args in [vec!["verify", s(&cut)], vec!["host", "--deploy-to", s(&deploy), "stage", s(&cut)]] {
        let (r, cost) = measured(&args, None);
        let err = r.fails(2);
        assert!(err.contains("the bundle is corrupt or truncated"), "{err}");
        assert_cheap(&format!("{} of a head of 16 MiB", args[args.len() - 2]), cost, base);
    }
    assert!(leftovers(&deploy).is_empty(), "{:?}", leftovers(&deploy));
}
