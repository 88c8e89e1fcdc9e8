//! Writing bundles: the files frame first, as the files are read, then the
//! metadata in front of it.

use std::io::{self, BufWriter, Read, Write};

use tar::EntryType;

use super::{
    padding, trailer, Head, WriteOptions, JOB_SIZE, MANIFEST_PATH, META_DIR, PADDED_FORMAT, RELEASE_PATH, TRAILER_LEN,
    WINDOW_LOG,
};
use crate::{BlobHash, Entry, EntryKind, RelPath, NORMALIZED_MTIME};

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
    #[error("entry {path:?} comes after {after:?}: a bundle's entries must be in manifest order")]
    Order { path: String, after: String },
    #[error("the files frame does not hold the manifest's entries")]
    Mismatch,
    #[error("cannot write the bundle")]
    Output(#[source] io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Output(e)
    }
}

/// The buffer in front of a files frame's encoder.
const WRITE_BUFFER: usize = 128 << 10;

/// Writes a bundle's files frame: the release's entries, in manifest order,
/// hashing each file as it goes in, multi-threaded.
#[allow(missing_debug_implementations)] // the zstd encoder has no Debug
pub struct FilesWriter<W: Write> {
    out: BufWriter<zstd::Encoder<'static, HashWriter<W>>>,
    entries: Vec<Entry>,
}

/// What a [`FilesWriter`] wrote: its entries, in order, with their hashes,
/// and the blake3 of the frame's compressed bytes.
#[derive(Debug)]
pub struct FilesFrame {
    entries: Vec<Entry>,
    hash: blake3::Hash,
}

impl FilesFrame {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl<W: Write> FilesWriter<W> {
    pub fn new(out: W, opts: &WriteOptions) -> Result<Self, WriteError> {
        let mut enc = zstd::Encoder::new(HashWriter { inner: out, hasher: blake3::Hasher::new() }, opts.level)?;
        // No content checksum: blake3 covers every byte (see the module docs).
        enc.include_checksum(false)?;
        enc.multithread(opts.workers.max(1))?;
        enc.window_log(WINDOW_LOG)?;
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
        // A buffer in front of the encoder gathers headers, padding and small
        // files into larger writes; a file of at least its size goes to zstd
        // directly (BufWriter passes it through), not copied once more on the
        // way. zstd cuts its jobs by size, not by write, so the output does
        // not depend on it.
        Ok(Self { out: BufWriter::with_capacity(WRITE_BUFFER, enc), entries: Vec::new() })
    }

    /// Appends an entry and its content, in manifest order.
    fn push(&mut self, entry: Entry, content: &[u8]) -> Result<(), WriteError> {
        self.check_order(&entry.path)?;
        append(&mut self.out, &entry, content)?;
        self.entries.push(entry);
        Ok(())
    }

    fn check_order(&self, path: &RelPath) -> Result<(), WriteError> {
        match self.entries.last().filter(|last| last.path >= *path) {
            Some(last) => Err(WriteError::Order { path: path.to_string(), after: last.path.to_string() }),
            None => Ok(()),
        }
    }

    pub fn dir(&mut self, path: &RelPath, mode: u32) -> Result<(), WriteError> {
        self.push(Entry { path: path.clone(), kind: EntryKind::Dir { mode } }, &[])
    }

    pub fn symlink(&mut self, path: &RelPath, target: &str) -> Result<(), WriteError> {
        self.push(Entry { path: path.clone(), kind: EntryKind::Symlink { target: target.to_owned() } }, &[])
    }

    /// Adds a file and returns the blake3 of its content.
    pub fn file(&mut self, path: &RelPath, mode: u32, content: &[u8]) -> Result<BlobHash, WriteError> {
        let mut file = self.file_in_pieces(path, mode, content.len() as u64)?;
        file.piece(content)?;
        file.end()
    }

    /// Starts a file of `size` bytes whose content comes in pieces (a file
    /// too big to hold whole, read a piece at a time so each piece stays in
    /// the CPU's caches from the read to the hash and zstd's copy). The same
    /// bytes as [`FilesWriter::file`] with the whole content. A file not
    /// ended with [`PiecesOf::end`] leaves the frame unusable.
    pub fn file_in_pieces(&mut self, path: &RelPath, mode: u32, size: u64) -> Result<PiecesOf<'_, W>, WriteError> {
        self.check_order(path)?;
        let hash = BlobHash::of(b""); // the header does not hold it
        let entry = Entry { path: path.clone(), kind: EntryKind::File { mode, size, hash } };
        self.out.write_all(&header_blocks(&entry)?)?;
        Ok(PiecesOf { files: self, entry, hasher: blake3::Hasher::new(), written: 0 })
    }

