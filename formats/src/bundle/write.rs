//! Writing bundles: the files frame first, as the files are read, then the
//! metadata in front of it.

use std::io::{self, BufWriter, Read, Write};

use tar::EntryType;

use super::{trailer, Head, WriteOptions, MANIFEST_PATH, META_DIR, RELEASE_PATH, WINDOW_LOG};
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

/// Writes a bundle's files frame: the release's entries, in manifest order,
/// hashing each file as it goes in, multi-threaded.
#[allow(missing_debug_implementations)] // the zstd encoder has no Debug
pub struct FilesWriter<W: Write> {
    tar: tar::Builder<BufWriter<zstd::Encoder<'static, HashWriter<W>>>>,
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
        enc.include_checksum(true)?;
        enc.multithread(opts.workers.max(1))?;
        enc.window_log(WINDOW_LOG)?;
        // A large buffer in front of the encoder: zstd gets few, large writes.
        Ok(Self { tar: tar::Builder::new(BufWriter::with_capacity(1 << 20, enc)), entries: Vec::new() })
    }

    fn check_order(&self, path: &RelPath) -> Result<(), WriteError> {
        match self.entries.last() {
            Some(last) if last.path >= *path => {
                Err(WriteError::Order { path: path.to_string(), after: last.path.to_string() })
            }
            _ => Ok(()),
        }
    }

    pub fn dir(&mut self, path: &RelPath, mode: u32) -> Result<(), WriteError> {
        self.check_order(path)?;
        self.tar.append_data(&mut header(EntryType::Directory, mode, 0), path.as_str(), io::empty())?;
        self.entries.push(Entry { path: path.clone(), kind: EntryKind::Dir { mode } });
        Ok(())
    }

    pub fn symlink(&mut self, path: &RelPath, target: &str) -> Result<(), WriteError> {
        self.check_order(path)?;
        self.tar.append_link(&mut header(EntryType::Symlink, 0o777, 0), path.as_str(), target)?;
        self.entries.push(Entry { path: path.clone(), kind: EntryKind::Symlink { target: target.to_owned() } });
        Ok(())
    }

    /// Adds a file and returns the blake3 of its content.
    pub fn file(&mut self, path: &RelPath, mode: u32, content: &[u8]) -> Result<BlobHash, WriteError> {
        self.check_order(path)?;
        let mut hasher = blake3::Hasher::new();
        if content.len() > 1 << 20 {
            hasher.update_rayon(content);
        } else {
            hasher.update(content);
        }
        let hash = BlobHash::from(hasher.finalize());
        let size = content.len() as u64;
        self.tar.append_data(&mut header(EntryType::Regular, mode, size), path.as_str(), content)?;
        self.entries.push(Entry { path: path.clone(), kind: EntryKind::File { mode, size, hash } });
        Ok(hash)
    }

    /// Ends the tar stream and the frame.
    pub fn finish(self) -> Result<(W, FilesFrame), WriteError> {
        let buffered = self.tar.into_inner()?;
        let enc = buffered.into_inner().map_err(|e| WriteError::Output(e.into_error()))?;
        let HashWriter { inner, hasher } = enc.finish()?;
        Ok((inner, FilesFrame { entries: self.entries, hash: hasher.finalize() }))
    }
}

/// Writes a whole bundle to `out`: the metadata frame of `head`, the files
/// frame read from `files` (what a [`FilesWriter`] wrote, whose entries must be
/// the manifest's), and the trailer. When both `files` and `out` are files,
/// the frame is copied by the kernel (`copy_file_range`), not read and written.
pub fn assemble<W: Write, R: Read>(
    mut out: W,
    head: &Head,
    frame: &FilesFrame,
    mut files: R,
    opts: &WriteOptions,
) -> Result<W, WriteError> {
    if head.manifest.entries() != frame.entries() {
        return Err(WriteError::Mismatch);
    }
    let mut enc = zstd::Encoder::new(Vec::new(), opts.level)?;
    enc.include_checksum(true)?;
    enc.write_all(&metadata_tar(head)?)?;
    let metadata_frame = enc.finish()?;
    out.write_all(&metadata_frame)?;
    io::copy(&mut files, &mut out)?;
    out.write_all(&trailer(blake3::hash(&metadata_frame), frame.hash))?;
    Ok(out)
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
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_data(&mut header(EntryType::Directory, 0o755, 0), META_DIR, io::empty())?;
    tar.append_data(&mut header(EntryType::Regular, 0o644, manifest.len() as u64), MANIFEST_PATH, &manifest[..])?;
    tar.append_data(&mut header(EntryType::Regular, 0o644, meta.len() as u64), RELEASE_PATH, &meta[..])?;
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
