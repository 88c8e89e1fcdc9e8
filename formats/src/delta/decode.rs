//! Reading deltas: the fixed header, the head against the base (a release
//! or a signature), and the ops, each checked before anything is used.

use std::collections::HashSet;
use std::io::{self, Read};

use zstd::zstd_safe;

use super::{bad, file_hash, head_text, needed_from, signature_text, DeltaError, Ends, Op};
use super::{FIXED_LEN, FORMAT_VERSION, MAGIC, MAX_HEAD, MAX_WINDOW_LOG, OP_LITERAL, OP_PATCH, OP_RSYNC, RSYNC_MAGIC};
use crate::bundle::Head;
use crate::signature::Signature;
use crate::varint::get_varint;
use crate::{BlobHash, EntryKind, Manifest, ReleaseId, ReleaseMeta};

/// Reads only the fixed header: what the delta goes from and to.
pub fn read_ends(input: &mut dyn Read) -> Result<Ends, DeltaError> {
    let mut fixed = [0u8; FIXED_LEN];
    input.read_exact(&mut fixed).map_err(|source| DeltaError::Io { at: "in its header".into(), source })?;
    parse_fixed(&fixed)
}

fn parse_fixed(fixed: &[u8; FIXED_LEN]) -> Result<Ends, DeltaError> {
    let Fixed { base, target } = parse_fixed_as(fixed, MAGIC)?;
    Ok(Ends { base: ReleaseId::from_bytes(base), target })
}

fn parse_fixed_rsync(fixed: &[u8; FIXED_LEN]) -> Result<(BlobHash, ReleaseId), DeltaError> {
    let Fixed { base, target } = parse_fixed_as(fixed, RSYNC_MAGIC)?;
    Ok((BlobHash::from_bytes(base), target))
}

/// The fixed header's two ids. The base's 32 bytes are a release id in a
/// delta and a signature's hash in an rsync delta, so they stay raw until the
/// magic says which.
struct Fixed {
    base: [u8; 32],
    target: ReleaseId,
}

fn parse_fixed_as(fixed: &[u8; FIXED_LEN], magic: [u8; 8]) -> Result<Fixed, DeltaError> {
    if fixed[..8] != magic {
        return Err(DeltaError::Magic);
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(DeltaError::Version(version));
    }
    let base = fixed[12..44].try_into().expect("32 bytes");
    let target = ReleaseId::from_bytes(fixed[44..76].try_into().expect("32 bytes"));
    Ok(Fixed { base, target })
}

/// A delta read whole and checked: its target's head, and one op for each
/// entry of [`needed`](super::needed)`(base, target)`, in that order.
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
    let (target, head, ops) = read_impl(input, &Basis::Release(base))?;
    Ok(Parsed { ends: Ends { base: base.id, target }, head, ops })
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
    parse_fixed_rsync(&fixed)
}

/// Returns the target's id, its head and the ops; the base is checked to be `basis`.
fn read_impl(input: &mut dyn Read, basis: &Basis<'_>) -> Result<(ReleaseId, Head, Vec<Op>), DeltaError> {
    let mut r = Reader { inner: input, hasher: blake3::Hasher::new() };
    let mut fixed = [0u8; FIXED_LEN];
    r.exact(&mut fixed, "in its header")?;
    let (target, prefix) = match basis {
        Basis::Release(base) => {
            let ends = parse_fixed(&fixed)?;
            if ends.base != base.id {
                return Err(DeltaError::WrongBase { expected: base.id, actual: ends.base });
            }
            (ends.target, head_text(base, false))
        }
        Basis::Files(signature) => {
            let (actual, target) = parse_fixed_rsync(&fixed)?;
            if actual != signature.id {
                return Err(DeltaError::WrongBasis { expected: signature.id, actual });
            }
            (target, signature_text(signature))
        }
    };

    let head_len = r.varint("the head's length")?;
    let head_data = r.bytes(head_len, 2 * (crate::bundle::MAX_MANIFEST + crate::bundle::MAX_META), "the head")?;
    let head = decode_head(&head_data, &prefix)?;
    if head.id != target {
        return Err(DeltaError::TargetMismatch { expected: target, actual: head.id });
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
    Ok((target, head, ops))
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
        let value = crate::varint::decode(|| {
            let mut b = [0u8];
            self.exact(&mut b, at)?;
            Ok(b[0])
        })?;
        value.ok_or_else(|| bad(at, "a length that overflows 64 bits or is not in its shortest form"))
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
