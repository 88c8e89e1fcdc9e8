//! `[stages.<name>.load_balancer]`, checked: HAProxy's nodes and admin
//! sockets, the backends, each host's server name, the timeouts.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use toml::Spanned;

use super::defaults;
use super::raw::LoadBalancerSection;

/// A stage's load balancer, checked. Hosts are named as the stage writes
/// them; the settings turn them into the names reports use.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    /// Each node as written (a local stage's is a directory, resolved in
    /// `dir`), and its admin socket's path on it.
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
    pub backends: Vec<String>,
    /// Every host of the stage, and its server name.
    pub servers: BTreeMap<String, String>,
    pub drain_timeout: Duration,
    pub up_timeout: Duration,
    pub min_in_service: usize,
}

impl LoadBalancer {
    /// The stage's load balancer as the fleet drives it: each of the whole
    /// stage's hosts (not only those `--hosts` leaves) by the name reports use,
    /// and each node reached as the stage's hosts are.
    pub fn resolve(&self, stage: &super::Stage, names: &[Vec<String>]) -> ferry_switcher::fleet::LoadBalancer {
        let servers = stage
            .hosts
            .iter()
            .zip(names)
            .filter_map(|((written, _), names)| self.servers.get(written).map(|s| (names[0].clone(), s.clone())))
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|(host, dir, socket)| ferry_switcher::fleet::LbNode {
                spec: ferry_switcher::fleet::HostSpec {
                    name: host.clone(),
                    deploy_to: match &stage.ssh {
                        Some(_) => stage.deploy_to.clone(),
                        None => dir.join(stage.deploy_to.strip_prefix("/").unwrap_or(&stage.deploy_to)),
                    },
                },
                socket: socket.clone(),
            })
            .collect();
        ferry_switcher::fleet::LoadBalancer {
            nodes,
            backends: self.backends.clone(),
            servers,
            drain_timeout: self.drain_timeout,
            up_timeout: self.up_timeout,
            min_in_service: self.min_in_service,
        }
    }
}

/// A name HAProxy's runtime API takes in `set server B/S`: no spaces, no
/// slash, no command separator.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Checks stage `name`'s load balancer; `hosts` are its hosts as keyed,
/// `key` keys a host as written, `local` makes a local node's directory.
pub(super) fn check(
    name: &str,
    lb: &LoadBalancerSection,
    hosts: &[(String, PathBuf)],
    key: &dyn Fn(&str) -> String,
    local: Option<&dyn Fn(&str) -> PathBuf>,
    at: &dyn Fn(Range<usize>) -> String,
) -> Result<LoadBalancer> {
    let here = format!("stage {name}: load_balancer");
    if lb.kind.get_ref() != "haproxy" {
        bail!("{}: {here}: kind {:?} is not one ferry drives; it drives \"haproxy\" (for another, use [stages.{name}.hooks] before_batch and after_batch)", at(lb.kind.span()), lb.kind.get_ref());
    }
    if lb.nodes.get_ref().is_empty() {
        bail!("{}: {here}: nodes is empty; list each HAProxy as {{ host = \"lb1\", socket = \"/run/haproxy/admin.sock\" }}", at(lb.nodes.span()));
    }
    let mut nodes = Vec::new();
    for node in lb.nodes.get_ref() {
        let socket = node.socket.get_ref();
        if !socket.starts_with('/') {
            bail!(
                "{}: {here}: socket {socket:?} must be an absolute path on the LB node (HAProxy's `stats socket`)",
                at(node.socket.span())
            );
        }
        let host = key(node.host.get_ref());
        let dir = local.map(|l| l(&host)).unwrap_or_default();
        nodes.push((host, dir, PathBuf::from(socket)));
    }
    if lb.backends.get_ref().is_empty() {
        bail!("{}: {here}: backends is empty; name the HAProxy backend(s) the hosts serve in", at(lb.backends.span()));
    }
    let mut backends = Vec::new();
    for b in lb.backends.get_ref() {
        if !valid_name(b.get_ref()) {
            bail!("{}: {here}: backend {:?} must be letters, digits, '_', '.', ':' or '-'", at(b.span()), b.get_ref());
        }
        backends.push(b.get_ref().clone());
    }
    let mut servers: BTreeMap<String, String> = BTreeMap::new();
    for (h, server) in lb.servers.get_ref() {
        let h = key(h);
        if !hosts.iter().any(|(n, _)| *n == h) {
            bail!("{}: {here}: servers names {h:?}, which is not one of the stage's hosts", at(lb.servers.span()));
        }
        servers.insert(h, server.clone());
    }
    for (h, _) in hosts {
        servers.entry(h.clone()).or_insert_with(|| default_server(h));
    }
    for (h, server) in &servers {
        if !valid_name(server) {
            bail!(
                "{}: {here}: host {h}'s server name {server:?} must be letters, digits, '_', '.', ':' or '-'; map it \
                 in servers = {{ {h:?} = \"<its server in the backend>\" }}",
                at(lb.servers.span())
            );
        }
    }
    let seconds =
        |v: &Option<Spanned<u64>>, default: u64| Duration::from_secs(v.as_ref().map_or(default, |v| *v.get_ref()));
    let up_timeout = seconds(&lb.up_timeout, defaults::UP_TIMEOUT);
    if let Some(u) = lb.up_timeout.as_ref().filter(|u| *u.get_ref() == 0) {
        bail!("{}: {here}: up_timeout must be at least 1 second", at(u.span()));
    }
    let min_in_service = lb.min_in_service.as_ref().map_or(defaults::MIN_IN_SERVICE, |m| *m.get_ref());
    if let Some(m) = lb.min_in_service.as_ref().filter(|m| *m.get_ref() >= hosts.len().max(1) && hosts.len() > 1) {
        bail!(
            "{}: {here}: min_in_service = {} leaves no host to take out of the stage's {}; it counts servers that \
             stay in service while a batch is out",
            at(m.span()),
            m.get_ref(),
            hosts.len()
        );
    }
    Ok(LoadBalancer {
        nodes,
        backends,
        servers,
        drain_timeout: seconds(&lb.drain_timeout, defaults::DRAIN_TIMEOUT),
        up_timeout,
        min_in_service,
    })
}

/// A host's server name when `servers` does not give one: its name, or for
/// a local host (a directory) its last component.
fn default_server(host: &str) -> String {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = host.rsplit('/').next().unwrap_or(host);
    host.to_owned()
}
