//! The delta format: a round trip of every kind of change, and every refusal
//! of `read` and `Op::decode`, with deltas made by `write` or byte by byte
//! ([`raw`], which follows the layout table of the module docs).

use std::collections::{BTreeMap, HashMap};

use ferry_formats::bundle::Head;
use ferry_formats::delta::{self, DeltaError, Ends, Op, Parsed, FORMAT_VERSION, MAGIC};
use ferry_formats::{BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta};
use proptest::prelude::*;

const LEVEL: i32 = 3;

/// File contents by path.
type Files = BTreeMap<String, Vec<u8>>;

fn dir(p: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Dir { mode: 0o755 } }
}

fn file_of_size(p: &str, size: u64, hash: BlobHash) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::File { mode: 0o644, size, hash } }
}

fn file(p: &str, content: &[u8]) -> Entry {
    file_of_size(p, content.len() as u64, BlobHash::of(content))
}

/// A release of the component `app`: the directory, `files` and `extra` entries.
fn release(version: &str, files: &Files, extra: Vec<Entry>) -> Head {
    let mut entries: Vec<Entry> = files.iter().map(|(p, c)| file(p, c)).chain(extra).collect();
    entries.push(dir("app"));
    let app = Component { kind: ComponentKind::Code, path: RelPath::new("app").unwrap(), environments: vec![] };
    let format = ferry_formats::release::FORMAT_VERSION;
    let meta =
        ReleaseMeta { format, service: "shop".into(), version: Some(version.into()), git: None, components: vec![app] };
    Head::new(Manifest::from_entries(entries).unwrap(), meta).unwrap()
}

fn files(list: &[(&str, &[u8])]) -> Files {
    list.iter().map(|(p, c)| (p.to_string(), c.to_vec())).collect()
}

/// Pseudo-random bytes (xorshift).
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// One op per `needed` entry, in its order: a patch against the base file at the same path, else a literal.
fn ops_for(base: &Head, base_files: &Files, target: &Head, target_files: &Files) -> Vec<Op> {
    let is_file = |e: &Entry| matches!(e.kind, EntryKind::File { .. });
    let ops = delta::needed(&base.manifest, &target.manifest).into_iter().map(|e| {
        let content = &target_files[e.path.as_str()];
        match base.manifest.entries().iter().position(|b| b.path == e.path && is_file(b)) {
            Some(reference) => {
                let prefix = &base_files[e.path.as_str()];
                Op::Patch { reference, data: delta::compress(content, prefix, LEVEL).unwrap() }
            }
            None => Op::Literal { data: delta::compress(content, &[], LEVEL).unwrap() },
        }
    });
    ops.collect()
}

fn ends(base: &Head, target: &Head) -> Ends {
    Ends { base: base.id, target: target.id }
}

/// A delta with these ends, `target`'s head encoded against `base`'s, and `ops`.
fn write(ends: Ends, base: &Head, target: &Head, ops: &[Op]) -> Vec<u8> {
    let head = delta::encode_head(base, target, LEVEL).unwrap();
    let mut out = Vec::new();
    let n = delta::write(&mut out, ends, &head, ops).unwrap();
    assert_eq!(n, out.len() as u64, "write returns the delta's length");
    out
}

