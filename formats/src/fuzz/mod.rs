//! What each fuzz target in `fuzz/` does with its input, here so that
//! `cargo test` replays the committed corpora through the very same code
//! (`tests/fuzz_corpora.rs`) and a crash a fuzzer once found stays a test.
//!
//! Each function takes any bytes, must never panic, hang or allocate without
//! bound, and checks what holds for every input a reader accepts: what
//! parses writes back to the same bytes, what verifies carries the id it
//! names, what a delta decodes to hashes to its manifest's entry.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::bundle::{self, Discard, Head};
use crate::delta::{self, Op};
use crate::release::{Component, ComponentKind, FORMAT_VERSION};
use crate::signature::{Signature, SignedFile};
pub mod seeds;

use crate::{journal, signed, BlobHash, Entry, EntryKind, Manifest, RelPath, ReleaseMeta};

/// The most a fuzz input may be: the readers' own caps are larger, and
/// the fuzzers need not spend their time on megabytes.
pub const MAX_INPUT: usize = 1 << 20;

/// A manifest's text: what parses is canonical and parses again the same.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(m.to_text(), data, "a manifest that parses is its own canonical text");
    }
}

/// Manifests made from structured entries (paths, kinds, modes, sizes,
/// hashes, link targets drawn from the input by `arbitrary`): whatever
/// [`Manifest::from_entries`] accepts — what a builder writes — must write
/// text that [`Manifest::parse`] — what a host reads — takes back as the
/// same entries. A byte fuzzer of the text alone rarely gets this far.
pub fn manifest_entries(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let n = u.int_in_range(0..=64u8).unwrap_or(0);
    let mut entries = Vec::new();
    for _ in 0..n {
        let Ok(path) = u.arbitrary::<String>() else { break };
        let Ok(path) = RelPath::new(path) else { continue };
        let mode = u.arbitrary::<u32>().unwrap_or(0o644);
        let kind = match u.int_in_range(0..=2u8).unwrap_or(0) {
            0 => EntryKind::Dir { mode },
            1 => EntryKind::File {
                mode,
                size: u.arbitrary().unwrap_or(0),
                hash: BlobHash::from_bytes(u.arbitrary().unwrap_or([0; 32])),
            },
            _ => EntryKind::Symlink { target: u.arbitrary().unwrap_or_default() },
        };
        entries.push(Entry { path, kind });
    }
    if let Ok(m) = Manifest::from_entries(entries) {
        let text = m.to_text();
        let back =
            Manifest::parse(&text).unwrap_or_else(|e| panic!("a manifest from_entries accepts does not parse: {e}"));
        assert_eq!(back.entries(), m.entries(), "a manifest reads back as the entries it was made of");
    }
}

/// Release metadata (`release.json`): what parses is canonical, and
/// validates.
pub fn release_meta(data: &[u8]) {
    if let Ok(meta) = ReleaseMeta::parse(data) {
        assert_eq!(meta.to_canonical(), data, "release metadata that parses is canonical");
        meta.validate().expect("parsed metadata validates");
    }
}

/// A whole bundle: a bundle that verifies has the id of its own head, and
/// reading its head alone agrees.
pub fn bundle(data: &[u8]) {
    if let Ok(verified) = bundle::read(data, None, &mut Discard) {
        let head = verified.into_head();
        let again = Head::new(head.manifest.clone(), head.meta.clone()).expect("a verified head is valid");
        assert_eq!(again.id, head.id, "a verified bundle's id is its head's");
        let only = bundle::read_head(data, Some(&head.id)).expect("the head of a verified bundle reads");
        assert_eq!(only.id, head.id);
    }
}

/// A delta against a small fixed base release, then every op applied
/// against the base's files: each decoded file must hash to its entry.
pub fn delta(data: &[u8]) {
    let base = base();
    let Ok(parsed) = delta::read(&mut &data[..], &base.head) else { return };
    let needed = delta::needed(&base.head.manifest, &parsed.head.manifest);
    assert_eq!(needed.len(), parsed.ops.len(), "one op for each content the base lacks");
    for (op, entry) in parsed.ops.iter().zip(needed) {
        let reference = match op {
            Op::Patch { reference, .. } => base.content_at(*reference),
            Op::Literal { .. } => None,
            Op::Rsync { .. } => panic!("an rsync op in a release delta was accepted"),
        };
        if let Ok(content) = op.decode(entry, reference) {
            assert_eq!(BlobHash::of(&content), file_hash(entry), "a decoded op hashes to its entry");
        }
    }
}

/// An rsync delta against a small fixed signature, applied against the
/// signed files.
pub fn rsync_delta(data: &[u8]) {
    let base = base();
    let Ok(parsed) = delta::read_rsync(&mut &data[..], &base.signature) else { return };
    let have = base.signature.files.iter().map(|f| &f.hash).collect();
    let needed = delta::needed_from(&have, &parsed.head.manifest);
    assert_eq!(needed.len(), parsed.ops.len(), "one op for each content the signature lacks");
    for (op, entry) in parsed.ops.iter().zip(needed) {
        let reference = match op {
            Op::Rsync { reference, .. } => base.signature.files.get(*reference).and_then(|f| base.content_of(&f.hash)),
            Op::Literal { .. } => None,
            Op::Patch { .. } => panic!("a release patch op in an rsync delta was accepted"),
        };
        if let Ok(content) = op.decode(entry, reference) {
            assert_eq!(BlobHash::of(&content), file_hash(entry), "a decoded op hashes to its entry");
        }
    }
}

