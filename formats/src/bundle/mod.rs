//! The bundle: one release as a reproducible `.tar.zst` file.
//!
//! Decompressed, a bundle is one tar stream:
//!
//! | order | tar entry | type | content |
//! |---|---|---|---|
//! | 1 | `.ferry` | directory, mode 755 | |
//! | 2 | `.ferry/manifest` | file, mode 644 | the canonical [manifest](crate::manifest) text |
//! | 3 | `.ferry/release.json` | file, mode 644 | the canonical [release metadata](crate::release) |
//! | 4… | every manifest entry, in manifest order | directory, file or symlink | the release's files |
//! | end | two 512-byte zero blocks | | |
//!
//! Every header is a GNU tar header with mtime [`NORMALIZED_MTIME`], uid and
//! gid 0, no user or group names, and the manifest's mode; a name or link
//! target longer than 100 bytes is carried by a GNU long-name entry
//! (`././@LongLink`, type `L` or `K`). No PAX headers, no hard links, no
//! devices. GNU tar and bsdtar list and extract a bundle as they would any
//! tarball.
//!
//! The file is four zstd frames, which any zstd decoder reads as one stream:
//!
//! | frame | holds | compression |
//! |---|---|---|
//! | metadata | entries 1–3 | level of [`WriteOptions`], one thread |
//! | padding (format 3) | a *skippable* frame (magic `0x184D2A50`) of zero bytes, 8 to 4,103 bytes long in all: the fewest that end it on a multiple of [`ALIGN`] (4,096) bytes from the start of the file | |
//! | files | entries 4… and the end blocks | the same level, multi-threaded in jobs of [`JOB_SIZE`], window 2^[`WINDOW_LOG`] |
//! | trailer | 80 bytes, a *skippable* frame that decoders pass over | |
//!
//! The padding lets a builder write the files frame, as it compresses it,
//! into the very file that becomes the bundle, and put the metadata — known
//! only at the end — in front of it without copying the frame: the file
//! systems that move a file's blocks (`fallocate`'s `FALLOC_FL_INSERT_RANGE`,
//! ext4 and XFS) do so only by whole blocks. Where that is not possible the
//! builder copies the frame, to the same bytes. Its length is a function of
//! the metadata frame's, so the same release still has one byte sequence.
//!
//! Neither frame carries zstd's content checksum (XXH64 of what it
//! decompresses to): every byte it would cover is covered by blake3 already,
//! the metadata by the id and the files by the manifest, and the frames' own
//! bytes by the trailer. Computing it was 2.5% of a cold build's instructions.
//!
//! | format ([`FORMAT_VERSION`](crate::release::FORMAT_VERSION) in the metadata) | frames |
//! |---|---|
//! | 1 | both with zstd's content checksum; the files frame in zstd's default jobs (four windows, 16 MiB) |
//! | 2 | neither frame with a content checksum; the files frame in jobs of [`JOB_SIZE`] |
//! | 3 | as 2, and the padding frame after the metadata frame |
//!
//! A reader takes any of them: what it checks — the tar stream, every hash,
//! the trailer — is the same in all, and the padding is checked byte for byte
//! (its length and its zeros) in format 3 and refused before it. The format
//! is in the id, so a release built in format 3 has another id than the same
//! tree built in format 2, and the same id always means the same bytes.
//!
//! The metadata has a frame of its own so a builder can read each file once,
//! hashing and compressing it in the same pass, and put the manifest — known
//! only at the end — in front. zstd's multi-threaded output does not depend on
//! the number of worker threads, so the same release gives the same bytes on
//! any machine (the `same_bytes_with_any_worker_count` test).
//!
//! | trailer bytes | field |
//! |---|---|
//! | 0..4 | skippable-frame magic `0x184D2A5E`, little-endian |
//! | 4..8 | payload length, 72, little-endian |
//! | 8..16 | `ferry-b3`, which also names this layout: another layout gets another tag |
//! | 16..48 | blake3 of the metadata frame's bytes (and from format 3 the padding frame's: every byte before the files frame) |
//! | 48..80 | blake3 of the files frame's bytes |
//!
//! Some bits of a compressed stream do not change what it decodes to (unused
//! header bits, slack in entropy tables); the trailer makes a flip of any bit
//! of the file an error, not only one that changes a file's content. Each
//! frame has its own hash so a builder can hash the files frame as it writes
//! it, and put the metadata in front of it without reading it again.
//!
//! | limit | value |
//! |---|---|
//! | manifest text | at most [`MAX_MANIFEST`] bytes, refused from its tar header before it is read |
//! | manifest entries | at most [`MAX_ENTRIES`](crate::manifest::MAX_ENTRIES), counted before a line is parsed |
//! | release metadata | at most [`MAX_META`] bytes |
//! | zstd window | at most 2^27 bytes (128 MiB) |
//! | components | each an entry of the manifest, never a symlink ([`ReleaseMeta::check_components`]) |
//!
//! Reading is strict ([`read`]): the metadata must come first, in its own
//! frame; the manifest and metadata must be canonical; the computed
//! [`ReleaseId`] must be the expected one; then every tar entry must be the next
//! manifest entry — same path, type, mode, size, target and blake3 — and
//! nothing may follow the end of the archive but the trailer. The reader never
//! unpacks anything itself: a [`Visitor`] sees each entry after its path has
//! been checked and learns of a bad hash before the reader returns. The tar
//! crate runs in raw mode so ferry, not the crate, decides what every header
//! means.

