//! The on-host side: everything `ferry host <verb>` does to one service's
//! directory on one host.
//!
//! ```text
//! <deploy_to>/
//!   releases/<id>/            a complete release: read-only files, hardlinked
//!                             between releases when (hash, mode) match, plus
//!                             .ferry/manifest and .ferry/release.json, and
//!                             .ferry/staged.json (its options) and
//!                             .ferry/verified.json (checked when staged)
//!   releases/.staging-<id>/   a release being staged; never a release until
//!                             complete, verified and synced, then renamed
//!   releases/.pruning-<id>/   a release being removed
//!   current -> releases/<id>  the only thing a flip changes (rename(2))
//!   shared/                   writable state linked into each release
//!   .ferry/lock               flock(2)ed by whoever works here; holds their name
//!   .ferry/journal            what happened, one JSON line each (formats::journal)
//!   .ferry/pins/<id>          releases `prune` never removes
//!   .ferry/trusted_keys       pinned minisign keys: releases must be signed (trust.rs)
//!   .ferry/serial             the highest release serial accepted
//! ```
//!
//! Every verb that changes something takes the [`Lock`] first; whatever a
//! killed predecessor left (a staging or pruning directory, a temporary
//! symlink) is cleared right after.

pub mod admin_socket;
pub mod fetch;
mod files;
mod flip;
mod lock;
pub mod procs;
mod prune;
pub mod runtime;
pub mod serve;
mod sign;
mod stage;
mod status;
pub mod supervisor;
mod trust;

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_formats::bundle::{Head, ReadError, MANIFEST_PATH, RELEASE_PATH};
use ferry_formats::delta::DeltaError;
use ferry_formats::journal::{self, Record};
use ferry_formats::{Manifest, ReleaseId, ReleaseMeta};
use fs_err as fs;

pub use crate::error::error_chain;
pub use flip::{previous, Flipped};
pub use lock::{Holder, Lock};
pub use prune::Pruned;
pub use stage::{check_linked, LinkedError, StageOptions, Staged, ACTIVE_CONFIG};
pub use status::{ReleaseStatus, Status, Verified};
pub use trust::{Accepted, Pinned, Refusal};

/// One service's directory on one host.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

/// What went wrong on a host. Each names the path or release it is about.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file-system step failed; fs-err's message names the path.
    #[error(transparent)]
    Fs(io::Error),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is locked by {holder}; wait for it to finish (a holder that died releases the lock by itself)", path.display())]
    Locked { path: PathBuf, holder: String },
    #[error("release {id} is not on this host ({}); stage it first", root.display())]
    NoRelease { id: ReleaseId, root: PathBuf },
    #[error("the delta goes from release {base}, which this host does not have ({}); send the whole bundle", root.display())]
    MissingBase { base: ReleaseId, root: PathBuf },
    #[error("the delta is refused")]
    Delta(#[source] DeltaError),
    #[error("the bundle is refused")]
    Bundle(#[source] ReadError),
    #[error("{0}")]
    Input(String),
    /// A release the host's pinned keys do not vouch for; refused before
    /// anything of it was written.
    #[error("release {} is refused before anything was written: {reason}", id.short(12))]
    Untrusted { id: ReleaseId, reason: trust::Refusal },
    #[error("release {id} in {}: {reason}", root.display())]
    Broken { id: ReleaseId, root: PathBuf, reason: String },
    #[error("linked file {} is missing; create it in {} before deploying (it is linked into every release)", path.display(), shared.display())]
    MissingLinked { path: PathBuf, shared: PathBuf },
    #[error("release {id} has no config for environment {env:?} (it has: {})", have.join(", "))]
    NoEnvironment { id: ReleaseId, env: String, have: Vec<String> },
    #[error("release {id} needs {} on the file system of {} (its new files, a block each, and a margin), but {} are free; free some space (`ferry host prune`) and stage again", human(*need), dir.display(), human(*free))]
    NoSpace { id: ReleaseId, dir: PathBuf, need: u64, free: u64 },
    #[error("no previous release is recorded in {}; name one with --to", journal.display())]
    NoPrevious { journal: PathBuf },
    /// The service's programs (supervisord) did not take up a release.
    #[error(transparent)]
    Runtime(Box<runtime::RuntimeError>),
    /// The link to the host: the session could not be opened, or broke
    /// (a controller's error; the host said nothing).
    #[error("{0}")]
    Link(String),
    /// What the agent on the host answered with, of its kind.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    /// A flip whose programs did not take up the release, and where that
    /// left the host (the journal's reason says the same).
    #[error("the programs did not take up {}: {}; {back}", id.short(12), error_chain(cause))]
    NotTakenUp { id: ReleaseId, cause: Box<HostError>, back: Back },
}

/// A [`HostError`]'s kind, which crosses the agent's wire beside its
/// message, so the controller can tell a refusal from a dropped link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Io,
    Locked,
    NoRelease,
    MissingBase,
    DeltaRefused,
    BundleRefused,
    Input,
    Untrusted,
    Broken,
    MissingLinked,
    NoEnvironment,
    NoSpace,
    NoPrevious,
    Runtime,
    NotTakenUp,
    Link,
}

