//! Delta encoding: release B against release A, both from the store.
//!
//! Each target file content the base lacks is compressed with zstd against
//! a base file as the reference prefix — the file at the same path, or else
//! the file at the same path once version-like digit runs are ignored (so
//! `django-4.2.10.dist-info/RECORD` patches against
//! `django-4.2.11.dist-info/RECORD`) — or on its own when no base file
//! matches. Files are encoded in parallel, each at a level chosen by the
//! delta's size and what a slower level would gain (see [`levels`]). The
//! format is in `ferry_formats::delta`.

pub mod levels;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_formats::bundle::{self, Head, ReadError, Visitor};
use ferry_formats::delta::{self, Compressor, Ends, Op};
use ferry_formats::signature::Signature;
use ferry_formats::{atomic, BlobHash, Entry, EntryKind, Manifest, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;

pub use levels::{Levels, HEAD, LEVEL};

use crate::{Store, StoreError};

/// A delta in the store.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub path: PathBuf,
    /// The delta's size in bytes.
    pub bytes: u64,
    pub patches: usize,
    pub literals: usize,
    /// Target files shipped as nothing: their content is in the base.
    pub reused: usize,
    /// False when the store already had it.
    pub made: bool,
    pub elapsed: Duration,
}

/// Why a delta could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeltaBuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make a delta from a release of {base} to one of {target}: they are different services")]
    Services { base: String, target: String },
    #[error("cannot encode {path}")]
    Encode {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the host's signature of {path} cannot be used")]
    Signature {
        path: String,
        #[source]
        source: fast_rsync::SignatureParseError,
    },
    #[error("cannot write the delta {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the store keeps deltas, and the delta from `base` to `target`.
pub fn delta_path(store: &Store, base: &ReleaseId, target: &ReleaseId) -> PathBuf {
    store.root().join("deltas").join(format!("{base}..{target}"))
}

/// Returns the stored delta from `base` to `target`, encoding it first if the
/// store does not have it.
pub fn encode(store: &Store, base: &ReleaseId, target: &ReleaseId) -> Result<Encoded, DeltaBuildError> {
    let start = Instant::now();
    let path = delta_path(store, base, target);
    if let Some(found) = stored(&path, base, target)? {
        let (base_head, target_head) = (store.read_head(base)?, store.read_head(target)?);
        let (patches, literals, reused) = counts(&base_head.manifest, &target_head.manifest);
        return Ok(Encoded { path, bytes: found, patches, literals, reused, made: false, elapsed: start.elapsed() });
    }
    let plan = Plan::new(store, base, target)?;
    let (ops, head) = plan.encode(store)?;
    let dir = store.root().join("deltas");
    fs::create_dir_all(&dir).map_err(|source| DeltaBuildError::Write { path: dir.clone(), source })?;
    atomic::remove_stale_temps(&dir).map_err(|source| DeltaBuildError::Write { path: dir.clone(), source })?;
    let ends = Ends { base: *base, target: *target };
    let bytes = atomic::write_atomic(&path, |f| {
        let mut out = io::BufWriter::new(f);
        let n = delta::write(&mut out, ends, &head, &ops)?;
        io::Write::flush(&mut out)?;
        Ok::<_, io::Error>(n)
    })
    .map_err(|source| DeltaBuildError::Write { path: path.clone(), source })?;
    let patches = ops.iter().filter(|o| matches!(o, Op::Patch { .. })).count();
    Ok(Encoded {
        path,
        bytes,
        patches,
        literals: ops.len() - patches,
        reused: plan.reused,
        made: true,
        elapsed: start.elapsed(),
    })
}

/// The stored delta's size, if one for these ends is there.
fn stored(path: &std::path::Path, base: &ReleaseId, target: &ReleaseId) -> Result<Option<u64>, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.to_owned(), source }),
    };
    let len = file.metadata().map_err(|source| StoreError::Io { path: path.to_owned(), source })?.len();
    match delta::read_ends(&mut file) {
        Ok(ends) if ends.base == *base && ends.target == *target => Ok(Some(len)),
        // A damaged or foreign file under this name: encode it anew over it.
        _ => Ok(None),
    }
}

fn counts(base: &Manifest, target: &Manifest) -> (usize, usize, usize) {
    let needed = delta::needed(base, target);
    let references = References::new(base);
    let patches = needed.iter().filter(|e| references.find(e).is_some()).count();
    let files = target.entries().iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).count();
    (patches, needed.len() - patches, files - needed.len())
}

