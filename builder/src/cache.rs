//! The build cache: what a file hashed to last time, keyed by its stat.
//!
//! Stored in the store as `cache/<service>.json`, one per service and release
//! root. An entry is reused when the file's path, size, mtime, ctime, inode and
//! device are all the same as when it was hashed — and for a `.pyc`, its
//! source's too, since the pyc's treatment depends on it. Files whose mtime is
//! within [`RACY_SECS`] of the cache being written are not cached: a write in
//! the same clock tick could otherwise go unnoticed (git's "racily clean"
//! problem).
//! A damaged or foreign cache file is ignored, never trusted.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_formats::{atomic, BlobHash};
use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::venv::Rewrite;

/// Files changed this recently (seconds) before the cache is written are not cached.
pub const RACY_SECS: i64 = 2;

/// A file's identity as far as the cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// How a file's bundled content is made from the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Treatment {
    /// As it is.
    Plain,
    /// A pyc whose recorded source mtime is normalized.
    Pyc,
    /// A venv script rewritten to be relocatable.
    Venv(Rewrite),
}

/// Something the build should tell the user about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Note {
    /// A venv file that still names the build path.
    Unrelocated,
    /// A pyc compiled from another version of its source; Python will recompile it.
    StalePyc,
}

/// What a file became: its bundled content's hash and size, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    pub hash: BlobHash,
    pub size: u64,
    pub treatment: Treatment,
    pub note: Option<Note>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    stamp: Stamp,
    dep: Option<Stamp>,
    prepared: Prepared,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    ferry: String,
    root: PathBuf,
    entries: HashMap<String, Cached>,
}

/// What a build recorded for the next: hits by path, fresh results in order.
type Recorded = (HashMap<String, Cached>, Vec<(String, Cached)>);

/// The cache of one service's release root.
#[derive(Debug)]
pub struct Cache {
    /// Where it is saved; `None` for a cache that is off.
    path: Option<PathBuf>,
    old: CacheFile,
    /// Hits, from threads that check the cache, and fresh results, from the
    /// one that packs (in order, a vector: growing a map of 10,000s of
    /// entries as files were packed cost 2,000 page faults and its hashing);
    /// merged when saved, a fresh result over a hit for the same path.
    new: std::sync::Mutex<Recorded>,
    root: PathBuf,
    pub hits: std::sync::atomic::AtomicUsize,
}

impl Cache {
    /// Loads the cache at `path` for `root`, or starts an empty one.
    pub fn load(path: PathBuf, root: &Path) -> Self {
        let old = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
            .filter(|c| c.ferry == env!("CARGO_PKG_VERSION") && c.root == root)
            .unwrap_or_default();
        Self { path: Some(path), old, new: Default::default(), root: root.to_path_buf(), hits: Default::default() }
    }

    /// A cache that knows nothing and saves nothing.
    pub fn off() -> Self {
        Self {
            path: None,
            old: CacheFile::default(),
            new: Default::default(),
            root: PathBuf::new(),
            hits: Default::default(),
        }
    }

    /// Whether the last build left nothing to reuse.
    pub fn is_empty(&self) -> bool {
        self.old.entries.is_empty()
    }

    /// The cached result for `rel`, if its stamps still match. A hit is kept
    /// for the next build.
    pub fn get(&self, rel: &str, stamp: &Stamp, dep: Option<&Stamp>) -> Option<Prepared> {
        let c = self.old.entries.get(rel)?;
        (c.stamp == *stamp && c.dep.as_ref() == dep).then(|| {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.new.lock().expect("cache lock").0.insert(rel.to_owned(), c.clone());
            c.prepared.clone()
        })
    }

    /// Records a freshly computed result for the next build.
    pub fn put(&self, rel: &str, stamp: Stamp, dep: Option<Stamp>, prepared: Prepared) {
        self.new.lock().expect("cache lock").1.push((rel.to_owned(), Cached { stamp, dep, prepared }));
    }

    /// Writes what this build recorded, leaving out racy entries. When every
    /// file was a hit and none went away, the file on disk is already right.
    pub fn save(self) -> std::io::Result<()> {
        let Some(path) = self.path else { return Ok(()) };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let (mut entries, fresh) = self.new.into_inner().expect("cache lock");
        entries.extend(fresh);
        let hits = self.hits.into_inner();
        if hits == entries.len() && hits == self.old.entries.len() {
            return Ok(());
        }
        entries.retain(|_, c| {
            // A write sets mtime; a recent ctime alone (touch, chmod, chown) is no race.
            let recent = |s: &Stamp| s.mtime.0 >= now - RACY_SECS;
            !recent(&c.stamp) && !c.dep.as_ref().is_some_and(recent)
        });
        let file = CacheFile { ferry: env!("CARGO_PKG_VERSION").into(), root: self.root, entries };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        atomic::write_atomic(&path, |f| {
            serde_json::to_writer(std::io::BufWriter::new(f), &file).map_err(std::io::Error::other)
        })
    }
}
