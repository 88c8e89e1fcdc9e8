//! What a stage is given and what it leaves: the options a release is
//! staged with and the records it keeps of them (`.ferry/staged.json`,
//! `.ferry/verified.json`), and what staging reports.

use std::time::Duration;

use ferry_formats::{RelPath, ReleaseId};

/// How a release is staged on this host. Recorded in the release as
/// `.ferry/staged.json`: a release staged with other options is staged anew.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageOptions {
    /// The environment whose `config/<env>/` the release activates.
    pub env: Option<String>,
    /// Paths linked to `shared/<path>` (directories, created when missing).
    pub linked_dirs: Vec<RelPath>,
    /// Paths linked to `shared/<path>` (files, which must exist).
    pub linked_files: Vec<RelPath>,
}

/// What staging did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Staged {
    pub id: Option<ReleaseId>,
    /// The release was already complete here; nothing was done.
    pub already: bool,
    /// The input was not read past its head (an `already` release): it was
    /// neither checked nor used, and may be damaged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_unread: bool,
    /// Files written from the bundle or delta, and their bytes.
    pub written: usize,
    pub written_bytes: u64,
    /// Files hardlinked from a kept release, or copied from one (mode differed).
    pub linked: usize,
    pub copied: usize,
    #[serde(with = "millis")]
    pub elapsed: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(std::time::Duration::from_millis)
    }
}

/// The name of the symlink that activates one environment's config inside a
/// release: `<config>/active -> <env>`.
pub const ACTIVE_CONFIG: &str = "active";

/// Where a release records the options it was staged with.
pub(super) const STAGED_WITH: &str = ".ferry/staged.json";
/// Where a release records that every entry was checked when it was staged
/// (or by `ferry host verify` since): a flip refuses a release without it.
pub(crate) const VERIFIED: &str = ".ferry/verified.json";

/// What [`VERIFIED`] holds: the release, and its files as its manifest has
/// them, checked as they were staged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StagedCheck {
    pub id: ReleaseId,
    pub files: usize,
    pub bytes: u64,
}

impl StageOptions {
    /// Every linked path, directories and files.
    pub fn linked(&self) -> Vec<RelPath> {
        self.linked_dirs.iter().chain(&self.linked_files).cloned().collect()
    }
}

/// What a linked path in a release points at: `shared/<path>` of the
/// deploy directory, relative, so a deploy directory can move.
pub(crate) fn shared_link_target(path: &RelPath) -> String {
    let depth = path.components().count();
    format!("{}shared/{path}", "../".repeat(depth + 1))
}
