//! `ferry.toml`: the service's one config file.
//!
//! Every key is documented in `docs/ferry-toml.md`; unknown keys are refused
//! with their line and column, and so are values that parse but are wrong (a
//! bad service name, a component path that leaves the tree).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use ferry_formats::release::{valid_env_name, valid_service_name};
use ferry_formats::{ComponentKind, RelPath};
use ferry_switcher::fleet::{Gate, Hooks, HttpProbe, OnFailure, Step};
use ferry_switcher::host::runtime::{Program, Restart};
use serde::Deserialize;
use toml::Spanned;

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
    pub timeout: Option<Spanned<u64>>,
}

/// `[stages.<name>.health]`: the gates after each batch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub http: Option<HttpSection>,
    pub errors: Option<ErrorsSection>,
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
    pub url: Spanned<String>,
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
    pub timeout: Option<u64>,
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
}

fn no_host_env() -> Spanned<BTreeMap<String, BTreeMap<String, String>>> {
    Spanned::new(0..0, BTreeMap::new())
}

fn no_groups() -> Spanned<BTreeMap<String, Vec<String>>> {
    Spanned::new(0..0, BTreeMap::new())
}

fn local() -> Spanned<String> {
    Spanned::new(0..0, "local".into())
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
    #[serde(default = "yes")]
    pub default_excludes: bool,
    #[serde(default = "three")]
    pub compression_level: Spanned<i32>,
}

impl Default for ReleaseSection {
    fn default() -> Self {
        Self {
            root: dot(),
            include: vec![],
            exclude: vec![],
            default_excludes: true,
            compression_level: Spanned::new(0..0, 3),
        }
    }
}

fn dot() -> String {
    ".".into()
}
fn yes() -> bool {
    true
}
fn three() -> Spanned<i32> {
    Spanned::new(0..0, 3)
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
fn each(field: &Option<Spanned<OneOrMany>>) -> Vec<Spanned<String>> {
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
}

/// A loaded and checked `ferry.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub service: String,
    pub root: PathBuf,
    pub components: Vec<(ComponentKind, RelPath)>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub compression_level: i32,
    pub store: Option<PathBuf>,
    pub stages: BTreeMap<String, Stage>,
    pub programs: Vec<Program>,
    pub hooks: Hooks,
}

/// The batches of a stage: counts and shares, or named groups in order.
#[derive(Debug, Clone)]
pub enum Strategy {
    Steps(Vec<Step>),
    Groups(Vec<String>),
}

/// How an ssh stage reaches its hosts.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The stage's `user`, if it says one.
    pub user: Option<String>,
    pub known_hosts: PathBuf,
    pub identity: Option<PathBuf>,
    pub accept_new: bool,
    /// The agent on the hosts; `None`: upload this binary.
    pub agent: Option<String>,
    pub ssh_config: PathBuf,
    pub connect_timeout: std::time::Duration,
    pub step_timeout: std::time::Duration,
}

/// The default batches: a canary, then half the fleet, then the rest.
pub const DEFAULT_STRATEGY: &[&str] = &["1", "50%", "100%"];
/// Seconds to connect to an ssh host, as OpenSSH's `ConnectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
/// Seconds one read or write on an ssh connection may take.
pub const DEFAULT_STEP_TIMEOUT: u64 = 600;
/// Releases kept on each host after a push, as Capistrano's `keep_releases`.
pub const DEFAULT_KEEP: usize = 5;

