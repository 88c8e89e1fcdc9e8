//! What `ferry.toml` means when it leaves a key out, in one place, each with
//! why it is that value. `docs/ferry-toml.md` states each key's (its
//! tables' default column); change both together.

use ferry_switcher::fleet::OnFailure;

// [release]

/// `root`: the tree `ferry.toml` sits in, the usual layout of a project.
pub const RELEASE_ROOT: &str = ".";
/// `default_excludes`: on, since version-control and editor litter is never
/// part of a release.
pub const USE_DEFAULT_EXCLUDES: bool = true;
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
/// `compression_level`: zstd's own default level, fast to build and most of
/// the size win; it does not change the release id.
pub const COMPRESSION_LEVEL: i32 = 3;

// [build]

/// A build step's `timeout`, in seconds: a pip install of a large lock file
/// on a slow index takes minutes; a hung one should not hold a build all day.
pub const BUILD_STEP_TIMEOUT: u64 = 600;

// [deploy] and [stages.*]

/// `deploy_to` is `<this>/<service>`: the FHS's place for data a system
/// serves.
pub const DEPLOY_ROOT: &str = "/srv";
/// `keep_releases`: as Capistrano's `keep_releases`, enough to roll back a
/// few pushes without filling the disk.
pub const KEEP_RELEASES: usize = ferry_switcher::fleet::DEFAULT_KEEP_RELEASES;
/// `transport`: directories on this machine need nothing set up, so a first
/// `ferry push` works before any host does.
pub const TRANSPORT: &str = "local";
/// `strategy`: a canary, then half the fleet, then the rest.
pub const STRATEGY: &[&str] = ferry_switcher::fleet::DEFAULT_STRATEGY;
/// `max_parallel`: hosts worked on at once; enough that a fleet of dozens
/// goes in a few rounds, few enough not to swamp the controller's link.
pub const MAX_PARALLEL: usize = ferry_switcher::fleet::DEFAULT_MAX_PARALLEL;
/// `fetch_parallel`: hosts downloading from the store at once. A
/// self-hosted store (MinIO, SeaweedFS) or a cache in front of S3 serves
/// about a 10 Gbit/s link, which 32 hosts at ~40 MB/s each fill; more at
/// once only split the same bandwidth into slower downloads (and URLs that
/// expire while they wait). S3 itself takes far more, so 32 costs it
/// little.
pub const FETCH_PARALLEL: usize = ferry_switcher::fleet::DEFAULT_FETCH_PARALLEL;
/// `load_balancer.drain_timeout`: seconds a draining server's sessions may
/// take to end; HAProxy's own `timeout server` is often about this.
pub const DRAIN_TIMEOUT: u64 = 30;
/// `load_balancer.up_timeout`: seconds for HAProxy to see a server UP after
/// `ready`: room for several health checks at HAProxy's default 2 s.
pub const UP_TIMEOUT: u64 = 30;
/// `load_balancer.min_in_service`: a backend keeps at least one server.
pub const MIN_IN_SERVICE: usize = 1;
/// `tag_format`: the stage and the day, as the Fabric setup tagged every
/// production push (`production-2026-12-05`, then `-2`, `-3` that day).
pub const TAG_FORMAT: &str = "{stage}-{date}";
/// `tag_remote`: git's own default remote.
pub const TAG_REMOTE: &str = "origin";
/// `on_failure`: flip back, since a half-pushed fleet runs two releases.
pub const ON_FAILURE: OnFailure = OnFailure::Revert;
/// `connect_timeout`: seconds to connect to an ssh host, as OpenSSH's
/// `ConnectTimeout` would be set: a host slower than this is as good as down.
pub const CONNECT_TIMEOUT: u64 = 10;
/// `step_timeout`: seconds one read or write on an ssh connection may take;
/// above [`HOOK_TIMEOUT`], which it must be, with room.
pub const STEP_TIMEOUT: u64 = 600;
/// `known_hosts`, under the home directory: where OpenSSH keeps it.
pub const KNOWN_HOSTS: &str = ".ssh/known_hosts";
/// `ssh_config`, under the home directory: where OpenSSH reads it.
pub const SSH_CONFIG: &str = ".ssh/config";
/// The home directory when `$HOME` is unset (a bare systemd unit, cron):
/// such a process most often runs as root.
pub const HOME: &str = "/root";

// [programs.*]: supervisord's own defaults, so a program behaves as its
// operators know it from supervisord.

/// `numprocs`.
pub const NUMPROCS: u32 = 1;
/// `directory`: the release itself.
pub const DIRECTORY: &str = ".";
/// `stopsignal`.
pub const STOPSIGNAL: &str = "TERM";
/// `stopwaitsecs`.
pub const STOPWAITSECS: u32 = 10;
/// `startsecs`.
pub const STARTSECS: u32 = 1;

// [hooks]

/// `timeout`, in seconds: five minutes for a migration of a real database;
/// under [`STEP_TIMEOUT`], which it must be.
pub const HOOK_TIMEOUT: u64 = 300;

// [stages.*.health]

