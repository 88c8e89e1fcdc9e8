//! Pruning old releases, and the pins that keep one from it.

use std::collections::HashMap;

use ferry_formats::journal::{Action, Outcome, Record};
use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::Serialize;

use super::{previous, whoami, Host, HostError, Lock};

/// What a prune removed and kept.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Pruned {
    pub removed: Vec<ReleaseId>,
    pub kept: Vec<ReleaseId>,
}

impl Host {
    /// Keeps the `keep` most recently staged or activated releases, and
    /// always `current`, the previous release and pinned ones; removes the
    /// rest. A release is renamed out of `releases/` before it is deleted, so
    /// a kill mid-delete never leaves half a release under its name.
    pub fn prune(&self, _lock: &Lock, keep: usize) -> Result<Pruned, HostError> {
        let current = self.current()?;
        let previous = previous(self)?;
        let mut releases = self.releases()?;
        let recency = self.recency()?;
        // Newest first: by the journal, then by name for a stable order.
        releases.sort_by(|a, b| recency.get(b).cmp(&recency.get(a)).then(a.cmp(b)));
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (i, id) in releases.into_iter().enumerate() {
            let must = Some(id) == current || Some(id) == previous || self.is_pinned(&id);
            if i < keep || must {
                kept.push(id);
                continue;
            }
            let dir = self.release_dir(&id);
            let doomed = self.releases_dir().join(format!(".pruning-{id}"));
            fs::rename(&dir, &doomed).map_err(HostError::Fs)?;
            fs::remove_dir_all(&doomed).map_err(HostError::Fs)?;
            self.record(&Record::now(whoami(), Action::Prune, Some(id), None))?;
            removed.push(id);
        }
        Ok(Pruned { removed, kept })
    }

    /// For each release, the position in the journal of the last successful
    /// record that staged or flipped to it.
    fn recency(&self) -> Result<HashMap<ReleaseId, usize>, HostError> {
        let mut last = HashMap::new();
        for (i, r) in self.journal()?.iter().enumerate() {
            if r.result == Outcome::Ok && matches!(r.action, Action::Stage | Action::Deploy | Action::Rollback) {
                if let Some(to) = r.to {
                    last.insert(to, i);
                }
            }
        }
        Ok(last)
    }

    /// Keeps `id` from being pruned until it is unpinned.
    pub fn pin(&self, _lock: &Lock, id: &ReleaseId, pin: bool) -> Result<(), HostError> {
        if pin && !self.has(id) {
            return Err(HostError::NoRelease { id: *id, root: self.root.clone() });
        }
        let dir = self.pins_dir();
        fs::create_dir_all(&dir).map_err(HostError::Fs)?;
        let path = dir.join(id.to_hex());
        if pin {
            fs::write(&path, b"").map_err(HostError::Fs)?;
        } else {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::Fs(e)),
            }
        }
        let action = if pin { Action::Pin } else { Action::Unpin };
        self.record(&Record::now(whoami(), action, None, Some(*id)))
    }
}
