//! One validated view of what the user asked for: the command line, the
//! environment (through clap's `env`) and `ferry.toml`. Commands take these,
//! never clap's types.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use ferry_builder::Store;
use ferry_formats::release::{valid_env_name, valid_version, VERSION_RULE};

use ferry_formats::RelPath;
use ferry_switcher::fleet::{read_ssh_config, AgentBinary, HostSpec, Runtime, Ssh, Stage};
use ferry_switcher::host::{Host, StageOptions};

mod agent;
mod hosts;

use crate::cli::{Cli, Command, HostOptions, HostVerb, Narrow};
use crate::config::Config;
use hosts::{host_names, narrowed};

/// How results are shown.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    /// Progress bars on stderr (a terminal, not --json, not --quiet).
    pub progress: bool,
    /// --quiet: the outcome only (see `cli::Cli::quiet`).
    pub quiet: bool,
}

/// A bundle named on the command line.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file that exists, or a name ending in `.tar.zst`.
    File(PathBuf),
    /// Anything else, as written: an id or id prefix, a version label, a
    /// git tag or commit. Only the store knows which release it names, so
    /// the command resolves it (`Store::find`). A tag may have a `/` in
    /// it, so a path that does not exist is tried as a name too.
    Name(String),
}

impl Target {
    fn parse(s: &str) -> Self {
        let p = Path::new(s);
        if p.exists() || s.ends_with(".tar.zst") {
            Target::File(p.to_path_buf())
        } else {
            Target::Name(s.to_owned())
        }
    }
}

#[derive(Debug)]
pub enum Action {
    Build(BuildSettings),
    Inspect(Target),
    Verify(Target),
    Diff(Target, Target),
    Bundles,
    Delta(Target, Target),
    /// The release as written (see [`Target::Name`]), resolved against the
    /// store by the command.
    Push(StageSettings, Option<String>),
    /// `--to` as written (see [`Target::Name`]), resolved by the command.
    Rollback(StageSettings, Option<String>),
    Status(StageSettings),
    History(StageSettings),
    /// `ferry setup`, and with `--install` the boot integration too.
    Setup(StageSettings, bool),
    Logs(StageSettings, LogsSettings),
    Lb(StageSettings, crate::cli::LbVerb),
    Deploy(StageSettings, DeploySettings),
    /// `ferry exec`: the command (for `sh -c`) and its timeout.
    Exec(StageSettings, String, std::time::Duration),
    Host(Host, HostAction),
    AgentHash,
    /// `ferry agent`: the agent ferry would upload.
    Agent(PathBuf),
    Completions(clap_complete::Shell),
    Init(PathBuf, bool),
    /// `ferry publish`: the release as written, resolved in the local store.
    Publish(String),
    /// `ferry keygen`: where, and whether without a password.
    Keygen(PathBuf, bool),
    /// `ferry sign`: the release as written, and how.
    Sign(String, SignSettings),
}

/// How to sign a release (`ferry sign`, `ferry build --sign`).
#[derive(Debug, Clone)]
pub struct SignSettings {
    pub key: PathBuf,
    pub expires: std::time::Duration,
    pub serial: Option<u64>,
}

impl SignSettings {
    fn from(s: crate::cli::SignArgs) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        Self {
            key: s.key.unwrap_or_else(|| home.join(".ferry/ferry.key")),
            expires: s.expires.into(),
            serial: s.serial,
        }
    }
}

/// A stage of ferry.toml, as the fleet runs it.
#[derive(Debug)]
pub struct StageSettings {
    pub service: String,
    pub stage: Stage,
    /// `None` for a local stage.
    pub ssh: Option<Ssh>,
    /// The stage's groups, each host by the name reports use.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Where ferry keeps what it set on the load balancer (see `ferry lb`).
    pub lb_state: PathBuf,
    /// What `ferry deploy` builds and how a push is tagged; a push with no
    /// release picks the newest build of the commit its `ref` names now.
    pub git: crate::config::StageGit,
    /// The directory of ferry.toml, whose git repository `ref` is of.
    pub repo_dir: PathBuf,
    /// Where the hosts get the payload (`fetch`).
    pub fetch: crate::config::FetchFrom,
    /// `--dry-run`: show what a push would do, change nothing.
    pub dry_run: bool,
}

