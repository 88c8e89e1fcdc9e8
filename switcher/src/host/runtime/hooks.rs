//! Hooks run in a release (bounded, in a process group of their own, their
//! output kept), and the programs' logs read through supervisord.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_formats::journal::{Action, Record};
use ferry_formats::ReleaseId;
use serde::{Deserialize, Serialize};

use super::runtime;
use super::setup::env_file;
use crate::host::{Host, HostError};

/// Which hook: where in a push it runs. Written `migrate`, `before_flip`,
/// `after_flip` (the keys of ferry.toml's `[hooks]`), on the agent's wire
/// and in a report's `hooks[].name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// Once per push, on one host, before any flip; recorded in the
    /// host's journal (a rollback past it is warned about).
    Migrate,
    /// On each host, before its flip.
    BeforeFlip,
    /// On each host, after its flip and restart.
    AfterFlip,
    /// `ferry exec`: a command run by hand in the current release.
    Exec,
}

impl HookKind {
    /// The hook's name, as ferry.toml's `[hooks]` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Migrate => "migrate",
            HookKind::BeforeFlip => "before_flip",
            HookKind::AfterFlip => "after_flip",
            HookKind::Exec => "exec",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Host {
    /// Runs hook `kind` (`sh -c command`) in release `id` (staged or live)
    /// with its environment's `config/active/env`, `FERRY_RELEASE` and
    /// `FERRY_DEPLOY_TO`; kills it (and its children) after `timeout`.
    pub fn run_hook(
        &self,
        id: &ReleaseId,
        kind: HookKind,
        command: &str,
        timeout: Duration,
    ) -> Result<HookRun, HostError> {
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
            run_bounded(sh, timeout).map_err(|e| HostError::Input(format!("hook {kind}: cannot run sh: {e}")))?;
        let lines: Vec<&str> = output.lines().collect();
        let output = lines[lines.len().saturating_sub(200)..].join("\n");
        let run = HookRun {
            name: kind,
            exit: status.and_then(|s| s.code()),
            timed_out: status.is_none(),
            seconds: start.elapsed().as_secs_f64(),
            output,
        };
        if let HookKind::Migrate = kind {
            // A later rollback past this release is warned about.
            let mut record = Record::now(crate::host::whoami(), Action::Migrate, self.current()?, Some(*id));
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
}

/// What a hook did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRun {
    /// Which hook it was (its name in the JSON).
    pub name: HookKind,
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

#[cfg(test)]
mod tests {
    use super::HookKind;

    #[test]
    fn hook_kinds_are_written_as_ferry_toml_names_them() {
        for (kind, name) in
            [(HookKind::Migrate, "migrate"), (HookKind::BeforeFlip, "before_flip"), (HookKind::AfterFlip, "after_flip")]
        {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<HookKind>(&format!("\"{name}\"")).unwrap(), kind);
            assert_eq!(kind.to_string(), name);
        }
    }
}
