//! ferry's formats: the pure data both sides of a deploy agree on.
//!
//! - [`id`]: content ids ([`ReleaseId`], [`BlobHash`]).
//! - [`path`]: [`RelPath`], a release-relative path that is safe to join under a root.
//! - [`manifest`]: one entry per path of a release, canonical text.
//! - [`release`]: release metadata (service, version, git, components).
//! - [`bundle`]: the `.tar.zst` stream that carries a release, its writer and strict reader.
//! - [`signed`]: signed releases: the statement a minisign signature vouches for.
//! - [`atomic`]: the few file-system steps that must be all-or-nothing.
//!
//! Nothing here opens a network connection or starts a process.

pub mod atomic;
pub mod bundle;
pub mod delta;
#[doc(hidden)]
pub mod fuzz;
pub mod id;
pub mod journal;
pub mod manifest;
pub mod path;
pub mod release;
pub mod signature;
pub mod signed;
mod varint;

pub use id::{BlobHash, ReleaseId};
pub use manifest::{Entry, EntryKind, Manifest};
pub use path::RelPath;
pub use release::{Component, ComponentKind, ReleaseMeta};

/// The modification time every file, directory and link gets in a bundle:
/// 1980-01-01T00:00:00Z (the earliest time a zip archive can hold, so a
/// release re-packed as a zip or wheel keeps working).
///
/// Python's timestamp-based `.pyc` files record their source's mtime; the
/// builder rewrites that field to this value so bytecode stays valid after
/// a release is unpacked (see `ferry_builder::pyc`).
pub const NORMALIZED_MTIME: u64 = 315_532_800;