mod read;
mod write;

pub use read::{read, read_head, Discard, ReadError, Verified, Visitor};
pub use write::{assemble, head_frames, seal, write, FilesFrame, FilesWriter, PiecesOf, WriteError};

use crate::manifest::ManifestError;
use crate::release::MetaError;
use crate::{Manifest, ReleaseId, ReleaseMeta};

#[cfg(doc)]
use crate::NORMALIZED_MTIME;

/// Where the metadata lives in a bundle.
pub const META_DIR: &str = ".ferry";
/// The manifest's path in a bundle.
pub const MANIFEST_PATH: &str = ".ferry/manifest";
/// The release metadata's path in a bundle.
pub const RELEASE_PATH: &str = ".ferry/release.json";
/// The largest manifest a reader accepts, in bytes of text: room for
/// 100,000 files of 160-byte lines (the benchmark release, 10,000 files of a
/// large venv, has 1.4 MiB). A reader holds the text and the parsed entries,
/// about twice this, so the cap bounds what a small hostile head (its text
/// compresses well) can make a reader hold; it also bounds what a delta's
/// head may decode to (this plus [`MAX_META`]).
pub const MAX_MANIFEST: u64 = 16 << 20;
/// The largest release metadata a reader accepts.
pub const MAX_META: u64 = 1 << 20;
/// The largest window a reader lets the zstd stream ask for (128 MiB).
pub(crate) const MAX_WINDOW_LOG: u32 = 27;
/// GNU long names longer than a path can be are refused before they are read.
pub(crate) const MAX_LONG_NAME: u64 = crate::path::MAX_PATH as u64 + 1;
/// The trailer: a skippable frame holding the blake3 of each frame before it.
pub const TRAILER_LEN: usize = 80;
const TRAILER_MAGIC: u32 = 0x184D_2A5E;
const TRAILER_TAG: &[u8; 8] = b"ferry-b3";
/// The trailer's first 16 bytes, the same in every bundle.
pub(crate) const TRAILER_START: [u8; 16] = {
    let mut t = [0u8; 16];
    let (magic, len) = (TRAILER_MAGIC.to_le_bytes(), ((TRAILER_LEN - 8) as u32).to_le_bytes());
    let mut i = 0;
    while i < 4 {
        t[i] = magic[i];
        t[4 + i] = len[i];
        i += 1;
    }
    let mut i = 0;
    while i < 8 {
        t[8 + i] = TRAILER_TAG[i];
        i += 1;
    }
    t
};

/// The files frame of a format 3 bundle starts at a multiple of this many bytes.
pub const ALIGN: usize = 4096;
/// The skippable-frame magic of the padding frame.
const PAD_MAGIC: u32 = 0x184D_2A50;
/// The first format with a padding frame.
pub(crate) const PADDED_FORMAT: u32 = 3;

