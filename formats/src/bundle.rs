//! The bundle: one release as a reproducible `.tar.zst` stream.
//!
//! | order | tar entry | type | content |
//! |---|---|---|---|
//! | 1 | `.ferry` | directory, mode 755 | |
//! | 2 | `.ferry/manifest` | file, mode 644 | the canonical [manifest](crate::manifest) text |
//! | 3 | `.ferry/release.json` | file, mode 644 | the canonical [release metadata](crate::release) |
//! | 4… | every manifest entry, in manifest order | directory, file or symlink | the release's files |
//! | end | one 512-byte zero block after the tar crate's own end marker | | nothing after it |
//!
//! Every header is a GNU tar header with mtime [`NORMALIZED_MTIME`], uid and
//! gid 0, no user or group names, and the manifest's mode; a name or link
//! target longer than 100 bytes is carried by a GNU long-name entry
//! (`././@LongLink`, type `L` or `K`). No PAX headers, no hard links, no
//! devices. GNU tar and bsdtar list and extract a bundle as they would any
//! tarball.
//!
//! The tar stream is compressed as one zstd frame with a content checksum,
//! multi-threaded. zstd's multi-threaded output does not depend on the
//! number of worker threads, so the same release gives the same bytes on
//! any machine (see the `same_bytes_with_any_worker_count` test).
//!
//! After the frame comes a 48-byte trailer, a zstd *skippable* frame that
//! zstd, GNU tar and bsdtar pass over:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | skippable-frame magic `0x184D2A5E`, little-endian |
//! | 4..8 | payload length, 40, little-endian |
//! | 8..16 | `ferry-b3` |
//! | 16..48 | blake3 of every byte of the file before the trailer |
//!
//! Some bits of a compressed stream do not change what it decodes to (unused
//! header bits, slack in entropy tables); the trailer makes a flip of any
//! bit of the file an error, not only one that changes a file's content.
//!
//! Reading is strict ([`read`]): the metadata must come first; the manifest and
//! metadata must be canonical; the computed [`ReleaseId`] must be the expected
//! one; then every tar entry must be the next manifest entry — same path, type,
//! mode, size, target and blake3 — and nothing may follow the end of the archive.
//! The reader never unpacks anything itself: a [`Visitor`] sees each entry after
//! its path has been checked and learns of a bad hash before the reader returns.
//! The tar crate runs in raw mode so ferry, not the crate, decides what every
//! header means.

use std::io::{self, Read, Write};

use tar::EntryType;

use crate::manifest::ManifestError;
use crate::release::MetaError;
use crate::{BlobHash, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta, NORMALIZED_MTIME};

/// The bundle layout version. It changes with the manifest or metadata format.
pub const FORMAT_VERSION: u32 = 1;
/// Where the metadata lives in a bundle.
pub const META_DIR: &str = ".ferry";
/// The manifest's path in a bundle.
pub const MANIFEST_PATH: &str = ".ferry/manifest";
/// The release metadata's path in a bundle.
pub const RELEASE_PATH: &str = ".ferry/release.json";
/// The largest manifest a reader accepts (about two million entries).
pub const MAX_MANIFEST: u64 = 256 << 20;
/// The largest release metadata a reader accepts.
pub const MAX_META: u64 = 1 << 20;
/// The largest window a reader lets the zstd stream ask for (128 MiB).
const MAX_WINDOW_LOG: u32 = 27;
/// GNU long names longer than a path can be are refused before they are read.
const MAX_LONG_NAME: u64 = crate::path::MAX_PATH as u64 + 1;
/// The trailer: a skippable frame holding the blake3 of the bytes before it.
const TRAILER_LEN: usize = 48;
const TRAILER_MAGIC: u32 = 0x184D_2A5E;
const TRAILER_TAG: &[u8; 8] = b"ferry-b3";

fn trailer(hash: blake3::Hash) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..4].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
    t[4..8].copy_from_slice(&40u32.to_le_bytes());
    t[8..16].copy_from_slice(TRAILER_TAG);
    t[16..48].copy_from_slice(hash.as_bytes());
    t
}