/// `http.status`: what a health endpoint answers when all is well.
pub const HTTP_STATUS: u16 = 200;
/// `http.timeout` and `errors.timeout`, in seconds: a health check slower
/// than this fails a load balancer's too.
pub const PROBE_TIMEOUT: f64 = 2.0;
/// `http.retries`: a process just restarted may miss the first request.
pub const HTTP_RETRIES: u32 = 3;
/// `errors.window`, in seconds: at [`ERRORS_INTERVAL`] it is 50 requests a
/// host, well over [`ERRORS_MIN_REQUESTS`].
pub const ERRORS_WINDOW: f64 = 10.0;
/// `errors.interval`, in seconds: five requests a second a host, light on
/// the service.
pub const ERRORS_INTERVAL: f64 = 0.2;
/// `errors.max_rate`: one request in twenty failing is an outage, not noise.
pub const ERRORS_MAX_RATE: f64 = 0.05;
/// `errors.max_excess`: two points more failures than the hosts not yet
/// flipped is the new release's doing.
pub const ERRORS_MAX_EXCESS: f64 = 0.02;
/// `errors.min_requests`: fewer is too few to judge a rate by.
pub const ERRORS_MIN_REQUESTS: usize = 20;
/// `command.timeout`, in seconds: a smoke test, not a test suite.
pub const COMMAND_TIMEOUT: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference says what ferry does: each default above is the one
    /// its table gives.
    #[test]
    fn the_reference_states_these_defaults() {
        let docs = include_str!("../../docs/ferry-toml.md");
        let row = |first: &str| -> &str {
            let start = format!("| {first}");
            docs.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no row for {first}"))
        };
        let default = |key: &str| row(&format!("`{key}` |")).split('|').nth(3).unwrap().trim().to_owned();
        let quoted = |v: &str| format!("`\"{v}\"`");
        assert_eq!(default("root"), quoted(RELEASE_ROOT));
        assert_eq!(default("default_excludes"), format!("`{USE_DEFAULT_EXCLUDES}`"));
        assert!(row("`default_excludes` |")
            .contains(&DEFAULT_EXCLUDES.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")));
        assert_eq!(default("compression_level"), format!("`{COMPRESSION_LEVEL}`"));
        assert_eq!(default("deploy_to"), format!("`{DEPLOY_ROOT}/<service>`"));
        assert_eq!(default("keep_releases"), KEEP_RELEASES.to_string());
        assert_eq!(default("transport"), quoted(TRANSPORT));
        assert_eq!(
            default("strategy"),
            format!("`[{}]`", STRATEGY.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))
        );
        assert_eq!(default("max_parallel"), MAX_PARALLEL.to_string());
        assert_eq!(default("fetch_parallel"), FETCH_PARALLEL.to_string());
        assert_eq!(default("on_failure"), quoted(&format!("{ON_FAILURE:?}").to_lowercase()));
        assert_eq!(default("connect_timeout"), CONNECT_TIMEOUT.to_string());
        assert_eq!(default("step_timeout"), STEP_TIMEOUT.to_string());
        assert_eq!(default("known_hosts"), format!("`~/{KNOWN_HOSTS}`"));
        assert_eq!(default("ssh_config"), format!("`~/{SSH_CONFIG}`"));
        assert_eq!(default("numprocs"), NUMPROCS.to_string());
        assert_eq!(default("directory"), quoted(DIRECTORY));
        assert_eq!(default("stopsignal"), format!("`{STOPSIGNAL}`"));
        assert_eq!(default("stopwaitsecs"), STOPWAITSECS.to_string());
        assert_eq!(default("startsecs"), STARTSECS.to_string());
        // `timeout` is a key of more than one table: the row under a heading.
        let under = |heading: &str, key: &str| -> String {
            let at = docs.find(heading).unwrap_or_else(|| panic!("no heading {heading}"));
            let start = format!("| `{key}` |");
            let line = docs[at..].lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no row {key}"));
            line.split('|').nth(3).unwrap().trim().to_owned()
        };
        assert_eq!(under("## `[hooks]`", "timeout"), HOOK_TIMEOUT.to_string(), "[hooks]");
        assert_eq!(under("## `[build]`", "timeout"), BUILD_STEP_TIMEOUT.to_string(), "[build]");
        let http = row("`http` |");
        for said in [
            format!("`status` ({HTTP_STATUS})"),
            format!("`timeout` ({PROBE_TIMEOUT} s)"),
            format!("`retries` ({HTTP_RETRIES},"),
        ] {
            assert!(http.contains(&said), "{said}");
        }
        let errors = row("`errors` |");
        for said in [
            format!("`timeout` ({PROBE_TIMEOUT} s)"),
            format!("`window` ({ERRORS_WINDOW} s)"),
            format!("`interval` ({ERRORS_INTERVAL} s)"),
            format!("`max_rate` ({ERRORS_MAX_RATE})"),
            format!("`max_excess` ({ERRORS_MAX_EXCESS})"),
            format!("`min_requests` ({ERRORS_MIN_REQUESTS})"),
        ] {
            assert!(errors.contains(&said), "{said}");
        }
        // `[programs.*]` has a `command` row too; the gate's comes after it.
        assert!(row("`command` | `run`,").contains(&format!("`timeout` ({COMMAND_TIMEOUT} s)")));
    }
}
