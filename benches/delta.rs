//! The delta and staging benchmark of issue 3: `ferry delta` and `ferry host stage`
//! against the tools a user would use instead, on the same releases, in the same run.
//!
//! Run it with `scripts/bench delta` (it makes the fixture first), or directly:
//! `cargo bench --bench delta -- DELTA_DIR`, where DELTA_DIR holds `base/` (Django 4.2.10)
//! and `deps/` (Django 4.2.11), both made by `fixtures/bench/make-release.sh` at the path
//! DELTA_DIR/tree and then renamed: a venv records its path in its bytecode, so trees made
//! at two paths differ in every `.pyc`. Each release is built from a `cp -a` copy at
//! DELTA_DIR/tree again. `FERRY_BENCH_RUNS` (default 3) sets the repetitions; medians are
//! reported.
//!
//! Releases:
//! - base: `base/` as made;
//! - hot:  base with two small app files edited (one line appended to each);
//! - deps: `deps/`, the same service with Django 4.2.11.
//!
//! Measured, for base→hot and base→deps:
//! - encode: `ferry delta` (whole command, wall; `<store>/deltas/` removed first so it
//!   really encodes), `ferry_builder::delta::one_stream_size` (in-process: one zstd
//!   stream over all changed files, compression time only), `xdelta3 -e -9` and
//!   `zstd --patch-from --long=N` (default level 3, one thread) on the two bundles
//!   decompressed (ferry bundles are reproducible tars), and `rsync -a --no-whole-file -z
//!   --delete --stats` of the target tree onto a `cp -a` copy of the base tree ("Total
//!   bytes sent"; a local rsync with --no-whole-file still runs its delta algorithm);
//! - apply: `ferry host stage <delta>` onto a host holding base (every file is verified:
//!   written ones as decoded, linked ones hashed again; ends with a syncfs), against
//!   `cp -al` of the staged base release and a full `zstd -dc <bundle> | tar -x`.
//!
//! Everything runs warm-cache (no page cache is dropped). Tools alternate their order from
//! run to run; each timed command starts after an untimed `sync`, and nothing is deleted
//! until the end (each run writes new directories; staged targets are renamed away).
//! Scratch stores, tars, trees and hosts are made in DELTA_DIR and removed afterwards
//! (several GB with the default 3 runs).
//! Goals missed are reported, not failed; a failing command fails the benchmark.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use ferry_builder::Store;
use ferry_formats::ReleaseId;
use serde_json::Value;

use common::{fmt_mib, list, median_by, secs, verdict};

mod common;

const GOAL_HOT_BYTES: u64 = 600;
const GOAL_DEPS_VS_XDELTA: f64 = 1.0;
const GOAL_ENCODE_VS_XDELTA: f64 = 0.5;
const GOAL_STAGE_VS_CP_AL: f64 = 1.5;
const GOAL_UNTAR_VS_STAGE: f64 = 4.0;
/// The hot fix: one line appended to each of two app files.
const HOT_EDITS: [(&str, &str); 2] = [
    ("app/shop/views.py", "\nPAGE_SIZE = 50  # hot fix\n"),
    ("app/shop/models.py", "\nMAX_QUANTITY = 20  # hot fix\n"),
];
const RSYNC_FLAGS: [&str; 5] = ["-a", "--no-whole-file", "-z", "--delete", "--stats"];
const GNU_TIME: &str = "/usr/bin/time";

