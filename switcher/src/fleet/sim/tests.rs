use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_formats::ReleaseId;

use super::{Sim, SimFault, SimFaults, SimLinks, SimSource, SimStep};
use crate::fleet::{self, Outcome, Quiet, Report, Stage};

const DELTA: u64 = 1_000_000;

fn ids() -> (ReleaseId, ReleaseId) {
    ("aa".repeat(32).parse().unwrap(), "bb".repeat(32).parse().unwrap())
}

fn stage(sim: &Sim, max_parallel: usize, fetch_parallel: usize) -> Stage {
    Stage { max_parallel, fetch_parallel, ..Stage::new("sim", sim.specs()) }
}

/// Each download from the store takes 20 ms (a 1 MB delta at 50 MB/s).
fn slow_store() -> SimLinks {
    SimLinks { host_bytes_per_sec: 50_000_000, ..SimLinks::FREE }
}

fn failed(report: &Report) -> BTreeMap<String, String> {
    report.hosts.iter().filter(|h| h.result == Outcome::Failed).map(|h| (h.host.clone(), h.step.to_string())).collect()
}

#[test]
fn the_real_push_moves_simulated_hosts_pulling_and_those_that_cannot_are_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let faults = SimFaults { seed: 1, unreachable_one_in: Some(5), ..SimFaults::default() };
    let sim = Sim::new(50, Some(base), SimLinks::FREE, faults);
    sim.set_target(deps);
    let stage = stage(&sim, 8, 4);
    let report = fleet::push(&stage, &sim, &source, &deps, &Quiet);
    assert!(report.ok, "{report:?}");
    assert!(sim.currents().iter().all(|(_, c)| *c == Some(deps)));
    let unreachable = sim.picked(SimFault::Unreachable);
    assert!(!unreachable.is_empty() && unreachable.len() < 50, "{unreachable:?}");
    let pushed: BTreeSet<String> = report.hosts.iter().filter(|h| h.bytes > 0).map(|h| h.host.clone()).collect();
    assert_eq!(pushed, unreachable, "the hosts pushed the bytes are exactly those that cannot reach the store");
    let n = unreachable.len() as u64;
    let tally = sim.take();
    assert_eq!((tally.pushed, tally.fetched), (n * DELTA, (50 - n) * DELTA));
    assert_eq!(source.uploaded(), (1, DELTA), "one delta put in the store, once");
    assert_eq!(report.batches.iter().map(Vec::len).collect::<Vec<_>>(), [1, 24, 25]);
    let back = fleet::rollback(&stage, &sim, None, &Quiet).unwrap();
    assert!(back.ok && sim.currents().iter().all(|(_, c)| *c == Some(base)));
}

#[test]
fn seeded_faults_pick_the_same_hosts_for_the_same_seed_and_others_for_another() {
    let faults = |seed| SimFaults {
        seed,
        unreachable_one_in: Some(10),
        truncated_one_in: Some(10),
        slow_spread: 8,
        link_drops: Some((10, SimStep::Stage)),
    };
    let picks = |seed| {
        let sim = Sim::new(1000, None, SimLinks::FREE, faults(seed));
        [SimFault::Unreachable, SimFault::Truncated, SimFault::LinkDrop].map(|f| sim.picked(f))
    };
    let (a, again, other) = (picks(7), picks(7), picks(8));
    assert_eq!(a, again);
    for (set, other) in a.iter().zip(&other) {
        assert!((50..150).contains(&set.len()), "about one in 10 of 1000: {}", set.len());
        assert_ne!(set, other, "another seed picks other hosts");
    }
    assert_ne!(a[0], a[1], "each fault draws its own hosts");
    let spread: Vec<f64> = (1..=1000).map(|i| faults(7).slowdown(&format!("sim{i}"))).collect();
    assert!(spread.iter().all(|s| (1.0..=8.0).contains(s)));
    assert!(spread.iter().any(|s| *s > 6.0) && spread.iter().any(|s| *s < 1.5), "from full speed to 1/8");
}

#[test]
fn a_download_cut_short_is_tried_again_and_both_attempts_bytes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let faults = SimFaults { seed: 3, truncated_one_in: Some(4), ..SimFaults::default() };
    let sim = Sim::new(40, Some(base), SimLinks::FREE, faults);
    sim.set_target(deps);
    let report = fleet::push(&stage(&sim, 8, 8), &sim, &source, &deps, &Quiet);
    assert!(report.ok, "{report:?}");
    assert!(report.hosts.iter().all(|h| h.bytes == 0 && h.fetched == DELTA), "every host pulled, none was pushed");
    let truncated = sim.picked(SimFault::Truncated);
    assert!(!truncated.is_empty());
    let cut: u64 = truncated.iter().map(|h| (DELTA as f64 * faults.cut(h)) as u64).sum();
    let tally = sim.take();
    assert_eq!((tally.pushed, tally.fetched), (0, 40 * DELTA + cut));
    assert!(tally.downloads.iter().all(|d| d.ok));
}

