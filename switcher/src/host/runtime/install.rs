//! `ferry setup --install`: the host's init system starts the service's
//! supervisord at boot, and its own commands (`systemctl`, `service`) work.
//!
//! The init system is found as systemd itself tells (`/run/systemd/system`
//! exists when it runs): then the unit setup wrote goes to
//! `/etc/systemd/system/` and `systemctl enable`s it; otherwise the init
//! script goes to `/etc/init.d/` and is enabled with `update-rc.d` where
//! there is one, else `chkconfig`, else the `rc?.d` links by hand. Nothing
//! under `/etc` is written without the rights to finish: without them the
//! host says the commands to run as root instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::runtime;
use super::setup::write_if_changed;
use crate::host::{Host, HostError};

/// Why the init system could not be given the service.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Not root, or `/etc` not writable: nothing was written.
    #[error("cannot install {what}: {why}; nothing was written. Run as root on the host: {command}")]
    NoRights {
        /// What would have been installed (`/etc/init.d/ferry-shop`).
        what: String,
        /// Why not (`it needs root; this runs as uid 1000`).
        why: String,
        /// The commands that install it.
        command: String,
    },
    /// The name is installed already, for another deploy directory (the
    /// same service twice on one host): it is left as it is.
    #[error("{} is there already, and is not for {}; left as it is. Remove it first (as root: {remove}), or deploy this copy under another service name", path.display(), root.display())]
    Taken {
        /// The unit or script that is there.
        path: PathBuf,
        /// This deploy directory.
        root: PathBuf,
        /// The commands that remove it.
        remove: String,
    },
    /// A tool of the init system failed.
    #[error("{command} failed ({status}): {output}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        output: String,
    },
    /// Neither systemd nor the rc directories of an init.d system.
    #[error("this host has neither systemd (no /run/systemd/system) nor rc directories ({}/rc2.d or {}/rc.d/rc2.d): its init system is not one ferry knows; start {} at boot by hand", etc.display(), etc.display(), script.display())]
    UnknownInit {
        /// The host's `/etc`.
        etc: PathBuf,
        /// The init script setup wrote.
        script: PathBuf,
    },
}

/// Which init system starts the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// A unit in `/etc/systemd/system/`.
    Systemd,
    /// A script in `/etc/init.d/`.
    #[serde(rename = "init.d")]
    InitD,
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Init::Systemd => "systemd",
            Init::InitD => "init.d",
        })
    }
}

/// How the service was enabled at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enabler {
    /// `systemctl enable`.
    Systemctl,
    /// Debian's `update-rc.d NAME defaults`.
    #[serde(rename = "update-rc.d")]
    UpdateRcD,
    /// Red Hat's `chkconfig --add NAME`.
    Chkconfig,
    /// `S20`/`K80` links in the `rc?.d` directories, made by ferry.
    RcLinks,
}

impl std::fmt::Display for Enabler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Enabler::Systemctl => "systemctl enable",
            Enabler::UpdateRcD => "update-rc.d",
            Enabler::Chkconfig => "chkconfig",
            Enabler::RcLinks => "rc?.d links",
        })
    }
}

/// Whether the service's supervisord runs, once installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Now {
    /// It runs, and the init system's status command finds it.
    Running { pid: Option<u32> },
    /// It runs, started by ferry, not by systemd: systemd starts it from
    /// the next boot.
    RunningOutsideSystemd { pid: Option<u32> },
    /// It does not run (no release is current yet, or it was stopped).
    Stopped,
}

/// What [`Host::install`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Installed {
    /// The init system it went to.
    pub init: Init,
    /// What enables it at boot.
    pub enabled_with: Enabler,
    /// Where the unit or script is (`/etc/init.d/ferry-shop`).
    pub path: PathBuf,
    /// A line each: files written, commands run. Empty: it was installed
    /// and enabled already.
    pub did: Vec<String>,
    /// Whether supervisord runs now.
    pub now: Now,
}

