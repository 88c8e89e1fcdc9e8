//! A simulated fleet: a transport of N hosts in this process, each a few
//! fields of state, whose every request costs a round trip and whose
//! payloads cost their bytes: from the controller, one after another over
//! its one uplink; from the object store, over each host's own link. It drives the real push
//! and rollback code (`benches/sim.rs`), so what it measures beyond the
//! simulated network time is the controller's own work.
//!
//! Seeded faults: with `fail_one_in = Some(n)`, each host whose seeded hash
//! falls on it fails its fetch from the store (and is pushed the bytes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;

use super::{Fetch, HostSpec, Session, Transport};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use crate::host::{Flipped, HostError, Pinned, Pruned, ReleaseStatus, StageOptions, Staged, Status};

/// What each simulated host's link is like.
#[derive(Debug, Clone, Copy)]
pub struct SimLinks {
    /// One request and its answer.
    pub round_trip: Duration,
    /// The controller's uplink, shared by every host it sends to: bytes
    /// go out one transfer after another at this rate.
    pub uplink_bytes_per_sec: u64,
    /// The store's bytes to one host, per second.
    pub store_bytes_per_sec: u64,
    /// Seeded faults: about one host in `n` cannot fetch from the store.
    pub fail_one_in: Option<u64>,
    pub seed: u64,
}

#[derive(Debug, Default, Clone)]
struct SimHost {
    current: Option<ReleaseId>,
    previous: Option<ReleaseId>,
    releases: Vec<ReleaseId>,
}

/// N simulated hosts, named `sim1`…
#[derive(Debug)]
pub struct Sim {
    links: SimLinks,
    hosts: Arc<Mutex<BTreeMap<String, SimHost>>>,
    /// The release a payload stages (a simulated host reads no payload).
    target: Mutex<Option<ReleaseId>>,
    /// Payload bytes the hosts got from the controller, and from the store.
    bytes: Arc<(AtomicU64, AtomicU64)>,
    /// When the controller's uplink is free again.
    uplink: Arc<Mutex<Option<Instant>>>,
}

impl Sim {
    /// `n` hosts, each on `on` (or on nothing).
    pub fn new(n: usize, on: Option<ReleaseId>, links: SimLinks) -> Self {
        let host = SimHost { current: on, previous: None, releases: on.into_iter().collect() };
        let hosts = (1..=n).map(|i| (format!("sim{i}"), host.clone())).collect();
        Self {
            links,
            hosts: Arc::new(Mutex::new(hosts)),
            target: Mutex::new(None),
            bytes: Arc::default(),
            uplink: Arc::default(),
        }
    }

    /// The hosts, as a stage lists them.
    pub fn specs(&self) -> Vec<HostSpec> {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&String> = hosts.keys().collect();
        names.sort_by_key(|n| (n.len(), n.to_string()));
        names.into_iter().map(|n| HostSpec { name: n.clone(), deploy_to: "/srv/sim".into() }).collect()
    }

    /// What the next push's payloads stage.
    pub fn set_target(&self, id: ReleaseId) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some(id);
    }

    /// Every host's current release.
    pub fn currents(&self) -> Vec<Option<ReleaseId>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).values().map(|h| h.current).collect()
    }

    /// Payload bytes the hosts got from the controller and from the store
    /// since the last call.
    pub fn take_bytes(&self) -> (u64, u64) {
        (self.bytes.0.swap(0, Ordering::Relaxed), self.bytes.1.swap(0, Ordering::Relaxed))
    }
}

impl Transport for Sim {
    fn connect(&self, host: &HostSpec, _lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        std::thread::sleep(self.links.round_trip);
        let target = *self.target.lock().unwrap_or_else(PoisonError::into_inner);
        let fails = self.links.fail_one_in.is_some_and(|n| {
            let h = blake3::hash(format!("{}:{}", self.links.seed, host.name).as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&h.as_bytes()[..8]);
            u64::from_le_bytes(first) % n.max(1) == 0
        });
        Ok(Box::new(SimSession {
            name: host.name.clone(),
            links: self.links,
            hosts: self.hosts.clone(),
            target,
            fails,
            bytes: self.bytes.clone(),
            uplink: self.uplink.clone(),
        }))
    }
}

struct SimSession {
    name: String,
    links: SimLinks,
    hosts: Arc<Mutex<BTreeMap<String, SimHost>>>,
    target: Option<ReleaseId>,
    fails: bool,
    bytes: Arc<(AtomicU64, AtomicU64)>,
    uplink: Arc<Mutex<Option<Instant>>>,
}

fn unsupported(what: &str) -> HostError {
    HostError::Input(format!("a simulated host does not {what}"))
}