fn main() -> Result<()> {
    // cargo bench passes `--bench` (and maybe other flags); the fixture is the first plain argument.
    let dir = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(PathBuf::from).context(
        "usage: cargo bench --bench delta -- DELTA_DIR   (see the top of benches/delta.rs, or run scripts/bench delta)",
    )?;
    let dir = fs_err::canonicalize(&dir)?;
    let (base_src, deps_src, build_at) = (dir.join("base"), dir.join("deps"), dir.join("tree"));
    for tree in [&base_src, &deps_src] {
        ensure!(tree.join("ferry.toml").is_file(), "{} has no ferry.toml; is it a bench fixture?", tree.display());
    }
    let runs: usize = match std::env::var("FERRY_BENCH_RUNS") {
        Ok(s) => s.parse().ok().filter(|&n| n > 0).context("FERRY_BENCH_RUNS must be a positive integer")?,
        Err(_) => 3,
    };
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let started = Instant::now();

    println!(
        "fixture: {} (base: Django {}, deps: Django {}; every release built at {})",
        dir.display(),
        marker(&dir, "base"),
        marker(&dir, "deps"),
        build_at.display()
    );
    println!("ferry: {}", ferry.display());
    println!("{cores} cores; {runs} runs each, medians; warm page cache throughout (nothing is dropped)");

    let scratch = tempfile::Builder::new()
        .prefix(".ferry-bench-delta-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot make a scratch dir in {}", dir.display()))?;
    let s = scratch.path();
    let store = s.join("store");

    // --- the three releases, built untimed into one store ---------------------------------
    remove_bench_tree(&build_at)?;
    let hot_tree = s.join("tree-hot");
    let base = build(ferry, &base_src, &build_at, &store, "base", &[], &s.join("tree-base"))?;
    let hot = build(ferry, &base_src, &build_at, &store, "hot", &HOT_EDITS, &hot_tree)?;
    let deps = build(ferry, &deps_src, &build_at, &store, "deps", &[], &s.join("tree-deps"))?;
    let tars = s.join("tars");
    fs_err::create_dir(&tars)?;
    for r in [&base, &hot, &deps] {
        run(Command::new("zstd").args(["-dcq", "-o"]).arg(tars.join(format!("{}.tar", r.label))).arg(&r.bundle))?;
    }
    let tar_of = |r: &Release| tars.join(format!("{}.tar", r.label));
    let tar_sizes: Vec<u64> = [&base, &hot, &deps].iter().map(|r| file_size(&tar_of(r))).collect::<Result<_>>()?;
    let max_tar = *tar_sizes.iter().max().expect("three tars");
    // The smallest window that covers the reference, as encoder and decoder both need it.
    let long = (64 - (max_tar - 1).leading_zeros()).max(27);
    for r in [&base, &hot, &deps] {
        println!(
            "release {:<4} {}  {} files, {} in files; bundle {} ({} bytes); tar {}",
            r.label,
            r.id.short(12),
            r.files,
            fmt_mib(r.bytes),
            fmt_mib(r.size),
            r.size,
            fmt_mib(file_size(&tar_of(r))?)
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

    let cases = [Case::new("hot", &base, &hot, &hot_tree), Case::new("deps", &base, &deps, &deps_src)];
    let mut results: Vec<Results> = cases.iter().map(|_| Results::default()).collect();

    // Untimed warm-up: the tars, every tool's binary.
    for tar in [&base, &hot, &deps].map(tar_of) {
        run(Command::new("cat").arg(tar).stdout(Stdio::null()))?;
    }
    run(Command::new(ferry).arg("--version"))?;
    run(Command::new("xdelta3").arg("-V"))?;
    run(Command::new("zstd").arg("--version"))?;
    run(Command::new("rsync").arg("--version"))?;

    // --- encode ------------------------------------------------------------------------------
    let enc = s.join("enc");
    fs_err::create_dir(&enc)?;
    let deltas = store.join("deltas");
    // The delta files the stage runs use: each encode's output, copied out of the store.
    let delta_files: Vec<PathBuf> = cases.iter().map(|c| s.join(format!("{}.delta", c.name))).collect();
    for i in 0..runs {
        for (c, (case, res)) in cases.iter().zip(&mut results).enumerate() {
            let vcdiff = enc.join(format!("{}.vcdiff", case.name));
            let zst = enc.join(format!("{}.tar.zst-patch", case.name));
            let kept = &delta_files[c];
            for tool in rotated(&[Encoder::Ferry, Encoder::Xdelta, Encoder::Zstd], i) {
                if !matches!(tool, Encoder::Ferry) {
                    settle()?;
                }
                match tool {
                    Encoder::Ferry => {
                        remove_if_exists(&deltas)?;
                        settle()?;
                        let (wall, out) = run(ferry_cmd(ferry)
                            .args(["delta", "--json", "--quiet", "--store"])
                            .arg(&store)
                            .arg(case.base.id.to_hex())
                            .arg(case.target.id.to_hex()))?;
                        let json: Value = serde_json::from_slice(&out).context("ferry delta --json printed no JSON")?;
                        ensure!(
                            json.get("cached").and_then(Value::as_bool) == Some(false),
                            "ferry delta {} run {i} was not encoded anew",
                            case.name
                        );
                        let bytes = num(&json, "bytes")?;
                        let path = json.get("path").and_then(Value::as_str).context("JSON lacks path")?;
                        fs_err::copy(path, kept)?;
                        ensure!(file_size(kept)? == bytes, "{path} is not the {bytes} bytes ferry delta reported");
                        res.ferry.push(FerryDelta {
                            wall,
                            bytes,
                            patches: num(&json, "patches")?,
                            literals: num(&json, "literals")?,
                            reused: num(&json, "reused_files")?,
                            elapsed_ms: num(&json, "elapsed_ms")?,
                        });
                    }
                    Encoder::Xdelta => {
                        let (wall, _) = run(Command::new("xdelta3")
                            .args(["-e", "-9", "-f", "-s"])
                            .arg(tar_of(case.base))
                            .arg(tar_of(case.target))
                            .arg(&vcdiff))?;
                        res.xdelta.push((wall, file_size(&vcdiff)?));
                    }
                    Encoder::Zstd => {
                        let (wall, _) = run(Command::new("zstd")
                            .args(["-q", "-f"])
                            .arg(format!("--long={long}"))
                            .arg(patch_from(&tar_of(case.base)))
                            .arg(tar_of(case.target))
                            .arg("-o")
                            .arg(&zst))?;
                        res.zstd.push((wall, file_size(&zst)?));
                    }
                }
            }
        }
    }
    // ferry's per-file ops against one stream over the same changed files.
    let st = Store::new(&store);
    for i in 0..runs {
        for (case, res) in cases.iter().zip(&mut results) {
            let (bytes, time) = ferry_builder::delta::one_stream_size(&st, &case.base.id, &case.target.id)
                .with_context(|| format!("one_stream_size {} run {i}", case.name))?;
            res.one_stream.push((time, bytes));
        }
    }

    // rsync: the target tree onto a fresh copy of the base tree.
    for i in 0..runs {
        for (case, res) in cases.iter().zip(&mut results) {
            let rsync_dest = s.join(format!("rsync-{}-{i}", case.name));
            run(Command::new("cp").arg("-a").arg(&base_src).arg(&rsync_dest))?;
            settle()?;
            let (wall, out) = run(Command::new("rsync")
                .env("LC_ALL", "C")
                .args(RSYNC_FLAGS)
                .arg(slash(case.tree))
                .arg(slash(&rsync_dest)))
            .with_context(|| format!("rsync {} run {i}", case.name))?;
            let text = String::from_utf8_lossy(&out);
            res.rsync.push(Rsync {
                wall,
                sent: stat(&text, "Total bytes sent")?,
                received: stat(&text, "Total bytes received")?,
                literal: stat(&text, "Literal data")?,
            });
            if i + 1 == runs {
                // Untimed: the copy is now the target tree.
                let diff = Command::new("diff")
                    .args(["-rq", "--no-dereference"])
                    .arg(case.tree)
                    .arg(&rsync_dest)
                    .output()
                    .context("cannot run diff")?;
                res.rsync_same = diff.status.success();
            }
        }
    }

    // --- memory and round trips (untimed, once each) ------------------------------------------
    let have_time = Path::new(GNU_TIME).is_file();
    for (case, res) in cases.iter().zip(&mut results) {
        let vcdiff = enc.join(format!("{}.vcdiff", case.name));
        let zst = enc.join(format!("{}.tar.zst-patch", case.name));
        let back = enc.join("back.tar");
        remove_if_exists(&deltas)?;
        res.rss.ferry = max_rss(
            have_time,
            enc.as_path(),
            ferry_cmd(ferry)
                .args(["delta", "--quiet", "--store"])
                .arg(&store)
                .arg(case.base.id.to_hex())
                .arg(case.target.id.to_hex()),
        )?;
        res.rss.xdelta = max_rss(
            have_time,
            &enc,
            Command::new("xdelta3")
                .args(["-e", "-9", "-f", "-s"])
                .arg(tar_of(case.base))
                .arg(tar_of(case.target))
                .arg(&vcdiff),
        )?;
        res.rss.xdelta_dec = max_rss(
            have_time,
            &enc,
            Command::new("xdelta3").args(["-d", "-f", "-s"]).arg(tar_of(case.base)).arg(&vcdiff).arg(&back),
        )?;
        res.xdelta_roundtrip = same_file(&back, &tar_of(case.target))?;
        res.rss.zstd = max_rss(
            have_time,
            &enc,
            Command::new("zstd")
                .args(["-q", "-f"])
                .arg(format!("--long={long}"))
                .arg(patch_from(&tar_of(case.base)))
                .arg(tar_of(case.target))
                .arg("-o")
                .arg(&zst),
        )?;
        res.rss.zstd_dec = max_rss(
            have_time,
            &enc,
            Command::new("zstd")
                .args(["-d", "-q", "-f"])
                .arg(format!("--long={long}"))
                .arg(patch_from(&tar_of(case.base)))
                .arg(&zst)
                .arg("-o")
                .arg(&back),
        )?;
        res.zstd_roundtrip = same_file(&back, &tar_of(case.target))?;
        remove_if_exists(&back)?;
    }

    // --- apply -------------------------------------------------------------------------------
    let host = s.join("host");
    let (base_staged, _) =
        stage(ferry, &host, &base.bundle).with_context(|| format!("staging base onto {}", host.display()))?;
    ensure!(!base_staged.already, "the fresh host already had base");
    let base_release = host.join("releases").join(base.id.to_hex());
    let targets: Vec<PathBuf> = cases.iter().map(|c| host.join("releases").join(c.target.id.to_hex())).collect();
    // Nothing is deleted while timing (see set_aside): each run gets new directories.
    let trash = s.join("trash");
    fs_err::create_dir(&trash)?;
    let mut cp_al: Vec<Duration> = Vec::new();
    let tasks = [Apply::Stage(0), Apply::Stage(1), Apply::CpAl, Apply::Untar(0), Apply::Untar(1), Apply::Bundle(1)];
    for i in 0..runs {
        for task in rotated(&tasks, i) {
            match task {
                Apply::Stage(c) => {
                    // Each stage finds a host holding base only.
                    set_aside(&targets, &trash)?;
                    settle()?;
                    let (staged, wall) = stage(ferry, &host, &delta_files[c])
                        .with_context(|| format!("staging {} run {i}", cases[c].name))?;
                    ensure!(!staged.already, "{} run {i}: the host already had the target", cases[c].name);
                    results[c].stage.push((wall, staged));
                }
                Apply::CpAl => {
                    let cp_al_dest = s.join(format!("cp-al-{i}"));
                    settle()?;
                    let (wall, _) = run(Command::new("cp").arg("-al").arg(&base_release).arg(&cp_al_dest))?;
                    cp_al.push(wall);
                }
                Apply::Untar(c) => {
                    let untar_dest = s.join(format!("untar-{}-{i}", cases[c].name));
                    fs_err::create_dir(&untar_dest)?;
                    settle()?;
                    results[c].untar.push(untar(&cases[c].target.bundle, &untar_dest)?);
                }
                Apply::Bundle(c) => {
                    let fresh_host = s.join(format!("fresh-host-{i}"));
                    settle()?;
                    let (staged, wall) = stage(ferry, &fresh_host, &cases[c].target.bundle)
                        .with_context(|| format!("staging the {} bundle on a fresh host, run {i}", cases[c].name))?;
                    results[c].bundle_stage.push((wall, staged));
                }
            }
        }
    }
    // Untimed: one more stage of each delta, for its memory.
    for (c, res) in results.iter_mut().enumerate() {
        set_aside(&targets, &trash)?;
        res.rss.stage = max_rss(
            have_time,
            s,
            ferry_cmd(ferry).arg("host").arg("--deploy-to").arg(&host).args(["stage", "--quiet"]).arg(&delta_files[c]),
        )?;
    }
    let base_files = count_files(&base_release)?;

    // --- report ------------------------------------------------------------------------------
    println!();
    println!(
        "{:<40}{:>12} {:>9}   {:>12} {:>9}   runs (s) hot | deps",
        "encode (bytes, median wall)", "hot bytes", "time", "deps bytes", "time"
    );
    let row = |name: &str, per_case: [(u64, Duration, String); 2]| {
        let [(hb, ht, hl), (db, dt, dl)] = per_case;
        println!("{name:<40}{hb:>12} {:>7.3} s   {db:>12} {:>7.3} s   {hl} | {dl}", secs(ht), secs(dt));
    };
    let pick = |f: &dyn Fn(&Results) -> (u64, Duration, String)| [f(&results[0]), f(&results[1])];
    row(
        "ferry delta (per-file ops, zstd -19; head -16)",
        pick(&|r| {
            let m = median_by(&r.ferry, |f| f.wall);
            (m.bytes, m.wall, list(r.ferry.iter().map(|f| f.wall), 3))
        }),
    );
    row(
        "one_stream_size (one zstd -19 stream; head -16)",
        pick(&|r| {
            let m = median_by(&r.one_stream, |o| o.0);
            (m.1, m.0, list(r.one_stream.iter().map(|o| o.0), 3))
        }),
    );
    row(
        "xdelta3 -e -9",
        pick(&|r| {
            let m = median_by(&r.xdelta, |x| x.0);
            (m.1, m.0, list(r.xdelta.iter().map(|x| x.0), 3))
        }),
    );
    row(
        &format!("zstd -3 --long={long} --patch-from"),
        pick(&|r| {
            let m = median_by(&r.zstd, |z| z.0);
            (m.1, m.0, list(r.zstd.iter().map(|z| z.0), 3))
        }),
    );
    row(
        "rsync --no-whole-file -z (bytes sent)",
        pick(&|r| {
            let m = median_by(&r.rsync, |x| x.wall);
            (m.sent, m.wall, list(r.rsync.iter().map(|x| x.wall), 3))
        }),
    );
    println!();
    for (case, r) in cases.iter().zip(&results) {
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
        same_across(&results, |r| r.ferry.iter().map(|f| f.bytes).collect()),
        same_across(&results, |r| r.xdelta.iter().map(|x| x.1).collect()),
        same_across(&results, |r| r.zstd.iter().map(|z| z.1).collect()),
        same_across(&results, |r| r.one_stream.iter().map(|o| o.1).collect()),
    );
    for (case, r) in cases.iter().zip(&results) {
        println!(
            "sanity: {:<4} xdelta3 -d gives target.tar: {}; zstd -d --patch-from gives target.tar: {}; rsync'd copy equals the target tree (diff -r): {}",
            case.name,
            yes_no(r.xdelta_roundtrip),
            yes_no(r.zstd_roundtrip),
            yes_no(r.rsync_same)
        );
    }
    if have_time {
        for (case, r) in cases.iter().zip(&results) {
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

    println!();
    println!("{:<40}{:>9}   {:>9}   runs (s) hot | deps", "apply onto a host holding base (median)", "hot", "deps");
    let cp_al_med = median(&cp_al);
    let stage_med: Vec<&(Duration, Staged)> = results.iter().map(|r| median_by(&r.stage, |s| s.0)).collect();
    let untar_med: Vec<Duration> = results.iter().map(|r| median(&r.untar)).collect();
    let stage_list = |c: usize| list(results[c].stage.iter().map(|s| s.0), 3);
    println!(
        "{:<40}{:>7.3} s   {:>7.3} s   {} | {}",
        "ferry host stage DELTA (verified)",
        secs(stage_med[0].0),
        secs(stage_med[1].0),
        stage_list(0),
        stage_list(1)
    );
    println!(
        "{:<40}{:>7.3} s   {:>9}   {}",
        "cp -al base release",
        secs(cp_al_med),
        "(same)",
        list(cp_al.iter().copied(), 3)
    );
    println!(
        "{:<40}{:>7.3} s   {:>7.3} s   {} | {}",
        "zstd -dc BUNDLE | tar -x (full)",
        secs(untar_med[0]),
        secs(untar_med[1]),
        list(results[0].untar.iter().copied(), 3),
        list(results[1].untar.iter().copied(), 3)
    );
    let fresh = median_by(&results[1].bundle_stage, |s| s.0);
    println!(
        "{:<40}{:>9}   {:>7.3} s   {}",
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
        "base release on the host: {base_files} files (what cp -al links); the stage ends with syncfs, cp -al and tar do not sync"
    );

    // --- goals -------------------------------------------------------------------------------
    println!();
    let mut met = 0;
    let mut goals = 0;
    let mut goal = |line: String, ok: bool| {
        goals += 1;
        met += usize::from(ok);
        println!("{line}  {}", verdict(ok));
    };
    let ferry_med: Vec<&FerryDelta> = results.iter().map(|r| median_by(&r.ferry, |f| f.wall)).collect();
    let xdelta_med: Vec<&(Duration, u64)> = results.iter().map(|r| median_by(&r.xdelta, |x| x.0)).collect();
    let hot_bytes = ferry_med[0].bytes;
    goal(
        format!("hot  delta bytes                         = {hot_bytes} (goal <= {GOAL_HOT_BYTES})"),
        hot_bytes <= GOAL_HOT_BYTES,
    );
    let r = ferry_med[1].bytes as f64 / xdelta_med[1].1 as f64;
    goal(
        format!("deps bytes  ferry / xdelta3              = {r:.3} (goal <= {GOAL_DEPS_VS_XDELTA:.2})"),
        r <= GOAL_DEPS_VS_XDELTA,
    );
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

    println!();
    for (c, case) in cases.iter().enumerate() {
        let r = &results[c];
        let f = ferry_med[c];
        let one = median_by(&r.one_stream, |o| o.0);
        let z = median_by(&r.zstd, |z| z.0);
        let x = median_by(&r.rsync, |x| x.wall);
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
    let measured = started.elapsed();
    let cleanup = Instant::now();
    scratch.close().context("cannot remove the scratch directory")?;
    println!(
        "total benchmark time {:.0} s, then {:.0} s to remove the scratch directory",
        secs(measured),
        secs(cleanup.elapsed())
    );
    Ok(())
}

#[derive(Debug)]
struct Release {
    label: &'static str,
    id: ReleaseId,
    bundle: PathBuf,
    size: u64,
    files: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Case<'a> {
    name: &'static str,
    base: &'a Release,
    target: &'a Release,
    /// The target's release tree, rsync's source.
    tree: &'a Path,
}

impl<'a> Case<'a> {
    fn new(name: &'static str, base: &'a Release, target: &'a Release, tree: &'a Path) -> Self {
        Self { name, base, target, tree }
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoder {
    Ferry,
    Xdelta,
    Zstd,
}

#[derive(Debug, Clone, Copy)]
enum Apply {
    Stage(usize),
    CpAl,
    Untar(usize),
    Bundle(usize),
}

#[derive(Debug)]
struct FerryDelta {
    wall: Duration,
    bytes: u64,
    patches: u64,
    literals: u64,
    reused: u64,
    elapsed_ms: u64,
}

#[derive(Debug)]
struct Rsync {
    wall: Duration,
    sent: u64,
    received: u64,
    literal: u64,
}

#[derive(Debug)]
struct Staged {
    already: bool,
    written: u64,
    written_bytes: u64,
    linked: u64,
    copied: u64,
    elapsed_ms: u64,
}

/// Max resident sets in KiB (None: not measured).
#[derive(Debug, Default)]
struct Rss {
    ferry: Option<u64>,
    xdelta: Option<u64>,
    xdelta_dec: Option<u64>,
    zstd: Option<u64>,
    zstd_dec: Option<u64>,
    stage: Option<u64>,
}

#[derive(Debug, Default)]
struct Results {
    ferry: Vec<FerryDelta>,
    one_stream: Vec<(Duration, u64)>,
    xdelta: Vec<(Duration, u64)>,
    zstd: Vec<(Duration, u64)>,
    rsync: Vec<Rsync>,
    stage: Vec<(Duration, Staged)>,
    untar: Vec<Duration>,
    bundle_stage: Vec<(Duration, Staged)>,
    rss: Rss,
    xdelta_roundtrip: bool,
    zstd_roundtrip: bool,
    rsync_same: bool,
}

/// Copies `src` to `at` (`cp -a`, so mtimes and the pycs' validity stay), applies the
/// edits, and builds it with a cold build cache. The tree is then moved to `keep`.
fn build(
    ferry: &Path,
    src: &Path,
    at: &Path,
    store: &Path,
    label: &'static str,
    edits: &[(&str, &str)],
    keep: &Path,
) -> Result<Release> {
    run(Command::new("cp").arg("-a").arg(src).arg(at))?;
    for (path, line) in edits {
        let path = at.join(path);
        let mut f = fs_err::OpenOptions::new().append(true).open(&path)?;
        f.write_all(line.as_bytes())?;
    }
    remove_if_exists(&store.join("cache"))?;
    let (_, out) = run(ferry_cmd(ferry)
        .args(["build", "--json", "--quiet", "--version", label, "--store"])
        .arg(store)
        .arg("-c")
        .arg(at.join("ferry.toml")))
    .with_context(|| format!("building {label}"))?;
    let json: Value = serde_json::from_slice(&out).context("ferry build --json printed no JSON")?;
    let text = |k: &str| json.get(k).and_then(Value::as_str).with_context(|| format!("JSON lacks {k}"));
    let release = Release {
        label,
        id: text("id")?.parse().context("ferry build printed a bad id")?,
        bundle: PathBuf::from(text("path")?),
        size: num(&json, "size")?,
        files: num(&json, "files")?,
        bytes: num(&json, "bytes")?,
    };
    fs_err::rename(at, keep)?;
    Ok(release)
}

/// Clears a leftover build tree of an interrupted run, if it is one of ours.
fn remove_bench_tree(at: &Path) -> Result<()> {
    if !at.exists() {
        return Ok(());
    }
    let ours = fs_err::read_to_string(at.join("ferry.toml")).is_ok_and(|t| t.contains("service = \"bench\""));
    ensure!(ours, "{} exists and is not a bench release tree; not touching it", at.display());
    fs_err::remove_dir_all(at)?;
    Ok(())
}

/// `ferry host --deploy-to HOST stage INPUT --json`, timed.
fn stage(ferry: &Path, host: &Path, input: &Path) -> Result<(Staged, Duration)> {
    let (wall, out) =
        run(ferry_cmd(ferry).args(["host", "--json", "--quiet", "--deploy-to"]).arg(host).arg("stage").arg(input))?;
    let json: Value = serde_json::from_slice(&out).context("ferry host stage --json printed no JSON")?;
    let staged = Staged {
        already: json.get("already").and_then(Value::as_bool).context("JSON lacks already")?,
        written: num(&json, "written")?,
        written_bytes: num(&json, "written_bytes")?,
        linked: num(&json, "linked")?,
        copied: num(&json, "copied")?,
        elapsed_ms: num(&json, "elapsed")?,
    };
    Ok((staged, wall))
}

/// `zstd -dc BUNDLE | tar -x -C DEST`, timed; the pipeline is spawned directly so that
/// either side's failure is seen.
fn untar(bundle: &Path, dest: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut zstd =
        Command::new("zstd").arg("-dcq").arg(bundle).stdout(Stdio::piped()).spawn().context("cannot run zstd")?;
    let stream = zstd.stdout.take().context("no zstd stdout")?;
    let tar_status =
        Command::new("tar").arg("-x").arg("-C").arg(dest).stdin(stream).status().context("cannot run tar")?;
    let zstd_status = zstd.wait()?;
    let wall = start.elapsed();
    ensure!(zstd_status.success(), "zstd -dc {} failed: {zstd_status}", bundle.display());
    ensure!(tar_status.success(), "tar -x into {} failed: {tar_status}", dest.display());
    Ok(wall)
}

/// Runs `cmd` once under GNU time and returns its max resident set in KiB.
fn max_rss(have_time: bool, scratch: &Path, cmd: &mut Command) -> Result<Option<u64>> {
    if !have_time {
        run(cmd)?;
        return Ok(None);
    }
    let report = scratch.join("time.out");
    let mut timed = Command::new(GNU_TIME);
    timed.args(["-f", "%M", "-o"]).arg(&report).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    run(&mut timed)?;
    let text = fs_err::read_to_string(&report)?;
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{GNU_TIME} wrote {text:?}"))?;
    fs_err::remove_file(&report)?;
    Ok(Some(kib))
}

/// Runs a command to success, capturing stdout; returns its wall time and stdout.
fn run(cmd: &mut Command) -> Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((wall, out.stdout))
}

fn ferry_cmd(ferry: &Path) -> Command {
    let mut cmd = Command::new(ferry);
    cmd.env_remove("FERRY_CONFIG").env_remove("FERRY_STORE").env_remove("FERRY_DEPLOY_TO");
    cmd
}

fn patch_from(reference: &Path) -> OsString {
    let mut arg = OsString::from("--patch-from=");
    arg.push(reference);
    arg
}

/// `path/`, so rsync copies the directory's contents.
fn slash(path: &Path) -> OsString {
    let mut s = path.as_os_str().to_owned();
    s.push("/");
    s
}

/// A number from rsync's --stats output ("Total bytes sent: 1,234").
fn stat(text: &str, key: &str) -> Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("rsync --stats printed no {key:?}"))?;
    let word = line.split_whitespace().next().unwrap_or("");
    let digits: String = word.chars().filter(char::is_ascii_digit).collect();
    digits.parse().with_context(|| format!("cannot read {key}: {line:?}"))
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let status = Command::new("cmp").arg("-s").arg(a).arg(b).status().context("cannot run cmp")?;
    Ok(status.success())
}

fn count_files(root: &Path) -> Result<u64> {
    let mut n = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Moves the staged target releases, if any, out of the host into `trash` (renamed, not
/// deleted: on this ext4, deleting ten thousand files slows the next minute's inode
/// allocations, i.e. whatever is timed next).
fn set_aside(targets: &[PathBuf], trash: &Path) -> Result<()> {
    for t in targets {
        if t.exists() {
            let n = fs_err::read_dir(trash)?.count();
            fs_err::rename(t, trash.join(n.to_string()))?;
        }
    }
    Ok(())
}

/// `sync`, untimed, before each timed command: no run pays for the previous one's writeback
/// (ferry's stage ends with a syncfs, which would).
fn settle() -> Result<()> {
    run(&mut Command::new("sync")).map(drop)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(path)?,
        Ok(_) => fs_err::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(fs_err::metadata(path)?.len())
}

/// The Django version make-release.sh recorded beside a tree.
fn marker(dir: &Path, name: &str) -> String {
    fs_err::read_to_string(dir.join(format!("{name}.done"))).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

fn num(v: &Value, k: &str) -> Result<u64> {
    v.get(k).and_then(Value::as_u64).with_context(|| format!("JSON lacks number {k}"))
}

/// `items` rotated left by `i`, so each tool goes first in turn.
fn rotated<T: Copy>(items: &[T], i: usize) -> Vec<T> {
    let mut v = items.to_vec();
    v.rotate_left(i % items.len());
    v
}

fn median(items: &[Duration]) -> Duration {
    *median_by(items, |d| *d)
}

fn same_across(results: &[Results], sizes: impl Fn(&Results) -> Vec<u64>) -> &'static str {
    if results.iter().all(|r| sizes(r).windows(2).all(|w| w[0] == w[1])) {
        "identical"
    } else {
        "DIFFER"
    }
}

fn kib_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