impl HostError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostError::Fs(_) | HostError::Io { .. } => ErrorKind::Io,
            HostError::Locked { .. } => ErrorKind::Locked,
            HostError::NoRelease { .. } => ErrorKind::NoRelease,
            HostError::MissingBase { .. } => ErrorKind::MissingBase,
            HostError::Delta(_) => ErrorKind::DeltaRefused,
            HostError::Bundle(_) => ErrorKind::BundleRefused,
            HostError::Input(_) => ErrorKind::Input,
            HostError::Untrusted { .. } => ErrorKind::Untrusted,
            HostError::Broken { .. } => ErrorKind::Broken,
            HostError::MissingLinked { .. } => ErrorKind::MissingLinked,
            HostError::NoEnvironment { .. } => ErrorKind::NoEnvironment,
            HostError::NoSpace { .. } => ErrorKind::NoSpace,
            HostError::NoPrevious { .. } => ErrorKind::NoPrevious,
            HostError::Runtime(_) => ErrorKind::Runtime,
            HostError::NotTakenUp { .. } => ErrorKind::NotTakenUp,
            HostError::Link(_) => ErrorKind::Link,
            HostError::Remote { kind, .. } => *kind,
        }
    }
}

/// Where a host went after its programs did not take up a release.
#[derive(Debug)]
pub enum Back {
    /// Flipped back to it, and its programs run.
    To(ReleaseId),
    /// Flipped back to it, and its programs did not start either (something
    /// outside the releases is wrong).
    Broken(ReleaseId, Box<HostError>),
    /// Could not even point `current` back at it.
    Stuck(ReleaseId, Box<HostError>),
    /// A first deploy, or the release it ran is gone: `current` removed,
    /// the programs stopped.
    Nothing,
}

impl std::fmt::Display for Back {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Back::To(id) => write!(f, "flipped back to {}", id.short(12)),
            Back::Broken(id, e) => {
                write!(
                    f,
                    "flipped back to {}, whose programs did not start either: {}",
                    id.short(12),
                    error_chain(&**e)
                )
            }
            Back::Stuck(id, e) => {
                write!(
                    f,
                    "could not flip back to {}: {}; `current` points at the failed release",
                    id.short(12),
                    error_chain(&**e)
                )
            }
            Back::Nothing => f.write_str(
                "there is no earlier release to go back to: `current` is removed and nothing runs here until \
                 a release that starts is pushed",
            ),
        }
    }
}

/// Bytes for a message: exact, and in MiB when large.
fn human(n: u64) -> String {
    if n < 1 << 20 {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({:.1} MiB)", n as f64 / f64::from(1 << 20))
    }
}

