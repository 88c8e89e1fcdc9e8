//! A stage's load balancer: HAProxy, driven through its admin socket on
//! each LB node (the agent carries each command, see
//! [`admin_socket`](crate::host::admin_socket)). A push takes each batch out
//! of rotation before it flips and puts it back after ferry's own gates
//! pass; `ferry lb` moves groups by hand, as OpenSky's group flow does.
//!
//! Taking a server out: `drain` on every node, wait until it has no session
//! and no queue on any node (or the drain timeout: then `maint` and
//! `shutdown sessions`, reported), `maint`. Putting it back: `ready` on
//! every node, wait until HAProxy's status is exactly `UP` on each.

pub mod haproxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::haproxy::{AdminState, ServerStat, ServerStatus};
use super::{HostSpec, Observer, Session, Transport};
use crate::host::{error_chain, HostError};

/// A stage's load balancer, resolved.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    pub nodes: Vec<LbNode>,
    /// The backends whose servers are the stage's hosts.
    pub backends: Vec<String>,
    /// Each host's server name in the backends, by the host's name in
    /// reports (every host of the stage).
    pub servers: BTreeMap<String, String>,
    /// How long to wait for a draining server's sessions to end.
    pub drain_timeout: Duration,
    /// How long to wait for HAProxy to see a server UP after `ready`.
    pub up_timeout: Duration,
    /// The fewest servers that must stay in service in each backend.
    pub min_in_service: usize,
}

/// One LB node: a host reached like the stage's, and its admin socket.
#[derive(Debug, Clone)]
pub struct LbNode {
    pub spec: HostSpec,
    pub socket: PathBuf,
}

/// How often HAProxy is asked while ferry waits on it.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("load balancer {node}: cannot connect: {}", error_chain(source))]
    Connect { node: String, source: Box<HostError> },
    #[error(
        "load balancer {node}: HAProxy's admin socket {}: {}; check `stats socket {0} level admin` in haproxy.cfg \
         and that ferry's user on {node} may open it",
        socket.display(),
        error_chain(source)
    )]
    Socket { node: String, socket: PathBuf, source: Box<HostError> },
    #[error(
        "load balancer {node}: the admin socket {} is at level {level:?}, and ferry needs to set servers' states: \
         give it `level admin` in haproxy.cfg (`stats socket {0} level admin`)",
        socket.display()
    )]
    NotAdmin { node: String, socket: PathBuf, level: String },
    #[error(
        "load balancer {node} stopped answering: {}; what HAProxy last got from ferry is unknown: `ferry lb <stage> \
         status` shows its states once it answers",
        error_chain(source)
    )]
    Lost { node: String, source: Box<HostError> },
    #[error("load balancer {node}: HAProxy refused `{command}`: {reply}")]
    Refused { node: String, command: String, reply: String },
    #[error("load balancer {node}: {why}")]
    Stat { node: String, why: String },
    #[error("load balancer {node}: HAProxy has no backend {backend} (it has: {})", have.join(", "))]
    NoBackend { node: String, backend: String, have: Vec<String> },
    #[error(
        "load balancer {node}: backend {backend} has no server {server} (for host {host}); its servers: {}; \
         map the host to its server in [stages.<name>.load_balancer] servers",
        have.join(", ")
    )]
    NoServer { node: String, backend: String, server: String, host: String, have: Vec<String> },
    #[error(
        "load balancer {node}: taking {} out of backend {backend} would leave {left} of its servers in service \
         ({up} are now: {}), fewer than {}; nothing was changed",
        out.join(", "),
        if in_service.is_empty() { "none".to_owned() } else { in_service.join(", ") },
        if *min == 0 { "one".to_owned() } else { format!("min_in_service = {min}") },
        up = in_service.len()
    )]
    Capacity { node: String, backend: String, out: Vec<String>, in_service: Vec<String>, left: usize, min: usize },
    #[error(
        "load balancer {node}: HAProxy did not see {server} UP within {} s of `ready`: it shows {status}",
        waited.as_secs()
    )]
    NotUp { node: String, server: String, status: String, waited: Duration },
    #[error("load balancer: no host named {0}")]
    UnknownHost(String),
}

/// What taking servers out took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drained {
    /// Waiting for their sessions to end.
    pub seconds: f64,
    /// Hosts whose sessions outlived the drain timeout and were shut down,
    /// with how many there were.
    pub forced: Vec<(String, u64)>,
}

/// One server as one node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub node: String,
    pub host: Option<String>,
    #[serde(flatten)]
    pub stat: ServerStat,
}

/// Connected LB nodes.
pub struct Lb<'a> {
    config: &'a LoadBalancer,
    nodes: Vec<(String, PathBuf, Box<dyn Session>)>,
}

impl std::fmt::Debug for Lb<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.nodes.iter().map(|(node, socket, _)| (node, socket))).finish()
    }
}

