//! Deltas: release B as the bytes a host that has release A lacks.
//!
//! A delta names its base A and its target B and is refused against anything
//! but A. It carries B's manifest and metadata compressed against A's, then
//! one *op* for each file content of B that A does not have. Every file of B
//! whose hash A has somewhere (at any path: a moved file costs nothing) is
//! reused implicitly, so a release that changed two files carries two ops.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FERRYDLT` |
//! | 8 | 4 | format version, u32 little-endian ([`FORMAT_VERSION`]) |
//! | 12 | 32 | base release id |
//! | 44 | 32 | target release id |
//! | 76 | varint + n | the head: one zstd frame whose reference prefix is A's manifest text followed by A's `release.json`; it holds varint(len of B's manifest) ‖ B's manifest text ‖ B's `release.json` |
//! | … | varint | op count: the number of distinct file hashes of B that A lacks |
//! | … | … | the ops, in the order those hashes first appear in B's manifest |
//! | end − 32 | 32 | blake3 of every byte before it |
//!
//! Each op is a kind byte, then:
//!
//! | kind | fields | content |
//! |---|---|---|
//! | 1 patch | varint index of a file entry in A's manifest, varint n, n bytes | one zstd frame whose reference prefix is that file of A |
//! | 2 literal | varint n, n bytes | one zstd frame |
//!
//! An **rsync delta** (magic `FERRYRSD`) is the same layout for a host whose
//! release the controller does not have: its base field is the id of the
//! host's [`Signature`](crate::signature) (the blake3 of the signature file),
//! its head is compressed against `size TAB blake3 TAB path NL` for each file
//! of the signature, a target file whose hash the
//! signature lists is reused, and a changed file comes as
//!
//! | kind | fields | content |
//! |---|---|---|
//! | 3 rsync | varint index of a file in the signature, varint n, n bytes | one zstd frame holding a fast_rsync delta against that file |
//!
//! Limits: the head frame must state its decoded size, at most
//! [`MAX_HEAD`] (the largest manifest and metadata a bundle may have), and is
//! refused undecoded when it states more; every frame's window is at most
//! 2^[`MAX_WINDOW_LOG`].
//!
//! Varints are unsigned LEB128, at most 10 bytes, in their shortest form. zstd frames carry their
//! content size and no checksum: each decoded file is checked against the
//! blake3 in B's manifest, the head against B's id, and the op stream against
//! the trailing hash — all before anything is made visible.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use zstd::zstd_safe;

use crate::bundle::Head;
use crate::signature::{get_varint, put_varint, Signature};
use crate::{BlobHash, Entry, EntryKind, Manifest, ReleaseId, ReleaseMeta};

/// The magic at the start of every delta against a release.
pub const MAGIC: [u8; 8] = *b"FERRYDLT";
/// The magic at the start of every delta against a host's signature.
pub const RSYNC_MAGIC: [u8; 8] = *b"FERRYRSD";
/// The version of this layout.
pub const FORMAT_VERSION: u32 = 1;
/// The most a delta's head may decode to: the largest manifest and release
/// metadata a reader accepts, and the manifest's length.
pub const MAX_HEAD: u64 = crate::bundle::MAX_MANIFEST + crate::bundle::MAX_META + 10;
/// The largest zstd window a delta frame may ask for (128 MiB): a file patched
/// against an old version of itself needs both in the window.
pub const MAX_WINDOW_LOG: u32 = 27;

const FIXED_LEN: usize = 8 + 4 + 32 + 32;
const OP_PATCH: u8 = 1;
const OP_LITERAL: u8 = 2;
const OP_RSYNC: u8 = 3;

/// What a delta goes from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub base: ReleaseId,
    pub target: ReleaseId,
}

/// How one file content of the target travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// zstd with the file at `reference` (an index into the base manifest) as
    /// the reference prefix.
    Patch { reference: usize, data: Vec<u8> },
    /// zstd on its own.
    Literal { data: Vec<u8> },
    /// A zstd-compressed fast_rsync delta against the signature's file at
    /// `reference` (rsync deltas only).
    Rsync { reference: usize, data: Vec<u8> },
}