/// A checked stage. `hosts` of a local stage are absolute directories.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Name, and for a local stage the host's directory.
    pub hosts: Vec<(String, PathBuf)>,
    /// For an ssh stage: how to reach its hosts.
    pub ssh: Option<SshSettings>,
    pub env: String,
    pub strategy: Strategy,
    pub groups: BTreeMap<String, Vec<String>>,
    pub deploy_to: PathBuf,
    pub keep_releases: usize,
    pub max_parallel: usize,
    pub on_failure: OnFailure,
    pub linked_dirs: Vec<RelPath>,
    pub linked_files: Vec<RelPath>,
    pub gates: Vec<Gate>,
    /// By host name as the stage lists it.
    pub host_env: BTreeMap<String, BTreeMap<String, String>>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)
            .context("cannot read the service config (ferry.toml); pass --config or run ferry where it is")?;
        Self::parse(path, &text)
    }

    /// Checks `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: FerryToml =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let at = |span: Range<usize>| {
            let (line, col) = line_col(text, span.start);
            format!("{}:{line}:{col}", path.display())
        };
        let service = raw.service.get_ref();
        if !valid_service_name(service) {
            bail!(
                "{}: service {service:?} must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 bytes",
                at(raw.service.span())
            );
        }
        let level = *raw.release.compression_level.get_ref();
        if !(1..=19).contains(&level) {
            bail!("{}: compression_level {level} must be from 1 to 19", at(raw.release.compression_level.span()));
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
        let root = normalize(&dir.join(&raw.release.root));

        let c = &raw.components;
        let mut components = Vec::new();
        let tagged = each(&c.code)
            .into_iter()
            .map(|p| (ComponentKind::Code, p))
            .chain(c.venv.iter().map(|p| (ComponentKind::Venv, p.clone())))
            .chain(c.jar.iter().map(|p| (ComponentKind::Jar, p.clone())))
            .chain(each(&c.media).into_iter().map(|p| (ComponentKind::Media, p)))
            .chain(c.config.iter().map(|p| (ComponentKind::Config, p.clone())));
        for (kind, p) in tagged {
            let s = p.get_ref().trim_end_matches('/');
            let rel = RelPath::new(s).map_err(|e| {
                anyhow::anyhow!("{}: {kind} path {s:?}: {e}; give a path inside the release root", at(p.span()))
            })?;
            if rel.components().next() == Some(".ferry") {
                bail!("{}: {kind} path {s:?}: .ferry is reserved for ferry's own files", at(p.span()));
            }
            if let Some((other, _)) = components.iter().find(|(_, r): &&(ComponentKind, RelPath)| *r == rel) {
                bail!("{}: {kind} path {s:?} is already the {other} component", at(p.span()));
            }
            components.push((kind, rel));
        }
        let mut exclude: Vec<String> = Vec::new();
        if raw.release.default_excludes {
            exclude.extend(DEFAULT_EXCLUDES.iter().map(ToString::to_string));
        }
        exclude.extend(raw.release.exclude.iter().cloned());
        let store = raw.store.path.as_ref().map(|p| normalize(&dir.join(p)));
        let mut stages = BTreeMap::new();
        let configs: Vec<RelPath> =
            components.iter().filter(|(k, _)| *k == ComponentKind::Config).map(|(_, p)| p.clone()).collect();
        let (dirs, files) = linked_paths(&raw, &at)?;
        let linked: Vec<RelPath> = dirs.into_iter().chain(files).collect();
        ferry_switcher::host::check_linked(&linked, &configs)
            .map_err(|e| anyhow::anyhow!("{}: [deploy] {e}", path.display()))?;
        for (name, stage) in &raw.stages {
            stages.insert(name.clone(), check_stage(name, stage.get_ref(), &raw, &dir, &at)?);
        }
        let mut hooks = hooks(&raw, &at)?;
        if let Some(h) = &hooks.migrate_on {
            // A local stage's host is named as its tidied path there.
            let named = |st: &Stage, h: &str| st.hosts.iter().any(|(n, _)| n == h);
            if !stages.values().any(|st| named(st, h)) {
                let tidied = host_path(h);
                if !stages.values().any(|st| st.ssh.is_none() && named(st, &tidied)) {
                    bail!("{}: [hooks] migrate_on {h:?} is not a host of any stage", path.display());
                }
                hooks.migrate_on = Some(tidied);
            }
        }
        let any_hook = hooks.migrate.is_some() || hooks.before_flip.is_some() || hooks.after_flip.is_some();
        for (name, st) in stages.iter().filter(|_| any_hook) {
            if let Some(ssh) = st.ssh.as_ref().filter(|s| hooks.timeout >= s.step_timeout) {
                bail!(
                    "{}: [hooks] timeout ({} s) must be under stage {name}'s step_timeout ({} s), \
                     or the controller stops waiting for a hook that still runs",
                    path.display(),
                    hooks.timeout.as_secs(),
                    ssh.step_timeout.as_secs()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            service: service.clone(),
            root,
            components,
            include: raw.release.include.clone(),
            exclude,
            compression_level: level,
            store,
            stages,
            programs: programs(&raw, &at)?,
            hooks,
        })
    }
}

