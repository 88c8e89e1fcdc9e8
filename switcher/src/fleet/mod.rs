//! The controller side: a stage's hosts, reached through a transport, moved
//! from one release to the next in batches.
//!
//! A push has two phases. **Stage**: every target host gets the delta from
//! its current release (or the whole bundle when it has none, or none the
//! store knows) and stages it, in parallel; nothing changes for users yet.
//! **Activate**: the hosts flip batch by batch (`["1", "50%", "100%"]` is a
//! canary, then half the fleet, then the rest). A host that fails stops the
//! push, and every host this push flipped is flipped back.

mod agent;
mod connect;
pub mod fault;
pub mod gates;
mod host_name;
pub mod lb;
mod local;
mod plan;
mod preview;
mod push;
mod query;
pub mod report;
mod rollback;
pub mod sim;
#[cfg(feature = "ssh")]
mod ssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;

pub use crate::host::fetch::Fetch;
use crate::host::{Flipped, HostError, Pinned, Pruned, StageOptions, Staged, Status};

pub use agent::Agent;
pub use gates::{Gate, Hooks, HttpProbe, Runtime};
pub use lb::{LbError, LbNode, LoadBalancer};
pub use local::Local;
pub use plan::{batches, Step};
pub use preview::{preview, Planned, Ship};
pub use push::{push, LbBatch, LbReport};
pub use query::{exec, journals, logs, setup, setup_install, status, Answer};
pub use report::{Down, Event, EventKind, HostReport, HostStep, Observer, Outcome, Quiet, Report, Shipped};
pub use rollback::{rollback, RollbackError};
#[cfg(feature = "ssh")]
pub use ssh::{agent_info, read_ssh_config, AgentBinary, AgentInfo, AgentStore, Ssh, SshConfigError};

/// Where the fleet gets bundles and deltas: the CLI hands it the builder's
/// store.
pub trait ReleaseSource: Sync {
    /// The path of the whole bundle of `id`.
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError>;
    /// The path of a delta from `base` to `target`, made if need be; `None`
    /// when the source does not have `base`.
    fn delta(&self, base: &ReleaseId, target: &ReleaseId) -> Result<Option<PathBuf>, SourceError>;
    /// The path of an rsync delta to `target` for a host whose content is
    /// known only by its `signature`.
    fn rsync_delta(&self, signature: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError>;
    /// Where hosts can download the payload at `path` (of `kind`, for hosts
    /// on `base`) themselves: the source has put it in an object store the
    /// hosts reach, and signed a short-lived URL (`fetch = "store"`).
    /// `None`: the controller pushes it, as by default.
    fn fetchable(
        &self,
        base: Option<&ReleaseId>,
        target: &ReleaseId,
        kind: Shipped,
        path: &Path,
    ) -> Result<Option<Fetch>, SourceError> {
        let _ = (base, target, kind, path);
        Ok(None)
    }
    /// The release's minisign signature (see `ferry_formats::signed`), if
    /// it was signed.
    fn release_signature(&self, _id: &ReleaseId) -> Result<Option<String>, SourceError> {
        Ok(None)
    }
}

pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// One host of a stage, as the transport reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// How reports name it.
    pub name: String,
    /// Where the service lives on it.
    pub deploy_to: PathBuf,
}

