//! The defaults of `ferry.toml`, in one place, each with why it is that
//! value. `docs/ferry-toml.md` states every one; change both together.

/// Patterns left out of every release unless `default_excludes = false`.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".git/",
    ".hg/",
    ".svn/",
    ".DS_Store",
    "*.swp",
    "*.log",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
];

/// The default batches: a canary, then half the fleet, then the rest.
pub const DEFAULT_STRATEGY: &[&str] = &["1", "50%", "100%"];
/// Seconds to connect to an ssh host, as OpenSSH's `ConnectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// Seconds one read or write on an ssh connection may take.
pub const DEFAULT_STEP_TIMEOUT: u64 = 600;
/// Releases kept on each host after a push, as Capistrano's `keep_releases`.
pub const DEFAULT_KEEP: usize = 5;
