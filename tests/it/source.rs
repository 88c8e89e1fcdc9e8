//! A project's store as the fleet's release source, as the CLI hands it over
//! (src/commands/fleet.rs): deltas are made once and kept in the store. The
//! tests and the fleet benchmark share it.

use std::path::PathBuf;

use ferry_builder::{delta, Store};
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::{ReleaseSource, SourceError};

pub struct Source(pub Store);

impl ReleaseSource for Source {
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(self.0.bundle_path(id))
    }

    fn delta(&self, base: &ReleaseId, target: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        if !self.0.has_intact(base) {
            return Ok(None);
        }
        Ok(Some(delta::encode(&self.0, base, target)?.path))
    }

    fn rsync_delta(&self, signature: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(delta::encode_rsync(&self.0, signature, target)?.path)
    }

    fn release_signature(&self, id: &ReleaseId) -> Result<Option<String>, SourceError> {
        Ok(self.0.signature(id)?)
    }
}
