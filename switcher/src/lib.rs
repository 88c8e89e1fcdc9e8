//! ferry-switcher: everything that gets a release live.
//!
//! - [`host`]: the on-host side — stage, flip, rollback, prune, lock,
//!   journal. Runs as `ferry host <verb>` on every host.
//! - [`fleet`]: the controller side — transports, the rollout plan in
//!   batches, the push and the fleet rollback.
//! - [`error`]: an error and its causes on one line, for both.
//!
//! The switcher does not depend on the builder: the fleet reaches bundles and
//! deltas through [`fleet::ReleaseSource`], which the CLI implements with the
//! builder's store.

pub mod error;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
