//! `ferry push --dry-run`: what a push of a release would ship to each host
//! of a stage, decided as the push decides it (a delta from the release the
//! host runs, made once per base; the whole bundle for a host with none),
//! and nothing more. Hosts are asked their status without their lock;
//! nothing is staged, locked, journalled or restarted on any of them.

use std::path::Path;

use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::Serialize;

use super::push::{payload, Payload};
use super::report::Shipped;
use super::{ReleaseSource, Stage, Transport};
use crate::host::HostError;

/// What a push would send one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ship {
    /// It runs the release already: nothing is sent, and without `--force`
    /// it is left alone.
    AlreadyCurrent,
    /// It keeps the release on disk already (staged or deployed before):
    /// nothing is sent, it is only flipped.
    OnHost,
    /// The delta from the release it runs.
    Delta { bytes: u64 },
    /// The whole bundle: it has no current release.
    Bundle { bytes: u64 },
    /// It runs a release the store does not have: the push would have it
    /// sign its files (under its lock) and send an rsync delta, whose size
    /// only that tells; at most about the whole bundle.
    Rsync { bundle_bytes: u64 },
    /// The store cannot make what it needs.
    Failed { error: String },
}

impl Ship {
    /// The bytes it would ship, when known.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Ship::AlreadyCurrent | Ship::OnHost => Some(0),
            Ship::Delta { bytes } | Ship::Bundle { bytes } => Some(*bytes),
            Ship::Rsync { .. } | Ship::Failed { .. } => None,
        }
    }
}

/// One reachable host's preview.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// What it runs now.
    pub from: Option<ReleaseId>,
    pub ship: Ship,
    /// Who holds its lock now, if anyone (a push now would be refused there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<String>,
    /// Its current release is not on its disk (removed by hand): it gets
    /// the whole bundle, and a failed push cannot go back there.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub current_missing: bool,
}

/// Each host of `stage`, in its order: what a push of `release` would send
/// it, or why it could not be asked.
pub fn preview(
    stage: &Stage,
    transport: &dyn Transport,
    source: &dyn ReleaseSource,
    release: &ReleaseId,
) -> Vec<(String, Result<Planned, HostError>)> {
    let statuses = super::status(stage, transport);
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    // One payload per distinct base, as the push makes them.
    let mut payloads = std::collections::BTreeMap::new();
    statuses
        .into_iter()
        .map(|(host, status)| {
            let planned = status.map(|st| {
                let has = |id: &ReleaseId| st.releases.iter().any(|r| r.id == *id);
                let ship = if st.current == Some(*release) {
                    Ship::AlreadyCurrent
                } else if has(release) {
                    Ship::OnHost
                } else {
                    // As the push: a current release gone from the disk is no base.
                    let base = st.current.filter(|c| has(c));
                    let made = payloads.entry(base).or_insert_with(|| payload(source, base, release));
                    match made {
                        Ok(Payload::File(path, Shipped::Bundle)) => Ship::Bundle { bytes: size(path) },
                        Ok(Payload::File(path, _)) => Ship::Delta { bytes: size(path) },
                        Ok(Payload::Unknown) => match source.bundle(release) {
                            Ok(bundle) => Ship::Rsync { bundle_bytes: size(&bundle) },
                            Err(e) => Ship::Failed { error: format!("cannot find the bundle of {release}: {e}") },
                        },
                        Err(e) => Ship::Failed { error: e.clone() },
                    }
                };
                Planned {
                    from: st.current,
                    current_missing: st.current.is_some_and(|c| !has(&c)),
                    ship,
                    locked_by: st.lock.as_ref().map(ToString::to_string),
                }
            });
            (host, planned)
        })
        .collect()
}