/// A host's signature: what reads writes back to the same bytes.
pub fn signature(data: &[u8]) {
    if let Ok(sig) = Signature::read(&mut &data[..], MAX_INPUT as u64) {
        assert_eq!(sig.to_bytes(), data, "a signature that reads is its own bytes");
    }
}

/// A host's journal: every line is a record or a bad line, never both, and
/// a record written back reads the same.
pub fn journal(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (records, bad) = journal::parse(&text);
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(records.len() + bad.len(), lines, "each non-empty line is a record or a bad line");
    for r in records {
        let (again, none) = journal::parse(&r.to_line());
        assert!(none.is_empty() && again.len() == 1, "a record written back reads");
    }
}

/// The public key that signed the committed release-signature seed
/// (`fuzz/corpus/release_signature/`), the key a fuzzed signature is
/// verified under.
pub const SEED_KEY: &str = "RWSLHm9KRyjoqBaRXyXOrAfIPU0WXpahb4QUrZGdj8vCT0gNzlUXkNj+";

/// A release signature (`.minisig` with ferry's statement), then verified
/// under [`SEED_KEY`]: what reads keeps its text and statement, and only a
/// signature that verifies says it was made by that key. The same bytes are
/// also read as a trusted key's text.
pub fn release_signature(data: &[u8]) {
    let key = signed::TrustedKey::parse(SEED_KEY).expect("the seed key parses");
    if let Ok(sig) = signed::parse(data) {
        assert_eq!(sig.text().as_bytes(), data, "a signature keeps the text it was read from");
        let line = sig.statement.to_line();
        let again = signed::Statement::parse(line.as_bytes()).expect("a statement written back reads");
        assert_eq!(again, sig.statement, "a statement written back reads the same");
        if let Ok(id) = sig.verify(std::slice::from_ref(&key)) {
            assert_eq!(id, key.id, "a signature verifies only under its own key");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = signed::TrustedKey::parse(text);
    }
}

fn file_hash(entry: &Entry) -> BlobHash {
    match &entry.kind {
        EntryKind::File { hash, .. } => *hash,
        _ => panic!("an op was decoded for a non-file entry"),
    }
}

/// The base release every delta input is read against, and its signature.
struct Base {
    head: Head,
    contents: BTreeMap<BlobHash, Vec<u8>>,
    signature: Signature,
}

impl Base {
    fn content_at(&self, index: usize) -> Option<&[u8]> {
        match &self.head.manifest.entries().get(index)?.kind {
            EntryKind::File { hash, .. } => self.content_of(hash),
            _ => None,
        }
    }

    fn content_of(&self, hash: &BlobHash) -> Option<&[u8]> {
        self.contents.get(hash).map(Vec::as_slice)
    }
}

/// The files of the fuzz base release (`fuzz/seeds` makes its seed deltas
/// against the same release: see [`base_release`]).
pub fn base_files() -> Vec<(&'static str, Vec<u8>)> {
    let text: Vec<u8> = (0..200u32).flat_map(|i| format!("line {i} of the application\n").into_bytes()).collect();
    vec![
        ("app/main.py", b"print('hello from the fuzz base')\n".to_vec()),
        ("app/big.txt", text),
        ("app/empty", Vec::new()),
        ("config/production/app.ini", b"[app]\nworkers = 4\n".to_vec()),
        ("config/staging/app.ini", b"[app]\nworkers = 1\n".to_vec()),
    ]
}

/// The fuzz base release's head: [`base_files`] under service `fuzz`, version 1.
pub fn base_release() -> Head {
    let mut entries = Vec::new();
    for dir in ["app", "config", "config/production", "config/staging"] {
        entries.push(Entry { path: rel(dir), kind: EntryKind::Dir { mode: 0o755 } });
    }
    for (path, content) in base_files() {
        let kind = EntryKind::File { mode: 0o644, size: content.len() as u64, hash: BlobHash::of(&content) };
        entries.push(Entry { path: rel(path), kind });
    }
    entries.push(Entry { path: rel("app/link"), kind: EntryKind::Symlink { target: "main.py".into() } });
    let manifest = Manifest::from_entries(entries).expect("the fuzz base's manifest is valid");
    let components = vec![
        Component { kind: ComponentKind::Code, path: rel("app"), environments: Vec::new() },
        Component {
            kind: ComponentKind::Config,
            path: rel("config"),
            environments: vec!["production".into(), "staging".into()],
        },
    ];
    let meta = ReleaseMeta {
        format: FORMAT_VERSION,
        service: "fuzz".into(),
        version: Some("1".into()),
        git: None,
        components,
    };
    Head::new(manifest, meta).expect("the fuzz base release is valid")
}

/// The signature of the fuzz base release's files.
pub fn base_signature() -> Signature {
    Signature::new(base_files().into_iter().map(|(p, c)| SignedFile::of(rel(p), &c)).collect())
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        head: base_release(),
        contents: base_files().into_iter().map(|(_, c)| (BlobHash::of(&c), c)).collect(),
        signature: base_signature(),
    })
}

fn rel(p: &str) -> RelPath {
    RelPath::new(p).expect("a fuzz base path is valid")
}
