//! All-or-nothing file-system steps.
//!
//! A file is written under a temporary name in its final directory —
//! `.tmp-<pid>-<random>` — flushed to disk, renamed over its final name, and
//! the directory is fsynced. A reader sees the old file or the new one, never
//! half of one. A process killed mid-write leaves only the temporary file,
//! which [`remove_stale_temps`] clears once its writer is gone.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;

/// The prefix of every temporary name this module makes.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `path` atomically with whatever `fill` writes, and returns what
/// `fill` returned. On any error the temporary file is removed and `path` is
/// untouched.
pub fn write_atomic<T, E: From<io::Error>>(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> Result<T, E>,
) -> Result<T, E> {
    write_atomic_mode(path, 0o644, fill)
}

/// [`write_atomic`] with permission bits `mode`, set before a byte is
/// written (0600 for a file that holds secrets: never readable by others,
/// not even for a moment).
pub fn write_atomic_mode<T, E: From<io::Error>>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> Result<T, E>,
) -> Result<T, E> {
    let dir = parent(path);
    let temp = temp_file(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a temporary file in {}: {e}", dir.display())))?;
    let (file, temp_path) = temp.into_parts();
    let mut file = fs::File::from_parts(file, PathBuf::from(&*temp_path));
    // tempfile makes files 0600; most of what ferry writes is meant to be read.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let value = fill(&mut file)?;
    file.flush()?;
    let (file, _) = file.into_parts();
    persist(file, temp_path, path)?;
    Ok(value)
}

/// Makes `temp` (a file of [`temp_file`], written in full) `path`, as
/// [`write_atomic_mode`] does: permission bits `mode`, flushed to disk,
/// renamed over `path`, the directory fsynced.
pub fn commit(temp: tempfile::NamedTempFile, path: &Path, mode: u32) -> io::Result<()> {
    let (file, temp_path) = temp.into_parts();
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    persist(file, temp_path, path)
}

/// fsyncs a written temporary file, renames it to `path` and fsyncs the directory.
fn persist(file: std::fs::File, temp_path: tempfile::TempPath, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    temp_path
        .persist(path)
        .map_err(|e| io::Error::new(e.error.kind(), format!("cannot rename into {}: {}", path.display(), e.error)))?;
    fsync_dir(parent(path))
}

/// A temporary file in `dir` with this module's naming, removed when dropped
/// (or, after a crash, by [`remove_stale_temps`]).
pub fn temp_file(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new().prefix(&format!("{TEMP_PREFIX}{}-", std::process::id())).tempfile_in(dir)
}

/// Makes a directory's entries (new names, renames) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes `.tmp-<pid>-*` files in `dir` whose writing process no longer runs.
/// Returns how many it removed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The pid in a `.tmp-<pid>-…` name.
fn temp_owner(name: &str) -> Option<u32> {
    name.strip_prefix(TEMP_PREFIX)?.split('-').next()?.parse().ok()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, |f| f.write_all(b"one")).unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions()) & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn removes_only_dead_writers_temps() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(format!(".tmp-{}-abc", std::process::id()));
        // pid_max is at most 2^22 on Linux, so this pid cannot be running.
        let dead = dir.path().join(".tmp-4999999-abc");
        fs::write(&mine, b"").unwrap();
        fs::write(&dead, b"").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(mine.exists() && !dead.exists());
    }
}