/// Reads `bytes` against `base` and decodes every op: the target's files by path.
fn apply(bytes: &[u8], base: &Head, base_files: &Files) -> Result<(Parsed, Files), DeltaError> {
    let parsed = delta::read(&mut &bytes[..], base)?;
    let mut by_hash = HashMap::new();
    for e in base.manifest.entries() {
        if let EntryKind::File { hash, .. } = e.kind {
            by_hash.insert(hash, base_files[e.path.as_str()].clone());
        }
    }
    let needed = delta::needed(&base.manifest, &parsed.head.manifest);
    assert_eq!(needed.len(), parsed.ops.len(), "read returns one op per needed entry");
    for (entry, op) in needed.into_iter().zip(&parsed.ops) {
        let reference = match op {
            Op::Patch { reference, .. } => Some(&base_files[base.manifest.entries()[*reference].path.as_str()][..]),
            Op::Literal { .. } => None,
            Op::Rsync { .. } => unreachable!("release deltas carry no rsync ops"),
        };
        let content = op.decode(entry, reference)?;
        let EntryKind::File { hash, .. } = entry.kind else { panic!("needed returned a non-file") };
        assert!(by_hash.insert(hash, content).is_none(), "two ops for one content");
    }
    let files = parsed.head.manifest.entries().iter().filter_map(|e| match e.kind {
        EntryKind::File { hash, .. } => Some((e.path.to_string(), by_hash[&hash].clone())),
        _ => None,
    });
    let files = files.collect();
    Ok((parsed, files))
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A delta byte by byte: magic, version, ends, `rest`, and the blake3 of it all.
fn raw(magic: &[u8; 8], version: u32, ends: Ends, rest: &[&[u8]]) -> Vec<u8> {
    let mut out = [&magic[..], &version.to_le_bytes(), ends.base.as_bytes(), ends.target.as_bytes()].concat();
    out.extend(rest.concat());
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// `bytes` with its trailing hash computed anew, after an edit.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() - 32);
    let hash = blake3::hash(&bytes);
    bytes.extend_from_slice(hash.as_bytes());
    bytes
}

/// Base: an unchanged file, one to move, one to change, one to delete.
/// Target: the unchanged file, the moved one, the changed one (patch), a new
/// file (literal) and a copy of it at a second path, an empty file (literal), a symlink and a directory.
fn fixture() -> (Head, Files, Head, Files) {
    let old = noise(20_000, 7);
    let mut new = old.clone();
    new[10_000..10_004].copy_from_slice(b"EDIT");
    let base_files = files(&[
        ("app/same.txt", b"unchanged\n"),
        ("app/old_name.py", b"print('moved')\n"),
        ("app/changed.bin", &old),
        ("app/gone.txt", b"deleted\n"),
    ]);
    let target_files = files(&[
        ("app/same.txt", b"unchanged\n"),
        ("app/new_name.py", b"print('moved')\n"),
        ("app/changed.bin", &new),
        ("app/fresh.txt", b"brand new\n"),
        ("app/sub/fresh_copy.txt", b"brand new\n"),
        ("app/empty", b""),
    ]);
    let link =
        Entry { path: RelPath::new("app/link").unwrap(), kind: EntryKind::Symlink { target: "same.txt".into() } };
    let base = release("v1", &base_files, vec![]);
    let target = release("v2", &target_files, vec![dir("app/sub"), link]);
    (base, base_files, target, target_files)
}

fn fixture_delta() -> (Head, Files, Vec<u8>) {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    (base.clone(), base_files, write(ends(&base, &target), &base, &target, &ops))
}

fn refusal(bytes: &[u8], base: &Head) -> DeltaError {
    delta::read(&mut &bytes[..], base).map(|p| p.head.id).unwrap_err()
}

#[test]
fn round_trip_of_every_kind_of_change() {
    let (base, base_files, target, target_files) = fixture();
    let needed: Vec<&str> = delta::needed(&base.manifest, &target.manifest).iter().map(|e| e.path.as_str()).collect();
    assert_eq!(needed, ["app/changed.bin", "app/empty", "app/fresh.txt"], "one op per content the base lacks");
    let base_hashes: Vec<BlobHash> = base_files.values().map(|c| BlobHash::of(c)).collect();
    for p in &needed {
        assert!(!base_hashes.contains(&BlobHash::of(&target_files[*p])), "{p} is in the base, yet needed");
    }

    let ops = ops_for(&base, &base_files, &target, &target_files);
    assert!(matches!(ops[..], [Op::Patch { .. }, Op::Literal { .. }, Op::Literal { .. }]), "{ops:?}");
    let bytes = write(ends(&base, &target), &base, &target, &ops);
    assert_eq!(delta::read_ends(&mut &bytes[..]).unwrap(), ends(&base, &target));

    let (parsed, got) = apply(&bytes, &base, &base_files).unwrap();
    assert_eq!(parsed.ends, ends(&base, &target));
    assert_eq!((parsed.head.id, &parsed.head.manifest, &parsed.head.meta), (target.id, &target.manifest, &target.meta));
    assert_eq!(parsed.ops, ops);
    assert_eq!(got, target_files);
}

#[test]
fn layout_is_the_one_the_module_docs_give() {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    let head = delta::encode_head(&base, &target, LEVEL).unwrap();
    let mut rest = vec![varint(head.len() as u64), head, varint(ops.len() as u64)];
    for op in &ops {
        let fields = match op {
            Op::Patch { reference, data } => [vec![1], varint(*reference as u64), varint(data.len() as u64)].concat(),
            Op::Literal { data } => [vec![2], varint(data.len() as u64)].concat(),
            Op::Rsync { .. } => unreachable!("release deltas carry no rsync ops"),
        };
        rest.extend([fields, op_data(op).to_vec()]);
    }
    let rest: Vec<&[u8]> = rest.iter().map(|v| &v[..]).collect();
    assert!(
        write(ends(&base, &target), &base, &target, &ops) == raw(&MAGIC, FORMAT_VERSION, ends(&base, &target), &rest)
    );
}

fn op_data(op: &Op) -> &[u8] {
    match op {
        Op::Patch { data, .. } | Op::Literal { data } | Op::Rsync { data, .. } => data,
    }
}

#[test]
fn a_patch_for_a_few_changed_bytes_is_small() {
    let old = noise(100_000, 42);
    let mut new = old.clone();
    for i in 0..10 {
        new[i * 9_973 + 5] ^= 0x5a;
    }
    let patch = delta::compress(&new, &old, LEVEL).unwrap();
    let literal = delta::compress(&new, &[], LEVEL).unwrap();
    assert!(patch.len() < 1_000, "patch of {} bytes", patch.len());
    assert!(literal.len() > 90_000, "literal of {} bytes", literal.len());
    let entry = file("app/big", &new);
    assert!(Op::Patch { reference: 0, data: patch }.decode(&entry, Some(&old)).unwrap() == new);
}

#[test]
fn refused_against_another_base() {
    let (base, _, bytes) = fixture_delta();
    let other = release("v0", &files(&[("app/x", b"x")]), vec![]);
    let err = refusal(&bytes, &other);
    assert!(matches!(err, DeltaError::WrongBase { expected, actual } if expected == other.id && actual == base.id));
    assert!(err.to_string().contains("it only applies to its own base"), "{err}");
}

#[test]
fn bad_magic_and_unsupported_version() {
    let (base, _, mut bytes) = fixture_delta();
    bytes[3] = b'X';
    assert!(matches!(refusal(&bytes, &base), DeltaError::Magic));
    assert!(matches!(delta::read_ends(&mut &bytes[..]), Err(DeltaError::Magic)));
    let (_, _, mut bytes) = fixture_delta();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = refusal(&bytes, &base);
    assert!(matches!(err, DeltaError::Version(2)), "{err:?}");
    assert!(err.to_string().starts_with("delta format version 2 is not supported"), "{err}");
}

#[test]
fn every_truncation_is_refused() {
    let (base, _, bytes) = fixture_delta();
    for cut in 0..bytes.len() {
        let err = refusal(&bytes[..cut], &base);
        assert!(matches!(err, DeltaError::Io { .. }), "cut at {cut}: {err:?}");
        assert!(err.to_string().starts_with("the delta is truncated or unreadable"), "cut at {cut}: {err}");
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let (base, base_files, bytes) = fixture_delta();
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            assert!(apply(&bad, &base, &base_files).is_err(), "byte {i} ^ {mask:#x} accepted");
        }
    }
}