#[test]
fn a_link_that_drops_mid_stage_fails_its_host_and_nothing_flips_anywhere() {
    let (base, deps) = ids();
    for pull in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, pull).unwrap();
        let faults = SimFaults { seed: 5, link_drops: Some((6, SimStep::Stage)), ..SimFaults::default() };
        let sim = Sim::new(60, Some(base), SimLinks::FREE, faults);
        sim.set_target(deps);
        let report = fleet::push(&stage(&sim, 8, 4), &sim, &source, &deps, &Quiet);
        assert!(!report.ok);
        let dropped = sim.picked(SimFault::LinkDrop);
        assert!(!dropped.is_empty());
        let expected: BTreeMap<String, String> = dropped.iter().map(|h| (h.clone(), "stage".to_owned())).collect();
        assert_eq!(failed(&report), expected, "pull {pull}");
        assert!(sim.currents().iter().all(|(_, c)| *c == Some(base)), "no host flipped");
    }
}

#[test]
fn a_rollback_whose_links_drop_at_the_flip_flips_every_other_host_and_names_those() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let sim = Sim::new(60, Some(base), SimLinks::FREE, SimFaults::default());
    sim.set_target(deps);
    let stage = stage(&sim, 8, 4);
    assert!(fleet::push(&stage, &sim, &source, &deps, &Quiet).ok);
    sim.set_faults(SimFaults { seed: 9, link_drops: Some((6, SimStep::Flip)), ..SimFaults::default() });
    let back = fleet::rollback(&stage, &sim, None, &Quiet).unwrap();
    assert!(!back.ok);
    let dropped = sim.picked(SimFault::LinkDrop);
    assert!(!dropped.is_empty());
    let expected: BTreeMap<String, String> = dropped.iter().map(|h| (h.clone(), "rollback".to_owned())).collect();
    assert_eq!(failed(&back), expected);
    for (host, current) in sim.currents() {
        let want = if dropped.contains(&host) { deps } else { base };
        assert_eq!(current, Some(want), "{host}");
    }
}

#[test]
fn at_most_fetch_parallel_hosts_download_at_once_and_that_many_do() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let sim = Sim::new(40, Some(base), slow_store(), SimFaults::default());
    sim.set_target(deps);
    let report = fleet::push(&stage(&sim, 16, 4), &sim, &source, &deps, &Quiet);
    assert!(report.ok, "{report:?}");
    let tally = sim.take();
    assert_eq!(tally.downloads.len(), 40);
    assert_eq!(tally.most_downloading, 4, "16 hosts staged at once, 4 of them downloading");
}

#[test]
fn the_first_download_of_each_payload_ends_before_any_other_of_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let other: ReleaseId = "cc".repeat(32).parse().unwrap();
    let sim = Sim::new(30, Some(base), slow_store(), SimFaults::default());
    for i in (2..=30).step_by(2) {
        sim.set_current(&format!("sim{i}"), other);
    }
    sim.set_target(deps);
    let report = fleet::push(&stage(&sim, 16, 8), &sim, &source, &deps, &Quiet);
    assert!(report.ok, "{report:?}");
    assert_eq!(source.uploaded().0, 2, "two bases, two deltas");
    let mut by_url: BTreeMap<String, Vec<super::Download>> = BTreeMap::new();
    for d in sim.take().downloads {
        by_url.entry(d.url.clone()).or_default().push(d);
    }
    assert_eq!(by_url.len(), 2);
    for downloads in by_url.values_mut() {
        assert_eq!(downloads.len(), 15);
        downloads.sort_by_key(|d| d.start);
        let warmer = &downloads[0];
        for d in &downloads[1..] {
            assert!(
                d.start >= warmer.end,
                "{} started {:?} before {} (the first) ended",
                d.host,
                warmer.end - d.start,
                warmer.host
            );
        }
    }
}

#[test]
fn a_first_download_that_fails_holds_no_one_back() {
    let dir = tempfile::tempdir().unwrap();
    let source = SimSource::new(dir.path(), 10 * DELTA, DELTA, true).unwrap();
    let (base, deps) = ids();
    let faults = SimFaults { seed: 1, unreachable_one_in: Some(1), ..SimFaults::default() };
    let sim = Sim::new(20, Some(base), SimLinks { round_trip: Duration::from_millis(5), ..slow_store() }, faults);
    sim.set_target(deps);
    let report = fleet::push(&stage(&sim, 8, 4), &sim, &source, &deps, &Quiet);
    assert!(report.ok, "{report:?}");
    let tally = sim.take();
    assert_eq!(
        (tally.downloads.len(), tally.pushed, tally.fetched),
        (20, 20 * DELTA, 0),
        "every host tried, then was pushed"
    );
    assert!(report.hosts.iter().all(|h| h.notes.iter().any(|n| n.contains("cannot reach the store"))));
}
