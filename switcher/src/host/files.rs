//! The file-level steps of a release on disk: read-only modes, the
//! normalized mtime, hashing, and opening only what is a regular file.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use ferry_formats::{BlobHash, NORMALIZED_MTIME};
use fs_err as fs;

use super::{at, HostError};

/// The mode a release file has on disk: read-only.
pub(crate) fn disk_mode(mode: u32) -> u32 {
    mode & 0o555
}

/// This process's umask, as Linux reports it (reading it with umask(2) would
/// mean setting it, racing other threads); the strictest one if unknown.
pub(crate) fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o777)
}

/// Hashes a file: read(2) for the many small files of a release (mmap's
/// unmapping costs TLB shootdowns on every core), mmap for big ones.
pub(crate) fn hash_file(path: &std::path::Path) -> Result<BlobHash, HostError> {
    let mut hasher = blake3::Hasher::new();
    let file = open_regular(path)?;
    let len = file.metadata().map_err(at(path))?.len();
    if len > 1 << 20 {
        hasher.update_mmap(path).map_err(at(path))?;
    } else {
        hasher.update_reader(file).map_err(at(path))?;
    }
    Ok(BlobHash::from_bytes(*hasher.finalize().as_bytes()))
}

/// Opens a file that must be a regular file, not following a symlink.
pub(crate) fn open_regular(path: &std::path::Path) -> Result<fs::File, HostError> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(HostError::Fs)?;
    if !file.metadata().map_err(at(path))?.is_file() {
        return Err(HostError::Input(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// The whole content of a regular file (see [`open_regular`]).
pub(crate) fn read_regular(path: &std::path::Path) -> Result<Vec<u8>, HostError> {
    let mut buf = Vec::new();
    open_regular(path)?.read_to_end(&mut buf).map_err(at(path))?;
    Ok(buf)
}

/// Read-only permissions and the normalized mtime (which the release's
/// `.pyc` files were made against).
pub(crate) fn finish_file(file: &std::fs::File, mode: u32) -> io::Result<()> {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(NORMALIZED_MTIME);
    file.set_times(std::fs::FileTimes::new().set_modified(mtime).set_accessed(mtime))?;
    file.set_permissions(std::fs::Permissions::from_mode(disk_mode(mode)))
}
