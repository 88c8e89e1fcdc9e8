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
    /// Asset directories (`media/static`) that also get the files of the
    /// release this one replaces (the host's `current` when it is staged)
    /// that it lacks, hardlinked: so a host on the new release still serves
    /// the fingerprinted assets of pages the old one rendered during a
    /// rolling deploy (as Kamal's asset bridging does). Only the files of that release's own
    /// manifest are bridged, never those it had bridged itself, so assets do
    /// not pile up release after release. A default, and left out when
    /// empty, for agents and records older than it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_assets: Vec<RelPath>,
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
    /// Asset files bridged from the release this one replaced
    /// ([`StageOptions::bridge_assets`]), and that release.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bridged: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridged_from: Option<ReleaseId>,
    #[serde(with = "millis")]
    pub elapsed: Duration,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
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
/// Where a release records the asset files it was given by bridging
/// ([`StageOptions::bridge_assets`]): files on disk that are not in its
/// manifest, and so neither checked by `verify` nor lent to later releases.
pub(crate) const BRIDGED: &str = ".ferry/bridged.json";

/// What [`BRIDGED`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BridgedRecord {
    /// The release they came from.
    pub from: ReleaseId,
    /// Their paths in the release, sorted.
    pub files: Vec<RelPath>,
}

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

    /// Whether a release staged with `self` is laid out as `other` would
    /// lay it out: the same but for `bridge_assets`, which only adds what
    /// the release replaced had when it was staged (a release already
    /// staged is not staged anew for it).
    pub fn same_layout(&self, other: &StageOptions) -> bool {
        let (a, b) = (
            StageOptions { bridge_assets: Vec::new(), ..self.clone() },
            StageOptions { bridge_assets: Vec::new(), ..other.clone() },
        );
        a == b
    }
}

/// What a linked path in a release points at: `shared/<path>` of the
/// deploy directory, relative, so a deploy directory can move.
pub(crate) fn shared_link_target(path: &RelPath) -> String {
    let depth = path.components().count();
    format!("{}shared/{path}", "../".repeat(depth + 1))
}

#[cfg(test)]
mod tests {
    use super::{StageOptions, Staged};

    /// The agent's wire protocol and `.ferry/staged.json` carry these as
    /// JSON: what an older ferry sends or recorded still parses, and
    /// without bridging nothing new is sent or recorded.
    #[test]
    fn options_and_answers_without_bridging_are_what_older_agents_send_and_read() {
        let old: StageOptions =
            serde_json::from_str(r#"{"env":"staging","linked_dirs":["log"],"linked_files":[]}"#).unwrap();
        assert!(old.bridge_assets.is_empty());
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"env":"staging","linked_dirs":["log"],"linked_files":[]}"#
        );
        let bridging =
            StageOptions { bridge_assets: vec![ferry_formats::RelPath::new("media/static").unwrap()], ..old.clone() };
        let text = serde_json::to_string(&bridging).unwrap();
        assert!(text.ends_with(r#","bridge_assets":["media/static"]}"#), "{text}");
        assert_eq!(serde_json::from_str::<StageOptions>(&text).unwrap(), bridging);
        assert!(bridging.same_layout(&old) && old.same_layout(&bridging), "bridging is no other layout");
        assert!(!StageOptions { env: None, ..old.clone() }.same_layout(&old));

        let staged: Staged = serde_json::from_str(
            r#"{"id":null,"already":false,"written":1,"written_bytes":2,"linked":3,"copied":4,"elapsed":5}"#,
        )
        .unwrap();
        assert_eq!((staged.bridged, staged.bridged_from), (0, None));
        let text = serde_json::to_string(&staged).unwrap();
        assert!(!text.contains("bridged"), "{text}");
    }
}