impl Op {
    /// The encoded bytes this op carries.
    pub fn len(&self) -> usize {
        match self {
            Op::Patch { data, .. } | Op::Literal { data } | Op::Rsync { data, .. } => data.len(),
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Op::Patch { data, .. } | Op::Literal { data } | Op::Rsync { data, .. } => data,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes this op into `entry`'s content and checks it against the
    /// entry's size and hash. `reference` is the base file a patch names.
    pub fn decode(&self, entry: &Entry, reference: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::new();
        self.decode_into(entry, reference, &mut out)?;
        Ok(out)
    }

    /// Decodes this op into `out` as it goes — never more than the entry's
    /// size, whatever the op claims — and checks size and hash at the end.
    /// On an error `out` holds garbage and must be thrown away. An error of
    /// `out` itself comes back as [`DeltaError::Write`].
    pub fn decode_into(&self, entry: &Entry, reference: Option<&[u8]>, out: &mut dyn Write) -> Result<(), DeltaError> {
        let EntryKind::File { size, hash, .. } = &entry.kind else {
            return Err(bad(entry.path.as_str(), "an op for an entry that is not a file"));
        };
        let at = entry.path.as_str();
        let mut sink = Checked { out, left: *size, hasher: blake3::Hasher::new(), failed: None };
        let done = match (self, reference) {
            (Op::Patch { .. } | Op::Rsync { .. }, None) => return Err(bad(at, "a patch without its base file")),
            (Op::Patch { data, .. }, Some(r)) => decompress_into(data, r, &mut sink),
            (Op::Literal { data }, _) => decompress_into(data, &[], &mut sink),
            (Op::Rsync { data, .. }, Some(r)) => {
                // The rsync delta itself is at most a little over the file.
                let limit = size.saturating_add(size / 8).saturating_add(1024);
                let delta = decompress_unsized(data, limit).map_err(|e| bad(at, e))?;
                fast_rsync::apply_limited(r, &delta, &mut sink, usize::try_from(*size).unwrap_or(usize::MAX))
                    .map_err(|e| format!("the rsync delta does not apply: {e}"))
            }
        };
        if let Some(source) = sink.failed.take() {
            return Err(DeltaError::Write { path: at.to_owned(), source });
        }
        done.map_err(|e| bad(at, e))?;
        if sink.left != 0 {
            return Err(bad(at, format!("decodes to {} bytes, the manifest says {size}", size - sink.left)));
        }
        let actual = BlobHash::from_bytes(*sink.hasher.finalize().as_bytes());
        if actual != *hash {
            return Err(DeltaError::HashMismatch { path: entry.path.to_string(), expected: *hash, actual });
        }
        Ok(())
    }
}

/// Passes at most `left` bytes on, hashing them, and keeps the first error
/// of the writer beneath (to tell a full disk from a bad delta).
struct Checked<'a> {
    out: &'a mut dyn Write,
    left: u64,
    hasher: blake3::Hasher,
    failed: Option<io::Error>,
}

impl Write for Checked<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other("more bytes than the manifest says"));
        }
        match self.out.write_all(buf) {
            Ok(()) => {
                self.left -= buf.len() as u64;
                self.hasher.update(buf);
                Ok(buf.len())
            }
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(io::Error::new(kind, "the output failed"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decompresses one frame against `prefix` into `out`.
fn decompress_into(data: &[u8], prefix: &[u8], out: &mut Checked<'_>) -> Result<(), String> {
    let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(data, prefix).map_err(|e| e.to_string())?;
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(|e| e.to_string())?;
    io::copy(&mut decoder, out).map_err(|e| format!("cannot decompress: {e}"))?;
    Ok(())
}

/// Why a delta was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("not a ferry delta (bad magic)")]
    Magic,
    #[error("delta format version {0} is not supported (this ferry reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("the delta goes from release {actual}, not from {expected}: it only applies to its own base")]
    WrongBase { expected: ReleaseId, actual: ReleaseId },
    #[error("the rsync delta was made against signature {actual}, not against this host's {expected}")]
    WrongBasis { expected: BlobHash, actual: BlobHash },
    #[error("the delta's head hashes to release {actual}, not to the {expected} it names")]
    TargetMismatch { expected: ReleaseId, actual: ReleaseId },
    #[error("{at}: {reason}")]
    Corrupt { at: String, reason: String },
    #[error("{path}: the patched content hashes to {actual}, not the manifest's {expected}")]
    HashMismatch { path: String, expected: BlobHash, actual: BlobHash },
    #[error("{path}: cannot write the decoded file")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the delta is truncated or unreadable {at}")]
    Io {
        at: String,
        #[source]
        source: io::Error,
    },
}

fn bad(at: impl Into<String>, reason: impl ToString) -> DeltaError {
    DeltaError::Corrupt { at: at.into(), reason: reason.to_string() }
}

/// The target files that need an op, in op order: the first file of each
/// content hash the base does not have. Every other target file is a copy of
/// a base file or of an earlier op's file.
pub fn needed<'a>(base: &Manifest, target: &'a Manifest) -> Vec<&'a Entry> {
    needed_from(&base.entries().iter().filter_map(file_hash).collect(), target)
}

