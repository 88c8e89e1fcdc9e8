//! The agent's exec channel: the command that starts `ferry host serve`
//! (or says it is missing), and one-off commands on the host.

use std::io::{BufRead, Read, Write};

use super::refused;
use crate::fleet::agent::{AgentSession, Remote};
use crate::host::HostError;

/// What the first command says when the agent is not on the host yet.
pub(super) const NO_AGENT: &str = "ferry-no-agent";

pub(super) enum Started {
    Session(Box<AgentSession>),
    /// The host lacks the agent; this is what it says it runs (see
    /// [`super::upload::PROBE`]).
    NoAgent(String),
}

/// Runs `command` in an exec channel and opens the agent session on it,
/// unless the command's first line says the agent is missing.
pub(super) fn start(
    session: &ssh2::Session,
    host: &str,
    agent_path: &str,
    command: &str,
) -> Result<Started, HostError> {
    let mut channel = session.channel_session().map_err(|e| refused(host, e))?;
    channel.exec(command).map_err(|e| refused(host, format!("cannot run the agent: {e}")))?;
    let mut output = std::io::BufReader::new(channel.stream(0));
    let mut first = String::new();
    let mut agent = Exec { session: session.clone(), channel: channel.clone() };
    match output.read_line(&mut first) {
        Ok(0) => {
            let ended = agent.ended();
            return Err(refused(host, format!("the agent {agent_path} did not start: {ended}")));
        }
        Ok(_) => {}
        Err(e) => {
            let ended = agent.ended();
            return Err(refused(host, format!("the agent {agent_path} did not start: {e}; {ended}")));
        }
    }
    if let Some(uname) = first.strip_prefix(NO_AGENT) {
        agent.close();
        return Ok(Started::NoAgent(uname.trim().to_owned()));
    }
    let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(first.into_bytes()).chain(output));
    let writer: Box<dyn Write + Send> = Box::new(channel.stream(0));
    Ok(Started::Session(Box::new(AgentSession::open(host, writer, reader, Box::new(agent))?)))
}

/// The agent's exec channel.
struct Exec {
    session: ssh2::Session,
    channel: ssh2::Channel,
}

impl Remote for Exec {
    fn ended(&mut self) -> String {
        // A host gone quiet must not hold the report up; the session's own
        // timeout comes back after (the session may go on to other channels).
        let timeout = self.session.timeout();
        self.session.set_timeout(2_000);
        let mut words = Vec::new();
        let _ = self.channel.stderr().take(64 << 10).read_to_end(&mut words);
        let closed = self.channel.wait_close();
        self.session.set_timeout(timeout);
        let how = match closed {
            Err(_) => "the agent is still running, or the host stopped answering (no end within 2 s)".to_owned(),
            Ok(()) => match (self.channel.exit_signal().ok().and_then(|s| s.exit_signal), self.channel.exit_status()) {
                (Some(signal), _) => format!("the agent was killed by SIG{signal}"),
                (None, Ok(code)) => format!("the agent exited with status {code}"),
                (None, Err(e)) => format!("the agent ended, its status unknown: {e}"),
            },
        };
        let words = String::from_utf8_lossy(&words);
        let last: Vec<&str> = words.lines().filter(|l| !l.trim().is_empty()).collect();
        match last.len() {
            0 => how,
            n => format!("{how}, saying: {}", last[n.saturating_sub(5)..].join(" / ")),
        }
    }

    fn close(&mut self) {
        // A host gone quiet must not hold the push up for a step timeout;
        // the session's own timeout comes back after.
        let timeout = self.session.timeout();
        self.session.set_timeout(5_000);
        let _ = self.channel.send_eof();
        let _ = self.channel.wait_close();
        self.session.set_timeout(timeout);
    }
}

/// Runs `command` on the host and returns its exit status and stdout, with
/// `input` on its stdin.
pub(super) fn exec(
    session: &ssh2::Session,
    host: &str,
    command: &str,
    input: Option<&mut dyn Read>,
) -> Result<(i32, String), HostError> {
    exec_shown(session, host, command, command, input)
}

/// [`exec`], naming the command `shown` in its errors (a command that holds
/// a secret, such as a presigned URL, is not repeated in reports).
pub(super) fn exec_shown(
    session: &ssh2::Session,
    host: &str,
    command: &str,
    shown: &str,
    input: Option<&mut dyn Read>,
) -> Result<(i32, String), HostError> {
    let failed = |e: &dyn std::fmt::Display| refused(host, format!("`{shown}` failed: {e}"));
    let mut channel = session.channel_session().map_err(|e| failed(&e))?;
    channel.exec(command).map_err(|e| failed(&e))?;
    if let Some(input) = input {
        std::io::copy(input, &mut channel).map_err(|e| failed(&e))?;
    }
    channel.send_eof().map_err(|e| failed(&e))?;
    let mut out = String::new();
    channel.read_to_string(&mut out).map_err(|e| failed(&e))?;
    channel.wait_close().map_err(|e| failed(&e))?;
    Ok((channel.exit_status().map_err(|e| failed(&e))?, out))
}