/// `ferry deploy`: the ref as given, and where the config is.
#[derive(Debug)]
pub struct DeploySettings {
    pub reference: Option<String>,
    pub allow_dirty: bool,
    /// The config's directory (the work tree) and its name there.
    pub workdir: PathBuf,
    pub file_name: PathBuf,
    /// `--sign`: sign the release once built.
    pub sign: Option<SignSettings>,
}

/// What `ferry logs` shows of each process.
#[derive(Debug)]
pub struct LogsSettings {
    /// Only this program's processes.
    pub program: Option<String>,
    /// Keep printing what they write, until interrupted.
    pub follow: bool,
    /// How much of each log to show first, in bytes.
    pub bytes: i32,
}

/// One verb of `ferry host`. Release ids are prefixes as written: the
/// command resolves them against the host's releases once it holds the
/// host's lock.
#[derive(Debug)]
pub enum HostAction {
    /// `None` reads stdin; then the release's signature file, if given.
    Stage(Option<PathBuf>, StageOptions, Option<PathBuf>),
    Activate(String, StageOptions),
    Rollback(Option<String>),
    Prune(usize),
    Pin(String, bool),
    Status,
    History,
    Verify(Option<String>),
    Serve(Option<String>),
}

#[derive(Debug)]
pub struct BuildSettings {
    /// The config, or for `--git-ref` where to find it in the export.
    pub config: ConfigSource,
    pub version: Option<String>,
    pub strict: bool,
    /// `--publish`: upload the release to the remote store once built.
    pub publish: bool,
    /// `--sign`: sign the release once built.
    pub sign: Option<SignSettings>,
}

#[derive(Debug)]
pub enum ConfigSource {
    Loaded(Box<Config>),
    /// `--git-ref`: the config is read from the export, at this path relative
    /// to the directory it was found in.
    Git {
        reference: String,
        workdir: PathBuf,
        file_name: PathBuf,
    },
}

#[derive(Debug)]
pub struct Settings {
    pub output: Output,
    pub store: Store,
    pub action: Action,
}

