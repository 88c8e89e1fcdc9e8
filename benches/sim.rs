//! Issue 17's simulation: the real push and rollback code driving N
//! simulated hosts (`ferry_switcher::fleet::sim`), canary → 50% → 100%,
//! gates off, at 10, 100 and 1,000 hosts: the delta pushed by the
//! controller against pulled from the store, a fleet rollback, and the
//! faults a big fleet meets. Ends with the goals, met or not.
//!
//! `cargo bench --bench sim [-- HOSTS…]`.
//!
//! The controller's overhead is what a run costs beyond the simulated
//! network: the same run (same seed, same faults) on links that cost
//! nothing, its wall and CPU time; for the rollback, also its wall on the
//! real links less the network's floor (three round trips per host, hosts
//! `max_parallel` at a time). Peak memory is the process's resident peak
//! over each run (reset between runs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::sim::{Sim, SimFault, SimFaults, SimLinks, SimSource, SimStep};
use ferry_switcher::fleet::{self, Outcome, Quiet, Report, Stage};
use ferry_switcher::host::StageOptions;
use fs_err as fs;

#[path = "common/cpu.rs"]
mod cpu;

const DELTA: u64 = 20 << 20;
const BUNDLE: u64 = 200 << 20;
const MAX_PARALLEL: usize = 100;
const FETCH_PARALLEL: usize = 32;
const ROUND_TRIP: Duration = Duration::from_millis(20);

const LINKS: SimLinks = SimLinks {
    round_trip: ROUND_TRIP,
    uplink_bytes_per_sec: 125_000_000,
    host_bytes_per_sec: 100_000_000,
    store_bytes_per_sec: 1_250_000_000,
    retry_backoff: Duration::from_millis(200),
};

const FAULTS: SimFaults =
    SimFaults { seed: 17, unreachable_one_in: Some(50), truncated_one_in: Some(20), slow_spread: 4, link_drops: None };

fn stage(sim: &Sim) -> Stage {
    Stage {
        options: StageOptions { env: Some("staging".into()), ..StageOptions::default() },
        max_parallel: MAX_PARALLEL,
        fetch_parallel: FETCH_PARALLEL,
        ..Stage::new("sim", sim.specs())
    }
}

/// User + system CPU seconds of this process so far.
fn cpu() -> f64 {
    cpu::of("self").own
}

/// The resident peak of this process since the last reset, in MiB.
fn peak_mib() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// Resets the resident peak (Linux: `5` to clear_refs).
fn reset_peak() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

fn ids() -> Result<(ReleaseId, ReleaseId)> {
    Ok(("aa".repeat(32).parse()?, "bb".repeat(32).parse()?))
}

/// One push and the rollback after it, on one kind of links.
struct Run {
    wall: f64,
    cpu: f64,
    peak: f64,
    put: u64,
    pushed: u64,
    fetched: u64,
    orders: u64,
    fallback: usize,
    most_downloading: usize,
    rollback: f64,
    rollback_cpu: f64,
}

fn failed(report: &Report, step: &str) -> BTreeSet<String> {
    report
        .hosts
        .iter()
        .filter(|h| h.result == Outcome::Failed && h.step.to_string() == step)
        .map(|h| h.host.clone())
        .collect()
}

fn run(n: usize, links: SimLinks, pull: bool, dir: &std::path::Path) -> Result<Run> {
    let (base, deps) = ids()?;
    let sim = Sim::new(n, Some(base), links, FAULTS);
    let source = SimSource::new(dir, BUNDLE, DELTA, pull)?;
    let stage = stage(&sim);
    sim.set_target(deps);
    reset_peak();
    let (start, cpu0) = (Instant::now(), cpu());
    let report = fleet::push(&stage, &sim, &source, &deps, &Quiet);
    let (wall, push_cpu) = (start.elapsed().as_secs_f64(), cpu() - cpu0);
    ensure!(report.ok, "the push failed: {:?}", report.hosts.iter().find(|h| h.error.is_some()));
    ensure!(sim.currents().iter().all(|(_, c)| *c == Some(deps)), "not every host is on deps");
    let tally = sim.take();
    let reported: u64 = report.hosts.iter().map(|h| h.bytes).sum();
    ensure!(reported == tally.pushed, "the report says {reported} bytes pushed, the hosts got {}", tally.pushed);
    let pushed_to: BTreeSet<String> = report.hosts.iter().filter(|h| h.bytes > 0).map(|h| h.host.clone()).collect();
    if pull {
        let unreachable = sim.picked(SimFault::Unreachable);
        ensure!(pushed_to == unreachable, "pushed to {pushed_to:?}, but the unreachable are {unreachable:?}");
        // The hosts whose download was cut short fetched more than the delta.
        let whole = tally.downloads.iter().filter(|d| d.ok).count() as u64 * DELTA;
        ensure!(tally.fetched > whole || sim.picked(SimFault::Truncated).is_empty(), "no cut-short bytes counted");
    }
    let (start, cpu0) = (Instant::now(), cpu());
    let back = fleet::rollback(&stage, &sim, None, &Quiet)?;
    let (rollback, rollback_cpu) = (start.elapsed().as_secs_f64(), cpu() - cpu0);
    ensure!(back.ok && sim.currents().iter().all(|(_, c)| *c == Some(base)), "the rollback failed");
    Ok(Run {
        wall,
        cpu: push_cpu,
        peak: peak_mib(),
        put: source.uploaded().1,
        pushed: tally.pushed,
        fetched: tally.fetched,
        orders: tally.orders,
        fallback: pushed_to.len(),
        most_downloading: tally.most_downloading,
        rollback,
        rollback_cpu,
    })
}

