//! The `ssh` transport: one SSH connection per host (ssh2), its key checked
//! against known_hosts, and the agent session (`ferry host serve`) run in an
//! exec channel — bundles and deltas go down that channel, not over SFTP.

use std::io::{BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use ssh2::{CheckResult, HashType, KnownHostFileKind};
use ssh2_config::{ParseRule, SshConfig};

use super::agent::{AgentSession, Remote};
use super::{HostSpec, Session, Transport};
use crate::host::HostError;

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

/// Reads an ssh config file (OpenSSH's format); `None` when there is none.
pub fn read_ssh_config(path: &std::path::Path) -> Result<Option<SshConfig>, String> {
    let file = match fs_err::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    SshConfig::default()
        .parse(&mut std::io::BufReader::new(file), ParseRule::ALLOW_UNKNOWN_FIELDS)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Where the agent comes from on a host.
#[derive(Debug, Clone)]
pub enum AgentBinary {
    /// A `ferry` the host already has (a path, or a name on its PATH).
    OnHost(String),
    /// This binary, uploaded to `<deploy_to>/.ferry/bin/` unless a copy with
    /// the same blake3 is there, after checking the host's OS and machine.
    Upload(PathBuf),
}

/// `user@host:port`, `host:port`, `user@host` or `host`: what the name
/// itself says. An IPv6 address is bare (`fd00::2`) or, with a port, in
/// brackets (`[fd00::2]:2222`), as OpenSSH writes it.
pub(crate) fn address(name: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (user, rest) = match name.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, name),
    };
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("the port {p:?} is not a number from 0 to 65535"));
    if let Some(bracketed) = rest.strip_prefix('[') {
        let (h, after) = bracketed.split_once(']').ok_or_else(|| "a '[' without its ']'".to_owned())?;
        return match after {
            "" => Ok((user, h.to_owned(), None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((user, h.to_owned(), Some(port(p)?))),
                None => Err("after ']' comes ':PORT' or nothing".to_owned()),
            },
        };
    }
    match rest.rsplit_once(':') {
        // More than one colon and no brackets: an IPv6 address, no port.
        Some((h, _)) if h.contains(':') => Ok((user, rest.to_owned(), None)),
        Some((h, p)) => Ok((user, h.to_owned(), Some(port(p)?))),
        None => Ok((user, rest.to_owned(), None)),
    }
}

/// Where and as whom to connect: the host's name first, then the ssh
/// config's entry for it, then the stage's defaults.
struct Target {
    user: String,
    host: String,
    port: u16,
    identity: Option<PathBuf>,
    connect_timeout: Duration,
    /// The ProxyJump hosts, in the order they are gone through.
    jumps: Vec<String>,
}

