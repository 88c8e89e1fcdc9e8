//! Every committed fuzz input replayed through the fuzz targets' own code
//! (`fuzz/`): the minimized corpora (`fuzz/corpus/<target>/`) and every
//! input a fuzzer once crashed on (`fuzz/regressions/<target>/`), so what
//! was found stays found.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use fs_err as fs;

type Body = fn(&[u8]);

const TARGETS: &[(&str, Body)] = &[
    ("manifest", ferry_formats::fuzz::manifest),
    ("manifest_entries", ferry_formats::fuzz::manifest_entries),
    ("release_meta", ferry_formats::fuzz::release_meta),
    ("bundle", ferry_formats::fuzz::bundle),
    ("delta", ferry_formats::fuzz::delta),
    ("rsync_delta", ferry_formats::fuzz::rsync_delta),
    ("signature", ferry_formats::fuzz::signature),
    ("journal", ferry_formats::fuzz::journal),
    ("release_signature", ferry_formats::fuzz::release_signature),
    ("agent_request", ferry_switcher::fuzz::agent_request),
    ("ferry_toml", ferry::fuzz::ferry_toml),
];

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
}

/// Runs `body` on every file under `dir`; returns how many, and the files it panicked on.
fn replay(dir: &Path, body: Body) -> (usize, Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return (0, Vec::new()) };
    let mut n = 0;
    let mut failed = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        n += 1;
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    (n, failed)
}

#[test]
fn every_committed_fuzz_input_replays_without_a_crash() {
    let mut failed = Vec::new();
    for (name, body) in TARGETS {
        let (n, bad) = replay(&fuzz_dir().join("corpus").join(name), *body);
        assert!(n > 0, "fuzz/corpus/{name} is empty: scripts/fuzz seeds and grows it");
        failed.extend(bad);
        failed.extend(replay(&fuzz_dir().join("regressions").join(name), *body).1);
    }
    assert!(failed.is_empty(), "fuzz inputs that crash their target:\n{}", failed.join("\n"));
}

#[test]
fn every_fuzz_target_is_replayed() {
    let listed: Vec<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in &listed {
        assert!(TARGETS.iter().any(|(t, _)| t == name), "fuzz target {name} has no replay here");
    }
    assert_eq!(listed.len(), TARGETS.len());
}

/// The seeds reach the readers' accepting paths (a corpus of garbage would
/// fuzz only the first checks): each seed is read whole and, for deltas,
/// decoded.
#[test]
fn the_seed_inputs_are_accepted_by_their_readers() {
    use ferry_formats::{bundle, delta, fuzz, journal, signature::Signature, Manifest, ReleaseMeta};
    let seeds = fuzz::seeds::seeds().unwrap();
    let seed = |t: &str, n: &str| seeds.iter().find(|s| s.0 == t && s.1 == n).map(|s| s.2.clone()).unwrap();
    Manifest::parse(&seed("manifest", "target")).unwrap();
    ReleaseMeta::parse(&seed("release_meta", "target")).unwrap();
    bundle::read(&seed("bundle", "target")[..], None, &mut bundle::Discard).unwrap();
    let parsed = delta::read(&mut &seed("delta", "base-to-target")[..], &fuzz::base_release()).unwrap();
    assert!(parsed.ops.iter().any(|op| matches!(op, delta::Op::Patch { .. })));
    let rsync =
        delta::read_rsync(&mut &seed("rsync_delta", "signature-to-target")[..], &fuzz::base_signature()).unwrap();
    assert!(rsync.ops.iter().any(|op| matches!(op, delta::Op::Rsync { .. })));
    Signature::read(&mut &seed("signature", "base")[..], 1 << 20).unwrap();
    let (records, bad) = journal::parse(&String::from_utf8(seed("journal", "two")).unwrap());
    assert_eq!((records.len(), bad.len()), (2, 0));
    // The committed release signature is verified under the fuzz key.
    let sig = fs::read(fuzz_dir().join("corpus/release_signature/golden-serial-7")).unwrap();
    let key = ferry_formats::signed::TrustedKey::parse(fuzz::SEED_KEY).unwrap();
    ferry_formats::signed::parse(&sig).unwrap().verify(&[key]).unwrap();
    // The committed agent session seed is all requests the agent reads.
    let session = fs::read_to_string(fuzz_dir().join("corpus/agent_request/session")).unwrap();
    for line in session.lines() {
        serde_json::from_str::<ferry_switcher::host::serve::Request>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    // And each goes through its target's checks (the delta targets decode every op).
    for (target, _, bytes) in &seeds {
        let body = TARGETS.iter().find(|(t, _)| t == target).unwrap().1;
        body(bytes);
    }
}
