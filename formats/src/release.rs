//! Release metadata: what a release is, beyond its files.
//!
//! Stored in a bundle as `.ferry/release.json`, one line of compact JSON with
//! the fields in this order (absent optional fields are left out, so adding an
//! optional field later does not change the id of an existing release):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `format` | integer | [`FORMAT_VERSION`] |
//! | `service` | string | the service's name: `[a-z0-9][a-z0-9._-]*`, at most 64 bytes |
//! | `version` | string, optional | the version label given at build time (`ferry build --version`) |
//! | `git` | object, optional | `commit` (40 or 64 hex digits) of a `--git-ref` build |
//! | `components` | array | `{kind, path, environments?}`; kind is `code`, `venv`, `jar`, `media` or `config`; sorted by path |
//!
//! Build time, builder host and git tags are *not* here: they are recorded
//! beside the bundle in the store, so the same inputs give the same id and the
//! same bytes on any machine — a CI clone without tags, or a tag added later,
//! gives the same release for the same commit.

use serde::{Deserialize, Serialize};

use crate::RelPath;

/// The version of the release metadata format, and of the bundle that
/// carries it: what a build writes. 2: the bundle's zstd frames carry no
/// content checksum and the files frame is compressed in jobs of
/// [`JOB_SIZE`](crate::bundle::JOB_SIZE). 3: a padding frame after the
/// metadata frame starts the files frame on a 4 KiB boundary (see
/// [`crate::bundle`]).
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format this ferry reads: releases built before the last
/// change of format still verify, deploy and roll back.
pub const OLDEST_FORMAT: u32 = 1;

/// Why release metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("release metadata is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("release metadata has format {0}; this ferry reads formats {OLDEST_FORMAT} to {FORMAT_VERSION}")]
    Format(u32),
    #[error("release metadata is not in canonical form (compact JSON, fields in order, one trailing newline)")]
    NotCanonical,
    #[error("release metadata: {0}")]
    Invalid(String),
}

/// What a release is made of (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    pub format: u32,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitInfo>,
    pub components: Vec<Component>,
}

/// The git commit a release was exported from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitInfo {
    pub commit: String,
}

/// One labelled part of the release tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub kind: ComponentKind,
    pub path: RelPath,
    /// For `config`: the environments found under it (`config/<env>/`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

/// The kinds of component a release tree can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    Code,
    Venv,
    Jar,
    Media,
    Config,
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Code => "code",
            Self::Venv => "venv",
            Self::Jar => "jar",
            Self::Media => "media",
            Self::Config => "config",
        })
    }
}

impl ReleaseMeta {
    /// The canonical bytes: compact JSON and a newline.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("release metadata always serializes");
        out.push(b'\n');
        out
    }

    /// Parses canonical bytes, refusing anything that would not round-trip.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetaError> {
        let meta: ReleaseMeta = serde_json::from_slice(bytes)?;
        if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&meta.format) {
            return Err(MetaError::Format(meta.format));
        }
        meta.validate()?;
        if meta.to_canonical() != bytes {
            return Err(MetaError::NotCanonical);
        }
        Ok(meta)
    }

    /// Checks the field rules of the module docs.
    pub fn validate(&self) -> Result<(), MetaError> {
        let bad = |s: String| Err(MetaError::Invalid(s));
        if !valid_service_name(&self.service) {
            return bad(format!(
                "service name {:?} must match [a-z0-9][a-z0-9._-]* and be at most 64 bytes",
                self.service
            ));
        }
        if let Some(v) = self.version.as_deref().filter(|v| !valid_version(v)) {
            return bad(format!("version {v:?} must be {VERSION_RULE}"));
        }
        if let Some(git) = &self.git {
            let hex = git.commit.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if !hex || !matches!(git.commit.len(), 40 | 64) {
                return bad(format!("git commit {:?} is not a full lowercase hex object id", git.commit));
            }
        }
        if !self.components.windows(2).all(|w| w[0].path < w[1].path) {
            return bad("components must be sorted by path, without duplicates".into());
        }
        for c in &self.components {
            if c.kind != ComponentKind::Config && !c.environments.is_empty() {
                return bad(format!("component {} ({}) lists environments; only config does", c.path, c.kind));
            }
            if !c.environments.windows(2).all(|w| w[0] < w[1]) {
                return bad(format!("environments of {} must be sorted and distinct", c.path));
            }
            if let Some(e) = c.environments.iter().find(|e| !valid_env_name(e)) {
                return bad(format!("environment {e:?} must match [A-Za-z0-9_-]+"));
            }
        }
        Ok(())
    }

    /// Checks each component against the manifest: its path is an entry,
    /// a file for a `jar` and a directory for every other kind — never a
    /// symlink, which could lead outside the release (a host links the
    /// active config inside the config component).
    pub fn check_components(&self, manifest: &crate::Manifest) -> Result<(), MetaError> {
        use crate::EntryKind;
        for c in &self.components {
            let is = match manifest.get(c.path.as_str()).map(|e| &e.kind) {
                None => "not in the manifest",
                Some(EntryKind::Symlink { .. }) => "a symlink",
                Some(EntryKind::File { .. }) if c.kind != ComponentKind::Jar => "a file",
                Some(EntryKind::Dir { .. }) if c.kind == ComponentKind::Jar => "a directory",
                Some(_) => continue,
            };
            let want = if c.kind == ComponentKind::Jar { "a file" } else { "a directory" };
            return Err(MetaError::Invalid(format!(
                "component {} ({}) is {is}; it must be {want} of the release (rebuild the release with \
                 that component as {want}, not a link)",
                c.path, c.kind
            )));
        }
        Ok(())
    }

    /// The components of one kind.
    pub fn components_of(&self, kind: ComponentKind) -> impl Iterator<Item = &Component> {
        self.components.iter().filter(move |c| c.kind == kind)
    }

    /// Whether the symlink at `path` may point outside the release: only a
    /// virtualenv's interpreter links (`<venv>/bin/python*`), which must point
    /// at the base interpreter installed on the host.
    pub fn may_link_outside(&self, path: &RelPath) -> bool {
        let Some(parent) = path.parent() else { return false };
        path.file_name().starts_with("python")
            && self.components_of(ComponentKind::Venv).any(|v| v.path.join("bin").is_ok_and(|bin| bin == parent))
    }
}

