//! The golden bundles of each format version (fixtures/golden), never regenerated.

use std::path::PathBuf;

use crate::kit::{build_at, copy_elsewhere, ferry_cmd, run, sh, tempdir};

const V1_ID: &str = "796f5366d8c78b411a80f784ffeb8cad33e0d4c66efe240bd461120fe25a7be5";

fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden").join(rel)
}

#[test]
fn todays_build_of_the_golden_tree_is_byte_identical_to_v1() {
    // Copy the tree so a local store or cache never lands in fixtures/.
    let tree = copy_elsewhere(&golden("tree"));
    let store = tempdir();
    let built = build_at(tree.path(), store.path(), &["--version", "1.0.0"]);
    assert_eq!(built["id"], V1_ID, "the release id of the golden tree changed: the format changed");
    sh(&format!("cmp {} {}", built["path"].as_str().unwrap(), golden(&format!("v1/{V1_ID}.tar.zst")).display()));
}

#[test]
fn v1_golden_bundle_verifies() {
    let r = run(ferry_cmd().arg("verify").arg(golden(&format!("v1/{V1_ID}.tar.zst")))).ok();
    assert_eq!(r.stdout, format!("ok: release {V1_ID} (golden): 8 files, 117 B verified\n"));
}

#[test]
fn damaged_v1_bundles_are_refused_with_the_reason() {
    let cases = [
        ("flipped-content", "entry \"app/main.py\" (#3 of the manifest): content hashes to 68b122d812f1"),
        ("truncated", "the bundle is corrupt or truncated"),
        ("trailing-junk", "after the files frame: trailing data after the checksum trailer"),
        ("unused-bit", "after the files frame: the files frame's bytes hash to 3718ae8ef1e8f0e7"),
    ];
    for (name, want) in cases {
        let err = run(ferry_cmd().arg("verify").arg(golden(&format!("v1/{name}.tar.zst")))).fails(2);
        assert!(err.contains(want), "{name}: {err}");
    }
}
