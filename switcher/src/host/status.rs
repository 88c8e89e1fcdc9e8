//! What a host has: `status`, and `verify`, which re-hashes a release.

use std::io;

use ferry_formats::{EntryKind, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;
use serde::Serialize;

use super::{previous, Holder, Host, HostError};

/// One host's state for one service.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Status {
    pub deploy_to: String,
    pub current: Option<ReleaseId>,
    pub previous: Option<ReleaseId>,
    /// Newest first by the journal.
    pub releases: Vec<ReleaseStatus>,
    pub lock: Option<Holder>,
    /// When the current release's `migrate` hook ran here, if it did: a
    /// rollback past it leaves the database where the migrations took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_migrated: Option<String>,
    /// The programs' processes, as supervisord has them (none without setup).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<super::supervisor::ProcessInfo>,
    /// Why the programs' supervisord did not answer, when the host has
    /// programs and it did not (every program is down then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisord_down: Option<String>,
    /// The ids of the keys pinned here (see `host::trust`): none, and the
    /// host takes unsigned releases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseStatus {
    pub id: ReleaseId,
    pub version: Option<String>,
    pub pinned: bool,
    /// When it was last staged, deployed or rolled back to.
    pub last_used: Option<String>,
    /// Asset files it was given by bridging from the release it replaced
    /// (`bridge_assets`), which are not in its manifest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bridged: usize,
    /// The key id whose signature it was staged with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A release whose every entry matched its manifest.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verified {
    pub id: ReleaseId,
    pub files: usize,
    pub bytes: u64,
}

impl Host {
    pub fn status(&self) -> Result<Status, HostError> {
        let current = self.current()?;
        let previous = previous(self)?;
        let journal = self.journal()?;
        let mut releases = Vec::new();
        for id in self.releases()? {
            // Only release.json: parsing every manifest would make a status
            // (and so every push and rollback) cost a pass over every kept release.
            let meta = fs::read(self.release_dir(&id).join(ferry_formats::bundle::RELEASE_PATH)).ok();
            let version = meta.and_then(|m| ferry_formats::ReleaseMeta::parse(&m).ok()).and_then(|m| m.version);
            let last =
                journal.iter().rposition(|r| r.to == Some(id) && r.result == ferry_formats::journal::Outcome::Ok);
            releases.push((
                last,
                ReleaseStatus {
                    id,
                    version,
                    pinned: self.is_pinned(&id),
                    last_used: last.map(|i| journal[i].time.clone()),
                    bridged: self.bridged(&id).map_or(0, |(_, files)| files.len()),
                    signed_by: self.release_signature(&id).map(|s| s.key_id.to_string()),
                },
            ));
        }
        releases.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
        let current_migrated = current.and_then(|c| {
            journal
                .iter()
                .rev()
                .find(|r| {
                    r.action == ferry_formats::journal::Action::Migrate
                        && r.result == ferry_formats::journal::Outcome::Ok
                        && r.to == Some(c)
                })
                .map(|r| r.time.clone())
        });
        let (programs, supervisord_down) = match self.program_states() {
            Ok(programs) => (programs, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Ok(Status {
            deploy_to: self.root.display().to_string(),
            current,
            previous,
            releases: releases.into_iter().map(|(_, r)| r).collect(),
            lock: self.holder()?,
            current_migrated,
            programs,
            supervisord_down,
            trusted_keys: self.trusted_keys()?.iter().map(|k| k.id.to_string()).collect(),
        })
    }

    /// Checks every entry of release `id` against its manifest: types,
    /// modes, link targets and every file's blake3. Paths linked into
    /// `shared/` and the config link are ferry's own and are not in it;
    /// neither are bridged asset files (`.ferry/bridged.json`), which were
    /// checked against their own release's manifest when they were bridged
    /// and are not this release's: only the manifest's entries are checked.
    pub fn verify(&self, id: &ReleaseId) -> Result<Verified, HostError> {
        let head = self.head(id)?;
        let dir = self.release_dir(id);
        let broken = |reason: String| HostError::Broken { id: *id, root: self.root.clone(), reason };
        let linked = self.staged_with(id).map(|o| o.linked()).unwrap_or_default();
        for l in &linked {
            let want = super::stage::shared_link_target(l);
            let actual = fs::read_link(dir.join(l.as_str())).ok();
            if actual.as_deref() != Some(std::path::Path::new(&want)) {
                return Err(broken(format!("{l} should be a link to {want}, as it was staged")));
            }
        }
        let mut files = Vec::new();
        for entry in head.manifest.entries() {
            // Given over to shared/ when staged (linked_dirs, linked_files).
            if linked.iter().any(|l| entry.path.starts_with(l)) {
                continue;
            }
            let path = dir.join(entry.path.as_str());
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(broken(format!("{} is missing", entry.path)));
                }
                Err(e) => return Err(HostError::Fs(e)),
            };
            match &entry.kind {
                EntryKind::Dir { .. } if meta.is_dir() => {}
                EntryKind::Symlink { target } if meta.file_type().is_symlink() => {
                    let actual = fs::read_link(&path).map_err(HostError::Fs)?;
                    if actual.as_os_str() != target.as_str() {
                        return Err(broken(format!("{} points at {}, not {target}", entry.path, actual.display())));
                    }
                }
                EntryKind::File { size, hash, mode } if meta.is_file() => {
                    if meta.len() != *size {
                        return Err(broken(format!("{} has {} bytes, not {size}", entry.path, meta.len())));
                    }
                    let actual = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                    if actual != super::files::disk_mode(*mode) {
                        return Err(broken(format!(
                            "{} has mode {actual:04o}, not {:04o} (release files are read-only)",
                            entry.path,
                            super::files::disk_mode(*mode)
                        )));
                    }
                    files.push((entry, path, *hash));
                }
                _ => return Err(broken(format!("{} is not a {}", entry.path, kind_name(&entry.kind)))),
            }
        }
        files.par_iter().try_for_each(|(entry, path, expected)| {
            let actual = super::files::hash_file(path)?;
            if actual != *expected {
                return Err(broken(format!("{}: content hashes to {actual}, not {expected}", entry.path)));
            }
            Ok(())
        })?;
        let (count, bytes) = head.manifest.file_totals();
        // Every entry matched: record it, so a flip may take this release
        // (one staged by an older ferry, or whose record was lost).
        let record = super::stage::StagedCheck { id: *id, files: count, bytes };
        let path = dir.join(super::stage::VERIFIED);
        if fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).as_ref() != Some(&record) {
            ferry_formats::atomic::write_atomic_mode(&path, 0o444, |f| {
                io::Write::write_all(f, &serde_json::to_vec(&record).expect("a record serializes"))
            })
            .map_err(super::at(&path))?;
        }
        Ok(Verified { id: *id, files: count, bytes })
    }
}

fn kind_name(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir { .. } => "directory",
        EntryKind::File { .. } => "file",
        EntryKind::Symlink { .. } => "symlink",
    }
}
