//! The flip: `current` goes from one complete release to another in one
//! rename(2). A new symlink is made under a temporary name beside `current`,
//! renamed over it, and the directory is fsynced. Never `ln -sfn`, which
//! unlinks first and leaves a moment with no `current`.

use ferry_formats::atomic;
use ferry_formats::journal::{Action, Outcome, Record};
use ferry_formats::{ComponentKind, ReleaseId};
use fs_err as fs;
use serde::Serialize;

use super::stage::{StageOptions, ACTIVE_CONFIG};
use super::{at, whoami, Back, Host, HostError, Lock};
use crate::error::error_chain;

/// What a flip did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Flipped {
    pub from: Option<ReleaseId>,
    pub to: ReleaseId,
    /// `current` already pointed there; nothing changed.
    pub already: bool,
    /// What else was done or seen (supervisord started, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Host {
    /// Points `current` at the staged release `id`, after checking that the
    /// linked files it needs are in `shared/`; then the programs (if `setup`
    /// gave the host any) restart on it. The journal's deploy line is
    /// written once that is known: `ok` only when the programs run `id`. If
    /// they do not come up on it, `current` goes back to where it was and
    /// they restart there, and the line says `failed` with both halves: the
    /// error means the host still runs what it ran. On a first deploy there
    /// is nothing to go back to: `current` is removed and the programs are
    /// stopped, and the error says so.
    pub fn activate(&self, _lock: &Lock, id: &ReleaseId, opts: &StageOptions) -> Result<Flipped, HostError> {
        self.flip_and_restart(id, Action::Deploy, opts, None)
    }

    /// Restarts the programs on `id`, which `current` already points at (a
    /// push with `--force` of the release a host runs). Not a flip: the
    /// journal is not written.
    pub fn restart(&self, _lock: &Lock, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        if self.current()? != Some(*id) {
            return Err(HostError::Input(format!(
                "release {} is not current here; push it to flip to it",
                id.short(12)
            )));
        }
        self.restart_programs(id)
    }

    /// Points `current` back at `to`, or at the release that was current
    /// before the current one was deployed, and restarts the programs there.
    pub fn rollback(&self, lock: &Lock, to: Option<&ReleaseId>) -> Result<Flipped, HostError> {
        self.rollback_because(lock, to, None)
    }

    /// [`Host::rollback`], with the reason recorded in the journal (a failed
    /// health gate's evidence, say). A release whose programs do not start
    /// is left as [`Host::activate`] leaves one: back on where it was.
    pub fn rollback_because(
        &self,
        _lock: &Lock,
        to: Option<&ReleaseId>,
        reason: Option<String>,
    ) -> Result<Flipped, HostError> {
        let to = match to {
            Some(id) => *id,
            None => previous(self)?.ok_or_else(|| HostError::NoPrevious { journal: self.journal_path() })?,
        };
        self.flip_and_restart(&to, Action::Rollback, &StageOptions::default(), reason)
    }

    /// The flip and the restart, journalled by what came of them: `ok` when
    /// `current` is `id` and its programs run it; `failed` when `current`
    /// was left at, or put back to, where it was.
    fn flip_and_restart(
        &self,
        id: &ReleaseId,
        action: Action,
        opts: &StageOptions,
        reason: Option<String>,
    ) -> Result<Flipped, HostError> {
        let from = self.current()?;
        let mut record = Record::now(whoami(), action, from, Some(*id));
        record.reason = reason;
        // Who vouched for it, when it was staged under pinned keys.
        if let Some(signed) = self.release_signature(id) {
            record.key = Some(signed.key_id.to_string());
            record.serial = Some(signed.statement.serial);
        }
        if let Err(e) = self.check_flip(id, opts) {
            let _ = self.record(&record.failed(error_chain(&e)));
            return Err(e);
        }
        if from == Some(*id) {
            // Already current (a push again): the programs must still be
            // running it (restarted if they do not). A flip killed before
            // its journal line got one when the lock was taken.
            return match self.ensure_programs(id) {
                Ok(notes) => Ok(Flipped { from, to: *id, already: true, notes }),
                Err(e) => {
                    // Its last word must not stay the `ok` of when it ran.
                    let cause = format!("the programs do not run {} and did not restart on it", id.short(12));
                    let _ = self.record(&record.failed(format!("{cause}: {}", error_chain(&e))));
                    Err(e)
                }
            };
        }
        if let Err(e) = self.point_current(Some(id)) {
            let _ = self.record(&record.failed(error_chain(&e)));
            return Err(e);
        }
        // Going back is recovery: a clean restart, not a reload.
        let restarted =
            if action == Action::Rollback { self.restart_programs_afresh(id) } else { self.restart_programs(id) };
        let e = match restarted {
            Ok(notes) => {
                if let Err(e) = self.record(&record) {
                    // A flip the journal does not know would mislead the next
                    // rollback: undo it, so the error means "nothing changed".
                    self.point_current(from.as_ref())?;
                    match from {
                        Some(from) => drop(self.restart_programs_afresh(&from)),
                        None => self.stop_programs(),
                    }
                    return Err(e);
                }
                // On a first deploy, supervisord starting is the plan, not news.
                let notes = if from.is_some() { notes } else { Vec::new() };
                return Ok(Flipped { from, to: *id, already: false, notes });
            }
            Err(e) => e,
        };
        // Back to where it was, if that is still here to go back to.
        let back = match from.filter(|f| self.has(f)) {
            Some(from) => match self.point_current(Some(&from)) {
                Ok(()) => match self.restart_programs_afresh(&from) {
                    Ok(_) => Back::To(from),
                    Err(again) => Back::Broken(from, Box::new(again)),
                },
                Err(again) => Back::Stuck(from, Box::new(again)),
            },
            None => {
                // Nothing to go back to: no `current`, nothing running,
                // rather than a release that does not run posing as deployed.
                self.stop_programs();
                self.point_current(None)?;
                Back::Nothing
            }
        };
        let e = HostError::NotTakenUp { id: *id, cause: Box::new(e), back };
        self.record(&record.failed(error_chain(&e)))?;
        Err(e)
    }

    /// If the journal's last flip did not get to where `current` is (a flip
    /// killed between its rename and its journal line), records it now, so
    /// that `previous`, `prune` and `status` reason from the truth. Run with
    /// every lock.
    pub(crate) fn reconcile_journal(&self) -> Result<(), HostError> {
        let Some(current) = self.current()? else { return Ok(()) };
        let journal = self.journal()?;
        // Back to a release that was current before: a rollback, most likely.
        let was = |r: &Record| r.result == Outcome::Ok && r.from == Some(current);
        let action = if journal.iter().any(was) { Action::Rollback } else { Action::Deploy };
        self.record_interrupted(&current, action)
    }

    /// `current` is already `id`. If the journal's last flip did not get there
    /// (a flip killed between its rename and its journal line), records it now,
    /// from where the journal last had `current`.
    fn record_interrupted(&self, id: &ReleaseId, action: Action) -> Result<(), HostError> {
        let journal = self.journal()?;
        let last = journal
            .iter()
            .rev()
            .find(|r| r.result == Outcome::Ok && matches!(r.action, Action::Deploy | Action::Rollback));
        if last.is_some_and(|r| r.to == Some(*id)) {
            return Ok(());
        }
        let mut record = Record::now(whoami(), action, last.and_then(|r| r.to), Some(*id));
        record.reason = Some(
            "recorded late: the flip was interrupted before its journal line, and its programs were not checked; \
             the next push of it checks them"
                .into(),
        );
        self.record(&record)
    }

    /// Points `current` at `id`, or removes it for `None`.
    fn point_current(&self, id: Option<&ReleaseId>) -> Result<(), HostError> {
        let link = self.current_link();
        match id {
            Some(id) => {
                let temp = self.root.join(format!("{}{}-current", atomic::TEMP_PREFIX, std::process::id()));
                let _ = fs::remove_file(&temp);
                fs::os::unix::fs::symlink(format!("releases/{id}"), &temp).map_err(HostError::Fs)?;
                if let Err(e) = fs::rename(&temp, &link) {
                    let _ = fs::remove_file(&temp);
                    return Err(HostError::Fs(e));
                }
            }
            None => fs::remove_file(&link).map_err(HostError::Fs)?,
        }
        atomic::fsync_dir(&self.root).map_err(at(&self.root))
    }

    /// Whether `id` can be made current: complete, its linked files in
    /// `shared/`, staged for this environment.
    fn check_flip(&self, id: &ReleaseId, opts: &StageOptions) -> Result<(), HostError> {
        // A release is complete once its head is there (it is written last,
        // and the directory only gets its name after a syncfs).
        let head = self.head(id)?;
        self.check_verified(id, &head)?;
        let shared = self.shared_dir();
        for file in &opts.linked_files {
            let path = shared.join(file.as_str());
            if !path.exists() {
                return Err(HostError::MissingLinked { path, shared });
            }
        }
        let release = self.release_dir(id);
        for linked in opts.linked_dirs.iter().chain(&opts.linked_files) {
            let want = super::stage::shared_link_target(linked);
            if fs::read_link(release.join(linked.as_str())).ok().as_deref() != Some(std::path::Path::new(&want)) {
                return Err(HostError::Broken {
                    id: *id,
                    root: self.root.clone(),
                    reason: format!(
                        "it has no link {linked} -> {want} (it was staged before {linked} was linked); remove releases/{id} and stage it again"
                    ),
                });
            }
        }
        if let Some(env) = &opts.env {
            for config in head.meta.components_of(ComponentKind::Config) {
                let active = self.release_dir(id).join(config.path.as_str()).join(ACTIVE_CONFIG);
                let linked = fs::read_link(&active).ok();
                if linked.as_deref() != Some(std::path::Path::new(env)) {
                    return Err(HostError::Broken {
                        id: *id,
                        root: self.root.clone(),
                        reason: format!(
                            "it was not staged for environment {env:?} ({} is {}); stage it for this environment",
                            active.display(),
                            linked.map_or("missing".into(), |l| format!("-> {}", l.display()))
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Host {
    /// Refuses a release whose record of having been checked entry by
    /// entry (written by the stage that made it, or by `ferry host verify`)
    /// is not of its manifest. Reading one small file keeps a flip cheap;
    /// the hashing was done when it was staged. A release with no record
    /// (staged by an older ferry, whose kept releases a rollback must still
    /// reach) is checked entry by entry now, and refused if it does not
    /// match its manifest.
    fn check_verified(&self, id: &ReleaseId, head: &ferry_formats::bundle::Head) -> Result<(), HostError> {
        let path = self.release_dir(id).join(super::stage::VERIFIED);
        let broken = |reason: String| HostError::Broken { id: *id, root: self.root.clone(), reason };
        let record = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<super::stage::StagedCheck>(&bytes)
                .map_err(|e| broken(format!("{} is not a record of a verified stage: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.verify(id).map(drop).map_err(|e| {
                    broken(format!(
                        "it has no record that it was verified as staged ({} is missing: staged by an older ferry, \
                         or by hand), and checked now, it does not match its manifest: {}",
                        path.display(),
                        error_chain(&e)
                    ))
                });
            }
            Err(e) => return Err(HostError::Fs(e)),
        };
        let (files, bytes) = head.manifest.file_totals();
        let want = super::stage::StagedCheck { id: *id, files, bytes };
        if record != want {
            return Err(broken(format!(
                "its record of a verified stage ({}) says release {}, {} files, {} bytes; its manifest has {files} files, \
                 {bytes} bytes; run `ferry host verify {id}`",
                path.display(),
                record.id,
                record.files,
                record.bytes
            )));
        }
        Ok(())
    }
}

/// The release that was current before the current one was deployed, as
/// the journal tells: Capistrano's "previous release". Rolling back twice
/// goes back twice, not to and fro.
pub fn previous(host: &Host) -> Result<Option<ReleaseId>, HostError> {
    let Some(current) = host.current()? else { return Ok(None) };
    let journal = host.journal()?;
    let deployed =
        journal.iter().rev().find(|r| r.action == Action::Deploy && r.result == Outcome::Ok && r.to == Some(current));
    Ok(deployed.and_then(|r| r.from).filter(|id| *id != current && host.has(id)))
}