impl Installed {
    /// The line that says whether it runs, and how to move it.
    pub fn now_line(&self, service: &str) -> String {
        let name = format!("ferry-{service}");
        match (self.now, self.init) {
            (Now::Running { pid }, Init::Systemd) => format!("active: systemd runs supervisord{}", pid_of(pid)),
            (Now::Running { pid }, Init::InitD) => {
                format!("running: supervisord{} (`service {name} status` finds it)", pid_of(pid))
            }
            (Now::RunningOutsideSystemd { pid }, _) => format!(
                "running outside systemd: supervisord{} was started by ferry; systemd starts it from the next boot \
                 (`systemctl restart {name}` hands it over now, restarting the programs)",
                pid_of(pid)
            ),
            (Now::Stopped, Init::Systemd) => format!("inactive: `systemctl start {name}` starts it"),
            (Now::Stopped, Init::InitD) => format!("not running: `service {name} start` starts it"),
        }
    }
}

fn pid_of(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The host's init system, as found under a root (`/` on a host; a
/// directory of a unit test's): what an install has to go through.
#[derive(Debug, Clone)]
pub(crate) struct System {
    /// `/` on a host.
    pub root: PathBuf,
    /// `systemctl`, `update-rc.d`, `chkconfig`, where they are.
    pub systemctl: Option<PathBuf>,
    pub update_rc_d: Option<PathBuf>,
    pub chkconfig: Option<PathBuf>,
    /// The effective uid this runs as (installing needs root).
    pub euid: u32,
}

/// Where a service goes, and how it is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub init: Init,
    pub enabler: Enabler,
    /// `/etc/systemd/system/ferry-<service>.service` or `/etc/init.d/ferry-<service>`.
    pub dest: PathBuf,
    /// Where the rc directories are, for init.d: `/etc` (`/etc/rc2.d`…), or
    /// `/etc/rc.d` (Red Hat's `/etc/rc.d/rc2.d`…).
    pub rc: Option<PathBuf>,
}

impl System {
    /// This host's.
    pub fn here() -> Self {
        Self {
            root: PathBuf::from("/"),
            systemctl: tool("systemctl"),
            update_rc_d: tool("update-rc.d"),
            chkconfig: tool("chkconfig"),
            euid: rustix::process::geteuid().as_raw(),
        }
    }

    fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// Systemd when it runs (as `sd_booted()` tells: `/run/systemd/system`
    /// exists), else init.d with the first enabler the host has, for the
    /// service deployed to `deploy_to`.
    pub fn plan(&self, service: &str, deploy_to: &Path) -> Result<Plan, InstallError> {
        let name = format!("ferry-{service}");
        if self.root.join("run/systemd/system").is_dir() {
            return Ok(Plan {
                init: Init::Systemd,
                enabler: Enabler::Systemctl,
                dest: self.etc().join("systemd/system").join(format!("{name}.service")),
                rc: None,
            });
        }
        let rc = [self.etc(), self.etc().join("rc.d")].into_iter().find(|d| d.join("rc2.d").is_dir());
        let enabler = if self.update_rc_d.is_some() {
            Enabler::UpdateRcD
        } else if self.chkconfig.is_some() {
            Enabler::Chkconfig
        } else if rc.is_some() {
            Enabler::RcLinks
        } else {
            return Err(InstallError::UnknownInit {
                etc: self.etc(),
                script: deploy_to.join(".ferry/init.d").join(&name),
            });
        };
        Ok(Plan { init: Init::InitD, enabler, dest: self.etc().join("init.d").join(&name), rc })
    }

    /// Why this process cannot install `plan`, if it cannot: not root, or
    /// a directory it writes not writable (read-only, say).
    fn cannot(&self, plan: &Plan) -> Option<String> {
        if self.euid != 0 {
            return Some(format!("it needs root; this runs as uid {}", self.euid));
        }
        let mut dirs: Vec<PathBuf> = plan.dest.parent().map(Path::to_path_buf).into_iter().collect();
        if let Some(rc) = &plan.rc {
            dirs.extend((0..=6).map(|n| rc.join(format!("rc{n}.d"))).filter(|d| d.is_dir()));
        }
        dirs.into_iter().find_map(|dir| {
            let access =
                rustix::fs::accessat(rustix::fs::CWD, &dir, rustix::fs::Access::WRITE_OK, rustix::fs::AtFlags::EACCESS);
            access.err().map(|e| format!("{} is not writable ({})", dir.display(), std::io::Error::from(e)))
        })
    }

