//! supervisord, driven through its XML-RPC API over its unix socket — the
//! service's own supervisord, whose config `setup` writes to
//! `.ferry/supervisord.conf` and whose socket is `.ferry/supervisor.sock`.
//! No `supervisorctl` output is parsed.
//!
//! The XML-RPC encoding and decoding is the `xmlrpc` crate's; the transport
//! (one HTTP/1.0 POST per call on a fresh connection to the socket) is the
//! few lines here, since the crate speaks HTTP only over TCP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xmlrpc::{Request, Transport, Value};

/// A supervisord reached through its unix socket.
#[derive(Debug, Clone)]
pub struct Supervisor {
    socket: PathBuf,
    timeout: Duration,
}

/// One process as supervisord sees it (`supervisor.getProcessInfo`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// `group:name`, as supervisorctl writes it.
    pub name: String,
    pub group: String,
    /// RUNNING, STARTING, BACKOFF, FATAL, EXITED, STOPPED…
    pub state: ProcessState,
    pub pid: u32,
    /// Seconds since the epoch it was started (0 if never).
    pub start: i64,
    /// What supervisord says of it ("pid 4711, uptime 0:00:03", "Exited too quickly").
    pub description: String,
    /// Why supervisord could not spawn it, in its own words ("can't find
    /// command '/srv/hello/current/venv/bin/gunicorn'"); empty when it could.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spawnerr: String,
}

/// A process's state, as supervisord names it (`statename`), and as
/// ferry's JSON and messages write it: the same uppercase word.
///
/// A name supervisord does not document (a newer supervisord's) reads as
/// [`ProcessState::Unknown`], supervisord's own state for a process it
/// cannot tell about: not running, like a stopped one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProcessState {
    /// Stopped, or never started.
    Stopped,
    /// Started, not yet up for its `startsecs`.
    Starting,
    /// Up past its `startsecs`.
    Running,
    /// It exited while starting; supervisord will try again.
    Backoff,
    /// Being stopped.
    Stopping,
    /// It exited after it was up.
    Exited,
    /// It could not be started, and supervisord gave up.
    Fatal,
    /// Any other name.
    #[serde(other)]
    Unknown,
}

impl ProcessState {
    /// supervisord's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Stopped => "STOPPED",
            ProcessState::Starting => "STARTING",
            ProcessState::Running => "RUNNING",
            ProcessState::Backoff => "BACKOFF",
            ProcessState::Stopping => "STOPPING",
            ProcessState::Exited => "EXITED",
            ProcessState::Fatal => "FATAL",
            ProcessState::Unknown => "UNKNOWN",
        }
    }

    /// The state supervisord's `name` stands for; a name it does not
    /// document is [`ProcessState::Unknown`].
    pub fn from_name(name: &str) -> Self {
        match name {
            "STOPPED" => ProcessState::Stopped,
            "STARTING" => ProcessState::Starting,
            "RUNNING" => ProcessState::Running,
            "BACKOFF" => ProcessState::Backoff,
            "STOPPING" => ProcessState::Stopping,
            "EXITED" => ProcessState::Exited,
            "FATAL" => ProcessState::Fatal,
            _ => ProcessState::Unknown,
        }
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A supervisord call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("supervisord is not answering on {socket}: {source}")]
    Unreachable { socket: PathBuf, source: std::io::Error },
    /// `fault`: supervisord's faultCode, when the call failed with an XML-RPC fault.
    #[error("supervisord at {socket}: {method} failed: {message}")]
    Call { socket: PathBuf, method: String, fault: Option<Fault>, message: String },
}

/// The faultCodes of supervisord's XML-RPC interface (`supervisor.xmlrpc.Faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    UnknownMethod,
    IncorrectParameters,
    BadArguments,
    SignatureUnsupported,
    ShutdownState,
    BadName,
    BadSignal,
    NoFile,
    NotExecutable,
    Failed,
    AbnormalTermination,
    SpawnError,
    AlreadyStarted,
    NotRunning,
    Success,
    AlreadyAdded,
    StillRunning,
    CantReread,
    /// A code this list does not know.
    Other(i32),
}