/// `[a-z0-9][a-z0-9._-]*`, at most 64 bytes.
pub fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// What a version label may be, in words.
pub const VERSION_RULE: &str = "1 to 128 printable characters without spaces";

/// A version label: 1 to 128 printable characters without spaces.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && !v.chars().any(|c| c.is_control() || c == ' ')
}

/// `[A-Za-z0-9_-]+`, at most 64 bytes.
pub fn valid_env_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ReleaseMeta {
        ReleaseMeta {
            format: FORMAT_VERSION,
            service: "shop".into(),
            version: Some("v1".into()),
            git: None,
            components: vec![
                Component { kind: ComponentKind::Code, path: RelPath::new("app").unwrap(), environments: vec![] },
                Component {
                    kind: ComponentKind::Config,
                    path: RelPath::new("config").unwrap(),
                    environments: vec!["production".into(), "staging".into()],
                },
                Component { kind: ComponentKind::Venv, path: RelPath::new("venv").unwrap(), environments: vec![] },
            ],
        }
    }

    #[test]
    fn canonical_round_trip() {
        let bytes = meta().to_canonical();
        assert_eq!(ReleaseMeta::parse(&bytes).unwrap(), meta());
        assert!(bytes.ends_with(b"}\n"));
    }

    #[test]
    fn refuses_non_canonical_and_unknown() {
        let pretty = serde_json::to_vec_pretty(&meta()).unwrap();
        assert!(matches!(ReleaseMeta::parse(&pretty), Err(MetaError::NotCanonical)));
        let extra = br#"{"format":1,"service":"x","components":[],"evil":1}
"#;
        let err = ReleaseMeta::parse(extra).unwrap_err().to_string();
        assert!(err.contains("unknown field `evil`"), "{err}");
        let future = br#"{"format":4,"service":"x","components":[]}
"#;
        assert!(matches!(ReleaseMeta::parse(future), Err(MetaError::Format(4))));
        let old = br#"{"format":1,"service":"x","components":[]}
"#;
        assert_eq!(ReleaseMeta::parse(old).unwrap().format, 1, "format 1 is still read");
    }

    #[test]
    fn interpreter_links_only_in_venv_bin() {
        let m = meta();
        assert!(m.may_link_outside(&RelPath::new("venv/bin/python3.11").unwrap()));
        assert!(!m.may_link_outside(&RelPath::new("venv/bin/gunicorn").unwrap()));
        assert!(!m.may_link_outside(&RelPath::new("app/python").unwrap()));
        assert!(!m.may_link_outside(&RelPath::new("venv/lib/python3.11").unwrap()));
    }

    #[test]
    fn service_names() {
        assert!(valid_service_name("shop-api_2.x"));
        for bad in ["", "Shop", "-x", "a b", &"x".repeat(65)] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }
}
