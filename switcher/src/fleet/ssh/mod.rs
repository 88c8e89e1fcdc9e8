//! The `ssh` transport: one SSH connection per host (ssh2), its key checked
//! against known_hosts, and the agent session (`ferry host serve`) run in an
//! exec channel — bundles and deltas go down that channel, not over SFTP.

mod exec;
mod image;
mod jump;
mod known_hosts;
mod target;
mod upload;

use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ssh2_config::SshConfig;

use super::{HostSpec, Session, Transport};
use crate::host::HostError;
use exec::{start, Started, NO_AGENT};
pub use image::{agent_info, AgentInfo};
use jump::pump;
use known_hosts::known_key_types;
use target::Target;
pub use target::{read_ssh_config, SshConfigError};
use upload::{agent_path, fetch_agent, upload_agent, PROBE};

/// How to reach hosts over SSH.
#[derive(Debug, Clone)]
pub struct Ssh {
    /// The known_hosts file host keys are checked against.
    pub known_hosts: PathBuf,
    /// Accept and record a host that known_hosts does not list yet.
    pub accept_new: bool,
    /// The private key to offer; without one, the SSH agent's keys.
    pub identity: Option<PathBuf>,
    /// The user when a host's name does not say one. Without it: the ssh
    /// config's `User`, else `$USER`.
    pub user: Option<String>,
    /// The agent on the hosts.
    pub ferry: AgentBinary,
    pub connect_timeout: Duration,
    /// For each read or write on the connection.
    pub step_timeout: Duration,
    /// The user's ssh config (`~/.ssh/config`), parsed: Host aliases,
    /// HostName, User, Port, IdentityFile and ConnectTimeout are honoured.
    pub ssh_config: Option<SshConfig>,
}

/// Where the agent comes from on a host.
#[derive(Debug, Clone)]
pub enum AgentBinary {
    /// A `ferry` the host already has (a path, or a name on its PATH).
    OnHost(String),
    /// This agent binary (`ferry-agent`, or any ferry), uploaded gzipped to
    /// `<deploy_to>/.ferry/bin/` unless a copy with the same blake3 is
    /// there, after checking that the host's OS, machine and glibc can run
    /// it.
    Upload(PathBuf),
    /// This agent binary, as [`AgentBinary::Upload`], but a host that lacks
    /// it downloads it gzipped from the object store (`fetch = "store"`)
    /// with its own curl or wget, and it takes its name only once it ran
    /// and said its hash; a host that cannot is sent it over SSH, and its
    /// report says why.
    Fetch(PathBuf, AgentStore),
}

/// Puts the gzipped agent in an object store the hosts reach and signs a
/// short-lived URL for it, once per run (every host that lacks the agent
/// gets the same URL).
#[derive(Clone)]
pub struct AgentStore {
    put: Arc<PutAgent>,
    url: Arc<OnceLock<Result<String, String>>>,
}

/// Puts the gzipped agent in the store; its URL, or why not.
type PutAgent = dyn Fn(&[u8]) -> Result<String, String> + Send + Sync;

impl std::fmt::Debug for AgentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentStore")
    }
}

impl AgentStore {
    /// `put` stores the gzipped agent it is given (under a key named by its
    /// content) and returns a GET URL for it, or says why it cannot.
    pub fn new(put: impl Fn(&[u8]) -> Result<String, String> + Send + Sync + 'static) -> Self {
        AgentStore { put: Arc::new(put), url: Arc::new(OnceLock::new()) }
    }

    /// The URL of `gz` in the store, put there on the first call.
    fn url(&self, gz: &[u8]) -> Result<String, String> {
        self.url.get_or_init(|| (self.put)(gz)).clone()
    }
}

fn refused(host: &str, message: impl std::fmt::Display) -> HostError {
    HostError::Link(format!("{host}: {message}"))
}