impl<'a> Lb<'a> {
    /// Connects to every node (no lock: the LB is not the service's host)
    /// and checks that each socket is at level admin, has the backends,
    /// and has every host's server in each.
    pub fn connect(config: &'a LoadBalancer, transport: &dyn Transport) -> Result<Self, LbError> {
        let mut nodes = Vec::new();
        for node in &config.nodes {
            let session = transport
                .connect(&node.spec, None)
                .map_err(|source| LbError::Connect { node: node.spec.name.clone(), source: Box::new(source) })?;
            nodes.push((node.spec.name.clone(), node.socket.clone(), session));
        }
        let mut lb = Self { config, nodes };
        lb.check()?;
        Ok(lb)
    }

    fn check(&mut self) -> Result<(), LbError> {
        for i in 0..self.nodes.len() {
            let level = self.ask(i, haproxy::CLI_LEVEL)?;
            let level = level.trim();
            if level != "admin" {
                let (node, socket, _) = &self.nodes[i];
                return Err(LbError::NotAdmin { node: node.clone(), socket: socket.clone(), level: level.to_owned() });
            }
            let stats = self.stats_of(i)?;
            let node = &self.nodes[i].0;
            for backend in &self.config.backends {
                let have: Vec<String> =
                    stats.iter().filter(|s| &s.backend == backend).map(|s| s.server.clone()).collect();
                if have.is_empty() {
                    let backends: BTreeSet<String> = stats.iter().map(|s| s.backend.clone()).collect();
                    return Err(LbError::NoBackend {
                        node: node.clone(),
                        backend: backend.clone(),
                        have: backends.into_iter().collect(),
                    });
                }
                for (host, server) in &self.config.servers {
                    if !have.contains(server) {
                        return Err(LbError::NoServer {
                            node: node.clone(),
                            backend: backend.clone(),
                            server: server.clone(),
                            host: host.clone(),
                            have,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `command` to node `i`; its reply.
    fn ask(&mut self, i: usize, command: &str) -> Result<String, LbError> {
        let (node, socket, session) = &mut self.nodes[i];
        session.admin_socket(socket, command).map_err(|source| match source.kind() {
            // The link, not the socket: the node is gone or its agent is.
            crate::host::ErrorKind::Link => LbError::Lost { node: node.clone(), source: Box::new(source) },
            _ => LbError::Socket { node: node.clone(), socket: socket.clone(), source: Box::new(source) },
        })
    }

    /// Sends a `set`-like command to node `i`: an answer is a refusal.
    fn set(&mut self, i: usize, command: &str) -> Result<(), LbError> {
        let reply = self.ask(i, command)?;
        haproxy::set_reply(&reply).map_err(|reply| LbError::Refused {
            node: self.nodes[i].0.clone(),
            command: command.to_owned(),
            reply,
        })
    }

    fn stats_of(&mut self, i: usize) -> Result<Vec<ServerStat>, LbError> {
        let reply = self.ask(i, haproxy::SHOW_STAT)?;
        haproxy::parse_stat(&reply).map_err(|why| LbError::Stat { node: self.nodes[i].0.clone(), why })
    }

    /// The servers of the stage's backends, as every node sees them.
    pub fn status(&mut self) -> Result<Vec<ServerView>, LbError> {
        let by_server: BTreeMap<&String, &String> = self.config.servers.iter().map(|(h, s)| (s, h)).collect();
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let node = self.nodes[i].0.clone();
            for stat in self.stats_of(i)? {
                if self.config.backends.contains(&stat.backend) {
                    let host = by_server.get(&stat.server).map(|h| (*h).clone());
                    out.push(ServerView { node: node.clone(), host, stat });
                }
            }
        }
        Ok(out)
    }

    fn server(&self, host: &str) -> Result<String, LbError> {
        self.config.servers.get(host).cloned().ok_or_else(|| LbError::UnknownHost(host.to_owned()))
    }

    /// The hosts HAProxy has in maintenance on every node, in every backend:
    /// out of rotation (what `ferry push --out` deploys to).
    pub fn out_of_rotation(&mut self) -> Result<Vec<String>, LbError> {
        let views = self.status()?;
        Ok(self
            .config
            .servers
            .keys()
            .filter(|host| {
                let mine: Vec<&ServerView> =
                    views.iter().filter(|v| v.host.as_deref() == Some(host.as_str())).collect();
                !mine.is_empty() && mine.iter().all(|v| v.stat.status.is_maint())
            })
            .cloned()
            .collect())
    }

    /// Refuses (before anything changes) to take `hosts` out when that
    /// would leave a backend on some node with fewer than `min_in_service`
    /// servers in service, or none.
    pub fn guard(&mut self, hosts: &[String]) -> Result<(), LbError> {
        let out: BTreeSet<String> = hosts.iter().map(|h| self.server(h)).collect::<Result<_, _>>()?;
        let views = self.status()?;
        let min = self.config.min_in_service;
        for (node, _, _) in &self.nodes {
            for backend in &self.config.backends {
                let here = views.iter().filter(|v| &v.node == node && &v.stat.backend == backend);
                let in_service: Vec<String> =
                    here.filter(|v| v.stat.status.in_service()).map(|v| v.stat.server.clone()).collect();
                let left = in_service.iter().filter(|s| !out.contains(*s)).count();
                if left < min.max(1) && in_service.iter().any(|s| out.contains(s)) {
                    return Err(LbError::Capacity {
                        node: node.clone(),
                        backend: backend.clone(),
                        out: hosts.to_vec(),
                        in_service,
                        left,
                        min,
                    });
                }
            }
        }
        Ok(())
    }

    fn set_all(&mut self, hosts: &[String], state: AdminState) -> Result<(), LbError> {
        for host in hosts {
            let server = self.server(host)?;
            for i in 0..self.nodes.len() {
                for backend in self.config.backends.clone() {
                    self.set(i, &haproxy::set_state(&backend, &server, state))?;
                }
            }
        }
        Ok(())
    }

    /// Takes `hosts` out of rotation: drain, wait for their sessions and
    /// queues to end (at most the drain timeout, then ends them), maint.
    pub fn take_out(&mut self, hosts: &[String], observer: &dyn Observer) -> Result<Drained, LbError> {
        let start = Instant::now();
        self.set_all(hosts, AdminState::Drain)?;
        let deadline = start + self.config.drain_timeout;
        let busy = loop {
            let busy = self.busy(hosts)?;
            if busy.is_empty() || Instant::now() >= deadline {
                break busy;
            }
            std::thread::sleep(POLL);
        };
        let seconds = start.elapsed().as_secs_f64();
        let mut forced = Vec::new();
        self.set_all(hosts, AdminState::Maint)?;
        for (host, sessions) in busy {
            // Still open after the timeout: sticky clients, long polls.
            let server = self.server(&host)?;
            for i in 0..self.nodes.len() {
                for backend in self.config.backends.clone() {
                    self.set(i, &haproxy::shutdown_sessions(&backend, &server))?;
                }
            }
            observer.note(
                &host,
                "lb",
                &format!(
                    "{sessions} sessions still open after the drain timeout ({} s): shut down",
                    self.config.drain_timeout.as_secs()
                ),
            );
            forced.push((host, sessions));
        }
        Ok(Drained { seconds, forced })
    }

    /// The hosts among `hosts` that still have sessions or a queue on some
    /// node, with how many.
    fn busy(&mut self, hosts: &[String]) -> Result<Vec<(String, u64)>, LbError> {
        let views = self.status()?;
        Ok(hosts
            .iter()
            .filter_map(|h| {
                let server = self.config.servers.get(h)?;
                let n: u64 = views.iter().filter(|v| &v.stat.server == server).map(|v| v.stat.scur + v.stat.qcur).sum();
                (n > 0).then(|| (h.clone(), n))
            })
            .collect())
    }

    /// The responses and the 5xx among them HAProxy counted for `hosts`'
    /// servers, over every node and backend, since it started.
    pub fn responses(&mut self, hosts: &[String]) -> Result<(u64, u64), LbError> {
        let servers: BTreeSet<String> = hosts.iter().map(|h| self.server(h)).collect::<Result<_, _>>()?;
        let views = self.status()?;
        let mine = views.iter().filter(|v| servers.contains(&v.stat.server));
        Ok(mine.fold((0, 0), |(r, e), v| (r + v.stat.responses, e + v.stat.hrsp_5xx)))
    }

    /// Puts `hosts` back in rotation and waits until HAProxy's status of
    /// each is exactly `UP` on every node (or `no check`: a server without
    /// a health check is as up as HAProxy can tell).
    pub fn put_in(&mut self, hosts: &[String]) -> Result<Duration, LbError> {
        let start = Instant::now();
        self.set_all(hosts, AdminState::Ready)?;
        let servers: BTreeSet<String> = hosts.iter().map(|h| self.server(h)).collect::<Result<_, _>>()?;
        loop {
            let views = self.status()?;
            let waiting = views.iter().find(|v| {
                servers.contains(&v.stat.server) && !matches!(v.stat.status, ServerStatus::Up | ServerStatus::NoCheck)
            });
            let Some(v) = waiting else { return Ok(start.elapsed()) };
            if start.elapsed() >= self.config.up_timeout {
                let check =
                    if v.stat.check.is_empty() { String::new() } else { format!(", last check {}", v.stat.check) };
                return Err(LbError::NotUp {
                    node: v.node.clone(),
                    server: format!("{}/{}", v.stat.backend, v.stat.server),
                    status: format!("{}{check}", v.stat.status),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}
