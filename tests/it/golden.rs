//! The golden bundles of each format version (fixtures/golden), never regenerated.

use std::path::PathBuf;

use crate::kit::{build_at, copy_elsewhere, ferry_cmd, run, sh, tempdir};

const V1_ID: &str = "796f5366d8c78b411a80f784ffeb8cad33e0d4c66efe240bd461120fe25a7be5";
const V2_ID: &str = "85bb8a1cdcd5c65a808d62e2edf108e832713bef480d72039c4a1b3b57b4cd69";

fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden").join(rel)
}

#[test]
fn todays_build_of_the_golden_tree_is_byte_identical_to_v2() {
    // Copy the tree so a local store or cache never lands in fixtures/.
    let tree = copy_elsewhere(&golden("tree"));
    let store = tempdir();
    let built = build_at(tree.path(), store.path(), &["--version", "1.0.0"]);
    assert_eq!(built["id"], V2_ID, "the release id of the golden tree changed: the format changed");
    sh(&format!("cmp {} {}", built["path"].as_str().unwrap(), golden(&format!("v2/{V2_ID}.tar.zst")).display()));
}

#[test]
fn v1_and_v2_golden_bundles_verify() {
    // Format 1 is still read: a release built before format 2 verifies as it did.
    for (v, id) in [("v1", V1_ID), ("v2", V2_ID)] {
        let r = run(ferry_cmd().arg("verify").arg(golden(&format!("{v}/{id}.tar.zst")))).ok();
        assert_eq!(r.stdout, format!("ok: release {id} (golden): 8 files, 117 B verified\n"), "{v}");
    }
}

#[test]
fn v1_and_v2_hold_the_same_files_but_for_the_format() {
    let list = |v: &str, id: &str| {
        sh(&format!("tar --zstd -xOf {} .ferry/release.json", golden(&format!("{v}/{id}.tar.zst")).display()))
    };
    assert_eq!(list("v1", V1_ID).replace("\"format\":1", "\"format\":2"), list("v2", V2_ID));
    let files = |v: &str, id: &str| sh(&format!("tar --zstd -tvf {}", golden(&format!("{v}/{id}.tar.zst")).display()));
    assert_eq!(files("v1", V1_ID), files("v2", V2_ID));
}

#[test]
fn damaged_v1_and_v2_bundles_are_refused_with_the_reason() {
    let cases = [
        ("v1", "flipped-content", "entry \"app/main.py\" (#3 of the manifest): content hashes to 68b122d812f1"),
        ("v1", "truncated", "the bundle is corrupt or truncated"),
        ("v1", "trailing-junk", "after the files frame: trailing data after the checksum trailer"),
        ("v1", "unused-bit", "after the files frame: the files frame's bytes hash to 3718ae8ef1e8f0e7"),
        // Without zstd's checksum, blake3 alone finds each of them.
        ("v2", "flipped-content", "entry \"app/main.py\" (#3 of the manifest): content hashes to 68b122d812f1"),
        ("v2", "truncated", "the bundle is corrupt or truncated"),
        ("v2", "trailing-junk", "after the files frame: trailing data after the checksum trailer"),
        ("v2", "unused-bit", "after the files frame: the files frame's bytes hash to bbc70ff1e37abe69"),
    ];
    for (v, name, want) in cases {
        let err = run(ferry_cmd().arg("verify").arg(golden(&format!("{v}/{name}.tar.zst")))).fails(2);
        assert!(err.contains(want), "{v}/{name}: {err}");
    }
}