impl Transport for Ssh {
    fn connect(&self, spec: &HostSpec, lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        let (session, _) = self.open(&spec.name, None, 0)?;
        let mut serve = format!("host --deploy-to {} serve", quote(&spec.deploy_to.to_string_lossy()));
        if let Some(lock) = lock {
            serve.push_str(&format!(" --lock {}", quote(lock)));
        }
        match &self.ferry {
            AgentBinary::OnHost(path) => {
                match start(&session, &spec.name, path, &format!("exec {} {serve}", quote(path)))? {
                    Started::Session(s) => Ok(s as Box<dyn Session>),
                    Started::NoAgent(what) => {
                        Err(refused(&spec.name, format!("the agent {path} said {what:?}, not hello")))
                    }
                }
            }
            AgentBinary::Upload(local) | AgentBinary::Fetch(local, _) => {
                // One exec channel in the usual case: the agent is there
                // (its name is its hash), or the host says what it runs.
                let path = agent_path(spec, local)?;
                let first = format!(
                    "p={path}; if [ -x \"$p\" ]; then exec \"$p\" {serve}; fi; echo {NO_AGENT} {PROBE}",
                    path = quote(&path)
                );
                match start(&session, &spec.name, &path, &first)? {
                    Started::Session(s) => Ok(s as Box<dyn Session>),
                    Started::NoAgent(said) => {
                        let note = self.deliver(&session, spec, local, &path, &said)?;
                        match start(&session, &spec.name, &path, &format!("exec {} {serve}", quote(&path)))? {
                            Started::Session(mut s) => {
                                s.notes.extend(note);
                                Ok(s as Box<dyn Session>)
                            }
                            Started::NoAgent(what) => {
                                Err(refused(&spec.name, format!("the uploaded agent {path} said {what:?}, not hello")))
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Ssh {
    /// Gets the agent at `local` to `path` on a host that lacks it (and said
    /// `said`): from the store when the stage has hosts fetch from one and
    /// this host can, else over SSH. The line for the host's report, if any.
    fn deliver(
        &self,
        session: &ssh2::Session,
        spec: &HostSpec,
        local: &std::path::Path,
        path: &str,
        said: &str,
    ) -> Result<Option<String>, HostError> {
        if let AgentBinary::Fetch(_, store) = &self.ferry {
            match fetch_agent(session, spec, local, path, said, store)? {
                Ok(tool) => return Ok(Some(format!("the agent came from the store ({tool} on the host)"))),
                Err(why) => {
                    upload_agent(session, spec, local, path, said)?;
                    return Ok(Some(format!("the agent could not come from the store ({why}); sent it over SSH")));
                }
            }
        }
        upload_agent(session, spec, local, path, said)?;
        Ok(None)
    }

    /// An authenticated session with the host `name`, through its ProxyJump
    /// hosts: `jumps` when given (the hops before this one in a chain), else
    /// the ssh config's. As OpenSSH does, a chain `a,b` reaches the target
    /// through `b`, and `b` through `a`.
    ///
    /// Returns the session and its socket (a copy of the descriptor), to
    /// wait on when the session is a bastion's.
    fn open(&self, name: &str, jumps: Option<&[String]>, depth: usize) -> Result<(ssh2::Session, OwnedFd), HostError> {
        let target = self.target(name)?;
        let Target { user, host, port, identity, connect_timeout, .. } = &target;
        let (user, host, port, connect_timeout) = (user.as_str(), host.as_str(), *port, *connect_timeout);
        let jumps = jumps.unwrap_or(&target.jumps);
        let mut session = ssh2::Session::new().map_err(|e| refused(name, e))?;
        let socket: OwnedFd;
        match jumps.split_last() {
            Some(_) if depth >= 8 => {
                return Err(refused(name, "more than 8 ProxyJump hops: is the ssh config a loop?"))
            }
            Some((jump, before)) => {
                let (bastion, link) = self
                    .open(jump, (!before.is_empty()).then_some(before), depth + 1)
                    .map_err(|e| refused(name, format!("cannot reach it through {jump}: {e}")))?;
                let channel = bastion
                    .channel_direct_tcpip(host, port, None)
                    .map_err(|e| refused(name, format!("{jump} cannot open a connection to {host}:{port}: {e}")))?;
                let (ours, theirs) = UnixStream::pair().map_err(|e| refused(name, e))?;
                std::thread::spawn(move || pump(bastion, link, channel, theirs));
                socket = ours.try_clone().map_err(|e| refused(name, e))?.into();
                session.set_tcp_stream(ours);
            }
            None => {
                let addr = (host, port)
                    .to_socket_addrs()
                    .map_err(|e| refused(name, format!("cannot resolve {host}: {e}")))?
                    .next()
                    .ok_or_else(|| refused(name, format!("{host} resolves to no address")))?;
                let tcp = TcpStream::connect_timeout(&addr, connect_timeout)
                    .map_err(|e| refused(name, format!("cannot connect to {addr}: {e}")))?;
                // Without Nagle, the handshake takes one round trip per
                // message, not one delayed ACK (40 ms on Linux) per message.
                let _ = tcp.set_nodelay(true);
                socket = tcp.try_clone().map_err(|e| refused(name, e))?.into();
                session.set_tcp_stream(tcp);
            }
        }
        // Connecting (handshake, key check, auth) is bounded by the connect
        // timeout; every later step by the step timeout.
        session.set_timeout(millis(connect_timeout));
        // Ask for a key of a type known_hosts has for this host, so an old
        // entry of another type is not taken for a changed key.
        let known_types = known_key_types(&self.known_hosts, host, port);
        if !known_types.is_empty() {
            session
                .method_pref(ssh2::MethodType::HostKey, &known_types.join(","))
                .map_err(|e| refused(name, format!("cannot ask for host key types {known_types:?}: {e}")))?;
        }
        session.handshake().map_err(|e| refused(name, format!("SSH handshake failed: {e}")))?;
        self.check_host_key(&session, name, host, port)?;
        match identity {
            Some(key) => session.userauth_pubkey_file(user, None, key, None),
            None => session.userauth_agent(user),
        }
        .map_err(|e| refused(name, format!("authentication as {user} was refused: {e}")))?;
        session.set_timeout(millis(self.step_timeout));
        Ok((session, socket))
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// A word for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