/// [`needed`] for a base known only by the contents it has.
pub fn needed_from<'a>(have: &HashSet<&BlobHash>, target: &'a Manifest) -> Vec<&'a Entry> {
    let mut seen = HashSet::new();
    target.entries().iter().filter(|e| file_hash(e).is_some_and(|h| !have.contains(h) && seen.insert(h))).collect()
}

fn file_hash(e: &Entry) -> Option<&BlobHash> {
    match &e.kind {
        EntryKind::File { hash, .. } => Some(hash),
        _ => None,
    }
}

/// The bytes a head frame is compressed against, or holds: manifest text
/// then metadata.
fn head_text(head: &Head, with_len: bool) -> Vec<u8> {
    let manifest = head.manifest.to_text();
    let meta = head.meta.to_canonical();
    let mut out = Vec::with_capacity(manifest.len() + meta.len() + 10);
    if with_len {
        put_varint(&mut out, manifest.len() as u64);
    }
    out.extend_from_slice(&manifest);
    out.extend_from_slice(&meta);
    out
}

/// Compresses `content` with `prefix` as zstd's reference prefix (empty for
/// none), at `level`.
pub fn compress(content: &[u8], prefix: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut cctx = zstd_safe::CCtx::create();
    let window = window_log(prefix.len() + content.len());
    let set = |cctx: &mut zstd_safe::CCtx<'_>, p| cctx.set_parameter(p).map(drop).map_err(zstd_error);
    set(&mut cctx, zstd_safe::CParameter::CompressionLevel(level))?;
    set(&mut cctx, zstd_safe::CParameter::WindowLog(window))?;
    set(&mut cctx, zstd_safe::CParameter::ChecksumFlag(false))?;
    set(&mut cctx, zstd_safe::CParameter::ContentSizeFlag(true))?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(zstd_error)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(content.len()));
    cctx.compress2(&mut out, content).map_err(zstd_error)?;
    Ok(out)
}

/// The smallest window that holds prefix and content, within zstd's limits
/// and [`MAX_WINDOW_LOG`].
fn window_log(len: usize) -> u32 {
    let bits = usize::BITS - len.max(1).leading_zeros();
    bits.clamp(10, MAX_WINDOW_LOG)
}