impl Ssh {
    fn target(&self, name: &str) -> Result<Target, HostError> {
        let (user, alias, port) = address(name).map_err(|e| refused(name, e))?;
        let params = self.ssh_config.as_ref().map(|c| c.query(&alias));
        let from_config = |f: fn(&ssh2_config::HostParams) -> Option<String>| params.as_ref().and_then(f);
        Ok(Target {
            user: user
                .or_else(|| self.user.clone())
                .or_else(|| from_config(|p| p.user.clone()))
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "root".into()),
            host: from_config(|p| p.host_name.clone()).unwrap_or(alias),
            port: port.or_else(|| params.as_ref().and_then(|p| p.port)).unwrap_or(22),
            identity: self
                .identity
                .clone()
                .or_else(|| params.as_ref().and_then(|p| p.identity_file.as_ref()).and_then(|f| f.first()).cloned()),
            connect_timeout: params.as_ref().and_then(|p| p.connect_timeout).unwrap_or(self.connect_timeout),
            jumps: params
                .as_ref()
                .and_then(|p| p.proxy_jump.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|j| !j.is_empty() && j != "none")
                .collect(),
        })
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
                    Started::Session(s) => Ok(s),
                    Started::NoAgent(what) => {
                        Err(refused(&spec.name, format!("the agent {path} said {what:?}, not hello")))
                    }
                }
            }
            AgentBinary::Upload(local) => {
                // One exec channel in the usual case: the agent is there
                // (its name is its hash), or the host says what it runs.
                let path = agent_path(spec, local)?;
                let first = format!(
                    "p={path}; if [ -x \"$p\" ]; then exec \"$p\" {serve}; fi; echo {NO_AGENT} $(uname -s) $(uname -m)",
                    path = quote(&path)
                );
                match start(&session, &spec.name, &path, &first)? {
                    Started::Session(s) => Ok(s),
                    Started::NoAgent(uname) => {
                        upload_agent(&session, spec, local, &path, &uname)?;
                        match start(&session, &spec.name, &path, &format!("exec {} {serve}", quote(&path)))? {
                            Started::Session(s) => Ok(s),
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

/// What the first command says when the agent is not on the host yet.
const NO_AGENT: &str = "ferry-no-agent";

enum Started {
    Session(Box<dyn Session>),
    /// The host lacks the agent; it runs this `uname -s` and `uname -m`.
    NoAgent(String),
}

/// Runs `command` in an exec channel and opens the agent session on it,
/// unless the command's first line says the agent is missing.
fn start(session: &ssh2::Session, host: &str, agent_path: &str, command: &str) -> Result<Started, HostError> {
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

impl Ssh {
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

    fn check_host_key(&self, session: &ssh2::Session, name: &str, host: &str, port: u16) -> Result<(), HostError> {
        let (key, kind) = session.host_key().ok_or_else(|| refused(name, "the host sent no key"))?;
        let fingerprint = session.host_key_hash(HashType::Sha256).map(base64).unwrap_or_default();
        let mut known = session.known_hosts().map_err(|e| refused(name, e))?;
        if self.known_hosts.exists() {
            known
                .read_file(&self.known_hosts, KnownHostFileKind::OpenSSH)
                .map_err(|e| refused(name, format!("cannot read {}: {e}", self.known_hosts.display())))?;
        }
        match known.check_port(host, port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(refused(
                name,
                format!(
                    "its host key (SHA256:{fingerprint}) is not the one {} has for it: refused; if the host was really re-keyed, remove the old entry",
                    self.known_hosts.display()
                ),
            )),
            CheckResult::NotFound if self.accept_new => {
                let entry = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
                let kind_name = match kind {
                    ssh2::HostKeyType::Rsa => "ssh-rsa",
                    ssh2::HostKeyType::Dss => "ssh-dss",
                    ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
                    ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
                    ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
                    ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
                    ssh2::HostKeyType::Unknown => return Err(refused(name, "its host key is of an unknown type")),
                };
                let line = format!("{entry} {kind_name} {}\n", base64_padded(key));
                append_known_host(&self.known_hosts, &line)
                    .map_err(|e| refused(name, format!("cannot record its key in {}: {e}", self.known_hosts.display())))
            }
            CheckResult::NotFound => Err(refused(
                name,
                format!(
                    "its host key (SHA256:{fingerprint}) is not in {}: refused; check the fingerprint and add it, or allow new keys",
                    self.known_hosts.display()
                ),
            )),
            CheckResult::Failure => Err(refused(name, "the host key could not be checked")),
        }
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Carries a jumped connection: bytes between the bastion's direct-tcpip
/// channel and the socket the target's session runs over, until either
/// side closes. The bastion's session lives as long as this does. Waits in
/// poll(2) on both sockets between bursts, so an idle connection costs
/// nothing.
fn pump(bastion: ssh2::Session, link: OwnedFd, mut channel: ssh2::Channel, mut socket: UnixStream) {
    use rustix::event::{poll, PollFd, PollFlags};

    bastion.set_blocking(false);
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 << 10];
    // Read from one side, not yet written to the other.
    let (mut to_socket, mut to_channel): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let (mut channel_done, mut socket_done) = (false, false);
    loop {
        let mut moved = false;
        // Each way: read when nothing waits to be written, write what waits.
        let ended = channel.eof();
        moved |= match (
            take(&mut channel, &mut buf, &mut to_socket, &mut channel_done, ended),
            give(&mut socket, &mut to_socket),
        ) {
            (Some(a), Some(b)) => a || b,
            _ => return,
        };
        moved |= match (
            take(&mut socket, &mut buf, &mut to_channel, &mut socket_done, true),
            give(&mut channel, &mut to_channel),
        ) {
            (Some(a), Some(b)) => a || b,
            _ => return,
        };
        if channel_done && to_socket.is_empty() {
            return;
        }
        if socket_done && to_channel.is_empty() {
            let _ = channel.send_eof();
            return;
        }
        if !moved {
            // Ask only for what the loop will act on: poll(2) is level-
            // triggered, and a side asked about but not served spins.
            let mut link_wants = PollFlags::empty();
            if to_socket.is_empty() && !channel_done || !to_channel.is_empty() {
                // Data to read, or the window adjust a blocked write awaits.
                link_wants |= PollFlags::IN;
            }
            if matches!(bastion.block_directions(), ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both) {
                link_wants |= PollFlags::OUT;
            }
            let mut socket_wants = PollFlags::empty();
            if to_channel.is_empty() && !socket_done {
                socket_wants |= PollFlags::IN;
            }
            if !to_socket.is_empty() {
                socket_wants |= PollFlags::OUT;
            }
            let mut fds = [PollFd::new(&link, link_wants), PollFd::new(&socket, socket_wants)];
            // A bound on the wait, for data libssh2 holds unread.
            let tick = rustix::time::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
            match poll(&mut fds, Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// One half of the pump's read side: fills `pending` from `from` when it is
/// empty. A read of 0 ends the side when `zero_is_end` (a channel's 0 is
/// only an end with its EOF). Whether bytes moved; `None` when the side broke.
fn take(
    from: &mut dyn Read,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
    done: &mut bool,
    zero_is_end: bool,
) -> Option<bool> {
    if !pending.is_empty() || *done {
        return Some(false);
    }
    match from.read(buf) {
        Ok(0) => {
            *done = zero_is_end;
            Some(false)
        }
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

/// The write side: as much of `pending` as `to` takes now.
fn give(to: &mut dyn Write, pending: &mut Vec<u8>) -> Option<bool> {
    if pending.is_empty() {
        return Some(false);
    }
    match to.write(pending) {
        Ok(n) => {
            pending.drain(..n);
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

/// Runs `command` on the host and returns its exit status and stdout, with
/// `input` on its stdin.
fn exec(
    session: &ssh2::Session,
    host: &str,
    command: &str,
    input: Option<&mut dyn Read>,
) -> Result<(i32, String), HostError> {
    let failed = |e: &dyn std::fmt::Display| refused(host, format!("`{command}` failed: {e}"));
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

/// Where this very agent lives on the host: named by its blake3, so a copy
/// there is this binary (an upload takes the name only once checked).
fn agent_path(spec: &HostSpec, local: &std::path::Path) -> Result<String, HostError> {
    let hash = agent_hash(local)?;
    let dir = spec.deploy_to.to_string_lossy().trim_end_matches('/').to_owned();
    Ok(format!("{dir}/.ferry/bin/ferry-{}", &hash[..16]))
}

/// The blake3 of a binary, hashed once per process.
fn agent_hash(local: &std::path::Path) -> Result<String, HostError> {
    static HASHES: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut hashes = HASHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, hash)) = hashes.iter().find(|(p, _)| p == local) {
        return Ok(hash.clone());
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(local).map_err(HostError::Fs)?;
    let hash = hasher.finalize().to_hex().to_string();
    hashes.push((local.to_owned(), hash.clone()));
    Ok(hash)
}

/// Uploads this binary to `path` on a host that runs `uname` (`uname -s`
/// and `uname -m`), once that is what the binary is built for.
fn upload_agent(
    session: &ssh2::Session,
    spec: &HostSpec,
    local: &std::path::Path,
    path: &str,
    uname: &str,
) -> Result<(), HostError> {
    let name = &spec.name;
    let (os, machine) = uname.split_once(' ').unwrap_or((uname, ""));
    if !os.eq_ignore_ascii_case(std::env::consts::OS) || machine != std::env::consts::ARCH {
        let way_out = if os.eq_ignore_ascii_case("linux") {
            format!(
                "build ferry for it and name that build with `agent` (a static musl build, \
                 --target {machine}-unknown-linux-musl, runs on any Linux of that machine)"
            )
        } else {
            format!("build ferry on or for {os} {machine} and name that build with `agent`")
        };
        return Err(refused(
            name,
            format!(
                "the host runs {os} {machine}, this ferry is built for {} {}: {way_out}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        ));
    }
    let hash = agent_hash(local)?;
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
    // A temporary name of its own (two pushes may upload at once), checked
    // by running it before it takes the final name.
    let upload = format!(
        "set -e; mkdir -p {dir}; t=$(mktemp {dir}/.upload.XXXXXX); trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; \
         chmod 755 \"$t\"; test \"$(\"$t\" agent-hash)\" = {hash}; mv \"$t\" {path}; trap - EXIT",
        dir = quote(dir),
        path = quote(path)
    );
    let mut binary = fs_err::File::open(local).map_err(HostError::Fs)?;
    let (status, out) = exec(session, name, &format!("{upload} 2>&1"), Some(&mut binary))?;
    if status != 0 {
        return Err(refused(name, format!("uploading the agent to {path} failed (exit {status}): {}", out.trim())));
    }
    Ok(())
}

/// The key types a known_hosts file lists for `host` (plain entries; hashed
/// ones are left to libssh2's check).
fn known_key_types(path: &std::path::Path, host: &str, port: u16) -> Vec<String> {
    let name = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let mut types: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(kind)) = (fields.next(), fields.next()) else { continue };
        if hosts.split(',').any(|h| h == name) && !types.iter().any(|t| t == kind) {
            types.push(kind.to_owned());
        }
    }
    types
}

/// Appends one line to a known_hosts file: hosts connect in parallel, so
/// the append is serialized in this process and flock(2)ed against others,
/// and never rewrites what the file already has.
fn append_known_host(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir)?;
    }
    let mut file = fs_err::OpenOptions::new().append(true).create(true).open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// Padded standard base64, as known_hosts stores keys.
fn base64_padded(bytes: &[u8]) -> String {
    let mut out = base64(bytes);
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

/// A word for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Unpadded standard base64, as OpenSSH prints fingerprints.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |name: &str| address(name).unwrap();
        assert_eq!(ok("web1"), (None, "web1".into(), None));
        assert_eq!(ok("root@10.0.0.2:2222"), (Some("root".into()), "10.0.0.2".into(), Some(2222)));
        assert_eq!(ok("app@web1"), (Some("app".into()), "web1".into(), None));
        assert_eq!(ok("fd00::2"), (None, "fd00::2".into(), None));
        assert_eq!(ok("root@[fd00::2]:2222"), (Some("root".into()), "fd00::2".into(), Some(2222)));
        assert_eq!(ok("[fd00::2]"), (None, "fd00::2".into(), None));
        assert_eq!(ok("app@::1"), (Some("app".into()), "::1".into(), None));
        let bad = |name: &str| address(name).unwrap_err();
        assert_eq!(bad("web1:99999"), "the port \"99999\" is not a number from 0 to 65535");
        assert_eq!(bad("root@[fd00::2]:x"), "the port \"x\" is not a number from 0 to 65535");
        assert_eq!(bad("[fd00::2"), "a '[' without its ']'");
        assert_eq!(bad("[fd00::2]2222"), "after ']' comes ':PORT' or nothing");
    }

    #[test]
    fn the_ssh_config_fills_in_what_the_name_does_not_say() {
        let config = SshConfig::default()
            .parse(
                &mut "Host web-*\n  HostName 10.1.2.3\n  User app\n  Port 2222\n  IdentityFile /keys/app\n".as_bytes(),
                ParseRule::ALLOW_UNKNOWN_FIELDS,
            )
            .unwrap();
        let ssh = Ssh {
            known_hosts: PathBuf::new(),
            accept_new: false,
            identity: None,
            user: None,
            ferry: AgentBinary::OnHost("ferry".into()),
            connect_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(60),
            ssh_config: Some(config),
        };
        let t = ssh.target("web-1").unwrap();
        assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("app", "10.1.2.3", 2222));
        assert_eq!(t.identity, Some(PathBuf::from("/keys/app")));
        let t = ssh.target("root@web-1:22").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("root", 22), "the name wins");
        let t = ssh.target("db1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.identity), ("db1", 22, None));
        // The stage's user, said in ferry.toml, wins over a personal config.
        let ssh = Ssh { user: Some("deploy".into()), ..ssh };
        assert_eq!(ssh.target("web-1").unwrap().user, "deploy");
        assert_eq!(ssh.target("root@web-1").unwrap().user, "root");
    }

    #[test]
    fn fingerprints_are_base64_without_padding() {
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg");
    }
}