impl SimSession {
    fn with<T>(&self, f: impl FnOnce(&mut SimHost) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        f(hosts.entry(self.name.clone()).or_default())
    }

    /// A download from the store: this host's link alone.
    fn transfer(&self, len: u64, per_sec: u64) {
        let secs = len as f64 / per_sec.max(1) as f64;
        std::thread::sleep(self.links.round_trip + Duration::from_secs_f64(secs));
    }

    /// Bytes from the controller: queued on its one uplink.
    fn send(&self, len: u64) {
        let secs = len as f64 / self.links.uplink_bytes_per_sec.max(1) as f64;
        let end = {
            let mut free = self.uplink.lock().unwrap_or_else(PoisonError::into_inner);
            let start = free.filter(|f| *f > Instant::now()).unwrap_or_else(Instant::now);
            let end = start + Duration::from_secs_f64(secs.min(1e6));
            *free = Some(end);
            end
        };
        std::thread::sleep(self.links.round_trip + end.saturating_duration_since(Instant::now()));
    }

    fn staged(&mut self) -> Result<Staged, HostError> {
        let id = self.target.ok_or_else(|| unsupported("know what to stage (set_target)"))?;
        let already = self.with(|h| {
            let had = h.releases.contains(&id);
            if !had {
                h.releases.push(id);
            }
            had
        });
        Ok(Staged {
            id: Some(id),
            already,
            input_unread: false,
            written: 0,
            written_bytes: 0,
            linked: 0,
            copied: 0,
            bridged: 0,
            bridged_from: None,
            elapsed: Duration::ZERO,
        })
    }

    fn flip(&mut self, to: ReleaseId) -> Result<Flipped, HostError> {
        std::thread::sleep(self.links.round_trip);
        self.with(|h| {
            if !h.releases.contains(&to) {
                return Err(unsupported("flip to a release it lacks"));
            }
            let from = h.current;
            let already = from == Some(to);
            if !already {
                h.previous = from;
                h.current = Some(to);
            }
            Ok(Flipped { from, to, already, notes: Vec::new() })
        })
    }
}