/// Which base file each target file is patched against.
struct References<'a> {
    by_path: HashMap<&'a str, usize>,
    by_shape: HashMap<String, usize>,
}

impl<'a> References<'a> {
    fn new(base: &'a Manifest) -> Self {
        let mut by_path = HashMap::new();
        let mut by_shape = HashMap::new();
        for (i, e) in base.entries().iter().enumerate() {
            if let EntryKind::File { size, .. } = e.kind {
                if size > 0 {
                    by_path.insert(e.path.as_str(), i);
                    by_shape.entry(shape(e.path.as_str())).or_insert(i);
                }
            }
        }
        Self { by_path, by_shape }
    }

    fn find(&self, target: &Entry) -> Option<usize> {
        let path = target.path.as_str();
        self.by_path.get(path).or_else(|| self.by_shape.get(&shape(path))).copied()
    }
}

/// A path with its runs of digits replaced by `#`.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

struct Plan {
    base: Head,
    target: Head,
    /// Per op: the target entry index and the base reference, if any.
    ops: Vec<(usize, Option<usize>)>,
    reused: usize,
}

impl Plan {
    fn new(store: &Store, base: &ReleaseId, target: &ReleaseId) -> Result<Self, DeltaBuildError> {
        let base = store.read_head(base)?;
        let target = store.read_head(target)?;
        if base.meta.service != target.meta.service {
            return Err(DeltaBuildError::Services { base: base.meta.service, target: target.meta.service });
        }
        let references = References::new(&base.manifest);
        let index: HashMap<&str, usize> =
            target.manifest.entries().iter().enumerate().map(|(i, e)| (e.path.as_str(), i)).collect();
        let needed = delta::needed(&base.manifest, &target.manifest);
        let ops = needed.iter().map(|e| (index[e.path.as_str()], references.find(e))).collect::<Vec<_>>();
        let files = target.manifest.entries().iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).count();
        let reused = files - ops.len();
        Ok(Self { base, target, ops, reused })
    }

    /// Reads the contents the ops need from both bundles (in parallel) and
    /// encodes every op (in parallel).
    fn encode(&self, store: &Store) -> Result<(Vec<Op>, Vec<u8>), DeltaBuildError> {
        let want_base: HashSet<&BlobHash> =
            self.ops.iter().filter_map(|(_, r)| *r).map(|r| file_hash(&self.base.manifest.entries()[r])).collect();
        let want_target: HashSet<&BlobHash> =
            self.ops.iter().map(|(t, _)| file_hash(&self.target.manifest.entries()[*t])).collect();
        // The head (the manifest against the base's, most of the work when
        // few files changed) is encoded while both bundles are read.
        let ((base_blobs, target_blobs), head) = rayon::join(
            || {
                rayon::join(
                    || collect(store, &self.base.id, &want_base),
                    || collect(store, &self.target.id, &want_target),
                )
            },
            || delta::encode_head(&self.base, &self.target, HEAD),
        );
        let (base_blobs, target_blobs) = (base_blobs?, target_blobs?);
        let head = head.map_err(|source| DeltaBuildError::Encode { path: "the head".into(), source })?;
        let content: u64 = self.ops.iter().map(|(t, _)| file_size(&self.target.manifest.entries()[*t])).sum();
        let levels = Levels::for_content(content);
        // The global pool has one thread a core, and each op is one thread's work.
        let ops = self
            .ops
            .par_iter()
            .map_init(Compressor::new, |z, &(t, r)| {
                let entry = &self.target.manifest.entries()[t];
                let content = &target_blobs[file_hash(entry)];
                let result = match r {
                    Some(r) => {
                        let reference = &base_blobs[file_hash(&self.base.manifest.entries()[r])];
                        levels.compress(z, content, reference).map(|data| Op::Patch { reference: r, data })
                    }
                    None => levels.compress(z, content, &[]).map(|data| Op::Literal { data }),
                };
                result.map_err(|source| DeltaBuildError::Encode { path: entry.path.to_string(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ops, head))
    }
}

fn file_hash(e: &Entry) -> &BlobHash {
    match &e.kind {
        EntryKind::File { hash, .. } => hash,
        _ => unreachable!("delta ops and references are files"),
    }
}

fn file_size(e: &Entry) -> u64 {
    match &e.kind {
        EntryKind::File { size, .. } => *size,
        _ => unreachable!("delta ops and references are files"),
    }
}

/// The contents with these hashes, read from a stored bundle. Reading stops
/// once the last of them has gone by: each one taken was checked against its
/// hash, and the rest of the bundle does not go into the delta (the host
/// checks every file it makes anyway).
fn collect(store: &Store, id: &ReleaseId, want: &HashSet<&BlobHash>) -> Result<HashMap<BlobHash, Vec<u8>>, StoreError> {
    struct Keep<'a> {
        want: &'a HashSet<&'a BlobHash>,
        got: HashMap<BlobHash, Vec<u8>>,
        /// The entry whose content completed the set; the reader checks an
        /// entry's hash after the visitor returns, so stop at the next one.
        complete: bool,
    }
    const ENOUGH: &str = "every wanted content is read";
    impl Visitor for Keep<'_> {
        fn entry(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<()> {
            if self.complete {
                return Err(io::Error::other(ENOUGH));
            }
            if let EntryKind::File { hash, size, .. } = &entry.kind {
                if self.want.contains(hash) && !self.got.contains_key(hash) {
                    let mut buf = Vec::with_capacity(*size as usize);
                    content.read_to_end(&mut buf)?;
                    self.got.insert(*hash, buf);
                    self.complete = self.got.len() == self.want.len();
                }
            }
            Ok(())
        }
    }
    let path = store.bundle_path(id);
    if want.is_empty() {
        return Ok(HashMap::new());
    }
    let file = fs::File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
    let mut keep = Keep { want, got: HashMap::new(), complete: false };
    match bundle::read(io::BufReader::with_capacity(1 << 20, file), Some(id), &mut keep) {
        Ok(_) => Ok(keep.got),
        Err(ReadError::Visitor { source, .. }) if keep.complete && source.to_string() == ENOUGH => Ok(keep.got),
        Err(source) => Err(StoreError::Bundle { path, source }),
    }
}

/// What one stream over all changed files would weigh instead: the old
/// versions of the changed and vanished files as one reference prefix, the
/// new contents as one zstd frame. For the benchmark's per-file vs one-stream
/// comparison; ferry ships per-file ops.
pub fn one_stream_size(
    store: &Store,
    base: &ReleaseId,
    target: &ReleaseId,
) -> Result<(u64, Duration), DeltaBuildError> {
    let plan = Plan::new(store, base, target)?;
    let target_paths: HashSet<&str> = plan.target.manifest.entries().iter().map(|e| e.path.as_str()).collect();
    let old: Vec<usize> = plan
        .base
        .manifest
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.kind, EntryKind::File { .. }))
        .filter(|(_, e)| {
            let gone = !target_paths.contains(e.path.as_str());
            let changed = plan.target.manifest.get(e.path.as_str()).is_some_and(|t| t.kind != e.kind);
            gone || changed
        })
        .map(|(i, _)| i)
        .collect();
    let want_base: HashSet<&BlobHash> = old.iter().map(|&i| file_hash(&plan.base.manifest.entries()[i])).collect();
    let want_target: HashSet<&BlobHash> =
        plan.ops.iter().map(|(t, _)| file_hash(&plan.target.manifest.entries()[*t])).collect();
    let base_blobs = collect(store, base, &want_base)?;
    let target_blobs = collect(store, target, &want_target)?;
    let start = Instant::now();
    let prefix: Vec<u8> =
        old.iter().flat_map(|&i| base_blobs[file_hash(&plan.base.manifest.entries()[i])].iter().copied()).collect();
    let content: Vec<u8> = plan
        .ops
        .iter()
        .flat_map(|(t, _)| target_blobs[file_hash(&plan.target.manifest.entries()[*t])].iter().copied())
        .collect();
    let data = delta::compress(&content, &prefix, LEVEL)
        .map_err(|source| DeltaBuildError::Encode { path: "one stream".into(), source })?;
    let head = delta::encode_head(&plan.base, &plan.target, HEAD)
        .map_err(|source| DeltaBuildError::Encode { path: "the head".into(), source })?;
    Ok(((data.len() + head.len() + 76 + 32) as u64, start.elapsed()))
}

