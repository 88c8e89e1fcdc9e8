//! ferry-builder: turns a release tree into a content-addressed bundle.
//!
//! - [`mod@build`]: walk, hash, relocate, write — `ferry build`.
//! - [`walk`]: which paths of the tree go in.
//! - [`venv`], [`pyc`]: make a virtualenv and its bytecode work from wherever
//!   a release is unpacked.
//! - [`cache`]: reuse the last build's hashes for files whose stat is unchanged.
//! - [`store`]: the local directory of bundles.
//! - [`remote`]: an S3-compatible store behind it: publish, fetch, presign.
//! - [`git`]: builds from a clean export of a git ref.
//! - [`packages`]: the Python packages and jars a release carries, and how two differ.
//! - [`signing`]: minisign keys and release signatures (`ferry keygen`, `ferry sign`).
//! - [`steps`]: `[build]` steps run in the tree before it is packed, and their cache.

pub mod build;
mod bundle_file;
pub mod cache;
pub mod delta;
mod error;
pub mod git;
mod pack;
pub mod packages;
pub mod pyc;
pub mod remote;
pub mod signing;
pub mod steps;
pub mod store;
pub mod tags;
pub mod venv;
pub mod walk;

pub use build::{build, BuildSpec, Built, Progress};
pub use error::{AmbiguousName, BuildError, NoSuchRelease, StoreError};
pub use store::{BundleInfo, Store};
