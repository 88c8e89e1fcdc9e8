//! The raw sections of `ferry.toml`, as serde reads them: spans kept for
//! messages, unknown keys refused. Nothing here is checked beyond its type.
//!
//! Named `raw`, not `toml`, so that it does not shadow the `toml` crate in
//! the modules that use both.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::defaults;

/// The whole file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryToml {
    pub service: Spanned<String>,
    #[serde(default)]
    pub release: ReleaseSection,
    #[serde(default)]
    pub components: Components,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub deploy: DeploySection,
    #[serde(default)]
    pub stages: BTreeMap<String, Spanned<StageSection>>,
    /// The service's processes, run by its own supervisord on every host.
    #[serde(default)]
    pub programs: BTreeMap<String, Spanned<ProgramSection>>,
    #[serde(default)]
    pub hooks: HooksSection,
    /// Steps run in the tree before it is packed.
    #[serde(default)]
    pub build: BuildSection,
}

/// `[build]`: what `ferry build` runs in the tree before packing it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    #[serde(default)]
    pub steps: Vec<Spanned<StepSection>>,
}

/// `[[build.steps]]`: one command, and what keys and holds its cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSection {
    pub name: Spanned<String>,
    pub run: Spanned<String>,
    #[serde(default)]
    pub inputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
    pub timeout: Option<Spanned<u64>>,
}

/// `[programs.<name>]`: one program of the service, under supervisord.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSection {
    pub command: Spanned<String>,
    pub numprocs: Option<Spanned<u32>>,
    /// Relative to the release; "." by default.
    pub directory: Option<Spanned<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub stopsignal: Option<Spanned<String>>,
    pub stopwaitsecs: Option<u32>,
    pub startsecs: Option<u32>,
    /// Restart by this signal (gunicorn: HUP) instead of stop and start.
    pub reload_signal: Option<Spanned<String>>,
}

/// `[hooks]`: commands run on hosts around a push.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    pub migrate: Option<String>,
    pub migrate_on: Option<String>,
    pub before_flip: Option<String>,
    pub after_flip: Option<String>,
    pub before_batch: Option<String>,
    pub after_batch: Option<String>,
    pub timeout: Option<Spanned<u64>>,
}

/// `[stages.<name>.hooks]`: the stage's own, over `[hooks]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageHooksSection {
    pub migrate: Option<String>,
    pub before_flip: Option<String>,
    pub after_flip: Option<String>,
    pub before_batch: Option<String>,
    pub after_batch: Option<String>,
}

/// `[stages.<name>.load_balancer]`: the load balancer a push drives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSection {
    pub kind: Spanned<String>,
    pub nodes: Spanned<Vec<LbNodeSection>>,
    pub backends: Spanned<Vec<Spanned<String>>>,
    /// Host (as the stage writes it) to server name, where they differ.
    #[serde(default = "no_servers")]
    pub servers: Spanned<BTreeMap<String, String>>,
    pub drain_timeout: Option<Spanned<u64>>,
    pub up_timeout: Option<Spanned<u64>>,
    pub min_in_service: Option<Spanned<usize>>,
}

/// One LB node: a host reached as the stage's are, and its admin socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbNodeSection {
    pub host: Spanned<String>,
    pub socket: Spanned<String>,
}

fn no_servers() -> Spanned<BTreeMap<String, String>> {
    Spanned::new(0..0, BTreeMap::new())
}

/// `[stages.<name>.health]`: the gates after each batch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub http: Option<HttpSection>,
    pub errors: Option<Spanned<ErrorsSection>>,
    pub command: Option<CommandSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub url: Spanned<String>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    pub status: Option<u16>,
    pub timeout: Option<f64>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub answered_by: ferry_switcher::fleet::gates::AnsweredBy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsSection {
    /// Where the probes go; not with `source = "load_balancer"`.
    pub url: Option<Spanned<String>>,
    /// `"probes"` (the default) or `"load_balancer"`: HAProxy's own counts.
    pub source: Option<Spanned<String>>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    pub timeout: Option<f64>,
    pub window: Option<f64>,
    pub interval: Option<f64>,
    pub max_rate: Option<f64>,
    pub max_excess: Option<f64>,
    pub min_requests: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSection {
    pub run: String,
    pub timeout: Option<Spanned<u64>>,
}

/// `[deploy]`: how releases live on every host, for every stage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    pub deploy_to: Option<Spanned<String>>,
    #[serde(default)]
    pub linked_dirs: Vec<Spanned<String>>,
    #[serde(default)]
    pub linked_files: Vec<Spanned<String>>,
    pub keep_releases: Option<Spanned<usize>>,
    /// Asset directories that also get the replaced release's files they
    /// lack (see `StageOptions::bridge_assets`).
    pub bridge_assets: Option<Vec<Spanned<String>>>,
}