impl Settings {
    pub fn new(cli: Cli) -> Result<Self> {
        let output = Output {
            json: cli.json,
            progress: !cli.json && !cli.quiet && std::io::stderr().is_terminal(),
            quiet: cli.quiet,
        };
        let config_path = cli.config.clone().unwrap_or_else(|| PathBuf::from("ferry.toml"));
        let explicit = cli.config.is_some();
        // Where the config says the store is, once a command has loaded it.
        let mut store_hint: Option<StoreAt> = None;
        let action = match cli.command {
            Command::Build(args) => {
                let config = match args.git_ref {
                    Some(reference) => {
                        let abs = std::path::absolute(&config_path)?;
                        ConfigSource::Git {
                            reference,
                            workdir: abs.parent().map(Path::to_path_buf).unwrap_or_default(),
                            file_name: abs.file_name().map(PathBuf::from).unwrap_or_default(),
                        }
                    }
                    None => {
                        let c = Config::load(&config_path)?;
                        store_hint = Some(StoreAt::of(&c));
                        ConfigSource::Loaded(Box::new(c))
                    }
                };
                if let Some(v) = args.version.as_deref().filter(|v| !valid_version(v)) {
                    anyhow::bail!("--version {v:?} must be {VERSION_RULE}");
                }
                let sign = args.sign.then(|| SignSettings::from(args.signing));
                Action::Build(BuildSettings {
                    config,
                    version: args.version,
                    strict: args.strict,
                    sign,
                    publish: args.publish,
                })
            }
            Command::Inspect(t) => Action::Inspect(Target::parse(&t.target)),
            Command::Verify(t) => Action::Verify(Target::parse(&t.target)),
            Command::Diff(d) => Action::Diff(Target::parse(&d.from), Target::parse(&d.to)),
            Command::Bundles => Action::Bundles,
            Command::Delta(d) => Action::Delta(Target::parse(&d.from), Target::parse(&d.to)),
            Command::Push(p) => {
                let (mut stage, store) = load_stage(&config_path, &p.stage, &p.narrow)?;
                stage.stage.force = p.force;
                if p.out && stage.stage.load_balancer.is_none() {
                    anyhow::bail!(
                        "--out deploys to the hosts out of the load balancer's rotation, and stage {} has no \
                         [stages.{0}.load_balancer]",
                        p.stage
                    );
                }
                stage.stage.out_of_rotation = p.out;
                stage.dry_run = p.dry_run;
                store_hint = Some(store);
                Action::Push(stage, p.id)
            }
            Command::Rollback(r) => {
                let (stage, store) = load_stage(&config_path, &r.stage, &r.narrow)?;
                store_hint = Some(store);
                Action::Rollback(stage, r.to)
            }
            // The store says which version, commit and tag each release is.
            Command::Status(a) => {
                let (stage, store) = load_stage(&config_path, &a.stage, &a.narrow)?;
                store_hint = Some(store);
                Action::Status(stage)
            }
            Command::History(a) => {
                let (stage, store) = load_stage(&config_path, &a.stage, &a.narrow)?;
                store_hint = Some(store);
                Action::History(stage)
            }
            Command::Setup(a) => Action::Setup(load_stage(&config_path, &a.stage, &a.narrow)?.0, a.install),
            Command::Logs(a) => Action::Logs(
                load_stage(&config_path, &a.stage, &a.narrow)?.0,
                LogsSettings { program: a.program, follow: a.follow, bytes: a.bytes },
            ),
            Command::Deploy(d) => {
                let (mut stage, store) = load_stage(&config_path, &d.stage, &d.narrow)?;
                stage.stage.force = d.force;
                stage.dry_run = d.dry_run;
                store_hint = Some(store);
                let abs = std::path::absolute(&config_path)?;
                Action::Deploy(
                    stage,
                    DeploySettings {
                        reference: d.reference,
                        allow_dirty: d.allow_dirty,
                        workdir: abs.parent().map(Path::to_path_buf).unwrap_or_default(),
                        file_name: abs.file_name().map(PathBuf::from).unwrap_or_default(),
                        sign: d.sign.then(|| SignSettings::from(d.signing)),
                    },
                )
            }
            Command::Lb(a) => {
                let (stage, _) = load_stage(&config_path, &a.stage, &Narrow::default())?;
                if stage.stage.load_balancer.is_none() {
                    anyhow::bail!(
                        "stage {} has no load balancer: add [stages.{0}.load_balancer] (kind = \"haproxy\", nodes, \
                         backends) to ferry.toml",
                        a.stage
                    );
                }
                Action::Lb(stage, a.verb)
            }
            Command::AgentHash => Action::AgentHash,
            Command::Agent => Action::Agent(agent::to_upload()?),
            Command::Completions { shell } => Action::Completions(shell),
            Command::Init { dir, force } => Action::Init(dir, force),
            Command::Keygen { out, no_password } => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
                Action::Keygen(out.unwrap_or_else(|| home.join(".ferry")), no_password)
            }
            Command::Sign { release, signing } => Action::Sign(release, SignSettings::from(signing)),
            Command::Exec(e) => Action::Exec(
                load_stage(&config_path, &e.stage, &e.narrow)?.0,
                e.command.join(" "),
                std::time::Duration::from_secs(e.timeout.max(1)),
            ),
            Command::Publish(t) => Action::Publish(t.target),
            Command::Host(h) => Action::Host(Host::new(std::path::absolute(&h.deploy_to)?), host_action(h.verb)?),
        };
        // Commands that read bundle files only need no config: a broken
        // ferry.toml in the current directory is none of their business.
        let needs_store = match &action {
            Action::Build(_) | Action::Bundles | Action::Delta(..) | Action::Sign(..) | Action::Publish(_) => true,
            Action::Inspect(t) | Action::Verify(t) => matches!(t, Target::Name(_)),
            Action::Diff(a, b) => matches!(a, Target::Name(_)) || matches!(b, Target::Name(_)),
            Action::Push(..)
            | Action::Rollback(..)
            | Action::Status(_)
            | Action::History(_)
            | Action::Setup(..)
            | Action::Logs(..)
            | Action::Lb(..)
            | Action::Deploy(..)
            | Action::Exec(..)
            | Action::Host(..)
            | Action::AgentHash
            | Action::Agent(_)
            | Action::Completions(_)
            | Action::Init(..)
            | Action::Keygen(..) => false,
        };
        let store_at = match store_hint {
            Some(s) => s,
            None if needs_store && explicit => StoreAt::of(&Config::load(&config_path)?),
            // With --store, a broken ferry.toml found in the current
            // directory is none of a bundle command's business.
            None if needs_store && config_path.exists() => match (&cli.store, Config::load(&config_path)) {
                (_, Ok(c)) => StoreAt::of(&c),
                (Some(_), Err(_)) => StoreAt { path: default_store(&config_path), remote: None },
                (None, Err(e)) => return Err(e),
            },
            None => StoreAt { path: default_store(&config_path), remote: None },
        };
        // --store replaces the local directory; a remote stays.
        let store = Store::new(std::path::absolute(cli.store.unwrap_or(store_at.path))?);
        let store = match store_at.remote {
            Some(spec) => store.with_remote(spec),
            None => store,
        };
        let mut action = action;
        if let Action::Push(s, _) | Action::Deploy(s, _) | Action::Status(s) | Action::Rollback(s, _) = &mut action {
            agent::via_store(s, &store);
        }
        Ok(Self { output, store, action })
    }
}

