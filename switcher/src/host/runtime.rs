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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_formats::journal::{Action, Record};
use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::procs;
use super::supervisor::{ProcessInfo, Supervisor, SupervisorError};
use super::{error_chain, Host, HostError};

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
}

impl Host {
    fn programs_path(&self) -> PathBuf {
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

    /// Prepares the host once, and again whenever the programs change:
    /// `shared/log`, the programs, supervisord's config, a systemd unit and
    /// an init script; starts supervisord (or has it re-read its config)
    /// once a release is current. Returns what it did.
    pub fn setup(&self, service: &str, programs: &[Program]) -> Result<SetUp, HostError> {
        let mut did = Vec::new();
        let ferry = self.root().join(".ferry");
        fs::create_dir_all(&ferry).map_err(HostError::Fs)?;
        fs::create_dir_all(self.root().join("shared/log")).map_err(HostError::Fs)?;
        let json = serde_json::to_vec_pretty(programs).expect("programs serialize");
        if write_if_changed(&self.programs_path(), &json, PRIVATE)? {
            did.push(format!("wrote {}", self.programs_path().display()));
        }
        let conf = self.supervisord_conf(programs)?;
        let conf_path = ferry.join("supervisord.conf");
        let conf_changed = write_if_changed(&conf_path, conf.as_bytes(), PRIVATE)?;
        if conf_changed {
            did.push(format!("wrote {}", conf_path.display()));
        }
        for (path, text, mode) in [
            (ferry.join(format!("ferry-{service}.service")), self.systemd_unit(service, &conf_path), 0o644),
            (ferry.join(format!("init.d/ferry-{service}")), self.init_script(service, &conf_path), 0o755),
        ] {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(HostError::Fs)?;
            }
            if write_if_changed(&path, text.as_bytes(), mode)? {
                did.push(format!("wrote {}", path.display()));
            }
        }
        // A changed config reaches the running supervisord at this host's
        // flip (see take_up), not here: here it would restart the programs
        // on the old release, on every host at once.
        let mut started_supervisord = false;
        if self.current()?.is_some() && !self.supervisor().is_running() {
            self.start_supervisord()?;
            did.push(NOT_RUNNING.into());
            started_supervisord = true;
        } else if conf_changed && self.current()?.is_some() {
            did.push("supervisord takes up the new config at this host's next flip".into());
        }
        Ok(SetUp { did, started_supervisord })
    }

    /// supervisord's config for `programs`: its socket and files under
    /// `.ferry/`, its own working directory the deploy directory (never a
    /// release), each program in `current/<directory>`.
    fn supervisord_conf(&self, programs: &[Program]) -> Result<String, HostError> {
        let root = self.root().display().to_string();
        let mut conf = format!(
            "; Written by ferry setup from ferry.toml's [programs]; changes here are overwritten.\n\
             [unix_http_server]\nfile={root}/.ferry/supervisor.sock\nchmod=0700\n\n\
             [supervisord]\nlogfile={root}/shared/log/supervisord.log\npidfile={root}/.ferry/supervisord.pid\n\
             childlogdir={root}/shared/log\ndirectory={root}\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{root}/.ferry/supervisor.sock\n"
        );
        let env_file = self.active_env()?;
        for p in programs {
            let mut env = env_file.clone();
            env.extend(p.environment.clone());
            for (k, v) in &env {
                config_safe(v, true).map_err(|e| {
                    HostError::Input(format!("program {}: environment {k} (or config/active/env's): {e}", p.name))
                })?;
            }
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", env_value(v))).collect();
            let (process_name, log) = if p.numprocs > 1 {
                ("%(program_name)s_%(process_num)02d", format!("{root}/shared/log/{}_%(process_num)02d", p.name))
            } else {
                ("%(program_name)s", format!("{root}/shared/log/{}", p.name))
            };
            let dir = self.program_dir(p).display().to_string();
            let command = self.command_line(p);
            conf.push_str(&format!(
                "\n[program:{name}]\ncommand={command}\nprocess_name={process_name}\nnumprocs={numprocs}\n\
                 directory={dir}\nenvironment={env}\nstopsignal={stopsignal}\nstopwaitsecs={stopwaitsecs}\n\
                 startsecs={startsecs}\nstartretries=2\nstopasgroup=true\nkillasgroup=true\nautostart=true\n\
                 autorestart=unexpected\nstdout_logfile={log}.log\nstderr_logfile={log}.err.log\n",
                name = p.name,
                numprocs = p.numprocs,
                env = env.join(","),
                stopsignal = p.stopsignal,
                stopwaitsecs = p.stopwaitsecs,
                startsecs = p.startsecs,
            ));
        }
        Ok(conf)
    }