/// `[stages.<name>]`: a set of hosts pushed to together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    #[serde(default = "local")]
    pub transport: Spanned<String>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub env: Option<Spanned<String>>,
    pub strategy: Option<Spanned<Vec<Spanned<String>>>>,
    /// Named sets of hosts (OpenSky's group1 / group2), for a strategy of
    /// groups and for `--group`.
    #[serde(default = "no_groups")]
    pub groups: Spanned<BTreeMap<String, Vec<String>>>,
    pub deploy_to: Option<Spanned<String>>,
    pub keep_releases: Option<Spanned<usize>>,
    /// Over `[deploy]`'s bridge_assets, for this stage.
    pub bridge_assets: Option<Vec<Spanned<String>>>,
    pub max_parallel: Option<Spanned<usize>>,
    pub on_failure: Option<Spanned<String>>,
    /// ssh: the user for hosts that do not name one.
    pub user: Option<String>,
    /// ssh: the known_hosts file host keys are checked against.
    pub known_hosts: Option<String>,
    /// ssh: the private key to offer (else the SSH agent's).
    pub identity: Option<String>,
    /// ssh: accept and record host keys known_hosts does not have yet.
    #[serde(default)]
    pub accept_new_host_keys: bool,
    /// ssh: the agent binary on the hosts.
    pub agent: Option<String>,
    /// ssh: the OpenSSH client config whose Host entries apply.
    pub ssh_config: Option<String>,
    /// ssh: seconds to connect (TCP, handshake, key check, authentication).
    pub connect_timeout: Option<Spanned<u64>>,
    /// ssh: seconds any one read or write on a connection may take.
    pub step_timeout: Option<Spanned<u64>>,
    /// The gates after each batch.
    #[serde(default)]
    pub health: HealthSection,
    /// Environment for the programs on one host, over `[programs.*]`'s:
    /// `{ "web1" = { PORT = "8101" } }`.
    #[serde(default = "no_host_env")]
    pub host_env: Spanned<BTreeMap<String, BTreeMap<String, String>>>,
    /// The stage's hooks, over `[hooks]`.
    #[serde(default)]
    pub hooks: StageHooksSection,
    /// The git ref `ferry deploy` builds when given none, and whose newest
    /// build `ferry push` picks.
    #[serde(rename = "ref")]
    pub reference: Option<Spanned<String>>,
    /// The tags `stable` picks the newest of, in version order (`"v*"`).
    pub stable_tags: Option<Spanned<String>>,
    /// Tag the deployed commit after each successful push.
    #[serde(default)]
    pub tag: bool,
    /// The dated tag's name: `{stage}` and `{date}` (YYYY-MM-DD).
    pub tag_format: Option<Spanned<String>>,
    /// Where the dated tag is pushed.
    pub tag_remote: Option<Spanned<String>>,
    pub load_balancer: Option<LoadBalancerSection>,
    /// Where hosts get the payload: "push" (from the controller, the
    /// default) or "store" (they download it from `[store] url`).
    pub fetch: Option<Spanned<String>>,
    /// How long, in seconds, a host's presigned URL is good for.
    pub fetch_url_ttl: Option<Spanned<u64>>,
    /// `fetch = "store"`: the most hosts downloading from the store at once.
    pub fetch_parallel: Option<Spanned<usize>>,
    /// Minisign public keys (`RWS…`): the hosts take only releases one of
    /// them signed. Rotation: list the new key beside the old.
    pub trusted_keys: Option<Spanned<Vec<Spanned<String>>>>,
}

fn no_host_env() -> Spanned<BTreeMap<String, BTreeMap<String, String>>> {
    Spanned::new(0..0, BTreeMap::new())
}

fn no_groups() -> Spanned<BTreeMap<String, Vec<String>>> {
    Spanned::new(0..0, BTreeMap::new())
}

fn local() -> Spanned<String> {
    Spanned::new(0..0, defaults::TRANSPORT.into())
}

/// `[release]`: what goes into a bundle and how it is packed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    #[serde(default = "dot")]
    pub root: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_excludes")]
    pub default_excludes: bool,
    #[serde(default = "compression_level")]
    pub compression_level: Spanned<i32>,
}

impl Default for ReleaseSection {
    fn default() -> Self {
        Self {
            root: dot(),
            include: vec![],
            exclude: vec![],
            default_excludes: default_excludes(),
            compression_level: compression_level(),
        }
    }
}

fn dot() -> String {
    defaults::RELEASE_ROOT.into()
}
fn default_excludes() -> bool {
    defaults::USE_DEFAULT_EXCLUDES
}
fn compression_level() -> Spanned<i32> {
    Spanned::new(0..0, defaults::COMPRESSION_LEVEL)
}

/// `[components]`: the labelled parts of the release tree.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Components {
    pub code: Option<Spanned<OneOrMany>>,
    pub venv: Option<Spanned<String>>,
    pub jar: Option<Spanned<String>>,
    pub media: Option<Spanned<OneOrMany>>,
    pub config: Option<Spanned<String>>,
}

/// A path or a list of paths.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Each path of a one-or-many field, with the field's span.
pub(super) fn each(field: &Option<Spanned<OneOrMany>>) -> Vec<Spanned<String>> {
    let Some(f) = field else { return vec![] };
    let paths = match f.get_ref() {
        OneOrMany::One(p) => std::slice::from_ref(p),
        OneOrMany::Many(v) => v.as_slice(),
    };
    paths.iter().map(|p| Spanned::new(f.span(), p.clone())).collect()
}

/// `[store]`: where bundles are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub path: Option<String>,
    /// `s3://bucket/prefix`: an S3-compatible store behind the local one.
    pub url: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    pub profile: Option<String>,
    /// PEM CA certificates the controller trusts for an `https://`
    /// endpoint, beside the system's (hosts use their own trust store).
    pub ca_file: Option<Spanned<String>>,
}
