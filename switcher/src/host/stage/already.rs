//! A release already here: staged with the same options, nothing is done;
//! with other options, it is staged anew unless something still needs it
//! as it is.

use ferry_formats::ReleaseId;
use fs_err as fs;

use super::options::STAGED_WITH;
use super::{StageOptions, Staged};
use crate::host::{Host, HostError};

impl Host {
    /// The options release `id` was staged with (`None` for one staged by an
    /// older ferry, or damaged).
    pub(crate) fn staged_with(&self, id: &ReleaseId) -> Option<StageOptions> {
        let text = fs::read(self.release_dir(id).join(STAGED_WITH)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// `Some` when release `id` is here, staged with these options (but for
    /// `bridge_assets`: see [`StageOptions::same_layout`]): the
    /// input is not read past its head. One staged with other options is
    /// staged anew, and gives way only once its replacement is complete
    /// (nothing is removed before the input was read and verified); that is
    /// refused when it is `current` or the previous release (a rollback's
    /// target, whose config must stay as it ran), or a process uses it.
    pub(super) fn already_staged(&self, id: &ReleaseId, opts: &StageOptions) -> Result<Option<Staged>, HostError> {
        if !self.has(id) {
            return Ok(None);
        }
        let with = self.staged_with(id);
        if with.as_ref().is_some_and(|w| w.same_layout(opts)) {
            return Ok(Some(Staged::already(*id)));
        }
        let with = with.map_or_else(|| "unknown".to_owned(), |w| serde_json::to_string(&w).unwrap_or_default());
        if self.current()? == Some(*id) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it is current, staged with other options ({with}); flip to another release first, then stage it again"
                ),
            });
        }
        if crate::host::previous(self)? == Some(*id) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it is the previous release (what a rollback goes back to), staged with other options ({with}); \
                     it is kept as it is: deploy another release first, then stage it again"
                ),
            });
        }
        let releases = fs::canonicalize(self.releases_dir()).map_err(HostError::Fs)?;
        if let Some(hold) = crate::host::procs::users(&releases).remove(&id.to_string()) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it was staged with other options and must be staged anew, but pid {} ({}) still uses it \
                     ({} {}); stop that process, or let the release go with a later push",
                    hold.pid,
                    crate::host::procs::command(hold.pid),
                    hold.via,
                    hold.path.display()
                ),
            });
        }
        Ok(None)
    }
}

impl Staged {
    /// A release that was already here: the input was not read past its head.
    pub(super) fn already(id: ReleaseId) -> Self {
        Staged { id: Some(id), already: true, input_unread: true, ..Staged::default() }
    }
}
