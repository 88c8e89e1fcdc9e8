//! Issue 17's simulation: the real push and rollback code driving N
//! simulated hosts (`ferry_switcher::fleet::sim`), canary → 50% → 100%,
//! gates off, at 10, 100 and 1,000 hosts: the hosts pushed the delta by the
//! controller against pulling it from the store, and a fleet rollback.
//!
//! `cargo bench --bench sim [-- HOSTS…]`. Links: a 20 ms round trip per
//! request; the controller's 1 Gbit/s uplink, which its transfers share
//! (queued one after another); the store gives each host 100 MB/s. One host in
//! 50 cannot reach the store (seeded) and is pushed the bytes. "overhead"
//! is the same run with free links: the controller's own work (wall, CPU),
//! and its peak memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::sim::{Sim, SimLinks};
use ferry_switcher::fleet::{self, Fetch, OnFailure, Quiet, ReleaseSource, Shipped, SourceError, Stage, Step};
use ferry_switcher::host::StageOptions;
use fs_err as fs;

const DELTA: u64 = 20 << 20;
const BUNDLE: u64 = 200 << 20;
const MAX_PARALLEL: usize = 100;

struct SimSource {
    bundle: PathBuf,
    delta: PathBuf,
    pull: bool,
    /// How many payloads were put in the store.
    puts: std::sync::atomic::AtomicUsize,
}

impl ReleaseSource for SimSource {
    fn bundle(&self, _id: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(self.bundle.clone())
    }
    fn delta(&self, _base: &ReleaseId, _target: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        Ok(Some(self.delta.clone()))
    }
    fn rsync_delta(&self, _s: &Signature, _t: &ReleaseId) -> Result<PathBuf, SourceError> {
        Err("no rsync in the simulation".into())
    }
    fn fetchable(
        &self,
        _base: Option<&ReleaseId>,
        target: &ReleaseId,
        _kind: Shipped,
        path: &Path,
    ) -> Result<Option<Fetch>, SourceError> {
        if !self.pull {
            return Ok(None);
        }
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let len = fs::metadata(path)?.len();
        let url = format!("https://store.sim/deltas/{target}?X-Amz-Signature={}", "0".repeat(64));
        Ok(Some(Fetch { url, blake3: "0".repeat(64), len }))
    }
}

fn stage(sim: &Sim) -> Stage {
    Stage {
        name: "sim".into(),
        hosts: sim.specs(),
        strategy: ["1", "50%", "100%"].iter().map(|s| s.parse::<Step>()).collect::<Result<_, _>>().unwrap(),
        options: StageOptions { env: Some("staging".into()), ..StageOptions::default() },
        keep_releases: 5,
        max_parallel: MAX_PARALLEL,
        on_failure: OnFailure::Revert,
        runtime: Default::default(),
        force: false,
        load_balancer: None,
        out_of_rotation: false,
        trusted_keys: Vec::new(),
        fetch_parallel: 32,
    }
}

/// User + system CPU seconds of this process so far.
fn cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// The peak resident memory of this process so far, in MiB.
fn peak_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

struct Run {
    wall: f64,
    cpu: f64,
    pushed: u64,
    fetched: u64,
    rollback: f64,
    puts: usize,
}

fn run(n: usize, links: SimLinks, pull: bool, files: (&Path, &Path)) -> Result<Run> {
    let base: ReleaseId = "aa".repeat(32).parse()?;
    let deps: ReleaseId = "bb".repeat(32).parse()?;
    let sim = Sim::new(n, Some(base), links);
    let source = SimSource { bundle: files.0.to_owned(), delta: files.1.to_owned(), pull, puts: Default::default() };
    let stage = stage(&sim);
    sim.set_target(deps);
    let (start, cpu0) = (Instant::now(), cpu());
    let report = fleet::push(&stage, &sim, &source, &deps, &Quiet);
    let (wall, cpu) = (start.elapsed().as_secs_f64(), cpu() - cpu0);
    ensure!(report.ok, "the push failed: {:?}", report.hosts.iter().find(|h| h.error.is_some()));
    ensure!(sim.currents().iter().all(|c| *c == Some(deps)), "not every host is on deps");
    let (pushed, fetched) = sim.take_bytes();
    let reported: u64 = report.hosts.iter().map(|h| h.bytes).sum();
    ensure!(reported == pushed, "the report says {reported} bytes pushed, the hosts got {pushed}");
    let start = Instant::now();
    let back = fleet::rollback(&stage, &sim, None, &Quiet)?;
    let rollback = start.elapsed().as_secs_f64();
    ensure!(back.ok && sim.currents().iter().all(|c| *c == Some(base)), "the rollback failed");
    Ok(Run { wall, cpu, pushed, fetched, rollback, puts: source.puts.into_inner() })
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if args.is_empty() { vec![10, 100, 1000] } else { args };
    let dir = tempfile::tempdir()?;
    let (bundle, delta) = (dir.path().join("bundle"), dir.path().join("delta"));
    fs::File::create(&bundle)?.set_len(BUNDLE)?;
    fs::File::create(&delta)?.set_len(DELTA)?;
    let uplink = 125_000_000u64;
    let real = SimLinks {
        round_trip: Duration::from_millis(20),
        uplink_bytes_per_sec: uplink,
        store_bytes_per_sec: 100_000_000,
        fail_one_in: Some(50),
        seed: 17,
    };
    let free = SimLinks {
        round_trip: Duration::ZERO,
        uplink_bytes_per_sec: u64::MAX,
        store_bytes_per_sec: u64::MAX,
        fail_one_in: Some(50),
        seed: 17,
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("delta {} MiB; max_parallel {MAX_PARALLEL}; links: 20 ms round trip, 1 Gbit/s uplink shared, store 100 MB/s per host, 1 in 50 hosts cannot reach the store", mib(DELTA));
    for n in sizes {
        for pull in [false, true] {
            let how = if pull { "pull" } else { "push" };
            let r = run(n, real, pull, (&bundle, &delta))?;
            let o = run(n, free, pull, (&bundle, &delta))?;
            println!(
                "{n:>5} hosts {how}: wall {:>7.2} s, controller→hosts {:>9.1} MiB, store→hosts {:>9.1} MiB, payloads put in the store {}; \
                 rollback {:.2} s | free links: wall {:.3} s, CPU {:.3} s, rollback {:.3} s; peak RSS {:.0} MiB",
                r.wall,
                mib(r.pushed),
                mib(r.fetched),
                r.puts,
                r.rollback,
                o.wall,
                o.cpu,
                o.rollback,
                peak_mib()
            );
        }
    }
    Ok(())
}
