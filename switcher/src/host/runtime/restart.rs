//! Taking up a release: each program restarted (or reloaded by its signal),
//! waited for, and checked to run nothing from another release; who listens
//! on a port, for the health gate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::setup::{write_if_changed, PRIVATE};
use super::{group, runtime, Program, Restart, RuntimeError, NOT_RUNNING};
use crate::host::procs;
use crate::host::supervisor::{ProcessInfo, ProcessState, Supervisor};
use crate::host::{error_chain, Host, HostError};

impl Host {
    /// After a flip to `id`: every program takes it up (by its restart
    /// strategy), every process is RUNNING past its startsecs, and each one
    /// runs from `releases/<id>`. Nothing to do without programs.
    pub fn restart_programs(&self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.take_up(id, TakeUp::AsConfigured)
    }

    /// [`Host::restart_programs`] by stop and start whatever `reload_signal`
    /// says: going back (a rollback, a revert, a failed flip undone) is
    /// recovery, and a reload asks a master that may be in trouble (its new
    /// workers failing) to do the work.
    pub fn restart_programs_afresh(&self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.take_up(id, TakeUp::StopStart)
    }

    /// When `current` already was `id` (a push of the release a host runs):
    /// the programs are only checked, and restarted if they do not run it.
    pub fn ensure_programs(&self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.take_up(id, TakeUp::IfNeeded)
    }

    pub(super) fn take_up(&self, id: &ReleaseId, how: TakeUp) -> Result<Vec<String>, HostError> {
        let programs = self.programs()?;
        if programs.is_empty() {
            return Ok(Vec::new());
        }
        let mut notes = Vec::new();
        let supervisor = self.supervisor();
        // The new release's env config may differ: the config follows it.
        // supervisord re-reads it now, on this host's turn (setup only
        // writes it), and restarts the groups whose config changed.
        let conf = self.supervisord_conf(&programs)?;
        write_if_changed(&self.root().join(".ferry/supervisord.conf"), conf.as_bytes(), PRIVATE)?;
        if supervisor.is_running() {
            supervisor.update().map_err(runtime)?;
        } else {
            self.start_supervisord()?;
            notes.push(NOT_RUNNING.to_owned());
        }
        for p in &programs {
            if how == TakeUp::IfNeeded {
                let runs =
                    self.wait_running(&supervisor, p, None).and_then(|()| self.check_release(&supervisor, p, id));
                match runs {
                    Ok(()) => continue,
                    Err(e) => notes.push(format!(
                        "program {} did not run release {} ({}): restarted it",
                        p.name,
                        id.short(12),
                        error_chain(&e).lines().next().unwrap_or_default()
                    )),
                }
            }
            match &p.restart {
                Restart::Signal(signal)
                    if how != TakeUp::StopStart
                        && group(&supervisor, &p.name)?.iter().all(|i| i.state == ProcessState::Running) =>
                {
                    let before: Vec<(String, u32)> =
                        group(&supervisor, &p.name)?.into_iter().map(|i| (i.name, i.pid)).collect();
                    let tree = procs::Tree::read();
                    let children: Vec<Vec<u32>> = before.iter().map(|(_, pid)| tree.children(*pid).to_vec()).collect();
                    supervisor.signal_group(&p.name, signal).map_err(runtime)?;
                    self.wait_reloaded(&supervisor, p, signal, &before, &children)?;
                }
                _ => {
                    // supervisord KILLs after stopwaitsecs; a little more for that.
                    let within = Duration::from_secs(u64::from(p.stopwaitsecs) + 5);
                    let up: Vec<u32> = group(&supervisor, &p.name)?.iter().map(|i| i.pid).filter(|p| *p != 0).collect();
                    let asked = Instant::now();
                    supervisor.stop_group(&p.name, within).map_err(runtime)?;
                    if !up.is_empty() && asked.elapsed() >= Duration::from_secs(u64::from(p.stopwaitsecs)) {
                        notes.push(format!(
                            "program {} (pid {}) did not stop on SIG{} within stopwaitsecs ({} s) and was killed; \
                             make it exit on SIG{2}, or raise stopwaitsecs if it needs longer to finish its requests",
                            p.name,
                            up.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                            p.stopsignal,
                            p.stopwaitsecs
                        ));
                    }
                    supervisor.start_group(&p.name).map_err(runtime)?;
                    self.wait_running(&supervisor, p, None)?;
                }
            }
            self.check_release(&supervisor, p, id)?;
        }
        Ok(notes)
    }