/// A writer that hashes what it passes on.
struct HashWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything but the last [`TRAILER_LEN`] bytes it has
/// passed on, which it holds back until it knows they are not the trailer.
struct TrailerReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    held: Vec<u8>,
}

impl<R: Read> Read for TrailerReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n >= TRAILER_LEN {
            self.hasher.update(&self.held);
            self.hasher.update(&buf[..n - TRAILER_LEN]);
            self.held.clear();
            self.held.extend_from_slice(&buf[n - TRAILER_LEN..n]);
        } else {
            self.held.extend_from_slice(&buf[..n]);
            let excess = self.held.len().saturating_sub(TRAILER_LEN);
            self.hasher.update(&self.held[..excess]);
            self.held.drain(..excess);
        }
        Ok(n)
    }
}

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
        let id = ReleaseId::compute(&manifest.to_text(), &meta.to_canonical());
        Ok(Self { id, manifest, meta })
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

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot read {path:?} for the bundle")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path:?} changed while the bundle was written ({reason}); build again")]
    Changed { path: String, reason: String },
    #[error("cannot write the bundle")]
    Output(#[source] io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Output(e)
    }
}

/// Writes `head`'s bundle to `out`, asking `open` for each file's content, and
/// returns `out`. Content is hashed again as it is written: a file that no
/// longer matches the manifest fails the write. `progress` hears how many
/// content bytes were written since it last heard.
pub fn write<W: Write, R: Read>(
    out: W,
    head: &Head,
    opts: &WriteOptions,
    mut open: impl FnMut(&Entry) -> io::Result<R>,
    mut progress: impl FnMut(u64),
) -> Result<W, WriteError> {
    let out = HashWriter { inner: out, hasher: blake3::Hasher::new() };
    let mut enc = zstd::Encoder::new(out, opts.level).map_err(WriteError::Output)?;
    enc.include_checksum(true).map_err(WriteError::Output)?;
    enc.multithread(opts.workers.max(1)).map_err(WriteError::Output)?;
    let mut tar = tar::Builder::new(enc);
    let out = |e| WriteError::Output(e);

    let manifest = head.manifest.to_text();
    let meta = head.meta.to_canonical();
    tar.append_data(&mut header(EntryType::Directory, 0o755, 0), META_DIR, io::empty()).map_err(out)?;
    tar.append_data(&mut header(EntryType::Regular, 0o644, manifest.len() as u64), MANIFEST_PATH, &manifest[..])
        .map_err(out)?;
    tar.append_data(&mut header(EntryType::Regular, 0o644, meta.len() as u64), RELEASE_PATH, &meta[..]).map_err(out)?;

    for e in head.manifest.entries() {
        let path = e.path.as_str();
        match &e.kind {
            EntryKind::Dir { mode } => {
                tar.append_data(&mut header(EntryType::Directory, *mode, 0), path, io::empty()).map_err(out)?;
            }
            EntryKind::Symlink { target } => {
                tar.append_link(&mut header(EntryType::Symlink, 0o777, 0), path, target).map_err(out)?;
            }
            EntryKind::File { mode, size, hash } => {
                let source = open(e).map_err(|source| WriteError::Source { path: path.into(), source })?;
                let mut reader = Hashing::new(source.take(*size));
                let result = tar.append_data(&mut header(EntryType::Regular, *mode, *size), path, &mut reader);
                if reader.failed {
                    let source = result.err().unwrap_or_else(|| io::Error::other("read failed"));
                    return Err(WriteError::Source { path: path.into(), source });
                }
                result.map_err(out)?;
                let changed = |reason: String| WriteError::Changed { path: path.into(), reason };
                if reader.count != *size {
                    return Err(changed(format!("{} bytes, the manifest says {size}", reader.count)));
                }
                let got = BlobHash::from(reader.hasher.finalize());
                if got != *hash {
                    return Err(changed(format!("blake3 {got}, the manifest says {hash}")));
                }
                if reader.inner.get_mut().read(&mut [0u8]).map_err(out)? != 0 {
                    return Err(changed(format!("longer than the {size} bytes the manifest says")));
                }
                progress(*size);
            }
        }
    }
    let enc = tar.into_inner().map_err(out)?;
    let HashWriter { mut inner, hasher } = enc.finish().map_err(out)?;
    inner.write_all(&trailer(hasher.finalize())).map_err(out)?;
    Ok(inner)
}

fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(NORMALIZED_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A reader that hashes and counts what passes through it and remembers
/// whether its source failed (to tell a bad bundle from a failing visitor).
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
    failed: bool,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self { inner, hasher: blake3::Hasher::new(), count: 0, failed: false }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Sees a bundle's entries as [`read`] checks them.
pub trait Visitor {
    /// The bundle's head, checked, before any entry.
    fn head(&mut self, _head: &Head) -> io::Result<()> {
        Ok(())
    }

    /// One manifest entry whose path, type, mode, size and target matched the
    /// tar header. For a file, `content` yields its bytes; the reader checks
    /// their hash after this returns, so a visitor must not make the entry
    /// visible to anyone until [`read`] has returned `Ok`.
    fn entry(&mut self, _entry: &Entry, _content: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
}

/// A visitor that only lets the reader check every byte.
#[derive(Debug, Default)]
pub struct Discard;

impl Visitor for Discard {}

/// A bundle whose every byte matched its manifest and whose id is known.
#[derive(Debug, Clone)]
pub struct Verified(Head);

impl Verified {
    pub fn head(&self) -> &Head {
        &self.0
    }

    pub fn into_head(self) -> Head {
        self.0
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bundle breaks a rule; `at` names the entry.
    #[error("{at}: {reason}")]
    Refused { at: String, reason: String },
    /// The tar or zstd stream itself is damaged.
    #[error("the bundle is corrupt or truncated {at}")]
    Corrupt {
        at: String,
        #[source]
        source: io::Error,
    },
    #[error("the bundle's contents hash to release {actual}, not the expected {expected}")]
    IdMismatch { expected: ReleaseId, actual: ReleaseId },
    /// The visitor failed (e.g. the disk it writes to is full).
    #[error("{at}")]
    Visitor {
        at: String,
        #[source]
        source: io::Error,
    },
}

/// Reads and checks only the head: the metadata, manifest and id. The files
/// are not read, so this is fast, and proves nothing about them.
pub fn read_head<R: Read>(input: R, expect: Option<&ReleaseId>) -> Result<Head, ReadError> {
    read_impl(input, expect, None)
}

/// Reads a whole bundle, checking every rule of the module docs and every
/// byte against the manifest, and shows each entry to `visitor`.
pub fn read<R: Read>(input: R, expect: Option<&ReleaseId>, visitor: &mut dyn Visitor) -> Result<Verified, ReadError> {
    read_impl(input, expect, Some(visitor)).map(Verified)
}

fn refused(at: impl Into<String>, reason: impl Into<String>) -> ReadError {
    ReadError::Refused { at: at.into(), reason: reason.into() }
}

fn read_impl<R: Read>(
    input: R,
    expect: Option<&ReleaseId>,
    visitor: Option<&mut dyn Visitor>,
) -> Result<Head, ReadError> {
    let corrupt = |at: &str| {
        let at = at.to_owned();
        move |source| ReadError::Corrupt { at, source }
    };
    // One frame only: anything after it, even a valid or skippable zstd frame, is trailing data.
    let input = TrailerReader { inner: input, hasher: blake3::Hasher::new(), held: Vec::new() };
    let mut decoder = zstd::Decoder::new(input).map_err(corrupt("at the start"))?.single_frame();
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(corrupt("at the start"))?;
    let mut archive = tar::Archive::new(decoder);
    let head;
    {
        let entries = archive.entries().map_err(corrupt("at the start"))?.raw(true);
        let mut raw = RawEntries { entries, index: 0, last: None };

        let at = "the metadata directory .ferry";
        let (path, link, e) = raw.next()?.ok_or_else(|| refused(at, "missing: the bundle is empty"))?;
        if path != META_DIR.as_bytes() {
            return Err(refused(at, format!("the first entry must be it, found {:?}", lossy(&path))));
        }
        let meta_dir = Entry { path: RelPath::new(META_DIR).expect("valid"), kind: EntryKind::Dir { mode: 0o755 } };
        check_header(&e, link.as_deref(), &meta_dir).map_err(|reason| refused(at, reason))?;
        let manifest_text = raw.metadata_file(MANIFEST_PATH, MAX_MANIFEST)?;
        let meta_text = raw.metadata_file(RELEASE_PATH, MAX_META)?;
        let manifest = Manifest::parse(&manifest_text).map_err(|e| refused(MANIFEST_PATH, e.to_string()))?;
        let meta = ReleaseMeta::parse(&meta_text).map_err(|e| refused(RELEASE_PATH, e.to_string()))?;
        manifest.check_links(|p| meta.may_link_outside(p)).map_err(|e| refused(MANIFEST_PATH, e.to_string()))?;
        let id = ReleaseId::compute(&manifest_text, &meta_text);
        if let Some(expected) = expect {
            if *expected != id {
                return Err(ReadError::IdMismatch { expected: *expected, actual: id });
            }
        }
        head = Head { id, manifest, meta };
        let Some(visitor) = visitor else { return Ok(head) };
        visitor.head(&head).map_err(|source| ReadError::Visitor { at: "before the first entry".into(), source })?;

        for (i, want) in head.manifest.entries().iter().enumerate() {
            let at = format!("entry {:?} (#{} of the manifest)", want.path.as_str(), i + 1);
            let (path, link, mut e) = raw.next()?.ok_or_else(|| refused(&at, "missing: the bundle ends early"))?;
            if path != want.path.as_str().as_bytes() {
                return Err(refused(&at, format!("the tar has {:?} in its place", lossy(&path))));
            }
            check_header(&e, link.as_deref(), want).map_err(|reason| refused(&at, reason))?;
            if let EntryKind::File { size, hash, .. } = &want.kind {
                let mut content = Hashing::new(&mut e);
                let visited = visitor.entry(want, &mut content);
                let drained = visited.and_then(|()| io::copy(&mut content, &mut io::sink()));
                if let Err(source) = drained {
                    return Err(if content.failed {
                        ReadError::Corrupt { at: format!("in {at}"), source }
                    } else {
                        ReadError::Visitor { at, source }
                    });
                }
                if content.count != *size {
                    return Err(refused(&at, format!("{} bytes of content, the manifest says {size}", content.count)));
                }
                let got = BlobHash::from(content.hasher.finalize());
                if got != *hash {
                    return Err(refused(&at, format!("content hashes to {got}, the manifest says {hash}")));
                }
            } else {
                visitor.entry(want, &mut io::empty()).map_err(|source| ReadError::Visitor { at, source })?;
            }
        }
        if let Some((path, _, _)) = raw.next()? {
            return Err(refused(format!("entry {:?}", lossy(&path)), "trailing: it is not in the manifest"));
        }
    }
    // The tar crate stopped at the first zero block; exactly one more may follow.
    let mut decoder = archive.into_inner();
    let mut tail = Vec::new();
    (&mut decoder).take(1 << 20).read_to_end(&mut tail).map_err(corrupt("after the end of the archive"))?;
    if tail.len() != 512 || tail.iter().any(|&b| b != 0) {
        return Err(refused(
            "after the end of the archive",
            format!("{} trailing bytes, expected one 512-byte zero block", tail.len()),
        ));
    }
    // Then the trailer, and nothing else.
    let mut rest = decoder.finish();
    let mut after = Vec::new();
    (&mut rest).take(1 << 20).read_to_end(&mut after).map_err(corrupt("after the zstd frame"))?;
    let at = "after the zstd frame";
    let fixed = &trailer(blake3::Hash::from_bytes([0; 32]))[..16];
    let problem = if after.is_empty() {
        Some("the checksum trailer is missing (truncated?)")
    } else if !after.starts_with(fixed) {
        Some("trailing data after the compressed stream, where the checksum trailer belongs")
    } else if after.len() < TRAILER_LEN {
        Some("the checksum trailer is cut short (truncated?)")
    } else if after.len() > TRAILER_LEN {
        Some("trailing data after the checksum trailer")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(refused(at, problem));
    }
    let expected = blake3::Hash::from_bytes(after[16..48].try_into().expect("32 bytes"));
    let actual = rest.into_inner().hasher.finalize();
    if actual != expected {
        return Err(refused(
            at,
            format!("the file's bytes hash to {actual}, its trailer says {expected}: the file was changed after it was written"),
        ));
    }
    Ok(head)
}

/// Checks one tar header against its manifest entry.
fn check_header<R: Read>(e: &tar::Entry<'_, R>, link: Option<&[u8]>, want: &Entry) -> Result<(), String> {
    let h = e.header();
    let kind = h.entry_type();
    let mode = h.mode().map_err(|err| format!("unreadable mode field: {err}"))?;
    // The tar crate has already parsed the size (a bad size field is a corrupt stream).
    let size = e.size();
    let (want_kind, want_name) = match want.kind {
        EntryKind::Dir { .. } => (EntryType::Directory, "a directory"),
        EntryKind::File { .. } => (EntryType::Regular, "a file"),
        EntryKind::Symlink { .. } => (EntryType::Symlink, "a symlink"),
    };
    if kind != want_kind {
        return Err(format!("the tar holds {}, the manifest says {want_name}", describe(kind)));
    }
    if mode & 0o7000 != 0 {
        return Err(format!("mode {mode:o} has setuid, setgid or sticky bits"));
    }
    if mode != want.mode() {
        return Err(format!("mode {mode:o} in the tar, {:o} in the manifest", want.mode()));
    }
    if size != want.size() {
        return Err(format!("size {size} in the tar, {} in the manifest", want.size()));
    }
    if let EntryKind::Symlink { target } = &want.kind {
        let got = link
            .map(<[u8]>::to_vec)
            .or_else(|| h.link_name_bytes().map(std::borrow::Cow::into_owned))
            .unwrap_or_default();
        if got != target.as_bytes() {
            return Err(format!("links to {:?} in the tar, {target:?} in the manifest", lossy(&got)));
        }
    } else if link.is_some() {
        return Err("has a GNU long link name but is not a symlink".into());
    }
    Ok(())
}

fn describe(kind: EntryType) -> String {
    match kind {
        EntryType::Regular => "a file".into(),
        EntryType::Continuous => "a contiguous file (ferry bundles have none)".into(),
        EntryType::Directory => "a directory".into(),
        EntryType::Symlink => "a symlink".into(),
        EntryType::Link => "a hard link (ferry bundles have none)".into(),
        EntryType::Char => "a character device (ferry bundles have none)".into(),
        EntryType::Block => "a block device (ferry bundles have none)".into(),
        EntryType::Fifo => "a fifo (ferry bundles have none)".into(),
        EntryType::GNUSparse => "a sparse file (ferry bundles have none)".into(),
        other => format!("an entry of type {:?}", other.as_byte() as char),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The tar crate's raw entries, with GNU long names folded in by ferry's rules.
struct RawEntries<'a, R: Read> {
    entries: tar::Entries<'a, R>,
    index: usize,
    last: Option<String>,
}

type RawEntry<'a, R> = (Vec<u8>, Option<Vec<u8>>, tar::Entry<'a, R>);

impl<'a, R: Read> RawEntries<'a, R> {
    fn position(&self) -> String {
        match &self.last {
            Some(p) => format!("after entry {p:?} (tar entry #{})", self.index),
            None => "at the start".into(),
        }
    }

    /// The next real entry: its path, its long link name if any, and the entry.
    fn next(&mut self) -> Result<Option<RawEntry<'a, R>>, ReadError> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut e = match self.entries.next() {
                None if long_name.is_some() || long_link.is_some() => {
                    return Err(refused(self.position(), "a GNU long name is followed by no entry"));
                }
                None => return Ok(None),
                Some(Err(source)) => return Err(ReadError::Corrupt { at: self.position(), source }),
                Some(Ok(e)) => e,
            };
            self.index += 1;
            if e.header().as_gnu().is_none() {
                return Err(refused(self.position(), "a tar header that is not in GNU format"));
            }
            let kind = e.header().entry_type();
            let slot = match kind {
                EntryType::GNULongName => &mut long_name,
                EntryType::GNULongLink => &mut long_link,
                EntryType::XHeader | EntryType::XGlobalHeader => {
                    return Err(refused(self.position(), "a PAX extended header (ferry bundles have none)"));
                }
                _ => {
                    let path = match long_name {
                        Some(name) => name,
                        None => e.header().path_bytes().into_owned(),
                    };
                    self.last = Some(lossy(&path));
                    return Ok(Some((path, long_link, e)));
                }
            };
            if slot.is_some() {
                return Err(refused(self.position(), "two GNU long names for one entry"));
            }
            let size = e.header().entry_size().unwrap_or(u64::MAX);
            if size > MAX_LONG_NAME {
                return Err(refused(self.position(), format!("a GNU long name of {size} bytes")));
            }
            let mut name = Vec::with_capacity(size as usize);
            e.read_to_end(&mut name).map_err(|source| ReadError::Corrupt { at: self.position(), source })?;
            while name.last() == Some(&0) {
                name.pop();
            }
            *slot = Some(name);
        }
    }

    /// Reads one of the metadata files, which must come in its place.
    fn metadata_file(&mut self, path: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        let (got, link, mut e) = self.next()?.ok_or_else(|| refused(path, "missing: the bundle ends early"))?;
        if got != path.as_bytes() {
            return Err(refused(path, format!("expected it next, found {:?}", lossy(&got))));
        }
        let size = e.size();
        if size > max {
            return Err(refused(path, format!("{size} bytes; at most {max} are accepted")));
        }
        // Checked as a file of this size with the mode every bundle gives its metadata.
        let hash = BlobHash::of(b"");
        let want =
            Entry { path: RelPath::new(path).expect("valid"), kind: EntryKind::File { mode: 0o644, size, hash } };
        check_header(&e, link.as_deref(), &want).map_err(|reason| refused(path, reason))?;
        let mut buf = Vec::with_capacity(size.min(1 << 20) as usize);
        e.read_to_end(&mut buf).map_err(|source| ReadError::Corrupt { at: format!("in {path}"), source })?;
        if buf.len() as u64 != size {
            return Err(refused(path, "truncated"));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{Component, ComponentKind, FORMAT_VERSION};
    use std::collections::BTreeMap;

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
        let bytes = write(Vec::new(), &head, &opts, |e| Ok(&files[e.path.as_str()][..]), |_| {}).unwrap();
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
        let (_, one) = write_sample(1);
        let (_, three) = write_sample(3);
        assert!(one == three, "zstd output depends on the number of workers");
    }

    #[test]
    fn writer_refuses_a_file_that_changed() {
        let (head, mut files) = sample();
        files.get_mut("app/main.py").unwrap()[0] = b'P';
        let err = write(Vec::new(), &head, &WriteOptions::default(), |e| Ok(&files[e.path.as_str()][..]), |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("\"app/main.py\" changed while the bundle was written (blake3"), "{err}");
        let grown = files.get_mut("app/main.py").unwrap();
        grown[0] = b'p';
        grown.push(b'\n');
        let err = write(Vec::new(), &head, &WriteOptions::default(), |e| Ok(&files[e.path.as_str()][..]), |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("longer than the 12 bytes"), "{err}");
    }
}