#[test]
fn a_flipped_byte_of_op_data_never_decodes_to_wrong_content() {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    let needed = delta::needed(&base.manifest, &target.manifest);
    for (entry, op) in needed.iter().zip(&ops) {
        let reference = matches!(op, Op::Patch { .. }).then(|| &base_files[entry.path.as_str()][..]);
        for i in 0..op.len() {
            let mut data = op_data(op).to_vec();
            data[i] ^= 0x01;
            let bad = match op {
                Op::Patch { reference, .. } => Op::Patch { reference: *reference, data },
                Op::Literal { .. } => Op::Literal { data },
                Op::Rsync { .. } => unreachable!("release deltas carry no rsync ops"),
            };
            if let Ok(content) = bad.decode(entry, reference) {
                assert!(
                    content == target_files[entry.path.as_str()],
                    "{}: byte {i} decodes to other content",
                    entry.path
                );
            }
        }
    }
}

#[test]
fn a_wrong_trailing_hash_or_bytes_after_it_are_refused() {
    let (base, _, mut bytes) = fixture_delta();
    bytes.push(0);
    let err = refusal(&bytes, &base);
    assert!(matches!(&err, DeltaError::Corrupt { at, .. } if at == "the end"), "{err:?}");
    assert!(err.to_string().contains("bytes after the trailing hash"), "{err}");
    bytes.pop();
    *bytes.last_mut().unwrap() ^= 1;
    let err = refusal(&bytes, &base);
    assert!(matches!(&err, DeltaError::Corrupt { at, .. } if at == "the trailing hash"), "{err:?}");
}

