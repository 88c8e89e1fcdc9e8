//! Writing a bundle's file: the files frame straight into the file that
//! becomes the bundle, the metadata put in front of it at the end.
//!
//! The files frame is compressed into a temporary file in the store as the
//! files are read, and the disk is asked to write it as it grows
//! ([`Writeback`]), so little is left to write when the build ends. The
//! metadata — known only once every file is hashed — goes in front by
//! moving the frame's blocks (`fallocate(FALLOC_FL_INSERT_RANGE)`, which
//! ext4 and XFS do without copying a byte): format 3's padding frame makes
//! the bytes before the files frame a whole number of 4 KiB blocks. Where
//! the file system cannot (tmpfs, btrfs, NFS, a block size over 4 KiB) the
//! frame is copied behind the metadata in a second file, to the same bytes.

use std::io::{self, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_formats::atomic;
use ferry_formats::bundle::ALIGN;
use rustix::fs::{Advice, FallocateFlags};

/// How much of the files frame is written before the disk is asked to write
/// it out.
const WRITEBACK_STEP: u64 = 1 << 20;

/// A file being written from its start, whose written bytes the kernel is
/// asked to start writing to disk every [`WRITEBACK_STEP`] bytes, so the
/// fsync at the end waits for the last of them only. (On Linux,
/// `POSIX_FADV_DONTNEED` starts the writeback of a range's dirty pages and
/// leaves them cached while they are written: what `sync_file_range` does,
/// without `unsafe`.)
#[derive(Debug)]
pub(crate) struct Writeback {
    file: std::fs::File,
    written: u64,
    asked: u64,
}

impl Writeback {
    /// Writes through a handle of its own to `file`'s open file.
    pub(crate) fn new(file: &std::fs::File) -> io::Result<Self> {
        Ok(Self { file: file.try_clone()?, written: 0, asked: 0 })
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if let Some(len) = NonZeroU64::new(self.written - self.asked).filter(|l| l.get() >= WRITEBACK_STEP) {
            // Only a hint: the fsync at the end is what makes the bundle durable.
            let _ = rustix::fs::fadvise(&self.file, self.asked, Some(len), Advice::DontNeed);
            self.asked = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a bundle's file was put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assembled {
    /// The files frame's blocks were moved behind the metadata.
    InPlace,
    /// The files frame was copied behind the metadata into a second file.
    Copied,
}

/// Makes `path` the bundle of `head_frames` (the bytes before the files
/// frame), the files frame in `frame` (a temporary file holding nothing
/// else) and `trailer`, durably and atomically: a reader of `path` sees the
/// whole bundle or nothing.
pub(crate) fn put(
    frame: tempfile::NamedTempFile,
    head_frames: &[u8],
    trailer: &[u8],
    path: &Path,
) -> io::Result<Assembled> {
    put_as(frame, head_frames, trailer, path, true)
}

fn put_as(
    frame: tempfile::NamedTempFile,
    head_frames: &[u8],
    trailer: &[u8],
    path: &Path,
    in_place: bool,
) -> io::Result<Assembled> {
    let file = frame.as_file();
    let frame_len = file.metadata()?.len();
    let head_len = head_frames.len() as u64;
    if in_place
        && head_len > 0
        && head_len % ALIGN as u64 == 0
        && rustix::fs::fallocate(file, FallocateFlags::INSERT_RANGE, 0, head_len).is_ok()
    {
        file.write_all_at(head_frames, 0)?;
        file.write_all_at(trailer, head_len + frame_len)?;
        let bundle = file.try_clone()?;
        atomic::commit(frame, path, 0o644)?;
        // Moving the blocks dropped the file's pages from memory; a push
        // right after the build reads them back, so have them read now.
        // Only a hint: the bundle is in place whatever it says.
        let _ = rustix::fs::fadvise(&bundle, 0, None, Advice::WillNeed);
        return Ok(Assembled::InPlace);
    }
    let mut from = frame.reopen()?;
    atomic::write_atomic(path, |out| {
        out.write_all(head_frames)?;
        io::copy(&mut from, out)?;
        out.write_all(trailer)
    })?;
    Ok(Assembled::Copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `dir`'s file system moves blocks (ext4, XFS), found by trying.
    fn inserts(dir: &Path) -> bool {
        let probe = tempfile::tempfile_in(dir).unwrap();
        probe.write_all_at(&[1; 2 * ALIGN], 0).unwrap();
        rustix::fs::fallocate(&probe, FallocateFlags::INSERT_RANGE, 0, ALIGN as u64).is_ok()
    }

    #[test]
    fn in_place_and_copied_give_the_same_bytes_and_leave_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let head: Vec<u8> = (0..2 * ALIGN).map(|i| (i % 251) as u8).collect();
        let body: Vec<u8> = (0..3 * ALIGN + 123).map(|i| (i % 241) as u8).collect();
        let trailer = [9u8; 80];
        let mut want = head.clone();
        want.extend_from_slice(&body);
        want.extend_from_slice(&trailer);
        let mut made = Vec::new();
        for in_place in [true, false] {
            let frame = atomic::temp_file(dir.path()).unwrap();
            let mut w = Writeback::new(frame.as_file()).unwrap();
            w.write_all(&body).unwrap();
            let path = dir.path().join(format!("bundle-{in_place}"));
            let how = put_as(frame, &head, &trailer, &path, in_place).unwrap();
            assert_eq!(fs_err::read(&path).unwrap(), want, "{how:?}");
            let mode = std::os::unix::fs::PermissionsExt::mode(&fs_err::metadata(&path).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o644, "{how:?}");
            made.push(how);
        }
        let expected_in_place = if inserts(dir.path()) { Assembled::InPlace } else { Assembled::Copied };
        assert_eq!(made, [expected_in_place, Assembled::Copied]);
        let mut names: Vec<_> =
            fs_err::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["bundle-false", "bundle-true"], "a temporary file was left behind");
    }

    #[test]
    fn a_head_that_is_not_whole_blocks_is_copied_behind() {
        let dir = tempfile::tempdir().unwrap();
        let frame = atomic::temp_file(dir.path()).unwrap();
        frame.as_file().write_all_at(b"frame", 0).unwrap();
        let path = dir.path().join("bundle");
        assert_eq!(put(frame, b"head", b"end", &path).unwrap(), Assembled::Copied);
        assert_eq!(fs_err::read(&path).unwrap(), b"headframeend");
    }
}
