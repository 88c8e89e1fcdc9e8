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
mod decode;
mod encode;

use std::collections::HashSet;
use std::io::{self, Read, Write};

use crate::bundle::Head;
use crate::signature::Signature;
use crate::varint::put_varint;
use crate::{BlobHash, Entry, EntryKind, Manifest, ReleaseId};

pub use decode::{read, read_ends, read_rsync, read_rsync_basis, Parsed, RsyncParsed};
pub use encode::{compress, encode_head, encode_head_rsync, write, write_rsync, Compressor, Effort};

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

/// What a delta goes from and to: release to release. (An rsync delta's base
/// is a signature's hash, not a release: see [`read_rsync_basis`] and
/// [`write_rsync`].)
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

/// `size TAB hash TAB path` per signed file: the head prefix of rsync deltas.
fn signature_text(basis: &Signature) -> Vec<u8> {
    let mut out = String::new();
    for f in &basis.files {
        out.push_str(&format!("{}\t{}\t{}\n", f.size, f.hash, f.path));
    }
    out.into_bytes()
}
