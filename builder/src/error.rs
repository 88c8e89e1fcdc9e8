//! The builder's errors. Each names the file or object it is about.

use std::io;
use std::path::PathBuf;

use ferry_formats::bundle::{HeadError, ReadError, WriteError};

use crate::store::{candidate_table, Candidate};

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
    /// No release has the name (boxed: errors are passed by value).
    #[error("{0}")]
    NoSuchRelease(Box<NoSuchRelease>),
    /// More than one release has it.
    #[error("{0}")]
    AmbiguousName(Box<AmbiguousName>),
    #[error("{}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error("the store {} has no remote: set [store] url = \"s3://BUCKET/PREFIX\" in ferry.toml", store.display())]
    NoRemote { store: PathBuf },
    #[error("release {} is not built in the store {}: `ferry build` it here first", id.short(12), store.display())]
    NotLocal { id: ferry_formats::ReleaseId, store: PathBuf },
}

/// A name that names no release of the store: what it was tried as, and
/// the newest releases it has.
#[derive(Debug)]
pub struct NoSuchRelease {
    pub name: String,
    pub service: Option<String>,
    pub store: PathBuf,
    /// What the name was tried as: "id prefix, version label, git tag".
    pub tried: String,
    /// Why it was not tried as the others, if it was not.
    pub hint: String,
    /// How many releases (of the service) the store has.
    pub count: usize,
    /// The newest of them.
    pub newest: Vec<Candidate>,
}

impl std::fmt::Display for NoSuchRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { name, service, store, tried, hint, count, newest } = self;
        let of = service.as_deref().map(|s| format!(" of {s}")).unwrap_or_default();
        if *count == 0 {
            return write!(
                f,
                "the store {} has no release{of}, so none is {name:?}; `ferry build` makes one",
                store.display()
            );
        }
        let hint = if hint.is_empty() { String::new() } else { format!(" ({hint})") };
        let listed = if *count > newest.len() {
            format!("the newest {} of its {count} (`ferry bundles` lists all)", newest.len())
        } else {
            format!("the {count} it has")
        };
        write!(
            f,
            "no release{of} in the store {} has {name:?} as its {}{hint}; {listed}:\n{}",
            store.display(),
            or_list(tried),
            candidate_table(newest, service.is_none())
        )
    }
}

/// A name that more than one release of the store goes by.
#[derive(Debug)]
pub struct AmbiguousName {
    pub name: String,
    pub service: Option<String>,
    pub candidates: Vec<Candidate>,
}

impl std::fmt::Display for AmbiguousName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { name, service, candidates } = self;
        let prefixes: Vec<&str> = candidates.iter().map(|c| c.unique_prefix.as_str()).collect();
        write!(
            f,
            "{name:?} names {} releases{}:\n{}\npick one by its id or an id prefix: {}",
            candidates.len(),
            service.as_deref().map(|s| format!(" of {s}")).unwrap_or_default(),
            candidate_table(candidates, service.is_none()),
            prefixes.join(", ")
        )
    }
}

/// "a, b, c" as "a, b or c".
fn or_list(list: &str) -> String {
    match list.rsplit_once(", ") {
        Some((head, last)) => format!("{head} or {last}"),
        None => list.to_owned(),
    }
}