    /// After a reload signal: the program reloads in its own time. It has
    /// reloaded when each process kept its pid (a new pid means it died and
    /// was restarted) for startsecs, and, for a process that had children
    /// (a pre-forking server's workers), when a child it forked after the
    /// signal has stayed up for startsecs: the workers that load the new
    /// code booted. (Its own children only: a subprocess an old worker
    /// starts while it finishes a request is not a new worker.) A master whose new workers fail to boot usually exits,
    /// which the pid shows; under load that takes a while, so a fixed wait
    /// would pass it as reloaded.
    pub(super) fn wait_reloaded(
        &self,
        supervisor: &Supervisor,
        p: &Program,
        signal: &str,
        before: &[(String, u32)],
        children: &[Vec<u32>],
    ) -> Result<(), HostError> {
        let settle = Duration::from_secs(u64::from(p.startsecs.max(1)));
        let start = Instant::now();
        let deadline = start + settle + Duration::from_secs(u64::from(p.stopwaitsecs) + 30);
        let mut first_seen: BTreeMap<u32, Instant> = BTreeMap::new();
        loop {
            self.wait_running(supervisor, p, Some(before))?;
            let mut settled = start.elapsed() >= settle;
            let tree = procs::Tree::read();
            for ((_, pid), old) in before.iter().zip(children).filter(|(_, old)| !old.is_empty()) {
                let fresh: Vec<u32> = tree.children(*pid).iter().filter(|c| !old.contains(c)).copied().collect();
                let lived = fresh.iter().any(|c| first_seen.entry(*c).or_insert_with(Instant::now).elapsed() >= settle);
                settled &= lived;
            }
            if settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(runtime(RuntimeError::NotReloaded {
                    program: p.name.clone(),
                    signal: signal.to_owned(),
                    seconds: start.elapsed().as_secs(),
                }));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every program, as far as it can (a first deploy that did not
    /// start leaves nothing running).
    pub(crate) fn stop_programs(&self) {
        let supervisor = self.supervisor();
        for p in self.programs().unwrap_or_default() {
            let _ = supervisor.stop_group(&p.name, Duration::from_secs(u64::from(p.stopwaitsecs) + 5));
        }
    }

    /// Waits until every process of `p` is RUNNING (supervisord says so only
    /// after startsecs), or fails with the program's last output. With
    /// `same`, each process must also still be the one it was (a reload by
    /// signal keeps the pid; a new pid means it died and was restarted).
    pub(super) fn wait_running(
        &self,
        supervisor: &Supervisor,
        p: &Program,
        same: Option<&[(String, u32)]>,
    ) -> Result<(), HostError> {
        let deadline = Instant::now() + Duration::from_secs(u64::from(p.startsecs + p.stopwaitsecs) + 30);
        loop {
            let processes = group(supervisor, &p.name)?;
            if let Some(before) = same {
                let changed =
                    processes.iter().find(|i| before.iter().any(|(name, pid)| *name == i.name && *pid != i.pid));
                if let Some(bad) = changed {
                    let mut bad = bad.clone();
                    bad.description = format!("it died on the reload and was started again ({})", bad.description);
                    return Err(self.not_running(supervisor, &bad));
                }
            }
            let failed = processes.iter().find(|i| {
                matches!(
                    i.state,
                    ProcessState::Fatal | ProcessState::Exited | ProcessState::Stopped | ProcessState::Unknown
                )
            });
            let up = !processes.is_empty() && processes.iter().all(|i| i.state == ProcessState::Running && i.pid != 0);
            if let Some(bad) = failed.filter(|_| !up) {
                return Err(self.not_running(supervisor, bad));
            }
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                let worst = processes.into_iter().find(|i| i.state != ProcessState::Running);
                return Err(match worst {
                    Some(bad) => self.not_running(supervisor, &bad),
                    None => runtime(RuntimeError::NotRunning {
                        program: p.name.clone(),
                        state: "MISSING".into(),
                        description: "supervisord lists no process for it".into(),
                        spawnerr: String::new(),
                        errors: Vec::new(),
                        log: String::new(),
                    }),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(super) fn not_running(&self, supervisor: &Supervisor, bad: &ProcessInfo) -> HostError {
        let mut log = String::new();
        for stderr in [true, false] {
            if let Ok((text, _)) = supervisor.tail(&bad.name, 8192, stderr) {
                log.push_str(&text);
            }
        }
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        // A traceback's cause is often above its last lines: the lines that
        // name an error, too.
        // An exception's own line (`NameError: …`) first, else log lines
        // that say error or failed.
        let exception = |l: &str| {
            l.split_once(':').is_some_and(|(head, _)| {
                !head.is_empty()
                    && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    && (head.ends_with("Error") || head.ends_with("Exception"))
            })
        };
        let named =
            |l: &str| ["ERROR", "Error", "error:", "Exception", "FATAL", "failed"].iter().any(|w| l.contains(w));
        let mut errors: Vec<String> = Vec::new();
        for pick in [&exception as &dyn Fn(&str) -> bool, &named] {
            for line in lines.iter().map(|l| l.trim()).filter(|l| pick(l)) {
                if !errors.iter().any(|e| e == line) {
                    errors.push(line.to_owned());
                }
            }
            if !errors.is_empty() {
                break;
            }
        }
        let errors = errors.split_off(errors.len().saturating_sub(3));
        runtime(RuntimeError::NotRunning {
            program: bad.name.clone(),
            state: bad.state.to_string(),
            description: bad.description.clone(),
            spawnerr: bad.spawnerr.clone(),
            errors,
            log: lines[lines.len().saturating_sub(10)..].join("\n"),
        })
    }

    /// Every process of `p` (and each child: gunicorn's workers) runs from
    /// `releases/<id>`: nothing it runs from is in another release — its
    /// working directory, its executable, the paths in its command line,
    /// its mapped files (see [`procs`](super::procs)). A process started
    /// under `current` before the flip keeps what the kernel resolved then:
    /// a reload by signal keeps the old release's interpreter, whatever
    /// code it re-reads. The program's own processes must be right at
    /// once; their children get until stopwaitsecs + 35 s to go, as old
    /// workers finish their last requests after a reload (gunicorn gives
    /// them its graceful_timeout, 30 s by default). A child forked after a
    /// reload inherits its parent's directory and interpreter, which the
    /// parent's own check already caught.
    pub(super) fn check_release(&self, supervisor: &Supervisor, p: &Program, id: &ReleaseId) -> Result<(), HostError> {
        let releases = fs::canonicalize(self.releases_dir()).map_err(HostError::Fs)?;
        let wanted = id.to_string();
        let deadline = Instant::now() + Duration::from_secs(u64::from(p.stopwaitsecs) + 35);
        loop {
            let mut stale = false;
            let tree = procs::Tree::read();
            for info in group(supervisor, &p.name)? {
                if info.pid == 0 {
                    return Err(self.not_running(supervisor, &info));
                }
                let own = std::iter::once((info.pid, false));
                for (pid, child) in own.chain(tree.descendants(info.pid).into_iter().map(|c| (c, true))) {
                    let Some(hold) = procs::holds(pid, &releases, Some(&wanted), false).into_iter().next() else {
                        continue;
                    };
                    if !child || Instant::now() > deadline {
                        return Err(self.old_release(p, id, &info.name, hold));
                    }
                    stale = true;
                }
            }
            if !stale {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn old_release(&self, p: &Program, id: &ReleaseId, program: &str, hold: procs::Hold) -> HostError {
        let here = self.program_dir(p).display().to_string();
        let hint = match (&p.restart, hold.via) {
            _ if hold.deleted => "what it runs from was removed under it (a release removed by hand, or staged \
                                  anew); restart it by stop and start (drop reload_signal) to take up the release \
                                  as it is now"
                .to_owned(),
            (Restart::Signal(signal), procs::Via::Cwd) => format!(
                "a process reloaded by SIG{signal} keeps the working directory it started in, and reloads \
                 the old code from there; make it change directory on reload (gunicorn: add --chdir {here} to \
                 its command), or drop reload_signal to restart it by stop and start"
            ),
            (Restart::Signal(signal), _) => format!(
                "a process reloaded by SIG{signal} keeps the interpreter and libraries it started with, \
                 whatever code it re-reads; drop reload_signal to restart it by stop and start"
            ),
            (Restart::Restart, procs::Via::Cwd) => {
                format!("it changes to {} itself; point it at {here} instead", hold.path.display())
            }
            (Restart::Restart, _) => format!(
                "a process started after the flip still names release {}: its command or configuration names \
                 that release's directory; run it from {}/current/… instead",
                hold.release,
                self.root().display()
            ),
        };
        runtime(RuntimeError::OldRelease {
            program: program.to_owned(),
            pid: hold.pid,
            what: hold.via,
            path: hold.path,
            release: hold.release,
            deleted: hold.deleted,
            wanted: *id,
            hint,
        })
    }

    /// Who listens on TCP `port` on this host, each process with the
    /// program process it belongs to (itself or an ancestor), if any: a
    /// health gate's answer counts only when it came from the programs.
    pub fn listeners(&self, port: u16) -> Result<Vec<PortHolder>, HostError> {
        let found = procs::listeners(port);
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut owner: BTreeMap<u32, String> = BTreeMap::new();
        let supervisor = self.supervisor();
        if !self.programs()?.is_empty() && supervisor.is_running() {
            let tree = procs::Tree::read();
            for info in supervisor.processes().map_err(runtime)?.into_iter().filter(|i| i.pid != 0) {
                for pid in std::iter::once(info.pid).chain(tree.descendants(info.pid)) {
                    owner.insert(pid, info.name.clone());
                }
            }
        }
        let releases = fs::canonicalize(self.releases_dir()).ok();
        let mut holders = Vec::new();
        for listener in found {
            if listener.pids.is_empty() {
                holders.push(PortHolder { address: listener.address, pid: None, ..PortHolder::default() });
                continue;
            }
            for pid in listener.pids {
                let release = releases
                    .as_deref()
                    .and_then(|r| procs::holds(pid, r, None, false).into_iter().next())
                    .map(|h| h.release);
                holders.push(PortHolder {
                    address: listener.address.clone(),
                    pid: Some(pid),
                    command: procs::command(pid),
                    process: owner.get(&pid).cloned(),
                    release,
                });
            }
        }
        Ok(holders)
    }
}

/// How [`Host::take_up`] has the programs take up a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TakeUp {
    /// By each program's restart strategy (a reload signal, or stop and start).
    AsConfigured,
    /// By stop and start.
    StopStart,
    /// Only if they do not run it already (then as configured).
    IfNeeded,
}

/// A process listening on a port (see [`Host::listeners`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortHolder {
    pub address: String,
    /// `None`: a process this user cannot see (another user's).
    pub pid: Option<u32>,
    pub command: String,
    /// The program's process (`web`, `web:web_00`) it is or descends from.
    pub process: Option<String>,
    /// The release it runs from, if it runs from one.
    pub release: Option<String>,
}
