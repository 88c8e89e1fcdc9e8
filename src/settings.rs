//! One validated view of what the user asked for: the command line, the
//! environment (through clap's `env`) and `ferry.toml`. Commands take these,
//! never clap's types.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use ferry_builder::Store;
use ferry_formats::release::{valid_version, VERSION_RULE};

use crate::cli::{Cli, Command};
use crate::config::Config;

/// How results are shown.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    /// Progress bars on stderr (a terminal, not --json, not --quiet).
    pub progress: bool,
}

/// A bundle named on the command line.
#[derive(Debug, Clone)]
pub enum Target {
    File(PathBuf),
    Id(String),
}

impl Target {
    fn parse(s: &str) -> Self {
        let p = Path::new(s);
        if p.exists() || s.contains('/') || s.ends_with(".tar.zst") {
            Target::File(p.to_path_buf())
        } else {
            Target::Id(s.to_owned())
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
}

#[derive(Debug)]
pub struct BuildSettings {
    /// The config, or for `--git-ref` where to find it in the export.
    pub config: ConfigSource,
    pub version: Option<String>,
    pub strict: bool,
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
        let output = Output { json: cli.json, progress: !cli.json && !cli.quiet && std::io::stderr().is_terminal() };
        let config_path = cli.config.clone().unwrap_or_else(|| PathBuf::from("ferry.toml"));
        let explicit = cli.config.is_some();
        // Where the config says the store is, once a command has loaded it.
        let mut store_hint: Option<PathBuf> = None;
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
                        store_hint = Some(c.store.clone().unwrap_or_else(|| default_store(&c.path)));
                        ConfigSource::Loaded(Box::new(c))
                    }
                };
                if let Some(v) = args.version.as_deref().filter(|v| !valid_version(v)) {
                    anyhow::bail!("--version {v:?} must be {VERSION_RULE}");
                }
                Action::Build(BuildSettings { config, version: args.version, strict: args.strict })
            }
            Command::Inspect(t) => Action::Inspect(Target::parse(&t.target)),
            Command::Verify(t) => Action::Verify(Target::parse(&t.target)),
            Command::Diff(d) => Action::Diff(Target::parse(&d.from), Target::parse(&d.to)),
            Command::Bundles => Action::Bundles,
        };
        // Commands that read bundle files only need no config: a broken
        // ferry.toml in the current directory is none of their business.
        let needs_store = match &action {
            Action::Build(_) | Action::Bundles => true,
            Action::Inspect(t) | Action::Verify(t) => matches!(t, Target::Id(_)),
            Action::Diff(a, b) => matches!(a, Target::Id(_)) || matches!(b, Target::Id(_)),
        };
        let store = match cli.store {
            Some(s) => s,
            None => match store_hint {
                Some(s) => s,
                None if needs_store && (explicit || config_path.exists()) => {
                    let c = Config::load(&config_path)?;
                    c.store.clone().unwrap_or_else(|| default_store(&c.path))
                }
                None => default_store(&config_path),
            },
        };
        let store = std::path::absolute(&store)?;
        Ok(Self { output, store: Store::new(store), action })
    }
}

/// `.ferry/store` beside the config file.
fn default_store(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(".ferry/store")
}
