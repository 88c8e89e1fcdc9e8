//! Pruning old releases, and the pins that keep one from it.

use std::collections::{HashMap, HashSet};

use ferry_formats::journal::{Action, Outcome, Record};
use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::Serialize;

use super::procs::{self, Hold};
use super::{previous, whoami, Host, HostError, Lock};

/// What a prune removed and kept.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Pruned {
    pub removed: Vec<ReleaseId>,
    pub kept: Vec<ReleaseId>,
    /// Releases kept only because a process still uses them, with the
    /// first such process found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<(ReleaseId, Hold)>,
}

impl Host {
    /// Keeps the `keep` most recently staged or activated good releases,
    /// and always `current`, the previous release, pinned ones and any that
    /// a process on this host still uses (its working directory,
    /// executable, command line, mapped or open files: removing it would
    /// pull the files from under a running program); removes the rest. A
    /// release whose deploy failed, or that was rolled back from, is not a
    /// good one: it never pushes a good one out (as Capistrano's rollback
    /// drops the release it leaves). A release is renamed out of
    /// `releases/` before it is deleted, so a kill mid-delete never leaves
    /// half a release under its name.
    pub fn prune(&self, _lock: &Lock, keep: usize) -> Result<Pruned, HostError> {
        let current = self.current()?;
        let previous = previous(self)?;
        let mut releases = self.releases()?;
        let journal = self.journal()?;
        let recency = recency(&journal);
        let failed = failed(&journal);
        // Newest first: by the journal, then by name for a stable order.
        releases.sort_by(|a, b| recency.get(b).cmp(&recency.get(a)).then(a.cmp(b)));
        let mut users = None;
        let mut good = 0;
        let mut pruned = Pruned { removed: Vec::new(), kept: Vec::new(), held: Vec::new() };
        for id in releases {
            let counts = !failed.contains(&id);
            let must = Some(id) == current || Some(id) == previous || self.is_pinned(&id);
            if must || (counts && good < keep) {
                good += usize::from(counts);
                pruned.kept.push(id);
                continue;
            }
            // Read /proc once, and only when something is to go.
            let users = match &users {
                Some(users) => users,
                None => users.insert(procs::users(&fs::canonicalize(self.releases_dir()).map_err(HostError::Fs)?)),
            };
            if let Some(hold) = users.get(&id.to_string()) {
                pruned.kept.push(id);
                pruned.held.push((id, hold.clone()));
                continue;
            }
            let dir = self.release_dir(&id);
            let doomed = self.releases_dir().join(format!(".pruning-{id}"));
            fs::rename(&dir, &doomed).map_err(HostError::Fs)?;
            fs::remove_dir_all(&doomed).map_err(HostError::Fs)?;
            self.record(&Record::now(whoami(), Action::Prune, Some(id), None))?;
            pruned.removed.push(id);
        }
        Ok(pruned)
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

/// For each release, the position in the journal of the last successful
/// record that staged or flipped to it.
fn recency(journal: &[Record]) -> HashMap<ReleaseId, usize> {
    let mut last = HashMap::new();
    for (i, r) in journal.iter().enumerate() {
        if r.result == Outcome::Ok && matches!(r.action, Action::Stage | Action::Deploy | Action::Rollback) {
            if let Some(to) = r.to {
                last.insert(to, i);
            }
        }
    }
    last
}

/// The releases whose last word in the journal is a failure: a deploy to
/// it that failed, a rollback to it whose programs did not start, or a
/// rollback away from it (a revert after a failed gate, or a person's).
fn failed(journal: &[Record]) -> HashSet<ReleaseId> {
    let mut failed = HashSet::new();
    for r in journal {
        match (r.action, r.result, r.to) {
            (Action::Deploy | Action::Rollback, Outcome::Ok, Some(to)) => {
                failed.remove(&to);
                if let (Action::Rollback, Some(from)) = (r.action, r.from) {
                    failed.insert(from);
                }
            }
            (Action::Deploy | Action::Rollback, Outcome::Failed, Some(to)) => {
                failed.insert(to);
            }
            _ => {}
        }
    }
    failed
}