impl Session for SimSession {
    fn status(&mut self) -> Result<Status, HostError> {
        std::thread::sleep(self.links.round_trip);
        Ok(self.with(|h| Status {
            deploy_to: "/srv/sim".into(),
            current: h.current,
            previous: h.previous,
            releases: h
                .releases
                .iter()
                .rev()
                .map(|id| ReleaseStatus {
                    id: *id,
                    version: None,
                    pinned: false,
                    last_used: None,
                    bridged: 0,
                    signed_by: None,
                })
                .collect(),
            lock: None,
            current_migrated: None,
            programs: Vec::new(),
            supervisord_down: None,
            trusted_keys: Vec::new(),
        }))
    }
    fn stage(&mut self, payload: &Path, _opts: &StageOptions, _sig: Option<&str>) -> Result<Staged, HostError> {
        let len = fs_err::metadata(payload).map_err(HostError::Fs)?.len();
        self.send(len);
        self.bytes.0.fetch_add(len, Ordering::Relaxed);
        self.staged()
    }
    fn stage_fetched(&mut self, fetch: &Fetch, _opts: &StageOptions, _sig: Option<&str>) -> Result<Staged, HostError> {
        if self.fails {
            std::thread::sleep(self.links.round_trip);
            return Err(HostError::Input("the store is unreachable (a seeded fault)".into()));
        }
        self.transfer(fetch.len, self.links.store_bytes_per_sec);
        self.bytes.1.fetch_add(fetch.len, Ordering::Relaxed);
        self.staged()
    }
    fn pin_keys(&mut self, _keys: &[String], _replace: bool) -> Result<Pinned, HostError> {
        Err(unsupported("pin keys"))
    }
    fn activate(&mut self, id: &ReleaseId, _opts: &StageOptions) -> Result<Flipped, HostError> {
        self.flip(*id)
    }
    fn rollback(&mut self, to: Option<&ReleaseId>) -> Result<Flipped, HostError> {
        let to = match to {
            Some(t) => *t,
            None => self.with(|h| h.previous).ok_or_else(|| unsupported("have a previous release"))?,
        };
        self.flip(to)
    }
    fn prune(&mut self, _keep: usize) -> Result<Pruned, HostError> {
        std::thread::sleep(self.links.round_trip);
        Ok(Pruned { removed: Vec::new(), kept: self.with(|h| h.releases.clone()), held: Vec::new() })
    }
    fn signature(&mut self) -> Result<Signature, HostError> {
        Err(unsupported("sign its files"))
    }
    fn journal(&mut self) -> Result<Vec<Record>, HostError> {
        Ok(Vec::new())
    }
    fn revert(&mut self, to: &ReleaseId, _reason: &str) -> Result<Flipped, HostError> {
        self.flip(*to)
    }
    fn restart(&mut self, _id: &ReleaseId) -> Result<Vec<String>, HostError> {
        Ok(Vec::new())
    }
    fn listeners(&mut self, _port: u16) -> Result<Vec<PortHolder>, HostError> {
        Ok(Vec::new())
    }
    fn setup(&mut self, _service: &str, _programs: &[Program]) -> Result<SetUp, HostError> {
        Err(unsupported("run programs"))
    }
    fn install(&mut self, _service: &str) -> Result<Installed, HostError> {
        Err(unsupported("install"))
    }
    fn hook(&mut self, _id: &ReleaseId, _k: HookKind, _c: &str, _t: Duration) -> Result<HookRun, HostError> {
        Err(unsupported("run hooks"))
    }
    fn logs(&mut self, _p: Option<&str>, _o: &BTreeMap<String, i64>, _b: i32) -> Result<Vec<LogChunk>, HostError> {
        Ok(Vec::new())
    }
    fn admin_socket(&mut self, _socket: &Path, _command: &str) -> Result<String, HostError> {
        Err(unsupported("run a load balancer"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use ferry_formats::signature::Signature;
    use ferry_formats::ReleaseId;

    use super::{Sim, SimLinks};
    use crate::fleet::{self, Fetch, OnFailure, Quiet, ReleaseSource, Shipped, SourceError, Stage, Step};
    use crate::host::StageOptions;

    struct OneDelta(PathBuf);

    impl ReleaseSource for OneDelta {
        fn bundle(&self, _id: &ReleaseId) -> Result<PathBuf, SourceError> {
            Ok(self.0.clone())
        }
        fn delta(&self, _b: &ReleaseId, _t: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
            Ok(Some(self.0.clone()))
        }
        fn rsync_delta(&self, _s: &Signature, _t: &ReleaseId) -> Result<PathBuf, SourceError> {
            Err("none".into())
        }
        fn fetchable(
            &self,
            _b: Option<&ReleaseId>,
            _t: &ReleaseId,
            _k: Shipped,
            path: &Path,
        ) -> Result<Option<Fetch>, SourceError> {
            let len = fs_err::metadata(path)?.len();
            Ok(Some(Fetch { url: "http://store.sim/x".into(), blake3: String::new(), len }))
        }
    }

    #[test]
    fn the_real_push_moves_simulated_hosts_pulling_and_those_that_cannot_are_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let delta = dir.path().join("delta");
        fs_err::write(&delta, vec![0u8; 1000]).unwrap();
        let (base, deps): (ReleaseId, ReleaseId) = ("aa".repeat(32).parse().unwrap(), "bb".repeat(32).parse().unwrap());
        let links = SimLinks {
            round_trip: Duration::ZERO,
            uplink_bytes_per_sec: u64::MAX,
            store_bytes_per_sec: u64::MAX,
            fail_one_in: Some(5),
            seed: 1,
        };
        let sim = Sim::new(50, Some(base), links);
        sim.set_target(deps);
        let stage = Stage {
            name: "sim".into(),
            hosts: sim.specs(),
            strategy: ["1", "50%", "100%"].iter().map(|s| s.parse::<Step>().unwrap()).collect(),
            options: StageOptions::default(),
            keep_releases: 5,
            max_parallel: 8,
            on_failure: OnFailure::Revert,
            runtime: Default::default(),
            force: false,
            load_balancer: None,
            out_of_rotation: false,
            trusted_keys: Vec::new(),
            fetch_parallel: 32,
        };
        let report = fleet::push(&stage, &sim, &OneDelta(delta), &deps, &Quiet);
        assert!(report.ok, "{report:?}");
        assert!(sim.currents().iter().all(|c| *c == Some(deps)));
        let (pushed, fetched) = sim.take_bytes();
        let failing = report.hosts.iter().filter(|h| h.bytes > 0).count() as u64;
        assert!(failing > 0 && failing < 50, "{failing} hosts pushed");
        assert_eq!((pushed, fetched), (failing * 1000, (50 - failing) * 1000));
        assert_eq!(report.batches.iter().map(Vec::len).collect::<Vec<_>>(), [1, 24, 25]);
        let back = fleet::rollback(&stage, &sim, None, &Quiet).unwrap();
        assert!(back.ok && sim.currents().iter().all(|c| *c == Some(base)));
    }
}
