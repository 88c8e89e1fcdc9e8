//! [`RelPath`]: a path inside a release that is safe to join under a root.
//!
//! A valid path is UTF-8, relative, normalized and printable:
//!
//! | rule | refused example |
//! |---|---|
//! | not empty, not absolute | `""`, `/etc/passwd` |
//! | no empty, `.` or `..` component, no trailing `/` | `a//b`, `./a`, `a/../b`, `a/` |
//! | no control character (tab, newline, …) | `a\tb` |
//! | at most 4096 bytes, each component at most 255 | |
//!
//! Paths compare by their bytes, which is the order of a manifest.

use std::fmt;

/// The longest path ferry accepts, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest path component ferry accepts, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;

/// Why a string is not a [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is absolute")]
    Absolute,
    #[error("the path has an empty component or a trailing '/'")]
    EmptyComponent,
    #[error("the path has a '.' or '..' component")]
    DotComponent,
    #[error("the path has a control character (byte 0x{0:02x})")]
    ControlChar(u8),
    #[error("the path is {0} bytes long; at most {MAX_PATH} are allowed")]
    TooLong(usize),
    #[error("a component of the path is {0} bytes long; at most {MAX_COMPONENT} are allowed")]
    ComponentTooLong(usize),
    #[error("the path is not UTF-8")]
    NotUtf8,
}

/// A validated release-relative path (see the module docs for the rules).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        check(&s)?;
        Ok(Self(s))
    }

    /// Validates raw bytes, as found in a tar header or a directory entry.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
        Self::new(s)
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent directory, or `None` for a top-level path.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_owned()))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::new(format!("{}/{name}", self.0))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

fn check(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH {
        return Err(PathError::TooLong(s.len()));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if let Some(b) = s.bytes().find(u8::is_ascii_control) {
        return Err(PathError::ControlChar(b));
    }
    for c in s.split('/') {
        match c {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::DotComponent),
            c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong(c.len())),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(s.clone()).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in ["a", "a/b", "venv/bin/python3.11", "with space/ü.txt", ".hidden/x"] {
            RelPath::new(p).unwrap();
        }
    }

    #[test]
    fn refuses_each_rule() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("./a", PathError::DotComponent),
            ("a/../../b", PathError::DotComponent),
            ("..", PathError::DotComponent),
            ("a\tb", PathError::ControlChar(b'\t')),
            ("a\nb", PathError::ControlChar(b'\n')),
        ];
        for (p, want) in cases {
            assert_eq!(RelPath::new(p).unwrap_err(), want, "{p:?}");
        }
        assert_eq!(RelPath::from_bytes(b"a\xffb").unwrap_err(), PathError::NotUtf8);
        assert!(matches!(RelPath::new("x".repeat(256)), Err(PathError::ComponentTooLong(256))));
    }

    #[test]
    fn parent_join_and_prefix() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        assert!(RelPath::new("a").unwrap().parent().is_none());
        let ab = RelPath::new("a/b").unwrap();
        assert!(p.starts_with(&ab));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&ab));
        assert_eq!(ab.join("x").unwrap().as_str(), "a/b/x");
    }
}