impl Fault {
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::UnknownMethod,
            2 => Self::IncorrectParameters,
            3 => Self::BadArguments,
            4 => Self::SignatureUnsupported,
            6 => Self::ShutdownState,
            10 => Self::BadName,
            11 => Self::BadSignal,
            20 => Self::NoFile,
            21 => Self::NotExecutable,
            30 => Self::Failed,
            40 => Self::AbnormalTermination,
            50 => Self::SpawnError,
            60 => Self::AlreadyStarted,
            70 => Self::NotRunning,
            80 => Self::Success,
            90 => Self::AlreadyAdded,
            91 => Self::StillRunning,
            92 => Self::CantReread,
            other => Self::Other(other),
        }
    }
}

struct Socket<'a> {
    path: &'a Path,
    timeout: Duration,
}

impl Transport for Socket<'_> {
    type Stream = std::io::Cursor<Vec<u8>>;

    fn transmit(self, request: &Request<'_>) -> Result<Self::Stream, Box<dyn std::error::Error + Send + Sync>> {
        let mut body = Vec::new();
        request.write_as_xml(&mut body)?;
        let mut stream = UnixStream::connect(self.path)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let head = format!(
            "POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nUser-Agent: ferry\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split =
            response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("supervisord's answer has no end of headers")?;
        let status = response[..split].split(|b| *b == b'\n').next().unwrap_or_default();
        let status = String::from_utf8_lossy(status);
        if !status.contains(" 200") {
            return Err(format!("supervisord answered {}", status.trim()).into());
        }
        Ok(std::io::Cursor::new(response.split_off(split + 4)))
    }
}