    /// Whether the script is enabled: a start link in a multi-user runlevel.
    fn rc_enabled(plan: &Plan, name: &str) -> bool {
        let Some(rc) = &plan.rc else { return false };
        (2..=5).any(|n| {
            fs_err::read_dir(rc.join(format!("rc{n}.d"))).into_iter().flatten().flatten().any(|e| {
                let file = e.file_name();
                let file = file.to_string_lossy();
                file.starts_with('S') && file.len() == name.len() + 3 && file.ends_with(name)
            })
        })
    }
}

/// The commands that install `src` as `plan` says, for root to run.
pub(crate) fn root_command(plan: &Plan, src: &Path, name: &str) -> String {
    let dest = plan.dest.display();
    let copy = format!("sudo cp {} {dest}", src.display());
    match plan.enabler {
        Enabler::Systemctl => format!("{copy} && sudo systemctl daemon-reload && sudo systemctl enable {name}"),
        Enabler::UpdateRcD => format!("{copy} && sudo update-rc.d {name} defaults"),
        Enabler::Chkconfig => format!("{copy} && sudo chkconfig --add {name}"),
        Enabler::RcLinks => {
            let rc = plan.rc.as_deref().unwrap_or(Path::new("/etc")).display().to_string();
            format!(
                "{copy} && for n in 2 3 4 5; do sudo ln -sf ../init.d/{name} {rc}/rc$n.d/S20{name}; done \
                 && for n in 0 1 6; do sudo ln -sf ../init.d/{name} {rc}/rc$n.d/K80{name}; done"
            )
        }
    }
}

/// A tool on `PATH`, or in the system directories (an SSH session's
/// `PATH` may lack `/usr/sbin`).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn run(tool: &Path, args: &[&str]) -> Result<String, InstallError> {
    let command = format!("{} {}", tool.display(), args.join(" "));
    let out = Command::new(tool).args(args).stdin(std::process::Stdio::null()).output().map_err(|e| {
        InstallError::Tool { command: command.clone(), status: "did not run".into(), output: e.to_string() }
    })?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(InstallError::Tool { command, status: out.status.to_string(), output: said.trim().to_owned() });
    }
    Ok(said.trim().to_owned())
}

impl Host {
    /// Installs and enables, at boot, what starts the service's supervisord
    /// (the unit or the init script [`Host::setup`] wrote), on this host.
    pub fn install(&self, service: &str) -> Result<Installed, HostError> {
        self.install_into(&System::here(), service)
    }