fn check_stage(
    name: &str,
    stage: &StageSection,
    raw: &FerryToml,
    dir: &Path,
    at: &dyn Fn(Range<usize>) -> String,
) -> Result<Stage> {
    if !valid_env_name(name) {
        bail!("stage {name:?}: a stage name is letters, digits, '_' or '-'");
    }
    let home = || std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let expand = |p: &str| match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => normalize(&dir.join(p)),
    };
    let seconds = |key: &str, value: &Option<Spanned<u64>>, default: u64| match value {
        Some(v) if *v.get_ref() == 0 => bail!("{}: stage {name}: {key} must be at least 1 second", at(v.span())),
        Some(v) => Ok(std::time::Duration::from_secs(*v.get_ref())),
        None => Ok(std::time::Duration::from_secs(default)),
    };
    let connect_timeout = seconds("connect_timeout", &stage.connect_timeout, DEFAULT_CONNECT_TIMEOUT)?;
    let step_timeout = seconds("step_timeout", &stage.step_timeout, DEFAULT_STEP_TIMEOUT)?;
    let ssh = match stage.transport.get_ref().as_str() {
        "local" => None,
        "ssh" => Some(SshSettings {
            user: stage.user.clone(),
            known_hosts: stage.known_hosts.as_deref().map_or_else(|| home().join(".ssh/known_hosts"), expand),
            identity: stage.identity.as_deref().map(expand),
            accept_new: stage.accept_new_host_keys,
            agent: stage.agent.clone(),
            ssh_config: stage.ssh_config.as_deref().map_or_else(|| home().join(".ssh/config"), expand),
            connect_timeout,
            step_timeout,
        }),
        other => {
            bail!("{}: stage {name}: transport {other:?} must be \"local\" or \"ssh\"", at(stage.transport.span()))
        }
    };
    if stage.hosts.get_ref().is_empty() {
        bail!("{}: stage {name} has no hosts", at(stage.hosts.span()));
    }
    // A local host's name is a path: `fleet/a`, `./fleet/a` and `fleet/a/`
    // are one host, named the first way everywhere (groups, host_env, urls).
    let key = |h: &str| if ssh.is_none() { host_path(h) } else { h.to_owned() };
    let mut hosts: Vec<(String, PathBuf)> = Vec::new();
    for h in stage.hosts.get_ref() {
        let (written, host) = (h.get_ref(), key(h.get_ref()));
        let local = if ssh.is_none() { normalize(&dir.join(&host)) } else { PathBuf::new() };
        if let Some((other, _)) = hosts.iter().find(|(n, d)| *n == host || (ssh.is_none() && *d == local)) {
            let same = if other == written { String::new() } else { format!(" (as {other:?}: the same directory)") };
            bail!("{}: stage {name} lists host {written:?} twice{same}; list each host once", at(h.span()));
        }
        hosts.push((host, local));
    }
    let env = match &stage.env {
        Some(e) if !valid_env_name(e.get_ref()) => {
            bail!("{}: env {:?} must be letters, digits, '_' or '-'", at(e.span()), e.get_ref())
        }
        Some(e) => e.get_ref().clone(),
        None => name.to_owned(),
    };
    let groups: BTreeMap<String, Vec<String>> = stage
        .groups
        .get_ref()
        .iter()
        .map(|(g, members)| (g.clone(), members.iter().map(|m| key(m)).collect()))
        .collect();
    let mut grouped: BTreeMap<&str, &str> = BTreeMap::new();
    for (group, members) in &groups {
        if !valid_env_name(group) || group.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "{}: group {group:?}: a group name is letters, digits, '_' or '-', and not a number (that would be a batch size)",
                at(stage.groups.span())
            );
        }
        for m in members {
            if !hosts.iter().any(|(h, _)| h == m) {
                bail!("{}: group {group} lists {m:?}, which is not one of the stage's hosts", at(stage.groups.span()));
            }
            if let Some(other) = grouped.insert(m, group) {
                bail!(
                    "{}: host {m:?} is in groups {other} and {group}; a host is in one group",
                    at(stage.groups.span())
                );
            }
        }
    }
    let strategy = match &stage.strategy {
        Some(s) if !s.get_ref().is_empty() && s.get_ref().iter().all(|g| groups.contains_key(g.get_ref())) => {
            Strategy::Groups(s.get_ref().iter().map(|g| g.get_ref().clone()).collect())
        }
        Some(s) if s.get_ref().iter().any(|g| groups.contains_key(g.get_ref())) => {
            let unknown: Vec<&String> =
                s.get_ref().iter().map(Spanned::get_ref).filter(|g| !groups.contains_key(*g)).collect();
            bail!("{}: strategy names groups, and also {unknown:?}, which is no group of stage {name}", at(s.span()));
        }
        Some(s) => {
            let steps = s
                .get_ref()
                .iter()
                .map(|step| step.get_ref().parse::<Step>().map_err(|e| (e, step.span())))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|(e, span)| anyhow::anyhow!("{}: strategy: {e} (or the names of groups)", at(span)))?;
            if steps.is_empty() {
                bail!("{}: strategy is empty; leave it out for [\"1\", \"50%\", \"100%\"]", at(s.span()));
            }
            let n = hosts.len();
            if let Some((i, j)) = shrinking(n, &steps) {
                let (earlier, later) = (steps[i], steps[j]);
                let reach = |step: Step| match step {
                    Step::Hosts(k) => plural(k, "host"),
                    Step::Percent(_) => format!("{} of the stage's {n}", step.reach(n)),
                };
                bail!(
                    "{}: stage {name}: strategy \"{later}\" ({}) after \"{earlier}\" ({}) shrinks: each step counts \
                     the hosts flipped from the start, so it would flip none; batches grow: a canary first, \
                     e.g. [\"1\", \"50%\", \"100%\"]",
                    at(s.get_ref()[j].span()),
                    reach(later),
                    reach(earlier)
                );
            }
            Strategy::Steps(steps)
        }
        None => Strategy::Steps(DEFAULT_STRATEGY.iter().map(|s| s.parse().expect("the default parses")).collect()),
    };
    let deploy_to = stage.deploy_to.as_ref().or(raw.deploy.deploy_to.as_ref());
    let deploy_to = match deploy_to {
        Some(d) if !d.get_ref().starts_with('/') => {
            bail!("{}: deploy_to {:?} must be an absolute path on the host", at(d.span()), d.get_ref())
        }
        Some(d) => PathBuf::from(d.get_ref()),
        None => PathBuf::from(format!("/srv/{}", raw.service.get_ref())),
    };
    let keep = stage.keep_releases.as_ref().or(raw.deploy.keep_releases.as_ref());
    let keep_releases = match keep {
        Some(k) if *k.get_ref() < 1 => bail!("{}: keep_releases must be at least 1", at(k.span())),
        Some(k) => *k.get_ref(),
        None => DEFAULT_KEEP,
    };
    let max_parallel = match &stage.max_parallel {
        Some(m) if *m.get_ref() < 1 => bail!("{}: max_parallel must be at least 1", at(m.span())),
        Some(m) => *m.get_ref(),
        None => 10,
    };
    let on_failure = match stage.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "revert")) => OnFailure::Revert,
        Some((_, "stop")) => OnFailure::Stop,
        Some((o, other)) => bail!("{}: on_failure {other:?} must be \"revert\" or \"stop\"", at(o.span())),
    };
    let (linked_dirs, linked_files) = linked_paths(raw, at)?;
    let mut gates = gates(name, &stage.health, at)?;
    for gate in &mut gates {
        if let Gate::Http(probe) | Gate::Errors { probe, .. } = gate {
            probe.urls = std::mem::take(&mut probe.urls).into_iter().map(|(h, u)| (key(&h), u)).collect();
        }
    }
    let host_env: BTreeMap<String, BTreeMap<String, String>> =
        stage.host_env.get_ref().iter().map(|(h, env)| (key(h), env.clone())).collect();
    for h in host_env.keys() {
        if !hosts.iter().any(|(n, _)| n == h) {
            bail!(
                "{}: stage {name}: host_env names {h:?}, which is not one of the stage's hosts",
                at(stage.host_env.span())
            );
        }
    }
    for (h, env) in &host_env {
        for (k, v) in env {
            ferry_switcher::host::runtime::config_safe(v, true).map_err(|e| {
                anyhow::anyhow!("{}: stage {name}: host_env of {h}: {k}: {e}", at(stage.host_env.span()))
            })?;
        }
    }
    for gate in &gates {
        if let Gate::Http(probe) | Gate::Errors { probe, .. } = gate {
            if let Some(h) = probe.urls.keys().find(|h| !hosts.iter().any(|(n, _)| n == *h)) {
                bail!("stage {name}: health urls name {h:?}, which is not one of the stage's hosts");
            }
            let unnamed = hosts.iter().filter(|(n, _)| !probe.urls.contains_key(n)).count();
            if !probe.url.contains("{host}") && unnamed > 1 {
                bail!(
                    "stage {name}: health.{}.url {:?} has no {{host}}: {unnamed} hosts would all be probed at the \
                     same address; put {{host}} in it, or give each host its URL in urls",
                    gate.name(),
                    probe.url
                );
            }
        }
    }
    Ok(Stage {
        hosts,
        ssh,
        env,
        strategy,
        groups,
        deploy_to,
        keep_releases,
        max_parallel,
        on_failure,
        linked_dirs,
        linked_files,
        gates,
        host_env,
    })
}