/// Where the store keeps the rsync delta for a host with signature `basis`.
pub fn rsync_delta_path(store: &Store, basis: &BlobHash, target: &ReleaseId) -> PathBuf {
    store.root().join("deltas").join(format!("rsync-{basis}..{target}"))
}

/// The delta for a host whose content the store does not know, from its
/// signature: every target content the host lacks is a fast_rsync delta
/// against the host's file at the same path (or the same path with other
/// version digits), or a literal. Cached in the store like release deltas.
pub fn encode_rsync(store: &Store, signature: &Signature, target: &ReleaseId) -> Result<Encoded, DeltaBuildError> {
    let start = Instant::now();
    let path = rsync_delta_path(store, &signature.id, target);
    let head = store.read_head(target)?;
    let have: HashSet<&BlobHash> = signature.files.iter().map(|f| &f.hash).collect();
    let needed = delta::needed_from(&have, &head.manifest);
    let files = head.manifest.entries().iter().filter(|e| matches!(e.kind, EntryKind::File { .. })).count();
    let reused = files - needed.len();
    let mut by_path = HashMap::new();
    let mut by_shape = HashMap::new();
    for (i, f) in signature.files.iter().enumerate() {
        if f.size > 0 {
            by_path.insert(f.path.as_str(), i);
            by_shape.entry(shape(f.path.as_str())).or_insert(i);
        }
    }
    let reference = |e: &Entry| by_path.get(e.path.as_str()).or_else(|| by_shape.get(&shape(e.path.as_str()))).copied();
    if let Ok(meta) = fs::metadata(&path) {
        let patches = needed.iter().filter(|e| reference(e).is_some()).count();
        let literals = needed.len() - patches;
        return Ok(Encoded {
            path,
            bytes: meta.len(),
            patches,
            literals,
            reused,
            made: false,
            elapsed: start.elapsed(),
        });
    }
    let want: HashSet<&BlobHash> = needed.iter().map(|e| file_hash(e)).collect();
    let blobs = collect(store, target, &want)?;
    let levels = Levels::for_content(needed.iter().map(|e| file_size(e)).sum());
    let ops = needed
        .par_iter()
        .map_init(Compressor::new, |z, entry| {
            let content = &blobs[file_hash(entry)];
            let encode_error = |source| DeltaBuildError::Encode { path: entry.path.to_string(), source };
            match reference(entry) {
                Some(r) => {
                    let signed = &signature.files[r];
                    let parsed = fast_rsync::Signature::deserialize(signed.rsync.clone())
                        .map_err(|source| DeltaBuildError::Signature { path: signed.path.to_string(), source })?;
                    let mut diff = Vec::new();
                    fast_rsync::diff(&parsed.index(), content, &mut diff)
                        .map_err(|e| encode_error(io::Error::other(e)))?;
                    let data = levels.compress(z, &diff, &[]).map_err(encode_error)?;
                    Ok(Op::Rsync { reference: r, data })
                }
                None => Ok(Op::Literal { data: levels.compress(z, content, &[]).map_err(encode_error)? }),
            }
        })
        .collect::<Result<Vec<_>, DeltaBuildError>>()?;
    let head_frame = delta::encode_head_rsync(signature, &head, HEAD)
        .map_err(|source| DeltaBuildError::Encode { path: "the head".into(), source })?;
    let dir = store.root().join("deltas");
    fs::create_dir_all(&dir).map_err(|source| DeltaBuildError::Write { path: dir.clone(), source })?;
    let bytes = atomic::write_atomic(&path, |f| {
        let mut out = io::BufWriter::new(f);
        let n = delta::write_rsync(&mut out, &signature.id, target, &head_frame, &ops)?;
        io::Write::flush(&mut out)?;
        Ok::<_, io::Error>(n)
    })
    .map_err(|source| DeltaBuildError::Write { path: path.clone(), source })?;
    let patches = ops.iter().filter(|o| matches!(o, Op::Rsync { .. })).count();
    Ok(Encoded { path, bytes, patches, literals: ops.len() - patches, reused, made: true, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_formats::bundle::WriteOptions;
    use ferry_formats::release::FORMAT_VERSION;
    use ferry_formats::{Component, ComponentKind, RelPath, ReleaseMeta};

    use super::*;

    /// Text-like bytes: words drawn by a xorshift from a small vocabulary.
    fn text(seed: u64, n: usize) -> Vec<u8> {
        let words = ["def ", "return ", "self", ".value", "(x)", " = ", "msgid ", "django", "\n", "    "];
        let mut x = seed.max(1);
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        }
        out.truncate(n);
        out
    }

    /// A release of `files` (component `app`), written as a bundle into the store.
    fn release(store: &Store, version: &str, files: &BTreeMap<String, Vec<u8>>) -> Head {
        let mut entries: Vec<Entry> = files
            .iter()
            .map(|(p, c)| Entry {
                path: RelPath::new(p).unwrap(),
                kind: EntryKind::File { mode: 0o644, size: c.len() as u64, hash: BlobHash::of(c) },
            })
            .collect();
        for dir in ["app", "app/lib", "app/new"] {
            entries.push(Entry { path: RelPath::new(dir).unwrap(), kind: EntryKind::Dir { mode: 0o755 } });
        }
        let app = Component { kind: ComponentKind::Code, path: RelPath::new("app").unwrap(), environments: vec![] };
        let meta = ReleaseMeta {
            format: FORMAT_VERSION,
            service: "shop".into(),
            version: Some(version.into()),
            git: None,
            components: vec![app],
        };
        let head = Head::new(Manifest::from_entries(entries).unwrap(), meta).unwrap();
        store.prepare().unwrap();
        let out = fs::File::create(store.bundle_path(&head.id)).unwrap();
        let opts = WriteOptions { level: 3, workers: 1 };
        bundle::write(out, &head, &opts, |e| Ok(io::Cursor::new(files[e.path.as_str()].clone()))).unwrap();
        head
    }

    /// A dependency bump: `n` files of 8 KiB, most edited here and there, some new.
    fn bump(n: u64) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>) {
        let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
        for i in 0..n {
            let content = text(i + 1, 8192);
            let mut edited = content.clone();
            for at in
                (usize::try_from(i).unwrap() % 97..edited.len()).step_by(300 + 40 * usize::try_from(i % 7).unwrap())
            {
                edited[at] ^= 0x20;
            }
            old.insert(format!("app/lib/m{i:04}.py"), content);
            new.insert(format!("app/lib/m{i:04}.py"), edited);
        }
        for i in 0..n / 10 {
            new.insert(format!("app/new/n{i:04}.po"), text(10_000 + i, 4096));
        }
        (old, new)
    }

    /// The delta's bytes, encoded anew on a pool of `threads` threads.
    fn encoded_on(threads: usize, store: &Store, base: &ReleaseId, target: &ReleaseId) -> Vec<u8> {
        let _ = fs::remove_dir_all(store.root().join("deltas"));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let encoded = pool.install(|| encode(store, base, target)).unwrap();
        assert!(encoded.made);
        fs::read(&encoded.path).unwrap()
    }

    #[test]
    fn parallel_encoding_gives_the_bytes_of_one_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        // 300 files of 8 KiB: more content than a small delta's, so each op's level is chosen.
        let (old, new) = bump(300);
        let content: u64 = new.iter().filter(|(p, c)| old.get(*p) != Some(c)).map(|(_, c)| c.len() as u64).sum();
        assert_eq!(Levels::for_content(content), Levels::ByGain, "{content} bytes of ops");
        let (base, target) = (release(&store, "1", &old), release(&store, "2", &new));
        let serial = encoded_on(1, &store, &base.id, &target.id);
        for threads in [2, 4] {
            assert!(serial == encoded_on(threads, &store, &base.id, &target.id), "{threads} threads differ from one");
        }
        // And the delta gives every target file back.
        let parsed = delta::read(&mut &serial[..], &base).unwrap();
        let needed = delta::needed(&base.manifest, &target.manifest);
        assert_eq!(parsed.ops.len(), needed.len());
        for (op, entry) in parsed.ops.iter().zip(&needed) {
            let reference = match op {
                Op::Patch { reference, .. } => Some(&old[base.manifest.entries()[*reference].path.as_str()][..]),
                _ => None,
            };
            assert_eq!(op.decode(entry, reference).unwrap(), new[entry.path.as_str()], "{}", entry.path);
        }
    }

    #[test]
    fn a_small_delta_is_level_19_throughout() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let (old, new) = bump(20);
        let (base, target) = (release(&store, "1", &old), release(&store, "2", &new));
        let bytes = encoded_on(2, &store, &base.id, &target.id);
        let parsed = delta::read(&mut &bytes[..], &base).unwrap();
        let needed = delta::needed(&base.manifest, &target.manifest);
        for (op, entry) in parsed.ops.iter().zip(&needed) {
            let content = &new[entry.path.as_str()];
            let (data, want) = match op {
                Op::Patch { reference, data } => {
                    let prefix = &old[base.manifest.entries()[*reference].path.as_str()];
                    (data, delta::compress(content, prefix, LEVEL).unwrap())
                }
                Op::Literal { data } | Op::Rsync { data, .. } => (data, delta::compress(content, &[], LEVEL).unwrap()),
            };
            assert!(*data == want, "{} is not level {LEVEL}'s frame", entry.path);
        }
    }
}