    /// The program's command as supervisord runs it: a relative program
    /// path (`venv/bin/gunicorn …`) resolves against the release, through
    /// `current` (supervisord would look it up in its own directory, the
    /// deploy directory, and say "can't find command"); a bare name is
    /// looked up on `PATH` as supervisord does. `%(process_num)d` and the
    /// like are supervisord's and stay as written.
    fn command_line(&self, p: &Program) -> String {
        let command = p.command.trim_start();
        let (program, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
        if program.starts_with('/') || !program.contains('/') || program.starts_with(['"', '\'']) {
            return command.to_owned();
        }
        let program = program.strip_prefix("./").unwrap_or(program);
        let resolved = self.root().join("current").join(program);
        if rest.is_empty() {
            resolved.display().to_string()
        } else {
            format!("{} {rest}", resolved.display())
        }
    }

    /// Where a program runs: `current/<directory>`, through the symlink.
    fn program_dir(&self, p: &Program) -> PathBuf {
        match p.directory.as_str() {
            "." => self.root().join("current"),
            dir => self.root().join("current").join(dir),
        }
    }

    /// `config/active/env` of the current release: `KEY=VALUE` lines.
    fn active_env(&self) -> Result<BTreeMap<String, String>, HostError> {
        env_file(&self.root().join("current"))
    }

    /// Runs hook `name` (`sh -c command`) in release `id` (staged or live)
    /// with its environment's `config/active/env`, `FERRY_RELEASE` and
    /// `FERRY_DEPLOY_TO`; kills it (and its children) after `timeout`.
    pub fn run_hook(&self, id: &ReleaseId, name: &str, command: &str, timeout: Duration) -> Result<HookRun, HostError> {
        let dir = self.release_dir(id);
        if !dir.is_dir() {
            return Err(HostError::NoRelease { id: *id, root: self.root().to_owned() });
        }
        let start = Instant::now();
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg(command)
            .current_dir(&dir)
            .envs(env_file(&dir)?)
            .env("FERRY_RELEASE", id.to_string())
            .env("FERRY_DEPLOY_TO", self.root());
        let (status, output) =
            run_bounded(sh, timeout).map_err(|e| HostError::Input(format!("hook {name}: cannot run sh: {e}")))?;
        let lines: Vec<&str> = output.lines().collect();
        let output = lines[lines.len().saturating_sub(200)..].join("\n");
        let run = HookRun {
            name: name.to_owned(),
            exit: status.and_then(|s| s.code()),
            timed_out: status.is_none(),
            seconds: start.elapsed().as_secs_f64(),
            output,
        };
        if name == "migrate" {
            // A later rollback past this release is warned about.
            let mut record = Record::now(super::whoami(), Action::Migrate, self.current()?, Some(*id));
            if !run.ok() {
                record = record.failed(format!("exit {:?}", run.exit));
            }
            self.record(&record)?;
        }
        Ok(run)
    }

    /// The programs' logs (stdout and stderr): from each process's offset
    /// in `offsets` when given (following), else their last `bytes`.
    pub fn logs(
        &self,
        program: Option<&str>,
        offsets: &BTreeMap<String, i64>,
        bytes: i32,
    ) -> Result<Vec<LogChunk>, HostError> {
        let supervisor = self.supervisor();
        let processes = supervisor.processes().map_err(runtime)?;
        let mut chunks = Vec::new();
        for p in processes.iter().filter(|p| program.is_none_or(|want| p.group == want || p.name == want)) {
            for stderr in [false, true] {
                let key = format!("{}{}", p.name, if stderr { " (stderr)" } else { "" });
                let (text, offset) = match offsets.get(&key) {
                    Some(offset) => supervisor.read_log(&p.name, *offset, bytes, stderr),
                    None => supervisor.tail(&p.name, bytes, stderr),
                }
                .map_err(runtime)?;
                chunks.push(LogChunk { process: key, text, offset });
            }
        }
        if let Some(want) = program.filter(|_| chunks.is_empty()) {
            let have: Vec<&str> = processes.iter().map(|p| p.group.as_str()).collect();
            return Err(HostError::Input(format!("no program {want} here (there are: {})", have.join(", "))));
        }
        Ok(chunks)
    }

    fn systemd_unit(&self, service: &str, conf: &Path) -> String {
        format!(
            "# Written by ferry setup: supervisord for {service}, so systemctl start/stop/status work.\n\
             # Install: cp this file /etc/systemd/system/ && systemctl enable --now ferry-{service}\n\
             [Unit]\nDescription=supervisord for {service} (ferry)\nAfter=network.target\n\n\
             [Service]\nType=forking\nPIDFile={root}/.ferry/supervisord.pid\nExecStart=/usr/bin/supervisord -c {conf}\n\
             ExecStop=/usr/bin/supervisorctl -c {conf} shutdown\nExecReload=/usr/bin/supervisorctl -c {conf} update\n\
             Restart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n",
            root = self.root().display(),
            conf = conf.display()
        )
    }

    fn init_script(&self, service: &str, conf: &Path) -> String {
        format!(
            "#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          ferry-{service}\n# Required-Start:    $network $remote_fs\n\
             # Required-Stop:     $network $remote_fs\n# Default-Start:     2 3 4 5\n# Default-Stop:      0 1 6\n\
             # Short-Description: supervisord for {service} (ferry)\n### END INIT INFO\n\
             # Written by ferry setup. Install: cp this file /etc/init.d/ && update-rc.d ferry-{service} defaults\n\
             CONF={conf}\ncase \"$1\" in\n  start) supervisorctl -c \"$CONF\" pid >/dev/null 2>&1 || supervisord -c \"$CONF\" ;;\n\
               stop) supervisorctl -c \"$CONF\" shutdown ;;\n  restart) \"$0\" stop; sleep 1; \"$0\" start ;;\n\
               reload) supervisorctl -c \"$CONF\" update ;;\n  status) supervisorctl -c \"$CONF\" status ;;\n\
               *) echo \"usage: $0 start|stop|restart|reload|status\" >&2; exit 2 ;;\nesac\n",
            conf = conf.display()
        )
    }

    /// Starts supervisord on its config and waits for its socket.
    fn start_supervisord(&self) -> Result<(), HostError> {
        let conf = self.root().join(".ferry/supervisord.conf");
        let out = std::process::Command::new("supervisord")
            .arg("-c")
            .arg(&conf)
            .current_dir(self.root())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| runtime(RuntimeError::Start(format!("cannot run supervisord: {e} (is it installed?)"))))?;
        if !out.status.success() {
            return Err(runtime(RuntimeError::Start(format!(
                "supervisord -c {} exited with {}: {}",
                conf.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.supervisor().is_running() {
            if Instant::now() > deadline {
                return Err(runtime(RuntimeError::Start("no answer on its socket after 10 s".into())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

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

    fn take_up(&self, id: &ReleaseId, how: TakeUp) -> Result<Vec<String>, HostError> {
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
                        && group(&supervisor, &p.name)?.iter().all(|i| i.state == "RUNNING") =>
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
    fn wait_reloaded(
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
    fn wait_running(
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
            let failed =
                processes.iter().find(|i| matches!(i.state.as_str(), "FATAL" | "EXITED" | "STOPPED" | "UNKNOWN"));
            let up = !processes.is_empty() && processes.iter().all(|i| i.state == "RUNNING" && i.pid != 0);
            if let Some(bad) = failed.filter(|_| !up) {
                return Err(self.not_running(supervisor, bad));
            }
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                let worst = processes.into_iter().find(|i| i.state != "RUNNING");
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

    fn not_running(&self, supervisor: &Supervisor, bad: &ProcessInfo) -> HostError {
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
            state: bad.state.clone(),
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
    fn check_release(&self, supervisor: &Supervisor, p: &Program, id: &ReleaseId) -> Result<(), HostError> {
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

    fn old_release(&self, p: &Program, id: &ReleaseId, program: &str, hold: procs::Hold) -> HostError {
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

    /// Each program's processes, for `status`; empty without programs or
    /// when supervisord is not running.
    pub fn program_status(&self) -> Vec<ProcessInfo> {
        self.program_states().unwrap_or_default()
    }

    /// Each program's processes; `Err` with why when the host has programs
    /// and its supervisord does not answer (every program is down then).
    pub fn program_states(&self) -> Result<Vec<ProcessInfo>, String> {
        if self.programs().map(|p| p.is_empty()).unwrap_or(true) {
            return Ok(Vec::new());
        }
        self.supervisor().processes().map_err(|e| e.to_string())
    }
}

/// Whether supervisord's config can carry `value` as written: its ini
/// reader cuts a line at " ;" or " #" (a comment) and knows no newline in
/// a value; an environment value may hold one kind of quote, not both.
pub fn config_safe(value: &str, quoted: bool) -> Result<(), String> {
    if value.contains('\n') || value.contains('\r') {
        return Err("a newline cannot be in supervisord's config".into());
    }
    if let Some(at) = [" ;", " #", "\t;", "\t#"].iter().find(|c| value.contains(**c)) {
        return Err(format!("{:?} would start a comment in supervisord's config, cutting the rest", at.trim()));
    }
    if quoted && value.contains('"') && value.contains('\'') {
        return Err("an environment value cannot hold both kinds of quote in supervisord's config".into());
    }
    Ok(())
}

/// An environment value as supervisord's `environment=` reads it.
fn env_value(v: &str) -> String {
    let v = v.replace('%', "%%");
    if v.contains('"') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
}

/// How [`Host::take_up`] has the programs take up a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeUp {
    /// By each program's restart strategy (a reload signal, or stop and start).
    AsConfigured,
    /// By stop and start.
    StopStart,
    /// Only if they do not run it already (then as configured).
    IfNeeded,
}

/// What [`Host::setup`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetUp {
    /// A line each: files written, supervisord started or told.
    pub did: Vec<String>,
    /// supervisord was down, with a release current, and was started: the
    /// programs had not been running.
    pub started_supervisord: bool,
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

/// What a hook did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRun {
    pub name: String,
    /// Its exit code; `None` when it was killed (by its timeout, or a signal).
    pub exit: Option<i32>,
    pub timed_out: bool,
    pub seconds: f64,
    /// Its last 200 lines of output (stdout and stderr together).
    pub output: String,
}

impl HookRun {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }
}

/// A piece of one process's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    /// `program` or `group:process`, with " (stderr)" for its stderr.
    pub process: String,
    pub text: String,
    /// Where to read from next, to follow it.
    pub offset: i64,
}

/// Runs `command` in a process group of its own, with no stdin and its
/// stdout and stderr in one file (a pipe would block a chatty command, and
/// stay open as long as anything it left running); kills the whole group
/// after `timeout`. Returns its exit status (`None`: killed at the timeout)
/// and the first MiB of its output.
pub(crate) fn run_bounded(
    mut command: std::process::Command,
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String)> {
    use std::io::{Read, Seek};
    use std::os::unix::process::CommandExt;
    let log = tempfile::tempfile()?;
    let start = Instant::now();
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .spawn()?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    let mut log = log;
    log.rewind()?;
    let _ = log.take(1 << 20).read_to_string(&mut output);
    Ok((status, output))
}

/// `config/active/env` of the release in `dir`: `KEY=VALUE` lines (`#`
/// comments; none when the file is not there).
fn env_file(dir: &Path) -> Result<BTreeMap<String, String>, HostError> {
    let path = dir.join("config/active/env");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(BTreeMap::new())
        }
        Err(e) => return Err(HostError::Fs(e)),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect())
}

fn runs(release: &str, deleted: bool, wanted: &ReleaseId) -> String {
    if deleted && release == wanted.to_string() {
        format!("a removed copy of release {release}")
    } else {
        format!("release {release}")
    }
}

fn spawned(spawnerr: &str) -> String {
    if spawnerr.is_empty() {
        String::new()
    } else {
        format!("; supervisord could not spawn it: {spawnerr}")
    }
}

fn output(log: &str) -> String {
    if log.is_empty() {
        "; it wrote no output".to_owned()
    } else {
        format!("; its last output:\n{log}")
    }
}

fn said(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!("; it said: {}", errors.join(" / "))
    }
}

fn runtime(e: impl Into<RuntimeError>) -> HostError {
    HostError::Runtime(Box::new(e.into()))
}

fn group(supervisor: &Supervisor, name: &str) -> Result<Vec<ProcessInfo>, HostError> {
    Ok(supervisor.processes().map_err(runtime)?.into_iter().filter(|i| i.group == name).collect())
}

/// Writes `bytes` to `path` (atomically, with permission bits `mode`)
/// unless it holds them already; a file that does but has other bits (one
/// an older ferry wrote 0644) gets `mode`.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, HostError> {
    use std::os::unix::fs::PermissionsExt;
    if fs::read(path).is_ok_and(|old| old == bytes) {
        let meta = fs::metadata(path).map_err(HostError::Fs)?;
        if meta.permissions().mode() & 0o7777 != mode {
            fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(HostError::Fs)?;
        }
        return Ok(false);
    }
    ferry_formats::atomic::write_atomic_mode(path, mode, |f| std::io::Write::write_all(f, bytes))
        .map_err(HostError::Fs)?;
    Ok(true)
}

/// Files that hold the programs' environment (secrets, often): the deploy
/// user's alone.
const PRIVATE: u32 = 0o600;
