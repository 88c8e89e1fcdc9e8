//! The controller's end of an agent session (`ferry host serve`, see
//! `host::serve`): a transport that starts the agent with a command of the
//! caller's choosing and talks the session protocol over its stdin and
//! stdout. Bulk data — a bundle or a delta — goes down the same stream,
//! right after its request. The SSH transport runs this over an exec
//! channel; tests and the benchmark run it over a pipe.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;
use fs_err as fs;
use serde::de::DeserializeOwned;

use std::collections::BTreeMap;
use std::time::Duration;

use super::{HostSpec, Session, Transport};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use crate::host::serve::{Reply, Request};
use crate::host::{Flipped, HostError, Pinned, Pruned, StageOptions, Staged, Status};

/// Starts `ferry host --deploy-to … serve [--lock …]` on a host with the
/// command `start` makes for it (the lock argument is added here).
pub struct Agent<F> {
    start: F,
}

impl<F> std::fmt::Debug for Agent<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agent")
    }
}

impl<F: Fn(&HostSpec) -> Command + Sync> Agent<F> {
    pub fn new(start: F) -> Self {
        Self { start }
    }
}

/// A session over any pair of streams: a child's pipes, or an SSH channel.
pub(crate) struct AgentSession {
    host: String,
    input: Option<Box<dyn Write + Send>>,
    output: Box<dyn BufRead + Send>,
    /// The agent's process, however it is reached.
    agent: Box<dyn Remote>,
    /// Why the streams broke, once they did: a request after that would
    /// wait again, or read a late answer to an earlier one.
    broken: Option<String>,
    /// For the host's report (see [`Session::take_notes`]).
    pub(crate) notes: Vec<String>,
}

/// The far end of a session's streams: the agent's process.
pub(crate) trait Remote: Send {
    /// How the agent ended, once its output has ended or broken: its exit
    /// status or signal, and its last words on stderr when they can be had.
    fn ended(&mut self) -> String;
    /// Waits for the agent to go, once its input is closed.
    fn close(&mut self);
}

/// A child process on this machine (its stderr is this process's).
struct Child(std::process::Child);

impl Remote for Child {
    fn ended(&mut self) -> String {
        // A broken pipe comes a moment before the exit status can be had.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return format!("the agent ended ({status})"),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(None) => return "the agent is still running".into(),
                Err(e) => return format!("its status is unknown: {e}"),
            }
        }
    }

    fn close(&mut self) {
        drop(self.0.wait());
    }
}

impl<F: Fn(&HostSpec) -> Command + Sync> Transport for Agent<F> {
    fn connect(&self, spec: &HostSpec, lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        let mut command = (self.start)(spec);
        if let Some(lock) = lock {
            command.arg("--lock").arg(lock);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| remote(&spec.name, format!("cannot start the agent ({command:?}): {e}")))?;
        let input: ChildStdin = child.stdin.take().expect("stdin is piped");
        let output: ChildStdout = child.stdout.take().expect("stdout is piped");
        let session = AgentSession::open(&spec.name, Box::new(input), Box::new(output), Box::new(Child(child)))?;
        Ok(Box::new(session))
    }
}

fn remote(host: &str, message: impl std::fmt::Display) -> HostError {
    HostError::Link(format!("{host}: {message}"))
}

