//! ferry-switcher: everything that gets a release live — the on-host side
//! (`host`: stage, flip, rollback, prune, lock, journal) and the fleet
//! controller (`fleet`: transports, rollout, gates).
//!
//! Not built yet: issue 3 (the host side and the local transport) and issue 4
//! (fleets over SSH) fill this crate. It exists now so the workspace has its
//! final shape and the dependency direction (formats ← switcher, no builder)
//! is fixed from the start.