/// A stage's `[health]` as gates, in the order they run: http, errors, command.
fn gates(stage: &str, health: &HealthSection, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<Gate>> {
    let secs = |v: Option<f64>, default: f64| Duration::from_secs_f64(v.unwrap_or(default).max(0.001));
    let url = |u: &Spanned<String>, what: &str| -> Result<String> {
        let s = u.get_ref();
        if s.starts_with("https://") {
            bail!(
                "{}: stage {stage}: health.{what}.url {s:?}: the probes speak plain http only (no TLS yet); \
                 probe the app's own port",
                at(u.span())
            );
        }
        if !s.starts_with("http://") {
            bail!("{}: stage {stage}: health.{what}.url {s:?} must be an http:// URL", at(u.span()));
        }
        Ok(s.clone())
    };
    let positive = |v: Option<f64>, key: &str, span: Range<usize>| -> Result<()> {
        match v {
            Some(v) if v.is_nan() || v <= 0.0 => {
                bail!("{}: stage {stage}: health {key} = {v} must be more than 0", at(span))
            }
            _ => Ok(()),
        }
    };
    let mut gates = Vec::new();
    if let Some(h) = &health.http {
        positive(h.timeout, "http.timeout", h.url.span())?;
        gates.push(Gate::Http(HttpProbe {
            url: url(&h.url, "http")?,
            urls: h.urls.clone(),
            status: h.status.unwrap_or(200),
            timeout: secs(h.timeout, 2.0),
            retries: h.retries.unwrap_or(3).max(1),
            answered_by: h.answered_by,
        }));
    }
    if let Some(e) = &health.errors {
        positive(e.timeout, "errors.timeout", e.url.span())?;
        positive(e.window, "errors.window", e.url.span())?;
        positive(e.interval, "errors.interval", e.url.span())?;
        if e.min_requests == Some(0) {
            bail!("{}: stage {stage}: health.errors.min_requests must be at least 1", at(e.url.span()));
        }
        let rate = |v: Option<f64>, default: f64, key: &str| -> Result<f64> {
            let v = v.unwrap_or(default);
            if !(0.0..=1.0).contains(&v) {
                bail!("{}: stage {stage}: health.errors.{key} = {v} must be a share from 0 to 1", at(e.url.span()));
            }
            Ok(v)
        };
        gates.push(Gate::Errors {
            probe: HttpProbe {
                url: url(&e.url, "errors")?,
                urls: e.urls.clone(),
                status: 200,
                timeout: secs(e.timeout, 2.0),
                retries: 1,
                answered_by: ferry_switcher::fleet::gates::AnsweredBy::Any,
            },
            window: secs(e.window, 10.0),
            interval: secs(e.interval, 0.2),
            max_rate: rate(e.max_rate, 0.05, "max_rate")?,
            max_excess: rate(e.max_excess, 0.02, "max_excess")?,
            min_requests: e.min_requests.unwrap_or(20),
        });
    }
    if let Some(c) = &health.command {
        if c.timeout == Some(0) {
            bail!("stage {stage}: health.command.timeout must be at least 1 second");
        }
        gates.push(Gate::Command { run: c.run.clone(), timeout: Duration::from_secs(c.timeout.unwrap_or(60)) });
    }
    Ok(gates)
}

/// `[programs.*]`, checked.
fn programs(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<Program>> {
    const SIGNALS: &[&str] = &["TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"];
    let mut out = Vec::new();
    for (name, p) in &raw.programs {
        let span = p.span();
        let p = p.get_ref();
        if !valid_env_name(name) {
            bail!("{}: program {name:?}: a program name is letters, digits, '_' or '-'", at(span));
        }
        if p.command.get_ref().trim().is_empty() {
            bail!("{}: program {name}: command is empty", at(p.command.span()));
        }
        ferry_switcher::host::runtime::config_safe(p.command.get_ref(), false)
            .map_err(|e| anyhow::anyhow!("{}: program {name}: command: {e}", at(p.command.span())))?;
        for (k, v) in &p.environment {
            ferry_switcher::host::runtime::config_safe(v, true)
                .map_err(|e| anyhow::anyhow!("{}: program {name}: environment {k}: {e}", at(span.clone())))?;
        }
        let signal = |s: &Option<Spanned<String>>, key: &str, default: Option<&str>| -> Result<Option<String>> {
            match s {
                Some(v) => {
                    let sig = v.get_ref().trim_start_matches("SIG").to_ascii_uppercase();
                    if !SIGNALS.contains(&sig.as_str()) {
                        bail!(
                            "{}: program {name}: {key} {:?} must be one of {}",
                            at(v.span()),
                            v.get_ref(),
                            SIGNALS.join(", ")
                        );
                    }
                    Ok(Some(sig))
                }
                None => Ok(default.map(str::to_owned)),
            }
        };
        let numprocs = match &p.numprocs {
            Some(n) if *n.get_ref() < 1 => bail!("{}: program {name}: numprocs must be at least 1", at(n.span())),
            Some(n) => *n.get_ref(),
            None => 1,
        };
        let directory = match &p.directory {
            Some(d) => {
                let s = d.get_ref().trim_end_matches('/');
                if s == "." || s.is_empty() {
                    ".".to_owned()
                } else {
                    RelPath::new(s)
                        .map_err(|e| anyhow::anyhow!("{}: program {name}: directory {s:?}: {e}", at(d.span())))?
                        .to_string()
                }
            }
            None => ".".to_owned(),
        };
        out.push(Program {
            name: name.clone(),
            command: p.command.get_ref().clone(),
            numprocs,
            directory,
            environment: p.environment.clone(),
            stopsignal: signal(&p.stopsignal, "stopsignal", Some("TERM"))?.unwrap_or_default(),
            stopwaitsecs: p.stopwaitsecs.unwrap_or(10),
            startsecs: p.startsecs.unwrap_or(1),
            restart: match signal(&p.reload_signal, "reload_signal", None)? {
                Some(sig) if ["HUP", "USR1", "USR2"].contains(&sig.as_str()) => Restart::Signal(sig),
                Some(sig) => bail!(
                    "{}: program {name}: reload_signal {sig} would stop it, not reload it: use HUP, USR1 or USR2, \
                     or leave reload_signal out to restart it by stop and start",
                    at(p.reload_signal.as_ref().map_or(span.clone(), toml::Spanned::span))
                ),
                None => Restart::Restart,
            },
        });
    }
    Ok(out)
}

/// `[hooks]`, checked.
fn hooks(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Hooks> {
    let h = &raw.hooks;
    let timeout = match &h.timeout {
        Some(t) if *t.get_ref() == 0 => bail!("{}: hooks.timeout must be at least 1 second", at(t.span())),
        Some(t) => Duration::from_secs(*t.get_ref()),
        None => Duration::from_secs(300),
    };
    Ok(Hooks {
        migrate: h.migrate.clone(),
        migrate_on: h.migrate_on.clone(),
        before_flip: h.before_flip.clone(),
        after_flip: h.after_flip.clone(),
        timeout,
    })
}

/// `[deploy]`'s linked_dirs and linked_files, as paths.
fn linked_paths(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<(Vec<RelPath>, Vec<RelPath>)> {
    let linked = |list: &[Spanned<String>], what: &str| -> Result<Vec<RelPath>> {
        list.iter()
            .map(|p| {
                let s = p.get_ref().trim_end_matches('/');
                RelPath::new(s).map_err(|e| anyhow::anyhow!("{}: {what} {s:?}: {e}", at(p.span())))
            })
            .collect()
    };
    Ok((linked(&raw.deploy.linked_dirs, "linked_dirs")?, linked(&raw.deploy.linked_files, "linked_files")?))
}

/// A local host's name, lexically tidied as the path it is: no `./`, no
/// `//`, no trailing `/` (`..` stays: it is not lexical). `.` for the
/// config's own directory.
pub fn host_path(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    match (name.starts_with('/'), parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_owned(),
        (false, false) => parts.join("/"),
    }
}

/// The first step of `strategy` that reaches fewer hosts than a step before
/// it, as (earlier, later) indices: steps are cumulative, so such a step
/// adds no host (the batches drop it), which is never what was meant.
/// Counts are compared with counts and shares with shares whatever the
/// fleet (`["5", "3"]`, `["50%", "10%"]`); a count with a share on the
/// stage's `n` hosts, where `["50%", "1"]` is 2 then 1 for 4 hosts and
/// `["10%", "20"]` shrinks only past 200 hosts.
fn shrinking(n: usize, strategy: &[Step]) -> Option<(usize, usize)> {
    strategy.iter().enumerate().find_map(|(j, later)| {
        let shrinks = |earlier: &Step| match (*earlier, *later) {
            (Step::Hosts(a), Step::Hosts(b)) => b < a,
            (Step::Percent(a), Step::Percent(b)) => b < a,
            (a, b) => b.reach(n) < a.reach(n),
        };
        strategy[..j].iter().position(shrinks).map(|i| (i, j))
    })
}

/// `1 host`, `2 hosts`.
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Removes `.` and `..` components lexically (the root need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/srv/svc/ferry.toml"), text)
    }

    #[test]
    fn minimal_config() {
        let c = parse("service = \"shop\"\n").unwrap();
        assert_eq!(c.service, "shop");
        assert_eq!(c.root, Path::new("/srv/svc"));
        assert!(c.components.is_empty());
        assert!(c.exclude.contains(&".git/".to_string()));
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let err =
            parse("service = \"shop\"\n[components]\ncode = \"app\"\nvenvs = \"venv\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml: TOML parse error at line 4, column 1"), "{err}");
        assert!(err.contains("unknown field `venvs`"), "{err}");
    }

    #[test]
    fn bad_values_have_line_and_column() {
        let err = parse("service = \"Shop Front\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:1:11: service \"Shop Front\" must be"), "{err}");
        let err = parse("service = \"s\"\n[components]\ncode = [\"app\", \"../etc\"]\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:3:8: code path \"../etc\""), "{err}");
        let err = parse("service = \"s\"\n[release]\ncompression_level = 30\n").unwrap_err().to_string();
        assert!(err.contains("ferry.toml:3:21: compression_level 30"), "{err}");
        let err = parse("service = \"s\"\n[components]\ncode = \"app\"\nmedia = \"app\"\n").unwrap_err().to_string();
        assert!(err.contains("media path \"app\" is already the code component"), "{err}");
    }

    #[test]
    fn ssh_timeouts_are_seconds_and_zero_is_refused_where_it_is_said() {
        let base = "service = \"s\"\n[stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\"]\n";
        let c = parse(&format!("{base}connect_timeout = 3\nstep_timeout = 90\n")).unwrap();
        let ssh = c.stages["prod"].ssh.clone().unwrap();
        assert_eq!((ssh.connect_timeout.as_secs(), ssh.step_timeout.as_secs()), (3, 90));
        let ssh = parse(base).unwrap().stages["prod"].ssh.clone().unwrap();
        assert_eq!((ssh.connect_timeout.as_secs(), ssh.step_timeout.as_secs()), (10, 600));
        let err = parse(&format!("{base}step_timeout = 0\n")).unwrap_err().to_string();
        assert!(err.contains("ferry.toml:5:16: stage prod: step_timeout must be at least 1 second"), "{err}");
    }

    #[test]
    fn programs_hooks_and_gates_parse_with_their_defaults() {
        let c = parse(
            "service = \"s\"\n[programs.web]\ncommand = \"gunicorn -w %(process_num)d app:app\"\nnumprocs = 2\n\
             directory = \"app\"\nreload_signal = \"HUP\"\nenvironment = { A = 'say \"hi\"' }\n\
             [hooks]\nmigrate = \"./manage.py migrate\"\nmigrate_on = \"web2\"\n\
             [stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\", \"web2\"]\n\
             [stages.prod.health.http]\nurl = \"http://{host}:8000/health\"\n\
             [stages.prod.health.errors]\nurl = \"http://{host}:8000/\"\n\
             [stages.prod.health.command]\nrun = \"true\"\n",
        )
        .unwrap();
        let web = &c.programs[0];
        assert_eq!((web.name.as_str(), web.numprocs, web.directory.as_str()), ("web", 2, "app"));
        assert_eq!(web.restart, Restart::Signal("HUP".into()));
        assert_eq!((web.stopsignal.as_str(), web.startsecs, web.stopwaitsecs), ("TERM", 1, 10));
        assert_eq!(c.hooks.timeout, Duration::from_secs(300));
        let gates: Vec<&str> = c.stages["prod"].gates.iter().map(Gate::name).collect();
        assert_eq!(gates, ["http", "errors", "command"]);
        match &c.stages["prod"].gates[1] {
            Gate::Errors { window, interval, max_rate, max_excess, min_requests, .. } => {
                assert_eq!((window.as_secs_f64(), interval.as_secs_f64()), (10.0, 0.2));
                assert_eq!((*max_rate, *max_excess, *min_requests), (0.05, 0.02, 20));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_programs_hooks_and_gates_are_refused_where_they_are_written() {
        let base = "service = \"s\"\n[stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\", \"web2\"]\n";
        let err = |extra: &str| parse(&format!("{base}{extra}")).unwrap_err().to_string();
        let e = err("[programs.web]\ncommand = \"sh -c 'a ; b'\"\n");
        assert!(e.contains("program web: command: \";\" would start a comment"), "{e}");
        let e = err("[programs.web]\ncommand = \"app\"\nreload_signal = \"TERM\"\n");
        assert!(e.contains("reload_signal TERM would stop it, not reload it"), "{e}");
        let e = err("[programs.web]\ncommand = \"app\"\nenvironment = { A = \"it's \\\"x\\\"\" }\n");
        assert!(e.contains("cannot hold both kinds of quote"), "{e}");
        let e = err("[stages.prod.health.http]\nurl = \"https://{host}/health\"\n");
        assert!(e.contains("plain http only"), "{e}");
        let e = err("[stages.prod.health.errors]\nurl = \"http://lb.example/\"\n");
        assert!(e.contains("has no {host}: 2 hosts would all be probed at the same address"), "{e}");
        let e = err("[stages.prod.health.errors]\nurl = \"http://{host}/\"\nmin_requests = 0\n");
        assert!(e.contains("min_requests must be at least 1"), "{e}");
        let e = err("[hooks]\nmigrate = \"m\"\nmigrate_on = \"web3\"\n");
        assert!(e.contains("migrate_on \"web3\" is not a host of any stage"), "{e}");
        let e = err("step_timeout = 60\n[hooks]\nmigrate = \"m\"\ntimeout = 120\n");
        assert!(e.contains("[hooks] timeout (120 s) must be under stage prod's step_timeout (60 s)"), "{e}");
    }

    /// Every example config the project ships parses: the fixtures and the
    /// full example in docs/ferry-toml.md.
    #[test]
    fn every_example_config_parses() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for entry in walkdir_like(&repo.join("fixtures")) {
            if entry.file_name().is_some_and(|n| n == "ferry.toml") {
                let text = fs_err::read_to_string(&entry).unwrap();
                Config::parse(&entry, &text).unwrap_or_else(|e| panic!("{}: {e:#}", entry.display()));
                checked += 1;
            }
        }
        assert!(checked >= 2, "found {checked} fixture configs");
        let docs = fs_err::read_to_string(repo.join("docs/ferry-toml.md")).unwrap();
        let block = docs.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let c = Config::parse(&repo.join("docs/ferry.toml"), block).unwrap();
        assert_eq!(c.components.len(), 6, "the docs example names every component kind");
        assert!(c.exclude.contains(&"media/cache/".to_string()));
    }

    /// The files below `dir`, recursively (a test helper; the builder walks with walkdir).
    fn walkdir_like(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir_like(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_strategy_whose_steps_shrink_is_refused_at_the_step() {
        let stage = |strategy: &str| {
            parse(&format!(
                "service = \"s\"\n[stages.web]\nhosts = [\"a\", \"b\", \"c\", \"d\"]\nstrategy = {strategy}\n"
            ))
        };
        let err = stage(r#"["50%", "1"]"#).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/srv/svc/ferry.toml:4:20: stage web: strategy \"1\" (1 host) after \"50%\" (2 of the stage's 4) shrinks"
            ),
            "{err}"
        );
        assert!(err.ends_with(r#"batches grow: a canary first, e.g. ["1", "50%", "100%"]"#), "{err}");
        assert!(stage(r#"["3", "2"]"#).is_err());
        assert!(stage(r#"["60%", "50%"]"#).is_err());
        assert!(stage(r#"["1", "50%", "100%"]"#).is_ok());
        assert!(stage(r#"["10%", "2", "100%"]"#).is_ok());
        assert!(stage(r#"["2", "50%"]"#).is_ok(), "the same reach twice shrinks nothing");
        assert_eq!(shrinking(1000, &[Step::Percent(10), Step::Hosts(20)]), Some((0, 1)));
        assert_eq!(shrinking(1, &[Step::Hosts(5), Step::Hosts(3)]), Some((0, 1)));
    }

    #[test]
    fn a_local_host_is_its_path_tidied() {
        for (written, name) in
            [("h/a", "h/a"), ("./h/a", "h/a"), ("h//a/", "h/a"), ("./h/./a", "h/a"), ("/x//y/", "/x/y")]
        {
            assert_eq!(host_path(written), name, "{written}");
        }
        assert_eq!((host_path("."), host_path("./"), host_path("../h")), (".".into(), ".".into(), "../h".into()));
        let c = parse("service = \"s\"\n[hooks]\nmigrate = \"m\"\nmigrate_on = \"./h//b/\"\n[stages.web]\nhosts = [\"h/a\", \"h/b\"]\n")
            .unwrap();
        assert_eq!(c.hooks.migrate_on.as_deref(), Some("h/b"));
        let err = parse("service = \"s\"\n[stages.web]\nhosts = [\"h/a\", \"./h/a/\"]\n").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/srv/svc/ferry.toml:3:17: stage web lists host \"./h/a/\" twice (as \"h/a\": the same directory)"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_service() {
        let err = parse("[components]\n").unwrap_err().to_string();
        assert!(err.contains("missing field `service`"), "{err}");
    }
}