    pub(crate) fn install_into(&self, system: &System, service: &str) -> Result<Installed, HostError> {
        if service.is_empty()
            || service.starts_with(['.', '-'])
            || !service.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(HostError::Input(format!("{service:?} cannot name an init script")));
        }
        let name = format!("ferry-{service}");
        let plan = system.plan(service, self.root()).map_err(runtime)?;
        let (src, mode) = match plan.init {
            Init::Systemd => (self.root().join(format!(".ferry/{name}.service")), 0o644),
            Init::InitD => (self.root().join(format!(".ferry/init.d/{name}")), 0o755),
        };
        let text = fs_err::read(&src)
            .map_err(|e| HostError::Input(format!("{e}: run `ferry setup` first, which writes it")))?;
        let old = fs_err::read(&plan.dest).ok();
        let same = old.as_deref() == Some(&text[..]);
        // Ours names this directory (`DIR='/srv/shop'`, `PIDFile=/srv/shop/.ferry/…`).
        let mine = format!("{}/", self.root().display());
        if old.as_ref().is_some_and(|old| !String::from_utf8_lossy(old).contains(&mine)) {
            let remove = match plan.enabler {
                Enabler::Systemctl => format!("systemctl disable --now {name} && rm {}", plan.dest.display()),
                Enabler::UpdateRcD => format!("{0} stop; update-rc.d -f {name} remove && rm {0}", plan.dest.display()),
                Enabler::Chkconfig => format!("{0} stop; chkconfig --del {name} && rm {0}", plan.dest.display()),
                Enabler::RcLinks => format!(
                    "{0} stop; rm {0} {1}/rc?.d/[SK]??{name}",
                    plan.dest.display(),
                    plan.rc.as_deref().unwrap_or(Path::new("/etc")).display()
                ),
            };
            return Err(runtime(InstallError::Taken { path: plan.dest, root: self.root().to_owned(), remove }));
        }
        let enabled = match plan.enabler {
            Enabler::Systemctl => {
                system.systemctl.as_deref().is_some_and(|s| run(s, &["is-enabled", "--quiet", &name]).is_ok())
            }
            _ => System::rc_enabled(&plan, &name),
        };
        let mut did = Vec::new();
        if !(same && enabled) {
            if let Some(why) = system.cannot(&plan) {
                let command = root_command(&plan, &src, &name);
                return Err(runtime(InstallError::NoRights { what: plan.dest.display().to_string(), why, command }));
            }
            if write_if_changed(&plan.dest, &text, mode)? {
                did.push(format!("installed {}", plan.dest.display()));
            }
            did.extend(self.enable(system, &plan, &name, !same)?);
        }
        let pid =
            fs_err::read_to_string(self.root().join(".ferry/supervisord.pid")).ok().and_then(|p| p.trim().parse().ok());
        let active = |systemctl: &Path| run(systemctl, &["is-active", "--quiet", &name]).is_ok();
        let now = if !self.supervisor().is_running() {
            Now::Stopped
        } else if plan.init == Init::Systemd && !system.systemctl.as_deref().is_some_and(active) {
            Now::RunningOutsideSystemd { pid }
        } else {
            Now::Running { pid }
        };
        Ok(Installed { init: plan.init, enabled_with: plan.enabler, path: plan.dest, did, now })
    }

    /// Enables the installed unit or script at boot: what it ran.
    fn enable(&self, system: &System, plan: &Plan, name: &str, changed: bool) -> Result<Vec<String>, HostError> {
        let mut did = Vec::new();
        let missing = |what: &str| {
            runtime(InstallError::Tool { command: what.to_owned(), status: "not found".into(), output: String::new() })
        };
        match plan.enabler {
            Enabler::Systemctl => {
                let systemctl = system.systemctl.as_deref().ok_or_else(|| missing("systemctl"))?;
                if changed {
                    run(systemctl, &["daemon-reload"]).map_err(runtime)?;
                    did.push("ran systemctl daemon-reload".to_owned());
                }
                if run(systemctl, &["is-enabled", "--quiet", name]).is_err() {
                    run(systemctl, &["enable", name]).map_err(runtime)?;
                    did.push(format!("enabled at boot: systemctl enable {name}"));
                }
            }
            Enabler::UpdateRcD | Enabler::Chkconfig | Enabler::RcLinks if System::rc_enabled(plan, name) => {}
            Enabler::UpdateRcD => {
                let tool = system.update_rc_d.as_deref().ok_or_else(|| missing("update-rc.d"))?;
                run(tool, &[name, "defaults"]).map_err(runtime)?;
                did.push(format!("enabled at boot: update-rc.d {name} defaults"));
            }
            Enabler::Chkconfig => {
                let tool = system.chkconfig.as_deref().ok_or_else(|| missing("chkconfig"))?;
                run(tool, &["--add", name]).map_err(runtime)?;
                did.push(format!("enabled at boot: chkconfig --add {name}"));
            }
            Enabler::RcLinks => {
                let rc = plan.rc.as_deref().ok_or_else(|| missing("rc?.d directories"))?;
                for (n, link) in (0..=6).map(|n| (n, if (2..=5).contains(&n) { "S20" } else { "K80" })) {
                    let dir = rc.join(format!("rc{n}.d"));
                    if !dir.is_dir() {
                        continue;
                    }
                    let at = dir.join(format!("{link}{name}"));
                    if fs_err::symlink_metadata(&at).is_err() {
                        fs_err::os::unix::fs::symlink(format!("../init.d/{name}"), &at).map_err(HostError::Fs)?;
                    }
                }
                did.push(format!(
                    "enabled at boot: S20{name} links in {0}/rc[2-5].d, K80 in {0}/rc[016].d",
                    rc.display()
                ));
            }
        }
        Ok(did)
    }
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
