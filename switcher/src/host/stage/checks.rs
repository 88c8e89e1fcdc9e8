//! What a stage refuses before anything is written: linked paths that
//! overlap, an environment the release has no config for, files that would
//! not fit in the free space.

use ferry_formats::bundle::{Head, META_DIR};
use ferry_formats::{ComponentKind, EntryKind, RelPath};

use super::staging::Kept;
use super::{StageOptions, ACTIVE_CONFIG};
use crate::host::{at, Host, HostError};

/// Refuses, before anything is written, a release whose files would not fit
/// in the free space of the deploy directory's file system: the declared
/// sizes of the files this host has no (hash, mode) of, each rounded up to a
/// block, a block per directory, and a margin of [`SPACE_MARGIN`] — so a
/// small input that declares gigabytes is refused, not left to fill the disk.
pub(super) fn check_space(host: &Host, head: &Head, kept: &Kept) -> Result<(), HostError> {
    let releases = host.releases_dir();
    let stat = rustix::fs::statvfs(&releases).map_err(|e| at(&releases)(e.into()))?;
    let block = stat.f_frsize.max(512);
    let free = stat.f_bavail.saturating_mul(block);
    let mut seen = std::collections::HashSet::new();
    let mut need = SPACE_MARGIN;
    for entry in head.manifest.entries() {
        let add = match &entry.kind {
            EntryKind::File { mode, hash, size } => {
                if kept.exact.contains_key(&(*hash, *mode)) || !seen.insert((*hash, *mode)) {
                    continue;
                }
                size.div_ceil(block).saturating_mul(block)
            }
            EntryKind::Dir { .. } => block,
            EntryKind::Symlink { .. } => continue,
        };
        need = need.saturating_add(add);
    }
    if need > free {
        return Err(HostError::NoSpace { id: head.id, dir: releases, need, free });
    }
    Ok(())
}

/// Room kept free beyond what a release's files need: the metadata, the
/// journal, and what the file system needs for itself.
pub const SPACE_MARGIN: u64 = 64 << 10;

/// Refuses linked paths that overlap (one inside another: the inner one
/// would be made inside `shared/`), that are or hold a config directory (its
/// `active` link would land in `shared/`), or that sit in the `active` link.
pub fn check_linked(linked: &[RelPath], configs: &[RelPath]) -> Result<(), LinkedError> {
    for (i, a) in linked.iter().enumerate() {
        if a.components().next() == Some(META_DIR) {
            return Err(LinkedError::Ours { path: a.clone() });
        }
        for b in &linked[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(LinkedError::Overlap { a: a.clone(), b: b.clone() });
            }
        }
        for c in configs {
            let active = c.join(ACTIVE_CONFIG).expect("a valid name");
            if c.starts_with(a) || a.starts_with(&active) {
                return Err(LinkedError::Config { path: a.clone(), config: c.clone() });
            }
        }
    }
    Ok(())
}

/// Why linked paths cannot be linked as given.
#[derive(Debug, thiserror::Error)]
pub enum LinkedError {
    #[error("linked path {path}: .ferry is ferry's own")]
    Ours { path: RelPath },
    #[error("linked paths {a} and {b} overlap: link one directory, or files beside each other")]
    Overlap { a: RelPath, b: RelPath },
    #[error("linked path {path} overlaps the config directory {config}, where ferry links the active environment")]
    Config { path: RelPath, config: RelPath },
}

/// Refuses, before anything is written, a release that has no config for the
/// host's environment or already holds a path named like the config link.
pub(super) fn check_env(host: &Host, head: &Head, opts: &StageOptions) -> Result<(), HostError> {
    let Some(env) = &opts.env else { return Ok(()) };
    for config in head.meta.components_of(ComponentKind::Config) {
        if !config.environments.iter().any(|e| e == env) {
            return Err(HostError::NoEnvironment { id: head.id, env: env.clone(), have: config.environments.clone() });
        }
        if head.manifest.get(&format!("{}/{ACTIVE_CONFIG}", config.path)).is_some() {
            return Err(HostError::Broken {
                id: head.id,
                root: host.root.clone(),
                reason: format!(
                    "{}/{ACTIVE_CONFIG} is in the release, where ferry links the active config",
                    config.path
                ),
            });
        }
    }
    Ok(())
}