    /// Ends the tar stream (two zero blocks) and the frame.
    pub fn finish(mut self) -> Result<(W, FilesFrame), WriteError> {
        self.out.write_all(&[0; 1024])?;
        let enc = self.out.into_inner().map_err(|e| WriteError::Output(e.into_error()))?;
        let HashWriter { inner, hasher } = enc.finish()?;
        Ok((inner, FilesFrame { entries: self.entries, hash: hasher.finalize() }))
    }
}

/// A file of a [`FilesWriter`] being written in pieces.
#[allow(missing_debug_implementations)] // the writer has no Debug
pub struct PiecesOf<'a, W: Write> {
    files: &'a mut FilesWriter<W>,
    entry: Entry,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> PiecesOf<'_, W> {
    /// The next piece of the content.
    pub fn piece(&mut self, piece: &[u8]) -> Result<(), WriteError> {
        self.written += piece.len() as u64;
        if self.written > self.entry.size() {
            return Err(WriteError::Changed {
                path: self.entry.path.to_string(),
                reason: format!("more than the {} bytes of its header", self.entry.size()),
            });
        }
        self.hasher.update(piece);
        Ok(self.files.out.write_all(piece)?)
    }

    /// Ends the file, which must have had its size, and returns its blake3.
    pub fn end(self) -> Result<BlobHash, WriteError> {
        let Self { files, mut entry, hasher, written } = self;
        if written != entry.size() {
            return Err(WriteError::Changed {
                path: entry.path.to_string(),
                reason: format!("{written} bytes, not the {} of its header", entry.size()),
            });
        }
        files.out.write_all(padding_to_block(written))?;
        let got = BlobHash::from(hasher.finalize());
        if let EntryKind::File { hash, .. } = &mut entry.kind {
            *hash = got;
        }
        files.entries.push(entry);
        Ok(got)
    }
}

/// Writes a whole bundle to `out`: the [`head_frames`] of `head`, the files
/// frame read from `files` (what a [`FilesWriter`] wrote, whose entries must
/// be the manifest's), and the trailer. When both `files` and `out` are
/// files, the frame is copied by the kernel (`copy_file_range`), not read and
/// written.
pub fn assemble<W: Write, R: Read>(
    mut out: W,
    head: &Head,
    frame: &FilesFrame,
    mut files: R,
    opts: &WriteOptions,
) -> Result<W, WriteError> {
    let head_frames = head_frames(head, opts)?;
    let trailer = seal(head, &head_frames, frame)?;
    out.write_all(&head_frames)?;
    io::copy(&mut files, &mut out)?;
    out.write_all(&trailer)?;
    Ok(out)
}

/// The bytes of `head`'s bundle before its files frame: the metadata frame
/// and, from format 3, the padding frame that ends them on a multiple of
/// [`ALIGN`](super::ALIGN). A builder that writes the pieces of a bundle
/// itself writes these, then the files frame, then [`seal`]'s trailer.
pub fn head_frames(head: &Head, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    let tar = metadata_tar(head)?;
    // A manifest is mostly hex digits: it compresses to about a quarter.
    let mut enc = zstd::Encoder::new(Vec::with_capacity(tar.len() / 3 + super::ALIGN), opts.level)?;
    enc.include_checksum(false)?;
    enc.write_all(&tar)?;
    let mut out = enc.finish()?;
    if head.meta.format >= PADDED_FORMAT {
        out.extend_from_slice(&padding(out.len()));
    }
    Ok(out)
}

/// The trailer of the bundle of `head` made of `head_frames` and `frame`,
/// whose entries must be the manifest's.
pub fn seal(head: &Head, head_frames: &[u8], frame: &FilesFrame) -> Result<[u8; TRAILER_LEN], WriteError> {
    if head.manifest.entries() != frame.entries() {
        return Err(WriteError::Mismatch);
    }
    Ok(trailer(blake3::hash(head_frames), frame.hash))
}

