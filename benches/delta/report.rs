//! What the benchmark prints: the releases and commands, then the encode and apply
//! tables, the goals, and the byte ratios.

use std::time::Duration;

use anyhow::Result;

use crate::common::{fmt_mib, list, median_by, secs, verdict};
use crate::fixture::{Case, Release};
use crate::measure::{Applied, FerryDelta, Results};
use crate::tools::{file_size, kib_mib, median, yes_no, Staged};
use crate::{Bench, GNU_TIME, GOAL_DEPS_VS_XDELTA, GOAL_ENCODE_VS_XDELTA, GOAL_HOT_BYTES, GOAL_STAGE_VS_CP_AL};
use crate::{GOAL_UNTAR_VS_STAGE, HOT_EDITS, RSYNC_FLAGS};

/// The releases, and the encode commands as run.
pub fn releases(bench: &Bench<'_>, releases: &[&Release]) -> Result<()> {
    let long = bench.long;
    for r in releases {
        println!(
            "release {:<4} {}  {} files, {} in files; bundle {} ({} bytes); tar {}",
            r.label,
            r.id.short(12),
            r.files,
            fmt_mib(r.bytes),
            fmt_mib(r.size),
            r.size,
            fmt_mib(file_size(&bench.tar_of(r))?)
        );
    }
    println!("hot = base + one line appended to {}", HOT_EDITS.map(|e| e.0).join(" and "));
    println!();
    println!("encode commands (base.tar / target.tar: the bundles, zstd -dc):");
    println!("  ferry delta BASE TARGET --json          (whole command; <store>/deltas removed before each run)");
    println!("  one_stream_size (in-process)            (timed: the one zstd -19 compression and the level-16 head, not the bundle reads)");
    println!("  xdelta3 -e -9 -f -s base.tar target.tar OUT");
    println!(
        "  zstd -q -f --long={long} --patch-from=base.tar target.tar -o OUT   (level 3 default, 1 thread default)"
    );
    println!("  rsync {} TARGET_TREE/ COPY/   (COPY: cp -a of the base tree)", RSYNC_FLAGS.join(" "));

    Ok(())
}

/// The encode table, then each case's details, the sanity checks and memory.
pub fn encode(bench: &Bench<'_>, cases: &[Case<'_>], results: &[Results], have_time: bool) {
    encode_table(bench.long, cases, results);
    encode_details(cases, results, have_time);
}

/// One row of a table with a (figure, time) pair per case, then every run's times.
fn row<T>(name: &str, cells: &[(T, Duration, String)])
where
    T: std::fmt::Display,
{
    let mut line = format!("{name:<40}");
    for (figure, time, _) in cells {
        line += &format!("{figure:>12} {:>7.3} s   ", secs(*time));
    }
    line += &cells.iter().map(|c| c.2.as_str()).collect::<Vec<_>>().join(" | ");
    println!("{line}");
}