/// The padding frame that follows a metadata frame of `metadata_frame_len`
/// bytes: the skippable-frame header and zeros, ending on a multiple of
/// [`ALIGN`].
pub fn padding(metadata_frame_len: usize) -> Vec<u8> {
    let len = padding_len(metadata_frame_len);
    let mut pad = vec![0u8; len];
    pad[..4].copy_from_slice(&PAD_MAGIC.to_le_bytes());
    pad[4..8].copy_from_slice(&((len - 8) as u32).to_le_bytes());
    pad
}

/// How long the padding frame after a metadata frame of this length is:
/// at least its 8-byte header, at most [`ALIGN`] − 1 more.
pub(crate) fn padding_len(metadata_frame_len: usize) -> usize {
    8 + (ALIGN - (metadata_frame_len + 8) % ALIGN) % ALIGN
}

/// The trailer of a bundle whose metadata and files frames hash to these.
pub fn trailer(metadata_frame: blake3::Hash, files_frame: blake3::Hash) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..16].copy_from_slice(&TRAILER_START);
    t[16..48].copy_from_slice(metadata_frame.as_bytes());
    t[48..80].copy_from_slice(files_frame.as_bytes());
    t
}

/// The zstd window, as a power of two: 4 MiB, twice level 3's default.
/// Measured on the benchmark release (10,000 files, 183 MiB): 0.6% smaller at
/// the same speed, because a venv repeats itself across more than 2 MiB.
/// Decompressing needs a 4 MiB buffer.
pub const WINDOW_LOG: u32 = 22;

/// The input of one zstd job of the files frame (format 2): 8 MiB, what
/// `zstd -3 -T0` uses, where zstd's default is four windows (16 MiB here). A
/// build ends when the last job is compressed, on one core: on the benchmark
/// release (2 cores) the frame was done 66–82 ms after its last file went in
/// with 16 MiB jobs, 26–37 ms with 8 MiB, for 0.9% more instructions and a
/// bundle 0.5% larger (still 0.14% smaller than `tar | zstd -3 -T0`'s). Jobs
/// of 4 MiB made it larger than tar's.
pub const JOB_SIZE: u32 = 8 << 20;

/// How to compress a bundle.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level, 1 to 19.
    pub level: i32,
    /// zstd worker threads (at least 1; the output does not depend on it).
    pub workers: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self { level: 3, workers: cores }
    }
}

/// What a bundle is: its id, manifest and metadata.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: ReleaseId,
    pub manifest: Manifest,
    pub meta: ReleaseMeta,
}

impl Head {
    /// Validates a manifest and metadata as a pair and computes their id.
    pub fn new(manifest: Manifest, meta: ReleaseMeta) -> Result<Self, HeadError> {
        meta.validate()?;
        manifest.check_links(|p| meta.may_link_outside(p))?;
        meta.check_components(&manifest)?;
        let id = ReleaseId::compute(&manifest.to_text(), &meta.to_canonical());
        Ok(Self { id, manifest, meta })
    }
}

impl Head {
    /// A head that [`Head::new`] (or the bundle reader) checked before it
    /// was stored, read back from a store the caller trusts: a host's
    /// release whose stage recorded that it was verified. Only the id is
    /// computed; the caller compares it with the id it expects. The link
    /// and component checks, which a hostile manifest can make costly, are
    /// not run again on every later stage.
    pub fn checked_before(manifest: Manifest, meta: ReleaseMeta) -> Self {
        let id = ReleaseId::compute(&manifest.to_text(), &meta.to_canonical());
        Self { id, manifest, meta }
    }
}

