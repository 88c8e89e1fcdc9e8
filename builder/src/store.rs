//! The local bundle store.
//!
//! ```text
//! <store>/
//!   bundles/<id>.tar.zst     the bundle, written atomically, never changed
//!   bundles/<id>.json        what `ferry bundles` shows: service, version, sizes,
//!                            when and where it was first built (not part of the id)
//!   cache/<service>.json     the build cache (see `cache`)
//!   steps/<service>/<step>/  the `[build]` steps' cached outputs (see `steps`)
//!   exports/<hash>/          a `--git-ref` build's export, while it builds
//!                            (one directory per config path; see `git`)
//! ```
//!
//! Ids are accepted by any unique prefix of at least [`MIN_PREFIX`] hex digits,
//! as git does; the `bundles/` directory listing is the index.

use std::path::{Path, PathBuf};

use ferry_formats::bundle::{self, Head};
use ferry_formats::{atomic, ReleaseId};
use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The fewest hex digits a release id prefix may have.
pub const MIN_PREFIX: usize = 4;

/// What the store records beside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub id: ReleaseId,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The tag that named the commit when it was built, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_tag: Option<String>,
    /// The bundle's size on disk.
    pub size: u64,
    /// Regular files in the release, and their total size.
    pub files: usize,
    pub bytes: u64,
    /// Unix seconds of the first build that wrote this bundle.
    pub built_at: u64,
    pub built_on: String,
    pub ferry_version: String,
}

impl BundleInfo {
    /// The record of the release `head`, whose bundle is `size` bytes.
    pub fn new(head: &Head, size: u64, git_tag: Option<String>, built_at: u64, built_on: String) -> Self {
        let (files, bytes) = head.manifest.file_totals();
        Self {
            id: head.id,
            service: head.meta.service.clone(),
            version: head.meta.version.clone(),
            git_commit: head.meta.git.as_ref().map(|g| g.commit.clone()),
            git_tag,
            size,
            files,
            bytes,
            built_at,
            built_on,
            ferry_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store at `root`; it need not exist yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    pub fn bundle_path(&self, id: &ReleaseId) -> PathBuf {
        self.bundles_dir().join(format!("{id}.tar.zst"))
    }

    fn info_path(&self, id: &ReleaseId) -> PathBuf {
        self.bundles_dir().join(format!("{id}.json"))
    }

    pub fn cache_path(&self, service: &str) -> PathBuf {
        self.root.join("cache").join(format!("{service}.json"))
    }

    /// Where the `[build]` steps of `service` cache their outputs.
    pub fn steps_dir(&self, service: &str) -> PathBuf {
        self.root.join("steps").join(service)
    }

    /// Where `--git-ref` builds of the config at `config` export the commit:
    /// the same directory every time (see `git::export_at`).
    pub fn export_dir(&self, config: &Path) -> PathBuf {
        let id = blake3::hash(config.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("exports").join(&id[..16])
    }

    /// Whether the store has this bundle whole: its size is the one recorded
    /// when it was stored, or with no record, its head reads back as this
    /// release. A truncated or half-replaced bundle is not "had", so the next
    /// build writes it again; a flipped bit is `ferry verify`'s to find (and
    /// every host verifies every byte before it activates a release).
    pub fn has_intact(&self, id: &ReleaseId) -> bool {
        let Ok(meta) = fs::metadata(self.bundle_path(id)) else { return false };
        match self.recorded(id) {
            Some(info) => info.size == meta.len(),
            None => self.read_head(id).is_ok(),
        }
    }

    /// What the store recorded when it first got this bundle, if anything.
    pub fn recorded(&self, id: &ReleaseId) -> Option<BundleInfo> {
        fs::read(self.info_path(id)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Creates `bundles/` and clears temporary files of builds that died.
    pub fn prepare(&self) -> Result<(), StoreError> {
        let dir = self.bundles_dir();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        for dir in [dir, self.root.join("cache")] {
            atomic::remove_stale_temps(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// Records what `ferry bundles` shows about a bundle.
    pub fn record(&self, info: &BundleInfo) -> Result<(), StoreError> {
        let path = self.info_path(&info.id);
        let json = serde_json::to_vec_pretty(info).expect("bundle info serializes");
        atomic::write_atomic(&path, |f| std::io::Write::write_all(f, &json))
            .map_err(|source| StoreError::Io { path, source })
    }

    /// Every bundle's id, in no particular order.
    pub fn ids(&self) -> Result<Vec<ReleaseId>, StoreError> {
        let dir = self.bundles_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar.zst")).and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The bundle whose id starts with `prefix`.
    pub fn resolve(&self, prefix: &str) -> Result<ReleaseId, StoreError> {
        let hex = prefix.len() >= MIN_PREFIX && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(StoreError::BadId { input: prefix.into() });
        }
        let prefix_lc = prefix.to_ascii_lowercase();
        let mut matches: Vec<ReleaseId> =
            self.ids()?.into_iter().filter(|id| id.to_hex().starts_with(&prefix_lc)).collect();
        matches.sort();
        match matches.len() {
            0 => Err(StoreError::NotFound { store: self.root.clone(), prefix: prefix.into() }),
            1 => Ok(matches[0]),
            _ => {
                Err(StoreError::Ambiguous { prefix: prefix.into(), ids: matches.iter().map(|i| i.short(12)).collect() })
            }
        }
    }

    /// What the store knows of a bundle: its record, or failing that (a
    /// bundle copied in by hand) what its head says.
    pub fn info(&self, id: &ReleaseId) -> Result<BundleInfo, StoreError> {
        if let Some(info) = self.recorded(id) {
            return Ok(info);
        }
        let path = self.bundle_path(id);
        let head = self.read_head(id)?;
        let size = fs::metadata(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?.len();
        Ok(BundleInfo { ferry_version: String::new(), ..BundleInfo::new(&head, size, None, 0, String::new()) })
    }

    /// Reads and checks a stored bundle's head (not its files).
    pub fn read_head(&self, id: &ReleaseId) -> Result<Head, StoreError> {
        let path = self.bundle_path(id);
        let file = fs::File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        bundle::read_head(std::io::BufReader::new(file), Some(id)).map_err(|source| StoreError::Bundle { path, source })
    }

    /// Every bundle's record, newest first.
    pub fn list(&self) -> Result<Vec<BundleInfo>, StoreError> {
        let mut all = self.ids()?.iter().map(|id| self.info(id)).collect::<Result<Vec<_>, _>>()?;
        // Builds in the same second are told apart by their bundle files' mtimes.
        let modified = |id: &ReleaseId| fs::metadata(self.bundle_path(id)).and_then(|m| m.modified()).ok();
        all.sort_by_cached_key(|b| (std::cmp::Reverse(b.built_at), std::cmp::Reverse(modified(&b.id)), b.id));
        Ok(all)
    }
}
