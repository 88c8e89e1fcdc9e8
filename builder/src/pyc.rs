//! Keeping Python bytecode valid across the mtime normalization.
//!
//! A timestamp-based `.pyc` (PEP 552 flags 0) records its source's mtime and
//! size; Python recompiles when they differ from the source file's. A bundle
//! gives every file the mtime [`NORMALIZED_MTIME`], so a pyc that was valid on
//! the build machine would be stale on every host — and in a read-only release
//! Python recompiles it on every start, never able to write it back.
//!
//! The builder therefore rewrites the recorded mtime (bytes 8..12) of every pyc
//! that was valid for its source to [`NORMALIZED_MTIME`]. Hash-based pycs need
//! nothing. A pyc that was already stale is left alone and reported.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic: 2 version bytes, then `\r\n` |
//! | 4..8 | flags, little-endian: 0 = timestamp-based, bit 0 = hash-based |
//! | 8..12 | source mtime in seconds, little-endian u32 (timestamp-based) |
//! | 12..16 | source size, little-endian u32 (timestamp-based) |

use ferry_formats::{RelPath, NORMALIZED_MTIME};

/// What [`normalize`] did with a pyc.
#[derive(Debug, PartialEq, Eq)]
pub enum Pyc {
    /// Timestamp-based and valid: the mtime field now says [`NORMALIZED_MTIME`].
    Normalized,
    /// Hash-based: valid whatever the mtime.
    HashBased,
    /// Timestamp-based but compiled from another version of the source.
    Stale,
    /// Not a pyc header ferry understands.
    Unknown,
}

/// Rewrites a pyc's recorded source mtime in place, if it was valid for a
/// source of this mtime (seconds) and size.
pub fn normalize(pyc: &mut [u8], source_mtime: i64, source_size: u64) -> Pyc {
    if pyc.len() < 16 || &pyc[2..4] != b"\r\n" {
        return Pyc::Unknown;
    }
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    match word(&pyc[4..8]) {
        0 => {}
        1 | 3 => return Pyc::HashBased,
        _ => return Pyc::Unknown,
    }
    // Python compares the low 32 bits of both (importlib._bootstrap_external._validate_timestamp_pyc).
    if word(&pyc[8..12]) != source_mtime as u32 || word(&pyc[12..16]) != source_size as u32 {
        return Pyc::Stale;
    }
    pyc[8..12].copy_from_slice(&(NORMALIZED_MTIME as u32).to_le_bytes());
    Pyc::Normalized
}

/// The source of a `__pycache__/<module>.<tag>[.opt-N].pyc` file:
/// `<module>.py` in the parent of `__pycache__`.
pub fn source_of(pyc: &RelPath) -> Option<RelPath> {
    let name = pyc.file_name().strip_suffix(".pyc")?;
    let cache_dir = pyc.parent()?;
    if cache_dir.file_name() != "__pycache__" {
        return None;
    }
    let name = match name.rsplit_once(".opt-") {
        Some((rest, level)) if level.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => name,
    };
    let (module, _tag) = name.rsplit_once('.')?;
    let source = format!("{module}.py");
    match cache_dir.parent() {
        Some(dir) => dir.join(&source).ok(),
        None => RelPath::new(source).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pyc(flags: u32, mtime: u32, size: u32) -> Vec<u8> {
        let mut v = vec![0xa7, 0x0d, b'\r', b'\n'];
        v.extend(flags.to_le_bytes());
        v.extend(mtime.to_le_bytes());
        v.extend(size.to_le_bytes());
        v.extend(b"code");
        v
    }

    #[test]
    fn rewrites_only_valid_timestamp_pycs() {
        let mut valid = pyc(0, 1_700_000_000, 42);
        assert_eq!(normalize(&mut valid, 1_700_000_000, 42), Pyc::Normalized);
        assert_eq!(valid, pyc(0, NORMALIZED_MTIME as u32, 42));
        // Left as they were, byte for byte.
        for (mut bytes, mtime, size, verdict) in [
            (pyc(0, 1_700_000_000, 42), 1_700_000_001, 42, Pyc::Stale),
            (pyc(0, 1_700_000_000, 42), 1_700_000_000, 43, Pyc::Stale),
            (pyc(3, 0, 0), 5, 5, Pyc::HashBased),
            (b"#!/bin/sh".to_vec(), 0, 0, Pyc::Unknown),
        ] {
            let before = bytes.clone();
            assert_eq!(normalize(&mut bytes, mtime, size), verdict);
            assert_eq!(bytes, before);
        }
    }

    #[test]
    fn finds_the_source() {
        let src = |p: &str| source_of(&RelPath::new(p).unwrap()).map(|s| s.to_string());
        assert_eq!(src("app/__pycache__/views.cpython-311.pyc").as_deref(), Some("app/views.py"));
        assert_eq!(src("app/__pycache__/views.cpython-311.opt-2.pyc").as_deref(), Some("app/views.py"));
        assert_eq!(src("__pycache__/m.cpython-312.pyc").as_deref(), Some("m.py"));
        assert_eq!(src("app/views.pyc"), None);
        assert_eq!(src("app/__pycache__/notes.txt"), None);
    }
}
