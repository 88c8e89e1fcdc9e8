//! The service's processes: its own supervisord, configured from the
//! `[programs.*]` of ferry.toml, restarted through XML-RPC after a flip, and
//! checked to really run the release `current` points at.
//!
//! ```text
//! <deploy_to>/.ferry/programs.json      the programs, as setup was given them
//! <deploy_to>/.ferry/supervisord.conf   generated from them
//! <deploy_to>/.ferry/supervisor.sock    supervisord's XML-RPC socket (0700)
//! <deploy_to>/.ferry/ferry-<service>.service, init.d/ferry-<service>
//!                                       a systemd unit and an init script that start it
//! <deploy_to>/shared/log/<program>.log  each program's output
//! ```
//!
//! | module | what it holds |
//! |---|---|
//! | `setup` | supervisord's config, unit and init script; starting supervisord |
//! | `restart` | taking up a release: restart or reload, the waits, the release check, who listens on a port |
//! | `hooks` | hooks run in a release, bounded; the programs' logs |
//! | `install` | the unit or init script installed and enabled at boot (`setup --install`) |

mod hooks;
mod install;
mod restart;
mod setup;

pub(crate) use hooks::run_bounded;
pub use hooks::{HookKind, HookRun, LogChunk};
pub use install::{Enabler, Init, InstallError, Installed, Now};
pub use restart::PortHolder;
pub use setup::{config_safe, ConfigUnsafe, SetUp};

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::procs;
use super::supervisor::{ProcessInfo, Supervisor, SupervisorError};
use super::{Host, HostError};

/// What setup and a restart say when they found supervisord down (with a
/// release current) and started it.
pub const NOT_RUNNING: &str = "supervisord was not running: started it";

/// How a program takes up a new release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Stop every process, then start them (the default).
    #[default]
    Restart,
    /// Send this signal (gunicorn reloads on HUP); the processes stay up.
    Signal(String),
}

/// One `[programs.<name>]` of ferry.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub name: String,
    /// Run by supervisord in `directory`, without a shell.
    pub command: String,
    pub numprocs: u32,
    /// Relative to the release (through `current`); "." is its root.
    pub directory: String,
    /// Set for the program, over what the release's `config/active/env` says.
    pub environment: BTreeMap<String, String>,
    pub stopsignal: String,
    pub stopwaitsecs: u32,
    /// How long a process must stay up to count as started.
    pub startsecs: u32,
    pub restart: Restart,
}

/// What a host's programs look like now (for `ferry status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub processes: Vec<ProcessInfo>,
}

/// Why the programs did not come up on the new release.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(
        "program {program} did not start ({state}: {description}){}{}{}",
        spawned(spawnerr),
        said(errors),
        output(log)
    )]
    NotRunning {
        program: String,
        state: String,
        description: String,
        /// supervisord's own words when it could not spawn the process.
        spawnerr: String,
        errors: Vec<String>,
        log: String,
    },
    #[error(
        "program {program} still runs {} after the restart (pid {pid}, {what} {}), not {wanted}: {hint}",
        runs(release, *deleted, wanted),
        path.display()
    )]
    OldRelease {
        program: String,
        pid: u32,
        what: procs::Via,
        path: PathBuf,
        /// The release directory it holds (by name: it may be no id at all).
        release: String,
        /// That directory was removed since.
        deleted: bool,
        wanted: ReleaseId,
        hint: String,
    },
    #[error(
        "program {program} was sent SIG{signal}, but in {seconds} s no new child of it stayed up: it did not \
         reload its workers; check its log, or drop reload_signal to restart it by stop and start"
    )]
    NotReloaded { program: String, signal: String, seconds: u64 },
    #[error("supervisord did not come up: {0}")]
    Start(String),
    /// `setup --install`: the init system could not be given the service.
    #[error(transparent)]
    Install(#[from] InstallError),
}

impl Host {
    pub(super) fn programs_path(&self) -> PathBuf {
        self.root().join(".ferry/programs.json")
    }

    pub(crate) fn supervisor(&self) -> Supervisor {
        Supervisor::new(self.root().join(".ferry/supervisor.sock"))
    }

    /// The programs `setup` recorded; none when it never ran.
    pub fn programs(&self) -> Result<Vec<Program>, HostError> {
        match fs::read(self.programs_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| HostError::Input(format!("{}: {e}", self.programs_path().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(HostError::Fs(e)),
        }
    }

    /// Each program's processes, for `status`; empty without programs or
    /// when supervisord is not running.
    pub fn program_status(&self) -> Vec<ProcessInfo> {
        self.program_states().unwrap_or_default()
    }

    /// Each program's processes; `Err` with why when the host has programs
    /// and its supervisord does not answer (every program is down then).
    pub fn program_states(&self) -> Result<Vec<ProcessInfo>, SupervisorError> {
        if self.programs().map(|p| p.is_empty()).unwrap_or(true) {
            return Ok(Vec::new());
        }
        self.supervisor().processes()
    }
}

pub(super) fn runs(release: &str, deleted: bool, wanted: &ReleaseId) -> String {
    if deleted && release == wanted.to_string() {
        format!("a removed copy of release {release}")
    } else {
        format!("release {release}")
    }
}

pub(super) fn spawned(spawnerr: &str) -> String {
    if spawnerr.is_empty() {
        String::new()
    } else {
        format!("; supervisord could not spawn it: {spawnerr}")
    }
}

pub(super) fn output(log: &str) -> String {
    if log.is_empty() {
        "; it wrote no output".to_owned()
    } else {
        format!("; its last output:\n{log}")
    }
}

pub(super) fn said(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!("; it said: {}", errors.join(" / "))
    }
}

pub(super) fn runtime(e: impl Into<RuntimeError>) -> HostError {
    HostError::Runtime(Box::new(e.into()))
}

pub(super) fn group(supervisor: &Supervisor, name: &str) -> Result<Vec<ProcessInfo>, HostError> {
    Ok(supervisor.processes().map_err(runtime)?.into_iter().filter(|i| i.group == name).collect())
}
