//! A simulated fleet: a transport of N hosts in this process, each a few
//! fields of state, whose every request costs a round trip and whose
//! payloads cost their bytes: from the controller, one after another over
//! its one uplink; from the object store, over each host's own link and the
//! store's shared egress. It drives the real push and rollback code
//! (`benches/sim.rs`), so what it measures beyond the simulated network time
//! is the controller's own work.
//!
//! Faults are seeded: which hosts a fault picks depends on the seed and the
//! host's name only, so the same seed gives the same hosts in every run
//! ([`Sim::picked`] names them):
//! - **unreachable**: the host cannot reach the store; its fetch fails after
//!   a round trip, and the controller pushes the bytes.
//! - **truncated**: the host's first download is cut short (a seeded share
//!   of the bytes); after the agent's backoff its second attempt gets it
//!   whole, and the push never hears of it.
//! - **slow**: each host's link is the full rate divided by a seeded factor
//!   from 1 to `slow_spread` (log-uniform).
//! - **link drops**: the host's link drops at a step ([`SimStep`]): half-way
//!   through its payload, or before a flip. That session is dead from then
//!   on (the host fails there); a new connection works again.

mod session;
mod source;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferry_formats::ReleaseId;

use super::{HostSpec, Session, Transport};
use crate::host::HostError;
use session::SimSession;
pub use source::SimSource;

/// What the simulated network is like.
#[derive(Debug, Clone, Copy)]
pub struct SimLinks {
    /// One request and its answer (connecting is one too).
    pub round_trip: Duration,
    /// The controller's uplink, shared by every host it sends to: bytes
    /// go out one transfer after another at this rate.
    pub uplink_bytes_per_sec: u64,
    /// Each host's own link at full speed (a slow host's is less), for
    /// bytes from the controller and from the store alike.
    pub host_bytes_per_sec: u64,
    /// All the store serves at once, shared by the downloads one after
    /// another as the uplink is.
    pub store_bytes_per_sec: u64,
    /// The agent's wait before it tries a broken download again.
    pub retry_backoff: Duration,
}

impl SimLinks {
    /// Links that cost nothing: a run on them measures the controller alone.
    pub const FREE: SimLinks = SimLinks {
        round_trip: Duration::ZERO,
        uplink_bytes_per_sec: u64::MAX,
        host_bytes_per_sec: u64::MAX,
        store_bytes_per_sec: u64::MAX,
        retry_backoff: Duration::ZERO,
    };
}

/// Where a host's link drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimStep {
    /// Half-way through its payload, from the controller or the store.
    Stage,
    /// Before a flip (activate, revert, rollback).
    Flip,
}

/// Seeded faults; the default has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimFaults {
    /// What every pick draws from, with the host's name.
    pub seed: u64,
    /// About one host in n cannot reach the store.
    pub unreachable_one_in: Option<u64>,
    /// About one host in n gets its first download cut short.
    pub truncated_one_in: Option<u64>,
    /// Hosts' links are from full speed to `1/slow_spread` of it (0 and 1:
    /// all at full speed).
    pub slow_spread: u32,
    /// About one host in n loses its link at the step.
    pub link_drops: Option<(u64, SimStep)>,
}

/// A fault, to ask which hosts it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The host cannot reach the store.
    Unreachable,
    /// The host's first download is cut short.
    Truncated,
    /// The host's link drops (where: [`SimFaults::link_drops`]).
    LinkDrop,
}

impl SimFault {
    fn tag(self) -> &'static str {
        match self {
            SimFault::Unreachable => "unreachable",
            SimFault::Truncated => "truncated",
            SimFault::LinkDrop => "drop",
        }
    }
}

