//! The builder's errors. Each names the file or object it is about.

use std::io;
use std::path::PathBuf;

use ferry_formats::bundle::{HeadError, ReadError, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}: the path is not UTF-8; ferry releases need UTF-8 paths (rename the file or exclude it)", .0.display())]
    NotUtf8(PathBuf),
    #[error("{}: {reason}", path.display())]
    BadPath { path: PathBuf, reason: String },
    #[error("{}: is a {what}; a release holds only files, directories and symlinks (exclude it)", path.display())]
    Special { path: PathBuf, what: &'static str },
    #[error("{}: has the {bit} bit; ferry bundles carry no setuid or setgid files", path.display())]
    SetId { path: PathBuf, bit: &'static str },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An fs-err error, which names its path itself.
    #[error(transparent)]
    Fs(io::Error),
    #[error("component {kind} {path:?}: {reason}")]
    Component { kind: String, path: String, reason: String },
    #[error("the release tree is not valid")]
    Release(#[from] HeadError),
    #[error("{count} file(s) of the venv still name the build path (--strict): {}", list.join(", "))]
    Unrelocated { count: usize, list: Vec<String> },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
    #[error("{0}")]
    Git(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
}

/// Errors of the bundle store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{input:?} is not a release id or id prefix: use at least 4 hex digits, or a bundle file's path")]
    BadId { input: String },
    #[error("no bundle in {} has an id starting with {prefix:?}; `ferry bundles` lists them", store.display())]
    NotFound { store: PathBuf, prefix: String },
    #[error("{prefix:?} matches {} bundles ({}); give more digits", ids.len(), ids.join(", "))]
    Ambiguous { prefix: String, ids: Vec<String> },
    #[error("{}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
}
