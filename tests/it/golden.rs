//! The golden bundles of each format version (fixtures/golden), never regenerated.

use std::path::PathBuf;

use crate::kit::{build_at, copy_elsewhere, ferry_cmd, run, sh, tempdir};

const V1_ID: &str = "796f5366d8c78b411a80f784ffeb8cad33e0d4c66efe240bd461120fe25a7be5";
const V2_ID: &str = "85bb8a1cdcd5c65a808d62e2edf108e832713bef480d72039c4a1b3b57b4cd69";
const V3_ID: &str = "8ad9b8919c76089744bea1d5421d74c969fe0f65926ecef69264fb755d470aed";

fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden").join(rel)
}

#[test]
fn todays_build_of_the_golden_tree_is_byte_identical_to_v3() {
    // Copy the tree so a local store or cache never lands in fixtures/.
    let tree = copy_elsewhere(&golden("tree"));
    let store = tempdir();
    let built = build_at(tree.path(), store.path(), &["--version", "1.0.0"]);
    assert_eq!(built["id"], V3_ID, "the release id of the golden tree changed: the format changed");
    sh(&format!("cmp {} {}", built["path"].as_str().unwrap(), golden(&format!("v3/{V3_ID}.tar.zst")).display()));
}

#[test]
fn v1_v2_and_v3_golden_bundles_verify() {
    // Formats 1 and 2 are still read: a release built before format 3 verifies as it did.
    for (v, id) in [("v1", V1_ID), ("v2", V2_ID), ("v3", V3_ID)] {
        let r = run(ferry_cmd().arg("verify").arg(golden(&format!("{v}/{id}.tar.zst")))).ok();
        assert_eq!(r.stdout, format!("ok: release {id} (golden): 8 files, 117 B verified\n"), "{v}");
    }
}

#[test]
fn v1_v2_and_v3_hold_the_same_files_but_for_the_format() {
    let list = |v: &str, id: &str| {
        sh(&format!("tar --zstd -xOf {} .ferry/release.json", golden(&format!("{v}/{id}.tar.zst")).display()))
    };
    assert_eq!(list("v1", V1_ID).replace("\"format\":1", "\"format\":2"), list("v2", V2_ID));
    assert_eq!(list("v2", V2_ID).replace("\"format\":2", "\"format\":3"), list("v3", V3_ID));
    // GNU tar (through zstd) passes over format 3's padding frame.
    let files = |v: &str, id: &str| sh(&format!("tar --zstd -tvf {}", golden(&format!("{v}/{id}.tar.zst")).display()));
    assert_eq!(files("v1", V1_ID), files("v2", V2_ID));
    assert_eq!(files("v2", V2_ID), files("v3", V3_ID));
    // Format 3's files frame is format 2's, byte for byte, 4 KiB into the file.
    let bytes = |v: &str, id: &str| fs_err::read(golden(&format!("{v}/{id}.tar.zst"))).unwrap();
    let (v2, v3) = (bytes("v2", V2_ID), bytes("v3", V3_ID));
    let v2_files = &v2[v2.len() - 80 - (v3.len() - 80 - 4096)..v2.len() - 80];
    assert_eq!(v2_files, &v3[4096..v3.len() - 80]);
}

#[test]
fn damaged_v1_v2_and_v3_bundles_are_refused_with_the_reason() {
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
        ("v3", "flipped-content", "entry \"app/main.py\" (#3 of the manifest): content hashes to 68b122d812f1"),
        ("v3", "truncated", "the bundle is corrupt or truncated after entry \".ferry/release.json\" (tar entry #3): the padding frame after the metadata frame is cut short"),
        ("v3", "trailing-junk", "after the files frame: trailing data after the checksum trailer"),
        ("v3", "unused-bit", "after the files frame: the files frame's bytes hash to bbc70ff1e37abe69"),
        ("v3", "bad-padding", "format 3 has a padding frame of 3351 bytes (a skippable-frame header and zeros) after the metadata frame of 745 bytes; these bytes are not it"),
    ];
    for (v, name, want) in cases {
        let err = run(ferry_cmd().arg("verify").arg(golden(&format!("{v}/{name}.tar.zst")))).fails(2);
        assert!(err.contains(want), "{v}/{name}: {err}");
    }
}
