//! Signatures: what a host has, for a delta from content the controller does
//! not know (a drifted, hand-deployed or pruned release).
//!
//! The host lists every regular file under its current release with its
//! blake3 and a fast_rsync signature (MD4 blocks, rsync's √size block rule);
//! the controller answers with an rsync delta (`delta`, magic `FERRYRSD`)
//! whose every file is checked by blake3 on the host, so MD4's weakness can
//! make a patch fail but never install wrong bytes.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FERRYSIG` |
//! | 8 | 4 | format version, u32 little-endian ([`FORMAT_VERSION`]) |
//! | 12 | varint | file count |
//! | … | … | per file, sorted by path: varint n, n bytes of path; varint size; 32 bytes blake3; varint m, m bytes of fast_rsync signature |
//! | end − 32 | 32 | blake3 of every byte before it: the signature's id |

use std::io::{self, Read, Write};

use crate::varint::{get_varint, put_varint};
use crate::{BlobHash, RelPath};

pub const MAGIC: [u8; 8] = *b"FERRYSIG";
pub const FORMAT_VERSION: u32 = 1;

/// MD4 bytes kept per block: 8, as rsync's own default strength.
const CRYPTO_HASH_SIZE: u32 = 8;

/// One file the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFile {
    pub path: RelPath,
    pub size: u64,
    pub hash: BlobHash,
    /// fast_rsync's serialized signature of the content.
    pub rsync: Vec<u8>,
}

impl SignedFile {
    /// Signs one file's content.
    pub fn of(path: RelPath, content: &[u8]) -> Self {
        let block_size = ((content.len() as f64).sqrt() as u32).next_multiple_of(8).clamp(512, 128 << 10);
        let options = fast_rsync::SignatureOptions { block_size, crypto_hash_size: CRYPTO_HASH_SIZE };
        Self {
            path,
            size: content.len() as u64,
            hash: BlobHash::of(content),
            rsync: fast_rsync::Signature::calculate(content, options).into_serialized(),
        }
    }
}

/// A host's files, and the id an rsync delta names them by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub id: BlobHash,
    pub files: Vec<SignedFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a ferry signature (bad magic)")]
    Magic,
    #[error("signature format version {0} is not supported")]
    Version(u32),
    #[error("the signature is damaged: {0}")]
    Corrupt(String),
    #[error("cannot read the signature")]
    Io(#[source] io::Error),
}

impl Signature {
    /// The signature of these files (sorted by path here).
    pub fn new(mut files: Vec<SignedFile>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut s = Self { id: BlobHash::of(b""), files };
        let bytes = s.to_bytes();
        s.id = BlobHash::from_bytes(bytes[bytes.len() - 32..].try_into().expect("32 bytes"));
        s
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        put_varint(&mut out, self.files.len() as u64);
        for f in &self.files {
            put_varint(&mut out, f.path.as_str().len() as u64);
            out.extend_from_slice(f.path.as_str().as_bytes());
            put_varint(&mut out, f.size);
            out.extend_from_slice(f.hash.as_bytes());
            put_varint(&mut out, f.rsync.len() as u64);
            out.extend_from_slice(&f.rsync);
        }
        let id = blake3::hash(&out);
        out.extend_from_slice(id.as_bytes());
        out
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&self.to_bytes())
    }

    /// Reads and checks a signature (at most `limit` bytes).
    pub fn read(input: &mut dyn Read, limit: u64) -> Result<Self, SignatureError> {
        let mut bytes = Vec::new();
        input.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(SignatureError::Io)?;
        if bytes.len() as u64 > limit {
            return Err(SignatureError::Corrupt(format!("longer than {limit} bytes")));
        }
        if bytes.len() < 12 + 32 {
            return Err(SignatureError::Corrupt("truncated".into()));
        }
        if bytes[..8] != MAGIC {
            return Err(SignatureError::Magic);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(SignatureError::Version(version));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != trailer {
            return Err(SignatureError::Corrupt("its trailing hash does not match".into()));
        }
        let corrupt = |what: &str| SignatureError::Corrupt(what.to_owned());
        let mut rest = &body[12..];
        let count = get_varint(&mut rest).ok_or_else(|| corrupt("no file count"))?;
        let mut files = Vec::new();
        for _ in 0..count {
            let len = get_varint(&mut rest).ok_or_else(|| corrupt("a path length"))? as usize;
            let path = take(&mut rest, len).ok_or_else(|| corrupt("a path"))?;
            let path = RelPath::from_bytes(path).map_err(|e| SignatureError::Corrupt(e.to_string()))?;
            let size = get_varint(&mut rest).ok_or_else(|| corrupt("a size"))?;
            let hash = take(&mut rest, 32).ok_or_else(|| corrupt("a hash"))?;
            let hash = BlobHash::from_bytes(hash.try_into().expect("32 bytes"));
            let len = get_varint(&mut rest).ok_or_else(|| corrupt("a signature length"))? as usize;
            let rsync = take(&mut rest, len).ok_or_else(|| corrupt("a file signature"))?.to_vec();
            files.push(SignedFile { path, size, hash, rsync });
        }
        if !rest.is_empty() {
            return Err(corrupt("bytes after the last file"));
        }
        if files.windows(2).any(|w| w[0].path >= w[1].path) {
            return Err(corrupt("paths out of order or repeated"));
        }
        Ok(Self { id: BlobHash::from_bytes(trailer.try_into().expect("32 bytes")), files })
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let files = vec![
            SignedFile::of(RelPath::new("b.txt").unwrap(), &vec![7u8; 5000]),
            SignedFile::of(RelPath::new("a.txt").unwrap(), b"hello"),
        ];
        let sig = Signature::new(files);
        assert_eq!(sig.files[0].path.as_str(), "a.txt");
        let bytes = sig.to_bytes();
        assert_eq!(Signature::read(&mut &bytes[..], 1 << 20).unwrap(), sig);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Signature::read(&mut &bad[..], 1 << 20).is_err(), "flip at {i}");
        }
        assert!(Signature::read(&mut &bytes[..bytes.len() - 1], 1 << 20).is_err());
    }
}