impl AgentSession {
    /// Opens a session on these streams: reads the agent's greeting (or the
    /// error it opened with, such as its host's lock) and checks that the
    /// agent is this very version of ferry.
    pub(crate) fn open(
        host: &str,
        input: Box<dyn Write + Send>,
        output: Box<dyn Read + Send>,
        agent: Box<dyn Remote>,
    ) -> Result<Self, HostError> {
        let mut session = AgentSession {
            host: host.to_owned(),
            input: Some(Box::new(io::BufWriter::with_capacity(1 << 18, input))),
            output: Box::new(BufReader::new(output)),
            agent,
            broken: None,
            notes: Vec::new(),
        };
        #[derive(serde::Deserialize)]
        struct Hello {
            ferry: String,
        }
        let hello: Hello = session.reply()?;
        if hello.ferry != env!("CARGO_PKG_VERSION") {
            return Err(remote(
                host,
                format!(
                    "the agent there is ferry {}, this is ferry {}: the two must be the same version",
                    hello.ferry,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        Ok(session)
    }

    /// The error for a session whose streams ended or broke: what the agent
    /// said as it went, when it went.
    fn lost(&mut self, what: &str, e: impl std::fmt::Display) -> HostError {
        let ended = self.agent.ended();
        let why = format!("the agent session broke while {what}: {e}; {ended}");
        self.broken = Some(why.clone());
        remote(&self.host, why)
    }

    fn send(&mut self, request: &Request, payload: Option<&mut dyn Read>) -> Result<(), HostError> {
        if let Some(why) = &self.broken {
            return Err(remote(&self.host, format!("not asked again: {why}")));
        }
        let mut line = serde_json::to_string(request).expect("requests serialize");
        line.push('\n');
        let input = self.input.as_mut().expect("open until dropped");
        let sent = input.write_all(line.as_bytes()).and_then(|()| match payload {
            Some(p) => io::copy(p, input).map(drop),
            None => Ok(()),
        });
        sent.and_then(|()| input.flush()).map_err(|e| self.lost("sending", e))
    }

    /// The next reply's value, or its error as the host said it.
    fn reply<T: DeserializeOwned>(&mut self) -> Result<T, HostError> {
        let mut line = String::new();
        match self.output.read_line(&mut line) {
            Ok(0) => return Err(self.lost("waiting for a reply", "its output ended")),
            Ok(_) => {}
            Err(e) => return Err(self.lost("waiting for a reply", e)),
        }
        let garbled = |e| format!("the agent's reply is not understood: {e}: {:?}", line.trim_end());
        // Out of step with its requests: nothing more is asked of it.
        let reply: Reply = match serde_json::from_str(&line) {
            Ok(reply) => reply,
            Err(e) => {
                let why = garbled(e);
                self.broken = Some(why.clone());
                return Err(remote(&self.host, why));
            }
        };
        let garbled = |e| remote(&self.host, garbled(e));
        match (reply.ok, reply.error) {
            (true, _) => serde_json::from_value(reply.value).map_err(garbled),
            // The host's error comes back of its kind (a missing base, a
            // refused delta, a lock held), not as any string.
            (false, error) => Err(HostError::Remote {
                kind: reply.kind.unwrap_or(crate::host::ErrorKind::Input),
                message: error.unwrap_or_else(|| "the agent failed".into()),
            }),
        }
    }

    fn call<T: DeserializeOwned>(&mut self, request: Request) -> Result<T, HostError> {
        self.send(&request, None)?;
        self.reply()
    }
}

impl Session for AgentSession {
    fn status(&mut self) -> Result<Status, HostError> {
        self.call(Request::Status)
    }

    fn stage(&mut self, payload: &Path, opts: &StageOptions, signature: Option<&str>) -> Result<Staged, HostError> {
        let mut file = fs::File::open(payload).map_err(HostError::Fs)?;
        let len = file.metadata().map_err(HostError::Fs)?.len();
        let signature = signature.map(str::to_owned);
        self.send(&Request::Stage { len, options: opts.clone(), signature }, Some(&mut file))?;
        self.reply()
    }

    fn stage_fetched(
        &mut self,
        fetch: &crate::host::fetch::Fetch,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        let crate::host::fetch::Fetch { url, blake3, len } = fetch.clone();
        let signature = signature.map(str::to_owned);
        self.call(Request::Fetch { url, blake3, len, options: opts.clone(), signature })
    }

    fn pin_keys(&mut self, keys: &[String], replace: bool) -> Result<Pinned, HostError> {
        self.call(Request::Trust { keys: keys.to_vec(), replace })
    }

    fn activate(&mut self, id: &ReleaseId, opts: &StageOptions) -> Result<Flipped, HostError> {
        self.call(Request::Activate { id: *id, options: opts.clone() })
    }

    fn rollback(&mut self, to: Option<&ReleaseId>) -> Result<Flipped, HostError> {
        self.call(Request::Rollback { to: to.copied(), reason: None })
    }

    fn prune(&mut self, keep: usize) -> Result<Pruned, HostError> {
        self.call(Request::Prune { keep })
    }

    fn signature(&mut self) -> Result<Signature, HostError> {
        #[derive(serde::Deserialize)]
        struct Len {
            len: u64,
        }
        let Len { len } = self.call(Request::Signature)?;
        let mut bytes = (&mut self.output).take(len);
        Signature::read(&mut bytes, len).map_err(|e| remote(&self.host, format!("its signature is unreadable: {e}")))
    }

    fn journal(&mut self) -> Result<Vec<Record>, HostError> {
        self.journal_records()
    }

    fn revert(&mut self, to: &ReleaseId, reason: &str) -> Result<Flipped, HostError> {
        self.call(Request::Rollback { to: Some(*to), reason: Some(reason.to_owned()) })
    }

    fn restart(&mut self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.call(Request::Restart { id: *id })
    }

    fn listeners(&mut self, port: u16) -> Result<Vec<PortHolder>, HostError> {
        self.call(Request::Listeners { port })
    }

    fn setup(&mut self, service: &str, programs: &[Program]) -> Result<SetUp, HostError> {
        self.call(Request::Setup { service: service.to_owned(), programs: programs.to_vec() })
    }

    fn install(&mut self, service: &str) -> Result<Installed, HostError> {
        self.call(Request::Install { service: service.to_owned() })
    }

    fn hook(&mut self, id: &ReleaseId, kind: HookKind, command: &str, timeout: Duration) -> Result<HookRun, HostError> {
        self.call(Request::Hook {
            id: *id,
            name: kind,
            command: command.to_owned(),
            timeout_secs: timeout.as_secs().max(1),
        })
    }

    fn logs(
        &mut self,
        program: Option<&str>,
        offsets: &BTreeMap<String, i64>,
        bytes: i32,
    ) -> Result<Vec<LogChunk>, HostError> {
        self.call(Request::Logs { program: program.map(str::to_owned), offsets: offsets.clone(), bytes })
    }

    fn admin_socket(&mut self, socket: &Path, command: &str) -> Result<String, HostError> {
        self.call(Request::AdminSocket { socket: socket.to_owned(), command: command.to_owned() })
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

impl AgentSession {
    fn journal_records(&mut self) -> Result<Vec<Record>, HostError> {
        self.call(Request::Journal)
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        // End of input ends the session; the agent releases the lock and exits.
        drop(self.input.take());
        self.agent.close();
    }
}
