//! Reading bundles: every rule of the format, checked as the stream goes by.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use tar::EntryType;

use super::write::{header_blocks, metadata_entry};
use super::{
    padding, Head, MANIFEST_PATH, MAX_LONG_NAME, MAX_MANIFEST, MAX_META, MAX_WINDOW_LOG, META_DIR, PADDED_FORMAT,
    RELEASE_PATH, TRAILER_LEN, TRAILER_START,
};
use crate::{BlobHash, Entry, EntryKind, Manifest, ReleaseId, ReleaseMeta};

/// The raw bytes under the decoders: hashes the metadata frame and the files
/// frame apart, as the trailer has them. Until the metadata frame's end is
/// known ([`TrailerReader::split`]) its bytes are kept; after it, the last
/// [`TRAILER_LEN`] bytes are held back, since they may be the trailer.
struct TrailerReader<R> {
    inner: R,
    kept: Vec<u8>,
    metadata_frame: Option<blake3::Hash>,
    files_frame: blake3::Hasher,
    held: Vec<u8>,
}

/// More raw bytes than any metadata frame can need; a bundle whose metadata
/// frame runs on past this is refused rather than held in memory.
const MAX_METADATA_FRAME: usize = (MAX_MANIFEST + MAX_META) as usize + (1 << 20);

impl<R: Read> TrailerReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, kept: Vec::new(), metadata_frame: None, files_frame: blake3::Hasher::new(), held: Vec::new() }
    }

    /// The metadata frame ended `unconsumed` bytes before the end of what
    /// this reader has read so far (they sit in the decoder's buffer).
    fn split(&mut self, unconsumed: usize) {
        let kept = std::mem::take(&mut self.kept);
        let boundary = kept.len() - unconsumed;
        self.metadata_frame = Some(blake3::hash(&kept[..boundary]));
        self.feed(&kept[boundary..]);
    }

    fn feed(&mut self, bytes: &[u8]) {
        if bytes.len() >= TRAILER_LEN {
            self.files_frame.update(&self.held);
            self.files_frame.update(&bytes[..bytes.len() - TRAILER_LEN]);
            self.held.clear();
            self.held.extend_from_slice(&bytes[bytes.len() - TRAILER_LEN..]);
        } else {
            self.held.extend_from_slice(bytes);
            let excess = self.held.len().saturating_sub(TRAILER_LEN);
            self.files_frame.update(&self.held[..excess]);
            self.held.drain(..excess);
        }
    }
}