/// A number from the seed, the draw and the host's name alone.
fn draw(seed: u64, what: &str, host: &str) -> u64 {
    let h = blake3::hash(format!("{seed}:{what}:{host}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

impl SimFaults {
    /// Whether `fault` picks `host`.
    pub fn picks(&self, fault: SimFault, host: &str) -> bool {
        let one_in = match fault {
            SimFault::Unreachable => self.unreachable_one_in,
            SimFault::Truncated => self.truncated_one_in,
            SimFault::LinkDrop => self.link_drops.map(|(n, _)| n),
        };
        one_in.is_some_and(|n| draw(self.seed, fault.tag(), host) % n.max(1) == 0)
    }

    /// What `host`'s link is slower by: from 1 to `slow_spread`.
    pub fn slowdown(&self, host: &str) -> f64 {
        if self.slow_spread <= 1 {
            return 1.0;
        }
        let u = draw(self.seed, "slow", host) as f64 / u64::MAX as f64;
        f64::from(self.slow_spread).powf(u)
    }

    /// The share of a truncated host's first download that arrives: 1% to 99%.
    fn cut(&self, host: &str) -> f64 {
        (1 + draw(self.seed, "cut", host) % 99) as f64 / 100.0
    }
}

/// One host's fetch from the store, as the store saw it.
#[derive(Debug, Clone)]
pub struct Download {
    /// The host that fetched.
    pub host: String,
    /// What it fetched (one URL per payload).
    pub url: String,
    /// When the host's session asked for it.
    pub start: Instant,
    /// When the host was done with it, retry included.
    pub end: Instant,
    /// The host got the payload whole.
    pub ok: bool,
}

/// What moved since the last [`Sim::take`].
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Payload bytes from the controller to hosts.
    pub pushed: u64,
    /// Payload bytes from the store to hosts, cut-short attempts included.
    pub fetched: u64,
    /// Bytes of the fetch orders the controller sent (URL, hash, length).
    pub orders: u64,
    /// The most hosts downloading from the store at one time.
    pub most_downloading: usize,
    /// Every fetch from the store, in the order they started.
    pub downloads: Vec<Download>,
}

#[derive(Debug, Default, Clone)]
struct SimHost {
    current: Option<ReleaseId>,
    previous: Option<ReleaseId>,
    releases: Vec<ReleaseId>,
}

/// What the hosts' sessions share.
#[derive(Debug)]
struct Shared {
    links: SimLinks,
    hosts: Mutex<BTreeMap<String, SimHost>>,
    tally: Mutex<Tally>,
    downloading: Mutex<usize>,
    /// When the controller's uplink is free again.
    uplink: Mutex<Option<Instant>>,
    /// When the store's egress is free again.
    egress: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// N simulated hosts, named `sim1`…
#[derive(Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    faults: Mutex<SimFaults>,
    /// The release a payload stages (a simulated host reads no payload).
    target: Mutex<Option<ReleaseId>>,
    names: Vec<String>,
}

impl Sim {
    /// `n` hosts, each on `on` (or on nothing).
    pub fn new(n: usize, on: Option<ReleaseId>, links: SimLinks, faults: SimFaults) -> Self {
        let host = SimHost { current: on, previous: None, releases: on.into_iter().collect() };
        let names: Vec<String> = (1..=n).map(|i| format!("sim{i}")).collect();
        let hosts = names.iter().map(|n| (n.clone(), host.clone())).collect();
        let shared = Shared {
            links,
            hosts: Mutex::new(hosts),
            tally: Mutex::default(),
            downloading: Mutex::new(0),
            uplink: Mutex::default(),
            egress: Mutex::default(),
        };
        Self { shared: Arc::new(shared), faults: Mutex::new(faults), target: Mutex::new(None), names }
    }

    /// The hosts, as a stage lists them.
    pub fn specs(&self) -> Vec<HostSpec> {
        self.names.iter().map(|n| HostSpec { name: n.clone(), deploy_to: "/srv/sim".into() }).collect()
    }

    /// What the next push's payloads stage.
    pub fn set_target(&self, id: ReleaseId) {
        *lock(&self.target) = Some(id);
    }

    /// The faults of the sessions connected from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        *lock(&self.faults) = faults;
    }

    /// Puts `host` on `id` (which it then has), as if it ran it already.
    pub fn set_current(&self, host: &str, id: ReleaseId) {
        let mut hosts = lock(&self.shared.hosts);
        let h = hosts.entry(host.to_owned()).or_default();
        if !h.releases.contains(&id) {
            h.releases.push(id);
        }
        h.current = Some(id);
    }

    /// Each host's current release, in the stage's order.
    pub fn currents(&self) -> Vec<(String, Option<ReleaseId>)> {
        let hosts = lock(&self.shared.hosts);
        self.names.iter().map(|n| (n.clone(), hosts.get(n).and_then(|h| h.current))).collect()
    }

    /// The hosts `fault` picks under the current faults.
    pub fn picked(&self, fault: SimFault) -> BTreeSet<String> {
        let faults = *lock(&self.faults);
        self.names.iter().filter(|n| faults.picks(fault, n)).cloned().collect()
    }

    /// What moved since the last call.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *lock(&self.shared.tally))
    }
}

impl Transport for Sim {
    fn connect(&self, host: &HostSpec, _lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        std::thread::sleep(self.shared.links.round_trip);
        let target = *lock(&self.target);
        let faults = *lock(&self.faults);
        Ok(Box::new(SimSession::new(&host.name, self.shared.clone(), target, &faults)))
    }
}
