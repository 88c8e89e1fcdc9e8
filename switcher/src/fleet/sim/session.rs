//! One simulated host's session: each request a round trip, each payload
//! its bytes over the links, and the host's seeded faults.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;

use super::{draw, lock, Download, Shared, SimFault, SimFaults, SimHost, SimStep};
use crate::fleet::{Fetch, Session};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use crate::host::{Flipped, HostError, Pinned, Pruned, ReleaseStatus, StageOptions, Staged, Status};

pub(super) struct SimSession {
    name: String,
    shared: Arc<Shared>,
    target: Option<ReleaseId>,
    unreachable: bool,
    /// For a host whose first download is cut short: the share that arrives.
    cut: Option<f64>,
    /// The host's link, bytes per second.
    rate: f64,
    drops: Option<SimStep>,
    /// The link dropped: every request fails.
    dead: bool,
    /// The agent's wait before its second attempt, jitter included.
    backoff: Duration,
}

fn unsupported(what: &str) -> HostError {
    HostError::Input(format!("a simulated host does not {what}"))
}

impl SimSession {
    pub(super) fn new(name: &str, shared: Arc<Shared>, target: Option<ReleaseId>, faults: &SimFaults) -> Self {
        let links = shared.links;
        let jitter = (draw(faults.seed, "jitter", name) % 1000) as f64 / 1000.0;
        Self {
            name: name.to_owned(),
            target,
            unreachable: faults.picks(SimFault::Unreachable, name),
            cut: faults.picks(SimFault::Truncated, name).then(|| faults.cut(name)),
            rate: links.host_bytes_per_sec as f64 / faults.slowdown(name),
            drops: faults.link_drops.filter(|_| faults.picks(SimFault::LinkDrop, name)).map(|(_, at)| at),
            dead: false,
            backoff: links.retry_backoff.mul_f64(1.0 + jitter),
            shared,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SimHost) -> T) -> T {
        f(lock(&self.shared.hosts).entry(self.name.clone()).or_default())
    }

    fn round_trip(&self) {
        std::thread::sleep(self.shared.links.round_trip);
    }

    /// Fails once the link dropped.
    fn up(&self) -> Result<(), HostError> {
        if self.dead {
            return Err(HostError::Link(format!("the link to {} is down (a seeded fault)", self.name)));
        }
        Ok(())
    }

    /// The link drops here when the host's fault says so.
    fn drop_at(&mut self, step: SimStep) -> Result<(), HostError> {
        if self.drops == Some(step) {
            self.dead = true;
            return Err(HostError::Link(format!("the link to {} dropped (a seeded fault)", self.name)));
        }
        Ok(())
    }

    /// `len` bytes through `queue` (a link every transfer shares, one after
    /// another at `per_sec`) and this host's own link: a round trip, then
    /// until both are through.
    fn transfer(&self, len: u64, queue: &Mutex<Option<Instant>>, per_sec: u64) {
        let secs = |rate: f64| Duration::from_secs_f64((len as f64 / rate.max(1.0)).min(1e6));
        let now = Instant::now();
        let shared_end = {
            let mut free = lock(queue);
            let start = free.filter(|f| *f > now).unwrap_or(now);
            let end = start + secs(per_sec as f64);
            *free = Some(end);
            end
        };
        let end = shared_end.max(now + secs(self.rate));
        std::thread::sleep(self.shared.links.round_trip + end.saturating_duration_since(Instant::now()));
    }

    /// Bytes from the controller, over its uplink.
    fn send(&self, len: u64) {
        self.transfer(len, &self.shared.uplink, self.shared.links.uplink_bytes_per_sec);
        lock(&self.shared.tally).pushed += len;
    }

    /// Bytes from the store, over its egress.
    fn download(&self, len: u64) {
        self.transfer(len, &self.shared.egress, self.shared.links.store_bytes_per_sec);
        lock(&self.shared.tally).fetched += len;
    }

    /// The host's fetch of `fetch`: the store, the faults, the retry.
    fn fetch(&mut self, fetch: &Fetch) -> Result<(), HostError> {
        if self.unreachable {
            self.round_trip();
            return Err(HostError::Input(format!(
                "{} cannot reach the store at {} (a seeded fault)",
                self.name,
                fetch.url.split('?').next().unwrap_or_default()
            )));
        }
        if self.drops == Some(SimStep::Stage) {
            self.download(fetch.len / 2);
            return self.drop_at(SimStep::Stage);
        }
        if let Some(cut) = self.cut {
            self.download((fetch.len as f64 * cut) as u64);
            std::thread::sleep(self.backoff);
        }
        self.download(fetch.len);
        Ok(())
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
        self.up()?;
        self.drop_at(SimStep::Flip)?;
        self.round_trip();
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
        self.up()?;
        self.round_trip();
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
        self.up()?;
        let len = fs_err::metadata(payload).map_err(HostError::Fs)?.len();
        if self.drops == Some(SimStep::Stage) {
            self.send(len / 2);
            self.drop_at(SimStep::Stage)?;
        }
        self.send(len);
        self.staged()
    }
    fn stage_fetched(&mut self, fetch: &Fetch, _opts: &StageOptions, _sig: Option<&str>) -> Result<Staged, HostError> {
        self.up()?;
        let start = Instant::now();
        {
            lock(&self.shared.tally).orders += (fetch.url.len() + fetch.blake3.len() + 8) as u64;
            let mut downloading = lock(&self.shared.downloading);
            *downloading += 1;
            let mut tally = lock(&self.shared.tally);
            tally.most_downloading = tally.most_downloading.max(*downloading);
        }
        let fetched = self.fetch(fetch);
        *lock(&self.shared.downloading) -= 1;
        let download = Download {
            host: self.name.clone(),
            url: fetch.url.clone(),
            start,
            end: Instant::now(),
            ok: fetched.is_ok(),
        };
        lock(&self.shared.tally).downloads.push(download);
        fetched.and_then(|()| self.staged())
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
        self.up()?;
        self.round_trip();
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