impl<R: Read> Read for TrailerReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.metadata_frame.is_some() {
            self.feed(&buf[..n]);
        } else if self.kept.len() + n > MAX_METADATA_FRAME {
            return Err(io::Error::other("the metadata frame is larger than any metadata can be"));
        } else {
            self.kept.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
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
    let padded = Rc::new(Cell::new(None));
    let frames =
        Frames::new(input, Rc::clone(&padded)).map_err(corrupt("in the metadata frame, before the first entry"))?;
    let mut archive = tar::Archive::new(frames);
    let head;
    let meta_frame_len;
    {
        let entries = archive.entries().map_err(corrupt("in the metadata frame, before the first entry"))?.raw(true);
        let mut raw = RawEntries { entries, index: 0, last: None };

        let at = "the metadata directory .ferry";
        let first = raw.next()?.ok_or_else(|| refused(at, "missing: the bundle is empty"))?;
        if first.path != META_DIR.as_bytes() {
            return Err(refused(at, format!("the first entry must be it, found {:?}", lossy(&first.path))));
        }
        check_entry(&first, &metadata_entry(META_DIR, None)).map_err(|reason| refused(at, reason))?;
        let manifest_text = raw.metadata_file(MANIFEST_PATH, MAX_MANIFEST)?;
        let meta_text = raw.metadata_file(RELEASE_PATH, MAX_META)?;
        let manifest = Manifest::parse(&manifest_text).map_err(|e| refused(MANIFEST_PATH, e.to_string()))?;
        let meta = ReleaseMeta::parse(&meta_text).map_err(|e| refused(RELEASE_PATH, e.to_string()))?;
        manifest.check_links(|p| meta.may_link_outside(p)).map_err(|e| refused(MANIFEST_PATH, e.to_string()))?;
        meta.check_components(&manifest).map_err(|e| refused(RELEASE_PATH, e.to_string()))?;
        let id = ReleaseId::compute(&manifest_text, &meta_text);
        meta_frame_len = metadata_frame_len(manifest_text.len(), meta_text.len());
        // Known before the files frame begins: whether a padding frame comes first.
        padded.set((meta.format >= PADDED_FORMAT).then_some(meta_frame_len));
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
            let raw_entry = raw.next()?.ok_or_else(|| refused(&at, "missing: the bundle ends early"))?;
            if raw_entry.path != want.path.as_str().as_bytes() {
                return Err(refused(&at, format!("the tar has {:?} in its place", lossy(&raw_entry.path))));
            }
            check_entry(&raw_entry, want).map_err(|reason| refused(&at, reason))?;
            let mut e = raw_entry.entry;
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
        if let Some(extra) = raw.next()? {
            return Err(refused(format!("entry {:?}", lossy(&extra.path)), "trailing: it is not in the manifest"));
        }
    }
    // The tar crate stopped at the first zero block; exactly one more may follow.
    let mut frames = archive.into_inner();
    let mut tail = Vec::new();
    (&mut frames).take(1 << 20).read_to_end(&mut tail).map_err(corrupt("in the files frame, after the last entry"))?;
    if tail.len() != 512 || tail.iter().any(|&b| b != 0) {
        return Err(refused(
            "in the files frame, after the last entry",
            format!("{} trailing bytes, expected one 512-byte zero block", tail.len()),
        ));
    }
    if frames.meta_len != meta_frame_len {
        return Err(refused(
            "the metadata frame",
            format!(
                "it decompresses to {} bytes, not the {meta_frame_len} of the metadata: the metadata must be a zstd frame of its own",
                frames.meta_len
            ),
        ));
    }
    // Then the trailer, and nothing else.
    let Some(mut rest) = frames.into_rest() else {
        return Err(refused("the metadata frame", "the bundle has no files frame"));
    };
    let mut after = Vec::new();
    (&mut rest).take(1 << 20).read_to_end(&mut after).map_err(corrupt("after the files frame"))?;
    let at = "after the files frame";
    let problem = if after.is_empty() {
        Some("the checksum trailer is missing (truncated?)")
    } else if !after.starts_with(&TRAILER_START) {
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
    let raw = rest.into_inner();
    let actual = [raw.metadata_frame.expect("split when the files frame began"), raw.files_frame.finalize()];
    for (frame, (got, want)) in
        ["metadata", "files"].into_iter().zip(actual.iter().zip([&after[16..48], &after[48..80]]))
    {
        if got.as_bytes() != want {
            let want = blake3::Hash::from_bytes(want.try_into().expect("32 bytes"));
            return Err(refused(
                at,
                format!("the {frame} frame's bytes hash to {got}, the trailer says {want}: the file was changed after it was written"),
            ));
        }
    }
    Ok(head)
}

/// Checks one entry's tar headers against its manifest entry: first field by
/// field, for a message that says what is wrong, then byte for byte against
/// the blocks ferry writes, so owners, times, type bytes, name encodings and
/// every other field are exactly the canonical ones.
fn check_entry<R: Read>(raw: &RawEntry<'_, R>, want: &Entry) -> Result<(), String> {
    check_header(&raw.entry, raw.link.as_deref(), want)?;
    let canonical = header_blocks(want).map_err(|e| e.to_string())?;
    if raw.blocks == canonical {
        return Ok(());
    }
    if raw.blocks.len() != canonical.len() {
        return Err(format!(
            "{} bytes of tar headers where ferry writes {} (a GNU long name where none belongs, or none where one does)",
            raw.blocks.len(),
            canonical.len()
        ));
    }
    // The checksum changes with any other field, so it is named only when nothing else differs.
    let differs = |i: &usize| raw.blocks[*i] != canonical[*i];
    let first = (0..canonical.len()).filter(|i| !(148..156).contains(&(i % 512))).find(differs);
    let at = first.or_else(|| (0..canonical.len()).find(differs)).expect("they differ");
    Err(format!("its tar header differs from the one ferry writes, in the {} field", header_field(at % 512)))
}

/// The name of the GNU tar header field at this offset.
fn header_field(offset: usize) -> &'static str {
    const FIELDS: [(usize, &str); 17] = [
        (0, "name"),
        (100, "mode"),
        (108, "uid"),
        (116, "gid"),
        (124, "size"),
        (136, "mtime"),
        (148, "checksum"),
        (156, "type"),
        (157, "link name"),
        (257, "magic"),
        (263, "version"),
        (265, "user name"),
        (297, "group name"),
        (329, "device major"),
        (337, "device minor"),
        (345, "access time, change time and other GNU"),
        (512, ""),
    ];
    FIELDS.windows(2).find(|w| offset < w[1].0).map_or("unknown", |w| w[0].1)
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

/// One entry as the tar stream has it.
struct RawEntry<'a, R: Read> {
    path: Vec<u8>,
    /// From a GNU long-link entry, if one came first.
    link: Option<Vec<u8>>,
    /// Every header block of the entry: GNU long-name entries (header and
    /// data, padded), then its own header.
    blocks: Vec<u8>,
    entry: tar::Entry<'a, R>,
}

impl<'a, R: Read> RawEntries<'a, R> {
    fn position(&self) -> String {
        match &self.last {
            Some(p) => format!("after entry {p:?} (tar entry #{})", self.index),
            None => "in the metadata frame, before the first entry".into(),
        }
    }

