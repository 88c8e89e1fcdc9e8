//! Asset bridging (`bridge_assets`, as Kamal's): while a rolling deploy
//! runs behind a load balancer, a page rendered by the old release may ask
//! a host already on the new one for a fingerprinted asset only the old
//! release has. So the release being staged also gets, in each bridged
//! directory, the files of the release it replaces (the host's `current`)
//! that it lacks: hardlinked (copied across file systems), never over one
//! of its own. A running release is never changed, so the other way round
//! is not bridged.
//!
//! Only the files of the current release's own manifest are bridged, never
//! the ones it was given by bridging itself: an asset lives on for one
//! release after the last one that had it, and does not pile up. Files are
//! taken only where the path is a real directory in both releases (no
//! symlink is followed, neither out of the current release nor into
//! somewhere else from the new one), and only regular files are taken. A
//! current release ferry did not stage (no readable head) lends nothing.
//!
//! What was bridged is recorded in `.ferry/bridged.json`: those files are
//! not in the release's manifest, so `verify` and flips (which check the
//! manifest's entries) do not see them, and later stages neither lend them
//! nor bridge them again.

use std::io;
use std::path::{Path, PathBuf};

use ferry_formats::{BlobHash, EntryKind, RelPath, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;

use super::options::{BridgedRecord, BRIDGED};
use super::staging::Staging;
use super::StageOptions;
use crate::host::files::{finish_file, hash_file, open_regular};
use crate::host::{at, Host, HostError};

/// One file to bridge: where it is in the current release, where it goes,
/// its manifest mode and hash.
struct Bridge {
    rel: RelPath,
    from: PathBuf,
    to: PathBuf,
    mode: u32,
    hash: BlobHash,
}

impl Staging<'_> {
    /// Bridges the asset directories of `opts` from the current release into
    /// this staging directory (see the module docs); returns the release
    /// bridged from and the paths bridged, sorted.
    pub(super) fn bridge(&self, opts: &StageOptions) -> Result<Option<(ReleaseId, Vec<RelPath>)>, HostError> {
        if opts.bridge_assets.is_empty() {
            return Ok(None);
        }
        // No current release (or one that is not a release ferry staged):
        // nothing to bridge from.
        let Some(from) = self.host.current().ok().flatten().filter(|c| *c != self.id) else { return Ok(None) };
        let Ok(head) = self.host.head(&from) else { return Ok(None) };
        let old = self.host.release_dir(&from);
        // Paths the current release gave over to shared/ are not its own.
        let linked = self.host.staged_with(&from).map(|o| o.linked()).unwrap_or_default();
        let mut todo = Vec::new();
        for entry in head.manifest.entries() {
            let EntryKind::File { mode, hash, .. } = &entry.kind else { continue };
            let rel = &entry.path;
            if !opts.bridge_assets.iter().any(|d| rel.starts_with(d)) || linked.iter().any(|l| rel.starts_with(l)) {
                continue;
            }
            if !regular_file_below(&old, rel)? || !free_below(&self.dir, rel)? {
                continue;
            }
            todo.push(Bridge {
                rel: rel.clone(),
                from: old.join(rel.as_str()),
                to: self.dir.join(rel.as_str()),
                mode: *mode,
                hash: *hash,
            });
        }
        if todo.is_empty() {
            return Ok(None);
        }
        // Parents first, one at a time (create_dir_all tolerates a parent
        // made meanwhile, but not a symlink, which free_below ruled out).
        for b in &todo {
            if let Some(parent) = b.to.parent() {
                fs::create_dir_all(parent).map_err(HostError::Fs)?;
            }
        }
        todo.par_iter().try_for_each(place)?;
        let mut files: Vec<RelPath> = todo.into_iter().map(|b| b.rel).collect();
        files.sort();
        let record = BridgedRecord { from, files: files.clone() };
        let path = self.dir.join(BRIDGED);
        let mut file = fs::File::create(&path).map_err(HostError::Fs)?;
        io::Write::write_all(&mut file, &serde_json::to_vec(&record).expect("a record serializes"))
            .map_err(at(&path))?;
        finish_file(file.file(), 0o444).map_err(at(&path))?;
        Ok(Some((from, files)))
    }
}

/// Hardlinks (or, across file systems or past the link limit, copies) one
/// file, and checks it is still what the current release's manifest says:
/// a file changed on this host is refused rather than spread.
fn place(b: &Bridge) -> Result<(), HostError> {
    if fs::hard_link(&b.from, &b.to).is_err() {
        let mut from = open_regular(&b.from)?;
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&b.to).map_err(HostError::Fs)?;
        let mut out = io::BufWriter::new(file);
        io::copy(&mut from, &mut out).map_err(at(&b.to))?;
        let file = out.into_inner().map_err(|e| at(&b.to)(e.into_error()))?;
        finish_file(file.file(), b.mode).map_err(at(&b.to))?;
    }
    let actual = hash_file(&b.to)?;
    if actual != b.hash {
        return Err(HostError::Input(format!(
            "{}: the current release's copy hashes to {actual}, not {}; that release was changed on this host (see `ferry host verify`), and its assets are not bridged",
            b.from.display(),
            b.hash
        )));
    }
    Ok(())
}

/// What is at `root/rel`, walked through real directories only.
#[derive(PartialEq, Eq)]
enum Below {
    /// A regular file, reached through real directories (no symlink on the
    /// way, nor at the end).
    File,
    /// Nothing, and every parent of it that exists is a real directory
    /// (not a symlink, which could lead out of the release): a place a
    /// bridged file may be put without overwriting or following anything.
    Free,
    /// Anything else: a directory, a symlink, a file where a directory
    /// would be.
    Taken,
}

fn below(root: &Path, rel: &RelPath) -> Result<Below, HostError> {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Below::Free),
            Err(e) => return Err(HostError::Fs(e)),
        };
        let last = i + 1 == parts.len();
        if last && meta.is_file() {
            return Ok(Below::File);
        }
        if last || !meta.is_dir() {
            return Ok(Below::Taken);
        }
    }
    Ok(Below::Taken)
}

fn regular_file_below(root: &Path, rel: &RelPath) -> Result<bool, HostError> {
    Ok(below(root, rel)? == Below::File)
}

fn free_below(root: &Path, rel: &RelPath) -> Result<bool, HostError> {
    Ok(below(root, rel)? == Below::Free)
}

impl Host {
    /// The asset files release `id` was given by bridging, and where from
    /// (none for a release staged without `bridge_assets`).
    pub(crate) fn bridged(&self, id: &ReleaseId) -> Option<(ReleaseId, Vec<RelPath>)> {
        let bytes = fs::read(self.release_dir(id).join(BRIDGED)).ok()?;
        let record: BridgedRecord = serde_json::from_slice(&bytes).ok()?;
        Some((record.from, record.files))
    }
}
