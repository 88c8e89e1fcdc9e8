//! Preparing a host for the programs: supervisord's config (0600: it holds
//! their environment), a systemd unit and an init script, supervisord
//! started or told to re-read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::{runtime, Program, RuntimeError, NOT_RUNNING};
use crate::host::{Host, HostError};

impl Host {
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
            (ferry.join(format!("init.d/ferry-{service}")), self.init_script(service), 0o755),
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
    pub(super) fn supervisord_conf(&self, programs: &[Program]) -> Result<String, HostError> {
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
    pub(super) fn command_line(&self, p: &Program) -> String {
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
    pub(super) fn program_dir(&self, p: &Program) -> PathBuf {
        match p.directory.as_str() {
            "." => self.root().join("current"),
            dir => self.root().join("current").join(dir),
        }
    }

    /// `config/active/env` of the current release: `KEY=VALUE` lines.
    pub(super) fn active_env(&self) -> Result<BTreeMap<String, String>, HostError> {
        env_file(&self.root().join("current"))
    }

    /// The systemd unit: supervisord as the deploy directory's owner (its
    /// uid and gid: the programs run as the user who deploys, also when
    /// systemd starts them at boot).
    pub(super) fn systemd_unit(&self, service: &str, conf: &Path) -> String {
        use std::os::unix::fs::MetadataExt;
        let user = match fs::metadata(self.root()) {
            Ok(m) if m.uid() != 0 => format!("User={}\nGroup={}\n", m.uid(), m.gid()),
            _ => String::new(),
        };
        format!(
            "# Written by ferry setup: supervisord for {service}, so systemctl start/stop/status work.\n\
             # Install: ferry setup STAGE --install, or as root: cp this file /etc/systemd/system/ \
             && systemctl daemon-reload && systemctl enable ferry-{service}\n\
             [Unit]\nDescription=supervisord for {service} (ferry)\nAfter=network.target\n\
             ConditionPathExists={root}/current\n\n\
             [Service]\nType=forking\n{user}WorkingDirectory={root}\nPIDFile={root}/.ferry/supervisord.pid\n\
             ExecStart=/usr/bin/supervisord -c {conf}\n\
             ExecStop=/usr/bin/supervisorctl -c {conf} shutdown\nExecReload=/usr/bin/supervisorctl -c {conf} update\n\
             Restart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n",
            root = self.root().display(),
            conf = conf.display()
        )
    }

    /// The LSB init script (`init.d.sh`): start, stop, restart, reload,
    /// status with LSB's exit codes; it finds a supervisord ferry started
    /// by its pid file, and starts none beside it.
    pub(super) fn init_script(&self, service: &str) -> String {
        INIT_SCRIPT
            .replace("@SERVICE@", service)
            .replace("@QDIR@", &sh_quote(&self.root().display().to_string()))
            .replace("@DIR@", &self.root().display().to_string())
    }

    /// Starts supervisord on its config and waits for its socket.
    pub(super) fn start_supervisord(&self) -> Result<(), HostError> {
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
}

/// Why supervisord's config cannot carry a value as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigUnsafe {
    /// A newline or carriage return: supervisord's ini reader knows none in a value.
    #[error("a newline cannot be in supervisord's config")]
    Newline,
    /// `" ;"`, `" #"` (or with a tab): the ini reader cuts the line there.
    #[error("{comment:?} would start a comment in supervisord's config, cutting the rest")]
    Comment {
        /// The comment character, `;` or `#`.
        comment: &'static str,
    },
    /// An environment value with both `"` and `'`.
    #[error("an environment value cannot hold both kinds of quote in supervisord's config")]
    BothQuotes,
}

/// Whether supervisord's config can carry `value` as written: its ini
/// reader cuts a line at " ;" or " #" (a comment) and knows no newline in
/// a value; an environment value may hold one kind of quote, not both.
pub fn config_safe(value: &str, quoted: bool) -> Result<(), ConfigUnsafe> {
    if value.contains('\n') || value.contains('\r') {
        return Err(ConfigUnsafe::Newline);
    }
    if let Some(at) = [" ;", " #", "\t;", "\t#"].iter().find(|c| value.contains(**c)) {
        return Err(ConfigUnsafe::Comment { comment: at.trim() });
    }
    if quoted && value.contains('"') && value.contains('\'') {
        return Err(ConfigUnsafe::BothQuotes);
    }
    Ok(())
}

/// An environment value as supervisord's `environment=` reads it.
pub(super) fn env_value(v: &str) -> String {
    let v = v.replace('%', "%%");
    if v.contains('"') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
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

/// `config/active/env` of the release in `dir`: `KEY=VALUE` lines (`#`
/// comments; none when the file is not there).
pub(super) fn env_file(dir: &Path) -> Result<BTreeMap<String, String>, HostError> {
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

/// Writes `bytes` to `path` (atomically, with permission bits `mode`)
/// unless it holds them already; a file that does but has other bits (one
/// an older ferry wrote 0644) gets `mode`.
pub(super) fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, HostError> {
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

/// The init script, with `@SERVICE@`, `@DIR@` (in comments) and `@QDIR@`
/// (the deploy directory, quoted for sh) to fill in.
const INIT_SCRIPT: &str = include_str!("init.d.sh");

/// `s` in single quotes, for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Files that hold the programs' environment (secrets, often): the deploy
/// user's alone.
pub(super) const PRIVATE: u32 = 0o600;