/// Decompresses one frame of at most `limit` bytes.
fn decompress_unsized(data: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(|e| e.to_string())?;
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    decoder.take(limit.saturating_add(1)).read_to_end(&mut out).map_err(|e| format!("cannot decompress: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("decompresses to more than {limit} bytes"));
    }
    Ok(out)
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// The head frame: the target's manifest and metadata against the base's.
pub fn encode_head(base: &Head, target: &Head, level: i32) -> io::Result<Vec<u8>> {
    compress(&head_text(target, true), &head_text(base, false), level)
}

/// The head frame of an rsync delta: the target's manifest and metadata
/// against the signature's list of sizes, hashes and paths (which most
/// manifest lines repeat).
pub fn encode_head_rsync(basis: &Signature, target: &Head, level: i32) -> io::Result<Vec<u8>> {
    compress(&head_text(target, true), &signature_text(basis), level)
}

/// `size TAB hash TAB path` per signed file: the head prefix of rsync deltas.
fn signature_text(basis: &Signature) -> Vec<u8> {
    let mut out = String::new();
    for f in &basis.files {
        out.push_str(&format!("{}\t{}\t{}\n", f.size, f.hash, f.path));
    }
    out.into_bytes()
}

/// Writes a delta and returns its length. `ops` must be in [`needed`] order.
pub fn write(out: &mut dyn Write, ends: Ends, head: &[u8], ops: &[Op]) -> io::Result<u64> {
    write_raw(out, MAGIC, ends.base.as_bytes(), &ends.target, head, ops)
}

/// Writes an rsync delta against the signature `basis`; `ops` in
/// [`needed_from`] order over the signature's hashes.
pub fn write_rsync(
    out: &mut dyn Write,
    basis: &BlobHash,
    target: &ReleaseId,
    head: &[u8],
    ops: &[Op],
) -> io::Result<u64> {
    write_raw(out, RSYNC_MAGIC, basis.as_bytes(), target, head, ops)
}

fn write_raw(
    out: &mut dyn Write,
    magic: [u8; 8],
    base: &[u8; 32],
    target: &ReleaseId,
    head: &[u8],
    ops: &[Op],
) -> io::Result<u64> {
    let mut w = HashingWriter { inner: out, hasher: blake3::Hasher::new(), count: 0 };
    w.write_all(&magic)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    w.write_all(base)?;
    w.write_all(target.as_bytes())?;
    let mut buf = Vec::new();
    put_varint(&mut buf, head.len() as u64);
    w.write_all(&buf)?;
    w.write_all(head)?;
    buf.clear();
    put_varint(&mut buf, ops.len() as u64);
    w.write_all(&buf)?;
    for op in ops {
        buf.clear();
        match op {
            Op::Patch { reference, data } => {
                buf.push(OP_PATCH);
                put_varint(&mut buf, *reference as u64);
                put_varint(&mut buf, data.len() as u64);
            }
            Op::Literal { data } => {
                buf.push(OP_LITERAL);
                put_varint(&mut buf, data.len() as u64);
            }
            Op::Rsync { reference, data } => {
                buf.push(OP_RSYNC);
                put_varint(&mut buf, *reference as u64);
                put_varint(&mut buf, data.len() as u64);
            }
        }
        w.write_all(&buf)?;
        w.write_all(op.data())?;
    }
    let hash = w.hasher.finalize();
    w.inner.write_all(hash.as_bytes())?;
    Ok(w.count + 32)
}

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
    count: u64,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads only the fixed header: what the delta goes from and to.
pub fn read_ends(input: &mut dyn Read) -> Result<Ends, DeltaError> {
    let mut fixed = [0u8; FIXED_LEN];
    input.read_exact(&mut fixed).map_err(|source| DeltaError::Io { at: "in its header".into(), source })?;
    parse_fixed(&fixed)
}

fn parse_fixed(fixed: &[u8; FIXED_LEN]) -> Result<Ends, DeltaError> {
    parse_fixed_as(fixed, MAGIC)
}

fn parse_fixed_as(fixed: &[u8; FIXED_LEN], magic: [u8; 8]) -> Result<Ends, DeltaError> {
    if fixed[..8] != magic {
        return Err(DeltaError::Magic);
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(DeltaError::Version(version));
    }
    let id = |r: std::ops::Range<usize>| ReleaseId::from_bytes(fixed[r].try_into().expect("32 bytes"));
    Ok(Ends { base: id(12..44), target: id(44..76) })
}

/// A delta read whole and checked: its target's head, and one op for each
/// entry of [`needed`]`(base, target)`, in that order.
#[derive(Debug)]
pub struct Parsed {
    pub ends: Ends,
    pub head: Head,
    pub ops: Vec<Op>,
}

/// What a delta is read against.
enum Basis<'a> {
    Release(&'a Head),
    Files(&'a Signature),
}

impl Basis<'_> {
    fn hashes(&self) -> HashSet<&BlobHash> {
        self.sizes().into_keys().collect()
    }

    /// The size of each content the basis has.
    fn sizes(&self) -> std::collections::HashMap<&BlobHash, u64> {
        match self {
            Basis::Release(h) => {
                h.manifest.entries().iter().filter_map(|e| file_hash(e).map(|hash| (hash, e.size()))).collect()
            }
            Basis::Files(s) => s.files.iter().map(|f| (&f.hash, f.size)).collect(),
        }
    }

    /// Whether an op of `kind` may name `reference`.
    fn reference_ok(&self, kind: u8, reference: u64) -> bool {
        let Ok(i) = usize::try_from(reference) else { return false };
        match (self, kind) {
            (Basis::Release(h), OP_PATCH) => h.manifest.entries().get(i).is_some_and(|e| file_hash(e).is_some()),
            (Basis::Files(s), OP_RSYNC) => i < s.files.len(),
            _ => false,
        }
    }
}

/// Reads a whole delta against `base`, checking the magic, version, base,
/// the head against the target id, every op's shape, and the trailing hash.
/// File contents are checked as each op is decoded ([`Op::decode`]).
pub fn read(input: &mut dyn Read, base: &Head) -> Result<Parsed, DeltaError> {
    let (ends, head, ops) = read_impl(input, &Basis::Release(base))?;
    Ok(Parsed { ends, head, ops })
}

/// An rsync delta read whole and checked, as [`read`] does: the target's
/// head and one op for each entry of [`needed_from`] over the signature.
#[derive(Debug)]
pub struct RsyncParsed {
    pub head: Head,
    pub ops: Vec<Op>,
}

/// Reads a whole rsync delta against the host's signature `basis`.
pub fn read_rsync(input: &mut dyn Read, basis: &Signature) -> Result<RsyncParsed, DeltaError> {
    let (_, head, ops) = read_impl(input, &Basis::Files(basis))?;
    Ok(RsyncParsed { head, ops })
}

/// The signature id an rsync delta was made against, from its header.
pub fn read_rsync_basis(input: &mut dyn Read) -> Result<(BlobHash, ReleaseId), DeltaError> {
    let mut fixed = [0u8; FIXED_LEN];
    input.read_exact(&mut fixed).map_err(|source| DeltaError::Io { at: "in its header".into(), source })?;
    let ends = parse_fixed_as(&fixed, RSYNC_MAGIC)?;
    Ok((BlobHash::from_bytes(*ends.base.as_bytes()), ends.target))
}

fn read_impl(input: &mut dyn Read, basis: &Basis<'_>) -> Result<(Ends, Head, Vec<Op>), DeltaError> {
    let mut r = Reader { inner: input, hasher: blake3::Hasher::new() };
    let mut fixed = [0u8; FIXED_LEN];
    r.exact(&mut fixed, "in its header")?;
    let (ends, prefix) = match basis {
        Basis::Release(base) => {
            let ends = parse_fixed(&fixed)?;
            if ends.base != base.id {
                return Err(DeltaError::WrongBase { expected: base.id, actual: ends.base });
            }
            (ends, head_text(base, false))
        }
        Basis::Files(signature) => {
            let ends = parse_fixed_as(&fixed, RSYNC_MAGIC)?;
            if ends.base.as_bytes() != signature.id.as_bytes() {
                return Err(DeltaError::WrongBasis {
                    expected: signature.id,
                    actual: BlobHash::from_bytes(*ends.base.as_bytes()),
                });
            }
            (ends, signature_text(signature))
        }
    };

    let head_len = r.varint("the head's length")?;
    let head_data = r.bytes(head_len, 2 * (crate::bundle::MAX_MANIFEST + crate::bundle::MAX_META), "the head")?;
    let head = decode_head(&head_data, &prefix)?;
    if head.id != ends.target {
        return Err(DeltaError::TargetMismatch { expected: ends.target, actual: head.id });
    }

    // A target file reused from the base is known by its hash alone: its
    // size must be the base's, or the host would stage a file the manifest
    // contradicts.
    let sizes = basis.sizes();
    for e in head.manifest.entries() {
        if let EntryKind::File { size, hash, .. } = &e.kind {
            if let Some(&have) = sizes.get(hash).filter(|&&have| have != *size) {
                return Err(bad(
                    format!("the target manifest's entry {:?}", e.path.as_str()),
                    format!("it gives content {hash} {size} bytes, but the base has that content with {have} bytes"),
                ));
            }
        }
    }
    let needed = needed_from(&basis.hashes(), &head.manifest);
    let count = r.varint("the op count")?;
    if count != needed.len() as u64 {
        return Err(bad(
            "the op count",
            format!("{count}, but the target has {} file contents the base lacks", needed.len()),
        ));
    }
    let mut ops = Vec::with_capacity(needed.len());
    for entry in needed {
        let at = entry.path.as_str();
        let bound = (zstd_safe::compress_bound(usize::try_from(entry.size()).unwrap_or(usize::MAX)) as u64)
            .saturating_add(1024);
        let mut kind = [0u8];
        r.exact(&mut kind, at)?;
        let allowed = match basis {
            Basis::Release(_) => [OP_PATCH, OP_LITERAL],
            Basis::Files(_) => [OP_RSYNC, OP_LITERAL],
        };
        if !allowed.contains(&kind[0]) {
            let what = if matches!(basis, Basis::Release(_)) { "a release delta" } else { "an rsync delta" };
            return Err(bad(at, format!("op kind {} is not one of {what}", kind[0])));
        }
        let op = match kind[0] {
            k @ (OP_PATCH | OP_RSYNC) => {
                let reference = r.varint(at)?;
                if !basis.reference_ok(k, reference) {
                    return Err(bad(at, format!("the patch's base entry {reference} is not a file of the base")));
                }
                let len = r.varint(at)?;
                let data = r.bytes(len, bound, at)?;
                let reference = reference as usize;
                if k == OP_PATCH {
                    Op::Patch { reference, data }
                } else {
                    Op::Rsync { reference, data }
                }
            }
            OP_LITERAL => {
                let len = r.varint(at)?;
                Op::Literal { data: r.bytes(len, bound, at)? }
            }
            other => return Err(bad(at, format!("unknown op kind {other}"))),
        };
        ops.push(op);
    }
    let expected = r.hasher.finalize();
    let mut trailer = [0u8; 32];
    r.inner.read_exact(&mut trailer).map_err(|source| DeltaError::Io { at: "in its trailing hash".into(), source })?;
    if trailer != *expected.as_bytes() {
        return Err(bad("the trailing hash", "does not match the delta's bytes: the delta is damaged"));
    }
    let mut probe = [0u8; 1];
    match r.inner.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Err(bad("the end", "bytes after the trailing hash")),
        Err(source) => return Err(DeltaError::Io { at: "after its trailing hash".into(), source }),
    }
    Ok((ends, head, ops))
}

fn decode_head(data: &[u8], prefix: &[u8]) -> Result<Head, DeltaError> {
    let limit = MAX_HEAD;
    // The frame says what it decodes to (ferry always writes the size): a
    // head that claims more than any head can be is refused undecoded.
    let stated = match zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n > limit => {
            return Err(bad("the head", format!("it decodes to {n} bytes; a head is at most {limit}")));
        }
        Ok(Some(n)) => n,
        _ => return Err(bad("the head", "a zstd frame that does not state its size")),
    };
    let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(data, prefix)
        .map_err(|e| bad("the head", format!("cannot decompress: {e}")))?;
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(|e| bad("the head", e))?;
    let mut text = Vec::with_capacity(stated as usize);
    decoder.take(stated + 1).read_to_end(&mut text).map_err(|e| bad("the head", format!("cannot decompress: {e}")))?;
    if text.len() as u64 != stated {
        return Err(bad("the head", format!("it decodes to {} bytes, not the {stated} its frame says", text.len())));
    }
    let mut cursor = &text[..];
    let len = get_varint(&mut cursor).ok_or_else(|| bad("the head", "no manifest length"))?;
    let len = usize::try_from(len).ok().filter(|&l| l <= cursor.len()).ok_or_else(|| bad("the head", "too short"))?;
    let (manifest, meta) = cursor.split_at(len);
    let manifest = Manifest::parse(manifest).map_err(|e| bad("the target manifest", e))?;
    let meta = ReleaseMeta::parse(meta).map_err(|e| bad("the target release.json", e))?;
    Head::new(manifest, meta).map_err(|e| bad("the target release", e))
}