#[test]
fn an_op_count_that_does_not_match_is_refused() {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    for ops in [&ops[..2], &[&ops[..], &ops[2..]].concat()] {
        let err = refusal(&write(ends(&base, &target), &base, &target, ops), &base);
        assert!(matches!(&err, DeltaError::Corrupt { at, .. } if at == "the op count"), "{err:?}");
        assert!(err.to_string().contains("but the target has 3 file contents the base lacks"), "{err}");
    }
}

#[test]
fn a_patch_against_something_not_a_file_of_the_base_is_refused() {
    let (base, base_files, target, target_files) = fixture();
    let app = base.manifest.entries().iter().position(|e| e.path.as_str() == "app").unwrap();
    for reference in [app, base.manifest.entries().len(), 1 << 40] {
        let mut ops = ops_for(&base, &base_files, &target, &target_files);
        ops[0] = Op::Patch { reference, data: op_data(&ops[0]).to_vec() };
        let err = refusal(&write(ends(&base, &target), &base, &target, &ops), &base);
        assert!(matches!(&err, DeltaError::Corrupt { at, .. } if at == "app/changed.bin"), "{err:?}");
        assert!(err.to_string().contains(&format!("base entry {reference} is not a file of the base")), "{err}");
    }
}

#[test]
fn an_unknown_op_kind_is_refused() {
    let (base, _, target, _) = fixture();
    let (_, _, mut bad) = fixture_delta();
    let head_len = delta::encode_head(&base, &target, LEVEL).unwrap().len();
    let at = 76 + varint(head_len as u64).len() + head_len + 1; // past the one-byte op count
    assert_eq!(bad[at], 1, "the first op is a patch");
    for kind in [3, 9] {
        bad[at] = kind;
        let err = refusal(&reseal(bad.clone()), &base);
        assert!(err.to_string() == format!("app/changed.bin: op kind {kind} is not one of a release delta"), "{err}");
    }
}

#[test]
fn a_head_that_is_not_the_target_is_refused() {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    let named = ReleaseId::compute(b"another", b"release");
    let err = refusal(&write(Ends { base: base.id, target: named }, &base, &target, &ops), &base);
    assert!(matches!(err, DeltaError::TargetMismatch { expected, actual } if expected == named && actual == target.id));
    assert!(err.to_string().contains(&format!("hashes to release {}, not to the {named}", target.id)), "{err}");
}

#[test]
fn decode_checks_the_content_against_the_entry() {
    let (base, base_files, target, target_files) = fixture();
    let ops = ops_for(&base, &base_files, &target, &target_files);
    let fresh = &ops[2]; // app/fresh.txt, "brand new\n"
    let other = BlobHash::of(b"brand old\n");
    let err = fresh.decode(&file_of_size("app/fresh.txt", 10, other), None).unwrap_err();
    let want = (other, BlobHash::of(b"brand new\n"));
    let ok = matches!(&err, DeltaError::HashMismatch { path, expected, actual }
        if path == "app/fresh.txt" && (*expected, *actual) == want);
    assert!(ok, "{err:?}");
    let err = fresh.decode(&file_of_size("app/fresh.txt", 11, other), None).unwrap_err();
    assert!(err.to_string().contains("decodes to 10 bytes, the manifest says 11"), "{err}");
    let err = fresh.decode(&file_of_size("app/fresh.txt", 9, other), None).unwrap_err();
    assert!(matches!(err, DeltaError::Corrupt { .. }), "{err:?}");
    let err = ops[0].decode(&file("app/changed.bin", &target_files["app/changed.bin"]), None).unwrap_err();
    assert!(err.to_string().contains("a patch without its base file"), "{err}");
    let err = fresh.decode(&dir("app/sub"), None).unwrap_err();
    assert!(err.to_string().contains("an op for an entry that is not a file"), "{err}");
}