/// Why a manifest and metadata do not make a release.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{self, Read};

    use super::*;
    use crate::release::{Component, ComponentKind, FORMAT_VERSION};
    use crate::{BlobHash, Entry, EntryKind, RelPath};

    /// A release with a long path and a long link target, and its file contents.
    pub(crate) fn sample() -> (Head, BTreeMap<String, Vec<u8>>) {
        let long = format!("app/{}", "d".repeat(120));
        let files: BTreeMap<String, Vec<u8>> = [
            ("app/main.py".to_string(), b"print('hi')\n".to_vec()),
            (format!("{long}/x.txt"), vec![7u8; 70_000]),
            ("venv/bin/gunicorn".to_string(), b"#!/bin/sh\n".to_vec()),
        ]
        .into();
        let mut entries = vec![
            Entry { path: RelPath::new("app").unwrap(), kind: EntryKind::Dir { mode: 0o755 } },
            Entry { path: RelPath::new(long.clone()).unwrap(), kind: EntryKind::Dir { mode: 0o755 } },
            Entry { path: RelPath::new("venv").unwrap(), kind: EntryKind::Dir { mode: 0o755 } },
            Entry { path: RelPath::new("venv/bin").unwrap(), kind: EntryKind::Dir { mode: 0o755 } },
            Entry {
                path: RelPath::new("venv/bin/python").unwrap(),
                kind: EntryKind::Symlink { target: format!("/opt/{}/python3", "p".repeat(110)) },
            },
            Entry { path: RelPath::new("link").unwrap(), kind: EntryKind::Symlink { target: format!("{long}/x.txt") } },
        ];
        for (p, c) in &files {
            let mode = if p.contains("/bin/") { 0o755 } else { 0o644 };
            entries.push(Entry {
                path: RelPath::new(p.clone()).unwrap(),
                kind: EntryKind::File { mode, size: c.len() as u64, hash: BlobHash::of(c) },
            });
        }
        let meta = ReleaseMeta {
            format: FORMAT_VERSION,
            service: "shop".into(),
            version: Some("v1".into()),
            git: None,
            components: vec![
                Component { kind: ComponentKind::Code, path: RelPath::new("app").unwrap(), environments: vec![] },
                Component { kind: ComponentKind::Venv, path: RelPath::new("venv").unwrap(), environments: vec![] },
            ],
        };
        (Head::new(Manifest::from_entries(entries).unwrap(), meta).unwrap(), files)
    }

    pub(crate) fn write_sample(workers: u32) -> (Head, Vec<u8>) {
        let (head, files) = sample();
        let opts = WriteOptions { level: 3, workers };
        let bytes = write(Vec::new(), &head, &opts, |e| Ok(&files[e.path.as_str()][..])).unwrap();
        (head, bytes)
    }

    #[test]
    fn round_trip_checks_every_byte() {
        let (head, bytes) = write_sample(2);
        struct Collect(Vec<(String, Vec<u8>)>);
        impl Visitor for Collect {
            fn entry(&mut self, e: &Entry, content: &mut dyn Read) -> io::Result<()> {
                let mut buf = Vec::new();
                content.read_to_end(&mut buf)?;
                self.0.push((e.path.to_string(), buf));
                Ok(())
            }
        }
        let mut seen = Collect(Vec::new());
        let verified = read(&bytes[..], Some(&head.id), &mut seen).unwrap();
        assert_eq!(verified.head().id, head.id);
        assert_eq!(seen.0.len(), head.manifest.entries().len());
        let (_, files) = sample();
        for (p, c) in &seen.0 {
            if let Some(want) = files.get(p) {
                assert_eq!(c, want, "{p}");
            }
        }
        assert_eq!(read_head(&bytes[..], None).unwrap().id, head.id);
    }

    #[test]
    fn same_bytes_with_any_worker_count() {
        // zstd splits its input into jobs (JOB_SIZE, 8 MiB); worker counts
        // can only differ where there are several jobs, so eight.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let big: Vec<u8> = (0..(4 << 22) * 4 + 12345)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"etaoin shrdlu\n"[(x >> 60) as usize % 14]
            })
            .collect();
        let entries = vec![Entry {
            path: RelPath::new("big.txt").unwrap(),
            kind: EntryKind::File { mode: 0o644, size: big.len() as u64, hash: BlobHash::of(&big) },
        }];
        let meta =
            ReleaseMeta { format: FORMAT_VERSION, service: "big".into(), version: None, git: None, components: vec![] };
        let head = Head::new(Manifest::from_entries(entries).unwrap(), meta).unwrap();
        let with = |workers| write(Vec::new(), &head, &WriteOptions { level: 3, workers }, |_| Ok(&big[..])).unwrap();
        let one = with(1);
        assert!(one == with(2), "zstd output depends on the number of workers");
        assert!(one == with(3), "zstd output depends on the number of workers");
    }

    #[test]
    fn writer_refuses_content_that_is_not_the_manifests() {
        let (head, mut files) = sample();
        files.get_mut("app/main.py").unwrap().pop();
        let err = write(Vec::new(), &head, &WriteOptions::default(), |e| Ok(&files[e.path.as_str()][..])).unwrap_err();
        assert!(err.to_string().contains("\"app/main.py\" changed while the bundle was written (11 bytes"), "{err}");
        files.get_mut("app/main.py").unwrap().push(b'?');
        let err = write(Vec::new(), &head, &WriteOptions::default(), |e| Ok(&files[e.path.as_str()][..])).unwrap_err();
        assert!(err.to_string().contains("changed while the bundle was written (blake3 "), "{err}");
    }

    #[test]
    fn files_must_come_in_manifest_order() {
        let mut w = FilesWriter::new(Vec::new(), &WriteOptions::default()).unwrap();
        w.dir(&RelPath::new("b").unwrap(), 0o755).unwrap();
        let err = w.file(&RelPath::new("a").unwrap(), 0o644, b"").unwrap_err();
        assert_eq!(err.to_string(), "entry \"a\" comes after \"b\": a bundle's entries must be in manifest order");
    }

    #[test]
    fn a_file_in_pieces_is_the_same_bytes_as_whole_and_must_have_its_size() {
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = (RelPath::new("a").unwrap(), RelPath::new("b").unwrap());
        let whole = {
            let mut w = FilesWriter::new(Vec::new(), &WriteOptions::default()).unwrap();
            let hash = w.file(&a, 0o755, &content).unwrap();
            w.file(&b, 0o644, b"after").unwrap();
            (hash, w.finish().unwrap())
        };
        let pieces = {
            let mut w = FilesWriter::new(Vec::new(), &WriteOptions::default()).unwrap();
            let mut file = w.file_in_pieces(&a, 0o755, content.len() as u64).unwrap();
            for piece in content.chunks(1 << 20) {
                file.piece(piece).unwrap();
            }
            let hash = file.end().unwrap();
            w.file(&b, 0o644, b"after").unwrap();
            (hash, w.finish().unwrap())
        };
        assert_eq!(whole.0, pieces.0);
        assert_eq!(whole.0, BlobHash::of(&content));
        assert_eq!(whole.1 .0, pieces.1 .0, "the frames differ");
        assert_eq!(whole.1 .1.entries(), pieces.1 .1.entries());

        let mut w = FilesWriter::new(Vec::new(), &WriteOptions::default()).unwrap();
        let mut file = w.file_in_pieces(&a, 0o644, 4).unwrap();
        file.piece(b"abc").unwrap();
        let err = file.end().unwrap_err().to_string();
        assert_eq!(err, "\"a\" changed while the bundle was written (3 bytes, not the 4 of its header); build again");
        let mut w = FilesWriter::new(Vec::new(), &WriteOptions::default()).unwrap();
        let mut file = w.file_in_pieces(&a, 0o644, 4).unwrap();
        let err = file.piece(b"abcde").unwrap_err().to_string();
        assert!(err.contains("more than the 4 bytes of its header"), "{err}");
        w.dir(&b, 0o755).unwrap();
        assert!(w.file_in_pieces(&a, 0o644, 0).is_err(), "out of order");
    }

    #[test]
    fn metadata_in_the_files_frame_is_refused() {
        // One zstd frame for everything, sealed as if it were the metadata and an empty files frame.
        let (head, bytes) = write_sample(1);
        let tar = zstd::decode_all(&bytes[..]).unwrap();
        let mut one = zstd::encode_all(&tar[..], 3).unwrap();
        let hash = blake3::hash(&one);
        one.extend_from_slice(&trailer(hash, blake3::hash(b"")));
        let err = read(&one[..], Some(&head.id), &mut Discard).unwrap_err().to_string();
        assert!(err.starts_with("the metadata frame: it decompresses to "), "{err}");
        assert!(err.ends_with("the metadata must be a zstd frame of its own"), "{err}");
    }
}