    /// The next real entry: its path, its long link name if any, and the entry.
    fn next(&mut self) -> Result<Option<RawEntry<'a, R>>, ReadError> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut blocks = Vec::new();
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
            blocks.extend_from_slice(e.header().as_bytes());
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
                    return Ok(Some(RawEntry { path, link: long_link, blocks, entry: e }));
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
            blocks.extend_from_slice(&name);
            blocks.resize(blocks.len().div_ceil(512) * 512, 0);
            while name.last() == Some(&0) {
                name.pop();
            }
            *slot = Some(name);
        }
    }

    /// Reads one of the metadata files, which must come in its place.
    fn metadata_file(&mut self, path: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        let mut raw = self.next()?.ok_or_else(|| refused(path, "missing: the bundle ends early"))?;
        if raw.path != path.as_bytes() {
            return Err(refused(path, format!("expected it next, found {:?}", lossy(&raw.path))));
        }
        let size = raw.entry.size();
        if size > max {
            return Err(refused(path, format!("{size} bytes; at most {max} are accepted")));
        }
        // Checked as a file of this size with the mode every bundle gives its metadata.
        let want = metadata_entry(path, Some(size));
        check_entry(&raw, &want).map_err(|reason| refused(path, reason))?;
        let mut buf = Vec::with_capacity(size.min(1 << 20) as usize);
        raw.entry.read_to_end(&mut buf).map_err(|source| ReadError::Corrupt { at: format!("in {path}"), source })?;
        if buf.len() as u64 != size {
            return Err(refused(path, "truncated"));
        }
        Ok(buf)
    }
}

type Raw<R> = BufReader<TrailerReader<R>>;

/// The decompressed stream of a bundle's two data frames, one after the other.
struct Frames<R: Read> {
    frame: Frame<R>,
    /// Bytes the metadata frame decompressed to.
    meta_len: u64,
    /// From format 3, once the release metadata is read: what the metadata
    /// frame decompresses to, which a padding frame follows. (A metadata
    /// frame that decompresses to anything else is refused for that.)
    padded: Rc<Cell<Option<u64>>>,
}

enum Frame<R: Read> {
    Meta(zstd::Decoder<'static, Raw<R>>),
    Files(zstd::Decoder<'static, Raw<R>>),
    Switching,
}

impl<R: Read> Frames<R> {
    fn new(input: R, padded: Rc<Cell<Option<u64>>>) -> io::Result<Self> {
        let input = TrailerReader::new(input);
        // One frame at a time: anything after the files frame, even a valid
        // zstd frame, is trailing data.
        let mut meta = zstd::Decoder::new(input)?.single_frame();
        meta.window_log_max(MAX_WINDOW_LOG)?;
        Ok(Self { frame: Frame::Meta(meta), meta_len: 0, padded })
    }

    /// The raw input after the files frame, once the files frame has ended.
    fn into_rest(self) -> Option<Raw<R>> {
        match self.frame {
            Frame::Files(d) => Some(d.finish()),
            _ => None,
        }
    }
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.frame {
                Frame::Meta(d) => {
                    let n = d.read(buf)?;
                    if n > 0 || buf.is_empty() {
                        self.meta_len += n as u64;
                        return Ok(n);
                    }
                    let Frame::Meta(d) = std::mem::replace(&mut self.frame, Frame::Switching) else {
                        unreachable!("matched above")
                    };
                    let mut raw = d.finish();
                    if self.padded.get() == Some(self.meta_len) {
                        let meta_frame_len = raw.get_ref().kept.len() - raw.buffer().len();
                        read_padding(&mut raw, meta_frame_len)?;
                    }
                    // The trailer's first hash covers the padding too: every byte before the files frame.
                    let unconsumed = raw.buffer().len();
                    raw.get_mut().split(unconsumed);
                    let mut files = zstd::Decoder::with_buffer(raw)?.single_frame();
                    files.window_log_max(MAX_WINDOW_LOG)?;
                    self.frame = Frame::Files(files);
                }
                Frame::Files(d) => return d.read(buf),
                Frame::Switching => return Err(io::Error::other("the files frame could not be opened")),
            }
        }
    }
}

/// Reads the padding frame that follows a format 3 bundle's metadata frame of
/// `meta_frame_len` bytes: exactly [`padding`]'s bytes, or the bundle is refused.
fn read_padding(raw: &mut impl Read, meta_frame_len: usize) -> io::Result<()> {
    let want = padding(meta_frame_len);
    let mut got = Vec::with_capacity(want.len());
    raw.take(want.len() as u64).read_to_end(&mut got)?;
    if got.len() < want.len() && want.starts_with(&got) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the padding frame after the metadata frame is cut short",
        ));
    }
    if got != want {
        return Err(io::Error::other(format!(
            "format 3 has a padding frame of {} bytes (a skippable-frame header and zeros) after the metadata frame of {meta_frame_len} bytes; these bytes are not it",
            want.len()
        )));
    }
    Ok(())
}

/// What the metadata frame decompresses to: three headers and two padded files.
fn metadata_frame_len(manifest: usize, meta: usize) -> u64 {
    let padded = |n: usize| n.div_ceil(512) as u64 * 512;
    3 * 512 + padded(manifest) + padded(meta)
}