impl Supervisor {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: Duration::from_secs(30) }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, SupervisorError> {
        let mut request = Request::new(method);
        for arg in args {
            request = request.arg(arg);
        }
        request.call(Socket { path: &self.socket, timeout: self.timeout }).map_err(|e| {
            let message = e.to_string();
            // Nothing listening is its own case: supervisord is not running.
            match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
                Some(io)
                    if matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
                {
                    SupervisorError::Unreachable {
                        socket: self.socket.clone(),
                        source: std::io::Error::new(io.kind(), message),
                    }
                }
                _ => SupervisorError::Call {
                    socket: self.socket.clone(),
                    method: method.to_owned(),
                    fault: e.fault().map(|f| Fault::from_code(f.fault_code)),
                    message,
                },
            }
        })
    }

    /// Whether supervisord answers at all.
    pub fn is_running(&self) -> bool {
        self.call("supervisor.getPID", vec![]).is_ok()
    }

    pub fn processes(&self) -> Result<Vec<ProcessInfo>, SupervisorError> {
        match self.call("supervisor.getAllProcessInfo", vec![])? {
            Value::Array(items) => Ok(items.iter().map(process_info).collect()),
            other => Err(self.odd("supervisor.getAllProcessInfo", &other)),
        }
    }

    pub fn process(&self, name: &str) -> Result<ProcessInfo, SupervisorError> {
        let value = self.call("supervisor.getProcessInfo", vec![Value::from(name)])?;
        Ok(process_info(&value))
    }

    /// Stops every process of `group` and waits (up to `within`) until
    /// none runs. supervisord is asked not to wait itself: it answers a
    /// waiting stop only on a later turn of its 1 s main loop, while a
    /// question each 50 ms wakes it at once.
    pub fn stop_group(&self, group: &str, within: Duration) -> Result<(), SupervisorError> {
        match self.call("supervisor.stopProcessGroup", vec![Value::from(group), Value::Bool(false)]) {
            Ok(_) => {}
            // Already stopped is what we wanted.
            Err(SupervisorError::Call { fault: Some(Fault::NotRunning), .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let up: Vec<ProcessInfo> = self
                .processes()?
                .into_iter()
                .filter(|p| {
                    p.group == group
                        && matches!(
                            p.state,
                            ProcessState::Running
                                | ProcessState::Stopping
                                | ProcessState::Starting
                                | ProcessState::Backoff
                        )
                })
                .collect();
            if up.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let names: Vec<String> = up.iter().map(|p| format!("{} ({})", p.name, p.state)).collect();
                return Err(SupervisorError::Call {
                    socket: self.socket.clone(),
                    method: "supervisor.stopProcessGroup".into(),
                    fault: None,
                    message: format!("still not stopped after {} s: {}", within.as_secs(), names.join(", ")),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts every process of `group`, not waiting for them: the caller
    /// watches their states (so a crash loop is seen, with its log).
    pub fn start_group(&self, group: &str) -> Result<(), SupervisorError> {
        match self.call("supervisor.startProcessGroup", vec![Value::from(group), Value::Bool(false)]) {
            Ok(_) => Ok(()),
            Err(SupervisorError::Call { fault: Some(Fault::AlreadyStarted), .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` (HUP, USR2…) to every process of `group`.
    pub fn signal_group(&self, group: &str, signal: &str) -> Result<(), SupervisorError> {
        self.call("supervisor.signalProcessGroup", vec![Value::from(group), Value::from(signal)]).map(drop)
    }

    /// Re-reads the config file and adds, removes or restarts groups whose
    /// config changed (what `supervisorctl update` does).
    pub fn update(&self) -> Result<(), SupervisorError> {
        let value = self.call("supervisor.reloadConfig", vec![])?;
        // [[added, changed, removed]]
        let lists = |i: usize| -> Vec<String> {
            value
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_array)
                .and_then(|a| a.get(i))
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let (added, changed, removed) = (lists(0), lists(1), lists(2));
        for group in removed.iter().chain(&changed) {
            self.stop_group(group, Duration::from_secs(60))?;
            self.call("supervisor.removeProcessGroup", vec![Value::from(group.as_str())])?;
        }
        for group in added.iter().chain(&changed) {
            self.call("supervisor.addProcessGroup", vec![Value::from(group.as_str())])?;
        }
        Ok(())
    }

    /// The last `bytes` of a process's stdout (or stderr) log: read from
    /// offset 0, supervisord moves the window to the log's end.
    pub fn tail(&self, name: &str, bytes: i32, stderr: bool) -> Result<(String, i64), SupervisorError> {
        self.read_log(name, 0, bytes, stderr)
    }

    /// A process's stdout (or stderr) log from `offset`, at most `bytes`.
    pub fn read_log(
        &self,
        name: &str,
        offset: i64,
        bytes: i32,
        stderr: bool,
    ) -> Result<(String, i64), SupervisorError> {
        let method = if stderr { "supervisor.tailProcessStderrLog" } else { "supervisor.tailProcessStdoutLog" };
        let value = self.call(
            method,
            vec![Value::from(name), Value::Int(i32::try_from(offset).unwrap_or(i32::MAX)), Value::Int(bytes)],
        )?;
        let text = value.as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or_default().to_owned();
        let offset = value.as_array().and_then(|a| a.get(1)).and_then(Value::as_i64).unwrap_or(offset);
        Ok((text, offset))
    }

    /// Stops supervisord itself (and so every program).
    pub fn shutdown(&self) -> Result<(), SupervisorError> {
        self.call("supervisor.shutdown", vec![]).map(drop)
    }

    fn odd(&self, method: &str, value: &Value) -> SupervisorError {
        SupervisorError::Call {
            socket: self.socket.clone(),
            method: method.to_owned(),
            fault: None,
            message: format!("an answer of an unexpected shape: {value:?}"),
        }
    }
}

fn process_info(v: &Value) -> ProcessInfo {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let i = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or_default();
    let group = s("group");
    let name = s("name");
    ProcessInfo {
        name: if group.is_empty() || group == name { name.clone() } else { format!("{group}:{name}") },
        group,
        state: ProcessState::from_name(&s("statename")),
        pid: u32::try_from(i("pid")).unwrap_or(0),
        start: i("start"),
        description: s("description"),
        spawnerr: s("spawnerr"),
    }
}

#[cfg(test)]
mod tests {
    use super::{Fault, ProcessState};

    #[test]
    fn fault_codes_are_supervisords_and_an_unknown_one_is_kept() {
        assert_eq!(Fault::from_code(70), Fault::NotRunning);
        assert_eq!(Fault::from_code(60), Fault::AlreadyStarted);
        assert_eq!(Fault::from_code(92), Fault::CantReread);
        assert_eq!(Fault::from_code(5), Fault::Other(5));
    }

    #[test]
    fn states_are_supervisords_words_and_an_unknown_one_reads_as_unknown() {
        for state in [
            ProcessState::Stopped,
            ProcessState::Starting,
            ProcessState::Running,
            ProcessState::Backoff,
            ProcessState::Stopping,
            ProcessState::Exited,
            ProcessState::Fatal,
            ProcessState::Unknown,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(serde_json::from_str::<ProcessState>(&json).unwrap(), state);
            assert_eq!(ProcessState::from_name(state.as_str()), state);
        }
        assert_eq!(ProcessState::from_name("SLEEPING"), ProcessState::Unknown);
        assert_eq!(serde_json::from_str::<ProcessState>("\"SLEEPING\"").unwrap(), ProcessState::Unknown);
    }
}