/// The named stage of the config at `path`, and the config's store.
fn load_stage(path: &Path, name: &str, narrow: &Narrow) -> Result<(StageSettings, StoreAt)> {
    let config = Config::load(path)?;
    let store = StoreAt::of(&config);
    let Some(stage) = config.stages.get(name) else {
        let known: Vec<&str> = config.stages.keys().map(String::as_str).collect();
        anyhow::bail!(
            "{} has no stage {name:?}{}",
            config.path.display(),
            if known.is_empty() {
                "; add a [stages.<name>] table".to_owned()
            } else {
                format!(" (it has: {})", known.join(", "))
            }
        );
    };
    let ssh = stage.ssh.as_ref().map(|s| -> Result<Ssh> {
        Ok(Ssh {
            known_hosts: s.known_hosts.clone(),
            accept_new: s.accept_new,
            identity: s.identity.clone(),
            user: s.user.clone(),
            ferry: match &s.agent {
                Some(path) => AgentBinary::OnHost(path.clone()),
                None => AgentBinary::Upload(agent::to_upload()?),
            },
            connect_timeout: s.connect_timeout,
            step_timeout: s.step_timeout,
            ssh_config: read_ssh_config(&s.ssh_config).map_err(|e| anyhow::anyhow!("{e}"))?,
        })
    });
    let ssh = ssh.transpose()?;
    // Named over the whole stage, so a host is called the same with or
    // without --hosts.
    let names = host_names(stage, ssh.as_ref());
    let (chosen, strategy) = narrowed(name, stage, &names, narrow)?;
    // Over the whole stage: the guard counts every server of the backends.
    let load_balancer = stage.load_balancer.as_ref().map(|lb| lb.resolve(stage, &names));
    let stage =
        &crate::config::Stage { hosts: chosen.iter().map(|i| stage.hosts[*i].clone()).collect(), ..stage.clone() };
    let hosts: Vec<HostSpec> = chosen
        .iter()
        .zip(&stage.hosts)
        .map(|(i, (_, dir))| HostSpec {
            name: names[*i][0].clone(),
            deploy_to: match &stage.ssh {
                Some(_) => stage.deploy_to.clone(),
                // A local host is a directory standing for the host's root.
                None => dir.join(stage.deploy_to.strip_prefix("/").unwrap_or(&stage.deploy_to)),
            },
        })
        .collect();
    let options = StageOptions {
        env: Some(stage.env.clone()),
        linked_dirs: stage.linked_dirs.clone(),
        linked_files: stage.linked_files.clone(),
        bridge_assets: stage.bridge_assets.clone(),
    };
    let runtime = runtime(&config, stage, &hosts);
    let stage = Stage {
        name: name.to_owned(),
        hosts,
        strategy,
        options,
        keep_releases: stage.keep_releases,
        max_parallel: stage.max_parallel,
        on_failure: stage.on_failure,
        runtime,
        force: false,
        load_balancer,
        out_of_rotation: false,
        trusted_keys: stage.trusted_keys.clone(),
        fetch_parallel: stage.fetch_parallel,
    };
    let groups = config.stages[name]
        .groups
        .iter()
        .map(|(g, members)| {
            let members = members
                .iter()
                .filter_map(|m| config.stages[name].hosts.iter().position(|(h, _)| h == m).map(|i| names[i][0].clone()))
                .collect();
            (g.clone(), members)
        })
        .collect();
    let lb_state = store.path.parent().unwrap_or(Path::new("")).join("lb").join(format!("{name}.json"));
    let git = config.stages[name].git.clone();
    let repo_dir = match config.path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fetch = config.stages[name].fetch;
    Ok((
        StageSettings { service: config.service, stage, ssh, groups, lb_state, git, repo_dir, dry_run: false, fetch },
        store,
    ))
}