/// A connection to one host. Sessions that change things hold the host's
/// lock from [`Transport::connect`] until they are dropped.
pub trait Session: Send {
    fn status(&mut self) -> Result<Status, HostError>;
    /// Ships `payload` (a bundle or delta) with the release's `signature`
    /// (a minisign file's text) and stages it.
    fn stage(&mut self, payload: &Path, opts: &StageOptions, signature: Option<&str>) -> Result<Staged, HostError>;
    /// Pins the minisign public `keys` on the host (see
    /// [`Host::pin_keys`](crate::host::Host::pin_keys)).
    fn pin_keys(&mut self, keys: &[String], replace: bool) -> Result<Pinned, HostError>;
    fn activate(&mut self, id: &ReleaseId, opts: &StageOptions) -> Result<Flipped, HostError>;
    fn rollback(&mut self, to: Option<&ReleaseId>) -> Result<Flipped, HostError>;
    fn prune(&mut self, keep: usize) -> Result<Pruned, HostError>;
    /// Signs the host's current release, for an rsync delta.
    fn signature(&mut self) -> Result<Signature, HostError>;
    /// The host's journal, oldest first.
    fn journal(&mut self) -> Result<Vec<Record>, HostError>;
    /// Flips back to `to` because of `reason`, which the host's journal
    /// records (a failed gate's evidence).
    fn revert(&mut self, to: &ReleaseId, reason: &str) -> Result<Flipped, HostError>;
    /// Restarts the programs on `id`, already current (`--force`).
    fn restart(&mut self, id: &ReleaseId) -> Result<Vec<String>, HostError>;
    /// Who listens on TCP `port` on the host (see [`Host::listeners`](crate::host::Host::listeners)).
    fn listeners(&mut self, port: u16) -> Result<Vec<PortHolder>, HostError>;
    /// Prepares the host for the service's programs (see [`Host::setup`](crate::host::Host::setup)).
    fn setup(&mut self, service: &str, programs: &[Program]) -> Result<SetUp, HostError>;
    /// Installs and enables at boot what starts the service's supervisord
    /// (see [`Host::install`](crate::host::Host::install)).
    fn install(&mut self, service: &str) -> Result<Installed, HostError>;
    /// Runs a hook in release `id` on the host.
    fn hook(&mut self, id: &ReleaseId, kind: HookKind, command: &str, timeout: Duration) -> Result<HookRun, HostError>;
    /// The programs' logs (see [`Host::logs`](crate::host::Host::logs)).
    fn logs(
        &mut self,
        program: Option<&str>,
        offsets: &BTreeMap<String, i64>,
        bytes: i32,
    ) -> Result<Vec<LogChunk>, HostError>;
    /// Sends one command to a load balancer's admin socket on the host and
    /// returns its reply (see [`admin_socket`](crate::host::admin_socket)).
    fn admin_socket(&mut self, socket: &Path, command: &str) -> Result<String, HostError>;
    /// Has the host download its payload itself and stage it (see
    /// [`fetch`](crate::host::fetch)); a transport that cannot says so,
    /// and the controller pushes the bytes instead.
    /// `signature` as for [`Session::stage`].
    fn stage_fetched(
        &mut self,
        fetch: &Fetch,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        let _ = (fetch, opts, signature);
        Err(HostError::Input("this transport cannot have hosts fetch from a store".into()))
    }
    /// What happened on the way to this session worth a line in the host's
    /// report (how the agent got there), once.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// How to reach hosts.
pub trait Transport: Sync {
    /// Connects to `host`; with `lock`, takes the service's lock there for
    /// `command` (as the next comer will read it).
    fn connect(&self, host: &HostSpec, lock: Option<&str>) -> Result<Box<dyn Session>, HostError>;
}

/// What to do when a host fails during activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Stop, and flip back every host this push flipped.
    #[default]
    Revert,
    /// Stop where it is.
    Stop,
}

/// A stage of ferry.toml, resolved.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub hosts: Vec<HostSpec>,
    pub strategy: Vec<Step>,
    pub options: StageOptions,
    pub keep_releases: usize,
    pub max_parallel: usize,
    pub on_failure: OnFailure,
    /// Programs, hooks and health gates; the default has none.
    pub runtime: Runtime,
    /// Push even to hosts that already run the release and serve it:
    /// flip, restart and hooks as for a new release (`--force`).
    pub force: bool,
    /// The load balancer in front of the hosts, which a push drives.
    pub load_balancer: Option<LoadBalancer>,
    /// `--out`: the hosts are out of rotation already (checked), and the
    /// push leaves the load balancer's states as they are.
    pub out_of_rotation: bool,
    /// Minisign public keys the hosts must hold releases to (see
    /// `host::trust`): a push pins them on a host that has none.
    pub trusted_keys: Vec<String>,
    /// `fetch = "store"`: the most hosts downloading from the store at
    /// once (the stage's `max_parallel` bounds it too). The first host to
    /// fetch each payload downloads it alone, before any other, so a cache
    /// in front of the store is filled by one download.
    pub fetch_parallel: usize,
}

/// ferry.toml's `strategy` when it names none: a canary, then half the
/// fleet, then the rest (why each default is what it is: the config's
/// `defaults` module).
pub const DEFAULT_STRATEGY: &[&str] = &["1", "50%", "100%"];
/// ferry.toml's `keep_releases` when unset.
pub const DEFAULT_KEEP_RELEASES: usize = 5;
/// ferry.toml's `max_parallel` when unset.
pub const DEFAULT_MAX_PARALLEL: usize = 10;
/// ferry.toml's `fetch_parallel` when unset.
pub const DEFAULT_FETCH_PARALLEL: usize = 32;

impl Stage {
    /// A stage over `hosts` as ferry.toml makes one that sets nothing else:
    /// the default strategy, releases kept, parallelism and downloads; a
    /// failure reverted; no environment, runtime, load balancer or keys.
    pub fn new(name: impl Into<String>, hosts: Vec<HostSpec>) -> Self {
        Self {
            name: name.into(),
            hosts,
            strategy: DEFAULT_STRATEGY.iter().map(|s| s.parse().expect("the default strategy parses")).collect(),
            options: StageOptions::default(),
            keep_releases: DEFAULT_KEEP_RELEASES,
            max_parallel: DEFAULT_MAX_PARALLEL,
            on_failure: OnFailure::Revert,
            runtime: Runtime::default(),
            force: false,
            load_balancer: None,
            out_of_rotation: false,
            trusted_keys: Vec::new(),
            fetch_parallel: DEFAULT_FETCH_PARALLEL,
        }
    }
}