/// Links that drop: mid-stage in a pull (the push fails those hosts and
/// flips none), then at the flip in a rollback (it flips every other host).
fn link_drops(n: usize, dir: &std::path::Path) -> Result<()> {
    let (base, deps) = ids()?;
    let drops = |at| SimFaults { link_drops: Some((100, at)), ..FAULTS };
    let sim = Sim::new(n, Some(base), LINKS, drops(SimStep::Stage));
    let source = SimSource::new(dir, BUNDLE, DELTA, true)?;
    let stage = stage(&sim);
    sim.set_target(deps);
    let start = Instant::now();
    let report = fleet::push(&stage, &sim, &source, &deps, &Quiet);
    let dropped = sim.picked(SimFault::LinkDrop);
    ensure!(!report.ok && failed(&report, "stage") == dropped, "the push's failed hosts are not the dropped ones");
    ensure!(sim.currents().iter().all(|(_, c)| *c == Some(base)), "a host flipped");
    println!(
        "{n:>5} hosts, links drop mid-stage on {} (seeded): push fails (exit 1) in {:.2} s naming exactly them at \
         stage; no host flipped",
        dropped.len(),
        start.elapsed().as_secs_f64()
    );
    sim.set_faults(FAULTS);
    ensure!(fleet::push(&stage, &sim, &source, &deps, &Quiet).ok, "the push without drops failed");
    sim.set_faults(drops(SimStep::Flip));
    let start = Instant::now();
    let back = fleet::rollback(&stage, &sim, None, &Quiet)?;
    let secs = start.elapsed().as_secs_f64();
    let dropped = sim.picked(SimFault::LinkDrop);
    ensure!(!back.ok && failed(&back, "rollback") == dropped, "the rollback's failed hosts are not the dropped ones");
    for (host, current) in sim.currents() {
        let want = if dropped.contains(&host) { deps } else { base };
        ensure!(current == Some(want), "{host} is on {current:?}");
    }
    println!(
        "{n:>5} hosts, links drop at the flip on {} (seeded): rollback fails (exit 1) in {secs:.2} s naming exactly \
         them; every other host is back on the base",
        dropped.len()
    );
    Ok(())
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "NO"
    }
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if args.is_empty() { vec![10, 100, 1000] } else { args };
    let dir = tempfile::tempdir()?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "canary → 50% → 100%, gates off; delta {} MiB; max_parallel {MAX_PARALLEL}, fetch_parallel {FETCH_PARALLEL}",
        mib(DELTA)
    );
    println!(
        "links: {} ms round trip per request; controller uplink 1 Gbit/s shared; each host ≤ 100 MB/s, slower by a \
         seeded 1–{}×; store egress 10 Gbit/s shared; agent retry after 200–400 ms",
        ROUND_TRIP.as_millis(),
        FAULTS.slow_spread
    );
    println!(
        "faults (seed {}): 1 in {} hosts cannot reach the store (pushed instead); 1 in {} get a download cut short \
         (the retry gets it)",
        FAULTS.seed,
        FAULTS.unreachable_one_in.unwrap_or(0),
        FAULTS.truncated_one_in.unwrap_or(0)
    );
    println!("overhead = the same run on free links (no network time): its wall and CPU\n");
    println!(
        "{:>5} {:<4} | {:>8} {:>7} | {:>9} {:>8} | {:>8} | {:>9} {:>9} {:>9} {:>9} {:>8} {:>5} | {:>8} {:>8} {:>9} {:>9} {:>6}",
        "hosts",
        "mode",
        "wall s",
        "CPU s",
        "overhead",
        "CPU s",
        "peak MiB",
        "→store",
        "→hosts",
        "store→",
        "orders",
        "fallback",
        "most",
        "rollback",
        "floor",
        "beyond",
        "free",
        "CPU s"
    );
    let mut results = Vec::new();
    for &n in &sizes {
        for pull in [false, true] {
            let how = if pull { "pull" } else { "push" };
            let r = run(n, LINKS, pull, dir.path())?;
            let o = run(n, SimLinks::FREE, pull, dir.path())?;
            let floor = 3.0 * n.div_ceil(MAX_PARALLEL) as f64 * ROUND_TRIP.as_secs_f64();
            println!(
                "{n:>5} {how:<4} | {:>8.2} {:>7.2} | {:>9.3} {:>8.3} | {:>8.0} | {:>5.0} MiB {:>5.0} MiB {:>5.0} MiB \
                 {:>5.0} KiB {:>8} {:>5} | {:>8.2} {:>8.2} {:>9.3} {:>9.3} {:>6.3}",
                r.wall,
                r.cpu,
                o.wall,
                o.cpu,
                r.peak.max(o.peak),
                mib(r.put),
                mib(r.pushed),
                mib(r.fetched),
                r.orders as f64 / 1024.0,
                r.fallback,
                r.most_downloading,
                r.rollback,
                floor,
                r.rollback - floor,
                o.rollback,
                r.rollback_cpu
            );
            results.push((n, pull, r, o, floor));
        }
    }
    println!(
        "\n→store: the controller's uploads to the store; →hosts: payload bytes from the controller (pull: the \
         fallback hosts'); store→: from the store, cut-short attempts included; orders: the URLs and hashes sent; \
         most: hosts downloading at once; rollback: wall on the real links, floor: its network time, beyond: the \
         difference, free: on free links, CPU s: its CPU on the real links. CPU is this process's user + system time (load-insensitive)."
    );
    println!();
    if let Some(&n) = sizes.iter().max() {
        link_drops(n, dir.path())?;
    }

    // The goals, at the largest size run.
    let Some(&n) = sizes.iter().max() else { return Ok(()) };
    let at = |pull: bool| results.iter().find(|r| r.0 == n && r.1 == pull);
    let pulls: Vec<_> = results.iter().filter(|r| r.1).collect();
    let flat = pulls.iter().all(|r| r.2.put == DELTA && r.2.pushed == r.2.fallback as u64 * DELTA);
    let per_host = pulls.iter().map(|r| r.2.orders as f64 / r.0 as f64).fold(0.0, f64::max);
    let overhead = [at(false), at(true)].iter().flatten().map(|r| r.3.wall).fold(0.0, f64::max);
    let cpu = [at(false), at(true)].iter().flatten().map(|r| r.2.cpu.max(r.3.cpu)).fold(0.0, f64::max);
    let beyond =
        [at(false), at(true)].iter().flatten().map(|r| (r.2.rollback - r.4).max(r.3.rollback)).fold(0.0, f64::max);
    let peak = results.iter().map(|r| r.2.peak.max(r.3.peak)).fold(0.0, f64::max);
    println!("{:<52} | {:<62} | met", "goal (issue 17)", "measured");
    println!(
        "{:<52} | {:<62} | {}",
        "controller bytes flat in the number of hosts (pull)",
        format!(
            "one {} MiB upload at each size; pushed only to fallback hosts; orders ≤ {per_host:.0} B/host",
            mib(DELTA)
        ),
        yes(flat && per_host <= 1024.0)
    );
    println!(
        "{:<52} | {:<62} | {}",
        format!("orchestration overhead < 5 s at {n} hosts"),
        format!("{overhead:.3} s wall on free links (CPU ≤ {cpu:.2} s on either links)"),
        yes(overhead < 5.0)
    );
    println!(
        "{:<52} | {:<62} | {}",
        format!("rollback of {n} hosts < 2 s beyond network time"),
        format!("{beyond:.3} s (the larger of wall − floor and free-links wall)"),
        yes(beyond < 2.0)
    );
    println!(
        "{:<52} | {:<62} | {}",
        "controller peak memory < 300 MB",
        format!("{:.0} MiB resident at most ({:.0} MB)", peak, peak * 1.048576),
        yes(peak * 1.048576 < 300.0)
    );
    Ok(())
}