/// The programs, hooks and gates for `hosts`, with host names as ferry.toml
/// writes them turned into the names reports use.
fn runtime(config: &crate::config::Config, stage: &crate::config::Stage, hosts: &[HostSpec]) -> Runtime {
    let rename: std::collections::BTreeMap<&str, &str> =
        stage.hosts.iter().zip(hosts).map(|((name, _), spec)| (name.as_str(), spec.name.as_str())).collect();
    let by_spec = |m: &std::collections::BTreeMap<String, String>| -> std::collections::BTreeMap<String, String> {
        m.iter().filter_map(|(k, v)| rename.get(k.as_str()).map(|n| ((*n).to_owned(), v.clone()))).collect()
    };
    let gates = stage
        .gates
        .iter()
        .cloned()
        .map(|mut gate| {
            match &mut gate {
                ferry_switcher::fleet::Gate::Http(probe) | ferry_switcher::fleet::Gate::Errors { probe, .. } => {
                    probe.urls = by_spec(&probe.urls);
                }
                ferry_switcher::fleet::Gate::Command { .. } | ferry_switcher::fleet::Gate::LbErrors { .. } => {}
            }
            gate
        })
        .collect();
    let mut hooks = config.hooks.clone();
    let own = &stage.hooks;
    for (mine, over) in [
        (&mut hooks.migrate, &own.migrate),
        (&mut hooks.before_flip, &own.before_flip),
        (&mut hooks.after_flip, &own.after_flip),
        (&mut hooks.before_batch, &own.before_batch),
        (&mut hooks.after_batch, &own.after_batch),
    ] {
        if over.is_some() {
            mine.clone_from(over);
        }
    }
    hooks.migrate_on = hooks.migrate_on.as_deref().and_then(|h| rename.get(h)).map(|n| (*n).to_owned());
    Runtime {
        service: config.service.clone(),
        programs: config.programs.clone(),
        hooks,
        gates,
        host_env: stage
            .host_env
            .iter()
            .filter_map(|(k, v)| rename.get(k.as_str()).map(|n| ((*n).to_owned(), v.clone())))
            .collect(),
    }
}

fn host_action(verb: HostVerb) -> Result<HostAction> {
    let options = |o: HostOptions| -> Result<StageOptions> {
        if let Some(env) = o.env.as_deref().filter(|e| !valid_env_name(e)) {
            anyhow::bail!("--env {env:?} must be letters, digits, '_' or '-'");
        }
        let rel = |list: Vec<String>, flag: &str| -> Result<Vec<RelPath>> {
            list.into_iter()
                .map(|p| RelPath::new(p.trim_end_matches('/')).map_err(|e| anyhow::anyhow!("{flag} {p:?}: {e}")))
                .collect()
        };
        Ok(StageOptions {
            env: o.env,
            linked_dirs: rel(o.linked_dirs, "--linked-dir")?,
            linked_files: rel(o.linked_files, "--linked-file")?,
            bridge_assets: rel(o.bridge_assets, "--bridge-asset")?,
        })
    };
    Ok(match verb {
        HostVerb::Stage { input, options: o, signature } => {
            HostAction::Stage(Some(input).filter(|p| p.as_os_str() != "-"), options(o)?, signature)
        }
        HostVerb::Activate { id, options: o } => HostAction::Activate(id, options(o)?),
        HostVerb::Rollback { to } => HostAction::Rollback(to),
        HostVerb::Prune { keep } => HostAction::Prune(keep),
        HostVerb::Pin { id } => HostAction::Pin(id, true),
        HostVerb::Unpin { id } => HostAction::Pin(id, false),
        HostVerb::Status => HostAction::Status,
        HostVerb::History => HostAction::History,
        HostVerb::Verify { id } => HostAction::Verify(id),
        HostVerb::Serve { lock } => HostAction::Serve(lock),
    })
}

/// Where a config keeps its store: the local directory, and the remote
/// behind it (`[store] url`).
#[derive(Debug)]
struct StoreAt {
    path: PathBuf,
    remote: Option<ferry_builder::remote::RemoteSpec>,
}

impl StoreAt {
    fn of(c: &Config) -> Self {
        Self { path: c.store.clone().unwrap_or_else(|| default_store(&c.path)), remote: c.remote.clone() }
    }
}

/// `.ferry/store` beside the config file.
fn default_store(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(".ferry/store")
}