#[test]
fn varints_that_overflow_or_claim_too_much_are_refused() {
    let (base, _, target, _) = fixture();
    let e = ends(&base, &target);
    let overflow: [&[u8]; 2] = [&[0xff; 11], &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]];
    for v in overflow {
        let err = refusal(&raw(&MAGIC, FORMAT_VERSION, e, &[v]), &base);
        assert!(err.to_string().starts_with("the head's length: a length that overflows 64 bits"), "{err}");
    }
    // A padded varint (5 as 0x85 0x00) is refused: one delta has one byte form.
    let err = refusal(&raw(&MAGIC, FORMAT_VERSION, e, &[&[0x85, 0x00]]), &base);
    assert!(err.to_string().ends_with("is not in its shortest form"), "{err}");
    // 2^63 and 2^40 are valid varints, refused as lengths before anything is allocated.
    let err = refusal(&raw(&MAGIC, FORMAT_VERSION, e, &[&varint(1 << 63)]), &base);
    assert!(err.to_string().contains("the head: 9223372036854775808 bytes of data, more than the"), "{err}");
    let head = delta::encode_head(&base, &target, LEVEL).unwrap();
    let (len, count) = (varint(head.len() as u64), varint(3));
    for op in [[&[2u8][..], &[0xff; 11]].concat(), [&[1u8][..], &[0xff; 11]].concat()] {
        let err = refusal(&raw(&MAGIC, FORMAT_VERSION, e, &[&len, &head, &count, &op]), &base);
        assert!(err.to_string().starts_with("app/changed.bin: a length that overflows 64 bits"), "{err}");
    }
    let err = refusal(&raw(&MAGIC, FORMAT_VERSION, e, &[&len, &head, &count, &[2], &varint(1 << 40)]), &base);
    assert!(err.to_string().starts_with("app/changed.bin: 1099511627776 bytes of data, more than the"), "{err}");
}

/// A target whose one file claims `size` bytes, and a delta to it whose literal claims `len`.
fn huge_file_delta(size: u64, len: u64) -> (Head, Vec<u8>) {
    let base = release("v1", &files(&[("app/a", b"a")]), vec![]);
    let target = release("v2", &Files::new(), vec![file_of_size("app/big", size, BlobHash::of(b"?"))]);
    let head = delta::encode_head(&base, &target, LEVEL).unwrap();
    let rest: [&[u8]; 5] = [&varint(head.len() as u64), &head, &[1], &[2], &varint(len)];
    (base.clone(), raw(&MAGIC, FORMAT_VERSION, ends(&base, &target), &rest))
}

#[test]
fn an_op_claiming_more_than_memory_is_refused_not_a_panic() {
    // The manifest's size is the target's to choose; a length past isize::MAX must be an error.
    let (base, bytes) = huge_file_delta(u64::MAX, 1 << 63);
    assert!(matches!(refusal(&bytes, &base), DeltaError::Corrupt { .. } | DeltaError::Io { .. }));
}

#[test]
fn a_file_size_near_u64_max_is_refused_not_a_panic() {
    let (base, bytes) = huge_file_delta(0xFF00_FF00_FF00_FEFF, 5);
    assert!(matches!(refusal(&bytes, &base), DeltaError::Io { .. }));
}

#[test]
fn decode_of_an_entry_claiming_u64_max_bytes_is_refused_not_a_panic() {
    let op = Op::Literal { data: delta::compress(b"tiny", &[], LEVEL).unwrap() };
    let err = op.decode(&file_of_size("app/big", u64::MAX, BlobHash::of(b"tiny")), None).unwrap_err();
    assert!(matches!(err, DeltaError::Corrupt { .. }), "{err:?}");
}

fn file_set() -> impl Strategy<Value = Files> {
    let path = prop::sample::select(vec!["app/a", "app/b", "app/c", "app/d", "app/e"]).prop_map(String::from);
    prop::collection::btree_map(path, prop::collection::vec(0u8..3, 0..300), 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_releases_round_trip(
        base_files in file_set(),
        mut target_files in file_set(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        // Some target files are base files with a byte added, at the same path: patches that matter.
        for (i, b) in edits.iter().filter(|_| !base_files.is_empty()) {
            let (p, c) = base_files.iter().nth(i.index(base_files.len())).unwrap();
            target_files.insert(p.clone(), [&c[..], &[*b]].concat());
        }
        let (base, target) = (release("v1", &base_files, vec![]), release("v2", &target_files, vec![]));
        let ops = ops_for(&base, &base_files, &target, &target_files);
        let bytes = write(ends(&base, &target), &base, &target, &ops);
        let (parsed, got) = apply(&bytes, &base, &base_files).unwrap();
        prop_assert_eq!(&parsed.ops, &ops);
        prop_assert_eq!(got, target_files.clone());
        let have: Vec<BlobHash> = base_files.values().map(|c| BlobHash::of(c)).collect();
        let mut lacking: Vec<BlobHash> =
            target_files.values().map(|c| BlobHash::of(c)).filter(|h| !have.contains(h)).collect();
        lacking.sort();
        lacking.dedup();
        prop_assert_eq!(ops.len(), lacking.len());
    }
}