/// Writes the bundle of `head` to `out`, asking `open` for each file's
/// content and checking it against the manifest. The files frame is kept in
/// memory: for tests and small bundles; the builder streams through a
/// [`FilesWriter`] and [`assemble`].
pub fn write<W: Write, R: Read>(
    out: W,
    head: &Head,
    opts: &WriteOptions,
    mut open: impl FnMut(&Entry) -> io::Result<R>,
) -> Result<W, WriteError> {
    let mut files = FilesWriter::new(Vec::new(), opts)?;
    for e in head.manifest.entries() {
        match &e.kind {
            EntryKind::Dir { mode } => files.dir(&e.path, *mode)?,
            EntryKind::Symlink { target } => files.symlink(&e.path, target)?,
            EntryKind::File { mode, size, hash } => {
                let source = |source| WriteError::Source { path: e.path.to_string(), source };
                let mut content = Vec::new();
                open(e).and_then(|mut r| r.read_to_end(&mut content)).map_err(source)?;
                let got = files.file(&e.path, *mode, &content)?;
                let changed = |reason| WriteError::Changed { path: e.path.to_string(), reason };
                if content.len() as u64 != *size {
                    return Err(changed(format!("{} bytes, the manifest says {size}", content.len())));
                }
                if got != *hash {
                    return Err(changed(format!("blake3 {got}, the manifest says {hash}")));
                }
            }
        }
    }
    let (frame_bytes, frame) = files.finish()?;
    assemble(out, head, &frame, &frame_bytes[..], opts)
}

/// The metadata entries as tar bytes, without an end-of-archive marker.
fn metadata_tar(head: &Head) -> io::Result<Vec<u8>> {
    let manifest = head.manifest.to_text();
    let meta = head.meta.to_canonical();
    // Headers and padding: under 4 KiB.
    let mut out = Vec::with_capacity(manifest.len() + meta.len() + 4096);
    append(&mut out, &metadata_entry(META_DIR, None), &[])?;
    append(&mut out, &metadata_entry(MANIFEST_PATH, Some(manifest.len() as u64)), &manifest)?;
    append(&mut out, &metadata_entry(RELEASE_PATH, Some(meta.len() as u64)), &meta)?;
    Ok(out)
}

/// The entry a bundle's metadata directory (`None`) or file of this size
/// has. Its hash is not recorded anywhere: the id covers the metadata.
pub(crate) fn metadata_entry(path: &str, size: Option<u64>) -> Entry {
    let path = RelPath::new(path).expect("metadata paths are valid");
    match size {
        None => Entry { path, kind: EntryKind::Dir { mode: 0o755 } },
        Some(size) => Entry { path, kind: EntryKind::File { mode: 0o644, size, hash: BlobHash::of(b"") } },
    }
}

/// Writes an entry's header blocks, its content and the padding to 512.
fn append(out: &mut impl Write, entry: &Entry, content: &[u8]) -> io::Result<()> {
    out.write_all(&header_blocks(entry)?)?;
    out.write_all(content)?;
    out.write_all(padding_to_block(content.len() as u64))
}

/// The zeros after `len` bytes of content, to the next 512-byte tar block.
fn padding_to_block(len: u64) -> &'static [u8] {
    &[0; 512][..(512 - (len % 512) as usize) % 512]
}

/// The exact header blocks ferry writes for an entry: a GNU long-name entry
/// first when the path or link target is over 100 bytes, then the header.
/// The reader compares every header of a bundle with these, byte for byte.
pub(crate) fn header_blocks(entry: &Entry) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let path = entry.path.as_str();
    match &entry.kind {
        EntryKind::Dir { mode } => tar.append_data(&mut header(EntryType::Directory, *mode, 0), path, io::empty())?,
        // The size is in the header; the content is written by the caller.
        EntryKind::File { mode, size, .. } => {
            tar.append_data(&mut header(EntryType::Regular, *mode, *size), path, io::empty())?;
        }
        EntryKind::Symlink { target } => tar.append_link(&mut header(EntryType::Symlink, 0o777, 0), path, target)?,
    }
    // Taken before the builder is dropped, which would append the end marker.
    Ok(std::mem::take(tar.get_mut()))
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