struct Reader<'a> {
    inner: &'a mut dyn Read,
    hasher: blake3::Hasher,
}

impl Reader<'_> {
    fn exact(&mut self, buf: &mut [u8], at: &str) -> Result<(), DeltaError> {
        self.inner.read_exact(buf).map_err(|source| DeltaError::Io { at: format!("at {at}"), source })?;
        self.hasher.update(buf);
        Ok(())
    }

    fn varint(&mut self, at: &str) -> Result<u64, DeltaError> {
        let mut value = 0u64;
        for i in 0..10 {
            let mut b = [0u8];
            self.exact(&mut b, at)?;
            let bits = u64::from(b[0] & 0x7f);
            if (i == 9 && b[0] > 1) || (i > 0 && b[0] == 0) {
                // Overflow, or a padded (non-canonical) encoding.
                break;
            }
            value |= bits << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad(at, "a length that overflows 64 bits or is not in its shortest form"))
    }

    fn bytes(&mut self, len: u64, max: u64, at: &str) -> Result<Vec<u8>, DeltaError> {
        if len > max {
            return Err(bad(at, format!("{len} bytes of data, more than the {max} it can need")));
        }
        // Grow with the bytes that really arrive: a length is only a claim.
        let mut buf = Vec::new();
        let got = (&mut *self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|source| DeltaError::Io { at: format!("at {at}"), source })?;
        if got as u64 != len {
            let source = io::Error::new(io::ErrorKind::UnexpectedEof, format!("{got} of {len} bytes"));
            return Err(DeltaError::Io { at: format!("at {at}"), source });
        }
        self.hasher.update(&buf);
        Ok(buf)
    }
}