/// The header of such a table.
fn header(title: &str, figure: &str, cases: &[Case<'_>]) {
    let mut line = format!("{title:<40}");
    for c in cases {
        line += &format!("{:>12} {:>9}   ", format!("{} {figure}", c.name), "time");
    }
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    println!("{line}runs (s) {}", names.join(" | "));
}

fn encode_table(long: u32, cases: &[Case<'_>], results: &[Results]) {
    println!();
    header("encode (bytes, median wall)", "bytes", cases);
    let pick = |f: &dyn Fn(&Results) -> (u64, Duration, String)| results.iter().map(f).collect::<Vec<_>>();
    row(
        "ferry delta (per-file ops; head -16)",
        &pick(&|r| {
            let m = median_by(&r.ferry, |f| f.wall);
            (m.bytes, m.wall, list(r.ferry.iter().map(|f| f.wall), 3))
        }),
    );
    row(
        "one_stream_size (one zstd -19 stream; head -16)",
        &pick(&|r| {
            let m = median_by(&r.one_stream, |o| o.0);
            (m.1, m.0, list(r.one_stream.iter().map(|o| o.0), 3))
        }),
    );
    row(
        "xdelta3 -e -9",
        &pick(&|r| {
            let m = median_by(&r.xdelta, |x| x.0);
            (m.1, m.0, list(r.xdelta.iter().map(|x| x.0), 3))
        }),
    );
    row(
        &format!("zstd -3 --long={long} --patch-from"),
        &pick(&|r| {
            let m = median_by(&r.zstd, |z| z.0);
            (m.1, m.0, list(r.zstd.iter().map(|z| z.0), 3))
        }),
    );
    row(
        "rsync --no-whole-file -z (bytes sent)",
        &pick(&|r| {
            let m = median_by(&r.rsync, |x| x.wall);
            (m.sent, m.wall, list(r.rsync.iter().map(|x| x.wall), 3))
        }),
    );
    println!();
    header("encode CPU (user+sys, median)", "bytes", cases);
    row(
        "ferry delta",
        &pick(&|r| {
            let m = median_by(&r.ferry, |f| f.cpu);
            (m.bytes, m.cpu, list(r.ferry.iter().map(|f| f.cpu), 3))
        }),
    );
    row(
        "xdelta3 -e -9",
        &pick(&|r| {
            let m = median_by(&r.xdelta, |x| x.2);
            (m.1, m.2, list(r.xdelta.iter().map(|x| x.2), 3))
        }),
    );
}

fn encode_details(cases: &[Case<'_>], results: &[Results], have_time: bool) {
    println!();
    for (case, r) in cases.iter().zip(results) {
        let f = median_by(&r.ferry, |f| f.wall);
        let x = median_by(&r.rsync, |x| x.wall);
        println!(
            "{:<4}: ferry {} patched, {} new, {} reused files; elapsed_ms {} in-process of {} ms wall",
            case.name,
            f.patches,
            f.literals,
            f.reused,
            f.elapsed_ms,
            f.wall.as_millis()
        );
        println!(
            "{:<4}: rsync bytes sent {}, received {} (block checksums), literal data {}",
            case.name, x.sent, x.received, x.literal
        );
    }
    println!(
        "sanity: ferry delta bytes across runs {}; xdelta3 {}; zstd {}; one stream {}",
        same_across(results, |r| r.ferry.iter().map(|f| f.bytes).collect()),
        same_across(results, |r| r.xdelta.iter().map(|x| x.1).collect()),
        same_across(results, |r| r.zstd.iter().map(|z| z.1).collect()),
        same_across(results, |r| r.one_stream.iter().map(|o| o.1).collect()),
    );
    for (case, r) in cases.iter().zip(results) {
        println!(
            "sanity: {:<4} xdelta3 -d gives target.tar: {}; zstd -d --patch-from gives target.tar: {}; rsync'd copy equals the target tree (diff -r): {}",
            case.name,
            yes_no(r.xdelta_roundtrip),
            yes_no(r.zstd_roundtrip),
            yes_no(r.rsync_same)
        );
    }
    if have_time {
        for (case, r) in cases.iter().zip(results) {
            let m = &r.rss;
            println!(
                "max RSS {:<4} (one untimed run each, MiB): ferry delta {}, xdelta3 enc {} dec {}, zstd enc {} dec {}, ferry stage {}",
                case.name,
                kib_mib(m.ferry),
                kib_mib(m.xdelta),
                kib_mib(m.xdelta_dec),
                kib_mib(m.zstd),
                kib_mib(m.zstd_dec),
                kib_mib(m.stage)
            );
        }
    } else {
        println!("max RSS: not measured ({GNU_TIME} is missing)");
    }
}

/// The medians the apply table and the goals compare.
struct ApplyMedians<'a> {
    cp_al: Duration,
    stage: Vec<&'a (Duration, Staged)>,
    untar: Vec<Duration>,
}

impl<'a> ApplyMedians<'a> {
    fn new(results: &'a [Results], applied: &Applied) -> Self {
        Self {
            cp_al: median(&applied.cp_al),
            stage: results.iter().map(|r| median_by(&r.stage, |s| s.0)).collect(),
            untar: results.iter().map(|r| median(&r.untar)).collect(),
        }
    }
}

/// The apply table and what each stage wrote.
pub fn apply(cases: &[Case<'_>], results: &[Results], applied: &Applied) {
    println!();
    header("apply onto a host holding base (median)", "", cases);
    let ApplyMedians { cp_al: cp_al_med, stage: stage_med, untar: untar_med } = ApplyMedians::new(results, applied);
    let cells = |f: &dyn Fn(usize) -> (String, Duration, String)| (0..cases.len()).map(f).collect::<Vec<_>>();
    row(
        "ferry host stage DELTA (verified)",
        &cells(&|c| (String::new(), stage_med[c].0, list(results[c].stage.iter().map(|s| s.0), 3))),
    );
    println!(
        "{:<40}{:>12} {:>7.3} s   (the same for every case)   {}",
        "cp -al base release",
        "",
        secs(cp_al_med),
        list(applied.cp_al.iter().copied(), 3)
    );
    row(
        "zstd -dc BUNDLE | tar -x (full)",
        &cells(&|c| (String::new(), untar_med[c], list(results[c].untar.iter().copied(), 3))),
    );
    let fresh = median_by(&results[1].bundle_stage, |s| s.0);
    println!(
        "{:<40}{:>12} {:>7.3} s   (deps)   {}",
        "ferry host stage BUNDLE (fresh host)",
        "",
        secs(fresh.0),
        list(results[1].bundle_stage.iter().map(|s| s.0), 3)
    );
    println!();
    for (case, (_, st)) in cases.iter().zip(&stage_med) {
        println!(
            "{:<4}: stage wrote {} files ({} bytes), hardlinked {}, copied {}; ferry's elapsed {} ms",
            case.name, st.written, st.written_bytes, st.linked, st.copied, st.elapsed_ms
        );
    }
    println!(
        "base release on the host: {} files (what cp -al links); the stage ends with syncfs, cp -al and tar do not sync",
        applied.base_files
    );
}

/// Each goal, met or missed, and how many were met.
pub fn goals(cases: &[Case<'_>], results: &[Results], applied: &Applied) {
    let ApplyMedians { cp_al: cp_al_med, stage: stage_med, untar: untar_med } = ApplyMedians::new(results, applied);
    println!();
    let mut met = 0;
    let mut goals = 0;
    let mut goal = |line: String, ok: bool| {
        goals += 1;
        met += usize::from(ok);
        println!("{line}  {}", verdict(ok));
    };
    let ferry_med: Vec<&FerryDelta> = results.iter().map(|r| median_by(&r.ferry, |f| f.wall)).collect();
    let xdelta_med: Vec<&(Duration, u64, Duration)> = results.iter().map(|r| median_by(&r.xdelta, |x| x.0)).collect();
    let hot_bytes = ferry_med[0].bytes;
    goal(
        format!("hot  delta bytes                         = {hot_bytes} (goal <= {GOAL_HOT_BYTES})"),
        hot_bytes <= GOAL_HOT_BYTES,
    );
    for (c, case) in cases.iter().enumerate().skip(1) {
        let r = ferry_med[c].bytes as f64 / xdelta_med[c].1 as f64;
        goal(
            format!("{:<4} bytes  ferry / xdelta3              = {r:.3} (goal <= {GOAL_DEPS_VS_XDELTA:.2})", case.name),
            r <= GOAL_DEPS_VS_XDELTA,
        );
    }
    for (c, case) in cases.iter().enumerate() {
        let r = secs(ferry_med[c].wall) / secs(xdelta_med[c].0);
        goal(
            format!(
                "{:<4} encode ferry / xdelta3 time        = {r:.3} (goal <= {GOAL_ENCODE_VS_XDELTA:.2})",
                case.name
            ),
            r <= GOAL_ENCODE_VS_XDELTA,
        );
    }
    for (c, case) in cases.iter().enumerate() {
        let r = secs(stage_med[c].0) / secs(cp_al_med);
        goal(
            format!("{:<4} stage / cp -al time               = {r:.3} (goal <= {GOAL_STAGE_VS_CP_AL:.2})", case.name),
            r <= GOAL_STAGE_VS_CP_AL,
        );
    }
    for (c, case) in cases.iter().enumerate() {
        let r = secs(untar_med[c]) / secs(stage_med[c].0);
        goal(
            format!("{:<4} untar / stage time (speed-up)     = {r:.2}x (goal >= {GOAL_UNTAR_VS_STAGE:.1}x)", case.name),
            r >= GOAL_UNTAR_VS_STAGE,
        );
    }
    println!("goals met: {met} of {goals}");
}

/// Each case's bytes against zstd --patch-from, rsync and one stream.
pub fn ratios(cases: &[Case<'_>], results: &[Results]) {
    let ferry_med: Vec<&FerryDelta> = results.iter().map(|r| median_by(&r.ferry, |f| f.wall)).collect();
    println!();
    for (c, case) in cases.iter().enumerate() {
        let r = &results[c];
        let f = ferry_med[c];
        let one = median_by(&r.one_stream, |o| o.0);
        let z = median_by(&r.zstd, |z| z.0);
        let x = median_by(&r.rsync, |x| x.wall);
        let cpu = secs(median_by(&r.ferry, |f| f.cpu).cpu) / secs(median_by(&r.xdelta, |x| x.2).2);
        println!("{:<4} encode CPU ferry / xdelta3 = {cpu:.3} (user+sys medians; not a goal)", case.name);
        println!(
            "{:<4} bytes ferry / zstd --patch-from = {:.3}; ferry / rsync sent = {:.3}; per-file / one stream = {:.3} ({} vs {} bytes: {})",
            case.name,
            f.bytes as f64 / z.1 as f64,
            f.bytes as f64 / x.sent as f64,
            f.bytes as f64 / one.1 as f64,
            f.bytes,
            one.1,
            match f.bytes.cmp(&one.1) {
                std::cmp::Ordering::Less => "per-file wins",
                std::cmp::Ordering::Equal => "a tie",
                std::cmp::Ordering::Greater => "one stream wins",
            }
        );
    }
}

fn same_across(results: &[Results], sizes: impl Fn(&Results) -> Vec<u64>) -> &'static str {
    if results.iter().all(|r| sizes(r).windows(2).all(|w| w[0] == w[1])) {
        "identical"
    } else {
        "DIFFER"
    }
}
