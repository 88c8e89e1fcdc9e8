//! Writing deltas: the head frame, each op's frame, and the stream with its
//! trailing hash.

use std::io::{self, Write};

use zstd::zstd_safe;

use super::{head_text, signature_text, Ends, Op};
use super::{FORMAT_VERSION, MAGIC, MAX_WINDOW_LOG, OP_LITERAL, OP_PATCH, OP_RSYNC, RSYNC_MAGIC};
use crate::bundle::Head;
use crate::signature::Signature;
use crate::varint::put_varint;
use crate::{BlobHash, ReleaseId};

/// How hard zstd works on one frame: a level, and optionally a shallower
/// search than the level's own (zstd's `searchLog`). The decoder needs to know
/// neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effort {
    /// zstd level, 1 to 19.
    pub level: i32,
    /// log2 of the match candidates searched at each position; `None` keeps the level's.
    pub search_log: Option<u32>,
}

impl From<i32> for Effort {
    fn from(level: i32) -> Self {
        Self { level, search_log: None }
    }
}

/// Compresses `content` with `prefix` as zstd's reference prefix (empty for
/// none), at a level (an `i32`) or an [`Effort`].
pub fn compress(content: &[u8], prefix: &[u8], effort: impl Into<Effort>) -> io::Result<Vec<u8>> {
    Compressor::new().compress(content, prefix, effort)
}

/// A zstd context kept from frame to frame, so that its tables are allocated
/// (and their pages faulted in) once: for a thread that compresses many
/// frames whose prefixes live at least as long as it (`'p`). Each frame is
/// the same bytes [`compress`] makes.
#[allow(missing_debug_implementations)] // the zstd context has no Debug
pub struct Compressor<'p> {
    cctx: zstd_safe::CCtx<'p>,
}

impl Default for Compressor<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'p> Compressor<'p> {
    /// A compressor whose context is allocated at its first frame.
    pub fn new() -> Self {
        Self { cctx: zstd_safe::CCtx::create() }
    }

    /// Compresses `content` with `prefix` as zstd's reference prefix (empty for
    /// none), at a level (an `i32`) or an [`Effort`].
    pub fn compress(&mut self, content: &[u8], prefix: &'p [u8], effort: impl Into<Effort>) -> io::Result<Vec<u8>> {
        let effort = effort.into();
        let cctx = &mut self.cctx;
        // Parameters and any prefix of the last frame are forgotten; the tables are kept.
        cctx.reset(zstd_safe::ResetDirective::SessionAndParameters).map_err(zstd_error)?;
        let window = window_log(prefix.len() + content.len());
        let set = |cctx: &mut zstd_safe::CCtx<'_>, p| cctx.set_parameter(p).map(drop).map_err(zstd_error);
        set(cctx, zstd_safe::CParameter::CompressionLevel(effort.level))?;
        if let Some(search_log) = effort.search_log {
            set(cctx, zstd_safe::CParameter::SearchLog(search_log))?;
        }
        set(cctx, zstd_safe::CParameter::WindowLog(window))?;
        set(cctx, zstd_safe::CParameter::ChecksumFlag(false))?;
        set(cctx, zstd_safe::CParameter::ContentSizeFlag(true))?;
        if !prefix.is_empty() {
            cctx.ref_prefix(prefix).map_err(zstd_error)?;
        }
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(content.len()));
        cctx.compress2(&mut out, content).map_err(zstd_error)?;
        Ok(out)
    }
}

/// The smallest window that holds prefix and content, within zstd's limits
/// and [`MAX_WINDOW_LOG`].
fn window_log(len: usize) -> u32 {
    let bits = usize::BITS - len.max(1).leading_zeros();
    bits.clamp(10, MAX_WINDOW_LOG)
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// The head frame: the target's manifest and metadata against the base's.
pub fn encode_head(base: &Head, target: &Head, effort: impl Into<Effort>) -> io::Result<Vec<u8>> {
    compress(&head_text(target, true), &head_text(base, false), effort)
}

/// The head frame of an rsync delta: the target's manifest and metadata
/// against the signature's list of sizes, hashes and paths (which most
/// manifest lines repeat).
pub fn encode_head_rsync(basis: &Signature, target: &Head, effort: impl Into<Effort>) -> io::Result<Vec<u8>> {
    compress(&head_text(target, true), &signature_text(basis), effort)
}

/// Writes a delta and returns its length. `ops` must be in [`needed`](super::needed) order.
pub fn write(out: &mut dyn Write, ends: Ends, head: &[u8], ops: &[Op]) -> io::Result<u64> {
    write_raw(out, MAGIC, ends.base.as_bytes(), &ends.target, head, ops)
}

/// Writes an rsync delta against the signature `basis`; `ops` in
/// [`needed_from`](super::needed_from) order over the signature's hashes.
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