/// Maps an io::Error to [`HostError::Io`] at `path`.
pub(crate) fn at(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> HostError {
    let path = path.as_ref().to_owned();
    move |source| HostError::Io { path, source }
}

impl Host {
    pub fn new(deploy_to: impl Into<PathBuf>) -> Self {
        Self { root: deploy_to.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn release_dir(&self, id: &ReleaseId) -> PathBuf {
        self.releases_dir().join(id.to_hex())
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }

    fn ferry_dir(&self) -> PathBuf {
        self.root.join(".ferry")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.ferry_dir().join("journal")
    }

    fn pins_dir(&self) -> PathBuf {
        self.ferry_dir().join("pins")
    }

    /// The release `current` points at, if any.
    pub fn current(&self) -> Result<Option<ReleaseId>, HostError> {
        let link = self.current_link();
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HostError::Io { path: link, source }),
        };
        let id = target
            .strip_prefix("releases")
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(|s| s.parse::<ReleaseId>().ok())
            .ok_or_else(|| HostError::Io {
                path: link.clone(),
                source: io::Error::other(format!("points at {}, not at releases/<id>", target.display())),
            })?;
        Ok(Some(id))
    }

    /// The complete releases on this host, in no particular order.
    pub fn releases(&self) -> Result<Vec<ReleaseId>, HostError> {
        let dir = self.releases_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(HostError::Io { path: dir, source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(at(&dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(|s| s.parse::<ReleaseId>().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    pub fn has(&self, id: &ReleaseId) -> bool {
        self.release_dir(id).join(MANIFEST_PATH).exists()
    }

    /// A staged release's manifest and metadata, checked against its id.
    pub fn head(&self, id: &ReleaseId) -> Result<Head, HostError> {
        let dir = self.release_dir(id);
        if !dir.exists() {
            return Err(HostError::NoRelease { id: *id, root: self.root.clone() });
        }
        let broken = |reason: String| HostError::Broken { id: *id, root: self.root.clone(), reason };
        let manifest_text = fs::read(dir.join(MANIFEST_PATH)).map_err(|e| broken(e.to_string()))?;
        let meta_text = fs::read(dir.join(RELEASE_PATH)).map_err(|e| broken(e.to_string()))?;
        let manifest = Manifest::parse(&manifest_text).map_err(|e| broken(e.to_string()))?;
        let meta = ReleaseMeta::parse(&meta_text).map_err(|e| broken(e.to_string()))?;
        // A release whose stage recorded it verified had its links and
        // components checked then; they are not checked again each time.
        let verified = fs::read(dir.join(stage::VERIFIED))
            .ok()
            .and_then(|b| serde_json::from_slice::<stage::StagedCheck>(&b).ok())
            .is_some_and(|r| r.id == *id);
        let head = if verified {
            Head::checked_before(manifest, meta)
        } else {
            Head::new(manifest, meta).map_err(|e| broken(e.to_string()))?
        };
        if head.id != *id {
            return Err(broken(format!("its manifest and metadata hash to {}, not to its name", head.id)));
        }
        Ok(head)
    }

    pub fn is_pinned(&self, id: &ReleaseId) -> bool {
        self.pins_dir().join(id.to_hex()).exists()
    }

    /// Appends one record to the journal and syncs it. A line torn by an
    /// earlier crash is ended first so this record stays whole.
    pub fn record(&self, record: &Record) -> Result<(), HostError> {
        let path = self.journal_path();
        let file = fs::OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(HostError::Fs)?;
        let len = file.metadata().map_err(at(&path))?.len();
        let mut line = record.to_line();
        if len > 0 {
            let mut last = [0u8];
            file.file().read_exact_at(&mut last, len - 1).map_err(at(&path))?;
            if last[0] != b'\n' {
                line.insert(0, '\n');
            }
        }
        let mut file = file;
        file.write_all(line.as_bytes()).map_err(at(&path))?;
        file.sync_data().map_err(at(&path))?;
        Ok(())
    }

    /// Every whole journal record, oldest first.
    pub fn journal(&self) -> Result<Vec<Record>, HostError> {
        let path = self.journal_path();
        // Bytes, not text: a line torn mid-character must not hide the rest.
        match fs::read(&path) {
            Ok(bytes) => Ok(journal::parse(&String::from_utf8_lossy(&bytes)).0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(HostError::Io { path, source }),
        }
    }
}

/// Who is acting, for the journal and the lock: `FERRY_USER` when the
/// controller passes one, else `user@hostname` of this process.
pub fn whoami() -> String {
    if let Ok(user) = std::env::var("FERRY_USER") {
        if !user.is_empty() {
            return user;
        }
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(user_name);
    format!("{user}@{}", hostname())
}

/// This process's user name from /etc/passwd (services and cron jobs often
/// run without `USER`), or `uid N`.
fn user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

// The builder has its own copy (ferry_builder's build.rs): it does not depend on the switcher.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
