//! The delta and staging benchmark of issue 3: `ferry delta` and `ferry host stage`
//! against the tools a user would use instead, on the same releases, in the same run.
//!
//! Run it with `scripts/bench delta` (it makes the fixture first), or directly:
//! `cargo bench --bench delta -- DELTA_DIR`, where DELTA_DIR holds `base/` (Django 4.2.10),
//! `deps/` (Django 4.2.11) and `bump/` (Django 5.0.14), each made by
//! `fixtures/bench/make-release.sh` at the path
//! DELTA_DIR/tree and then renamed: a venv records its path in its bytecode, so trees made
//! at two paths differ in every `.pyc`. Each release is built from a `cp -a` copy at
//! DELTA_DIR/tree again. `FERRY_BENCH_RUNS` (default 3) sets the repetitions; medians are
//! reported.
//!
//! Releases:
//! - base: `base/` as made;
//! - hot:  base with two small app files edited (one line appended to each);
//! - deps: `deps/`, the same service with Django 4.2.11 (a patch release: 3 files of Django
//!   change, with their pycs and the dist-info);
//! - bump: `bump/`, the same service with Django 5.0.14: the many-file dependency bump (about
//!   800 of Django's files change, with their pycs; and its admin's static files in media/).
//!
//! Measured, for base→hot, base→deps and base→bump:
//! - encode: `ferry delta` (whole command, wall and CPU time; `<store>/deltas/` removed first
//!   so it really encodes), `ferry_builder::delta::one_stream_size` (in-process: one zstd
//!   stream over all changed files, compression time only), `xdelta3 -e -9` and
//!   `zstd --patch-from --long=N` (default level 3, one thread) on the two bundles
//!   decompressed (xdelta3's CPU time too) (ferry bundles are reproducible tars), and `rsync -a --no-whole-file -z
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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context as _, Result};

use common::secs;
use fixture::{build, marker, remove_bench_tree, Case, Release};
use measure::Results;
use tools::{file_size, run};

#[path = "../common/mod.rs"]
mod common;
mod fixture;
mod measure;
mod report;
mod tools;

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

/// What every step needs: the ferry binary, the scratch directory, the store
/// holding the three releases, and their bundles decompressed.
#[derive(Debug)]
struct Bench<'a> {
    ferry: &'a Path,
    scratch: &'a Path,
    store: PathBuf,
    tars: PathBuf,
    /// zstd's --long window log, the smallest that covers the largest tar.
    long: u32,
    runs: usize,
}

impl Bench<'_> {
    fn tar_of(&self, r: &Release) -> PathBuf {
        self.tars.join(format!("{}.tar", r.label))
    }
}

fn main() -> Result<()> {
    let (dir, runs) = args()?;
    let (base_src, deps_src, bump_src) = (dir.join("base"), dir.join("deps"), dir.join("bump"));
    let build_at = dir.join("tree");
    for tree in [&base_src, &deps_src, &bump_src] {
        ensure!(tree.join("ferry.toml").is_file(), "{} has no ferry.toml; is it a bench fixture?", tree.display());
    }
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let started = Instant::now();

    println!(
        "fixture: {} (base: Django {}, deps: Django {}, bump: Django {}; every release built at {})",
        dir.display(),
        marker(&dir, "base"),
        marker(&dir, "deps"),
        marker(&dir, "bump"),
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

    // --- the four releases, built untimed into one store ----------------------------------
    remove_bench_tree(&build_at)?;
    let hot_tree = s.join("tree-hot");
    let base = build(ferry, &base_src, &build_at, &store, "base", &[], &s.join("tree-base"))?;
    let hot = build(ferry, &base_src, &build_at, &store, "hot", &HOT_EDITS, &hot_tree)?;
    let deps = build(ferry, &deps_src, &build_at, &store, "deps", &[], &s.join("tree-deps"))?;
    let bump = build(ferry, &bump_src, &build_at, &store, "bump", &[], &s.join("tree-bump"))?;
    let releases = [&base, &hot, &deps, &bump];
    let (tars, long) = decompress(s, &releases)?;
    let bench = Bench { ferry, scratch: s, store, tars, long, runs };
    report::releases(&bench, &releases)?;

    let cases = [
        Case::new("hot", &base, &hot, &hot_tree),
        Case::new("deps", &base, &deps, &deps_src),
        Case::new("bump", &base, &bump, &bump_src),
    ];
    let mut results: Vec<Results> = cases.iter().map(|_| Results::default()).collect();
    warm_up(&bench, &releases)?;

    let delta_files = measure::encode(&bench, &cases, &mut results)?;
    measure::one_stream(&bench, &cases, &mut results)?;
    measure::rsync(&bench, &base_src, &cases, &mut results)?;
    let have_time = Path::new(GNU_TIME).is_file();
    measure::memory(&bench, have_time, &cases, &mut results)?;
    let applied = measure::apply(&bench, &base, &cases, &delta_files, have_time, &mut results)?;

    report::encode(&bench, &cases, &results, have_time);
    report::apply(&cases, &results, &applied);
    report::goals(&cases, &results, &applied);
    report::ratios(&cases, &results);

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

/// The fixture directory (canonical) and the number of runs.
fn args() -> Result<(PathBuf, usize)> {
    // cargo bench passes `--bench` (and maybe other flags); the fixture is the first plain argument.
    let dir = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(PathBuf::from).context(
        "usage: cargo bench --bench delta -- DELTA_DIR   (see the top of benches/delta/main.rs, or run scripts/bench delta)",
    )?;
    let dir = fs_err::canonicalize(&dir)?;
    let runs: usize = match std::env::var("FERRY_BENCH_RUNS") {
        Ok(s) => s.parse().ok().filter(|&n| n > 0).context("FERRY_BENCH_RUNS must be a positive integer")?,
        Err(_) => 3,
    };
    Ok((dir, runs))
}

/// Decompresses each release's bundle to `<scratch>/tars/<label>.tar`; returns that
/// directory and the smallest zstd window log that covers the largest tar.
fn decompress(scratch: &Path, releases: &[&Release]) -> Result<(PathBuf, u32)> {
    let tars = scratch.join("tars");
    fs_err::create_dir(&tars)?;
    let tar_of = |r: &Release| tars.join(format!("{}.tar", r.label));
    for r in releases {
        run(Command::new("zstd").args(["-dcq", "-o"]).arg(tar_of(r)).arg(&r.bundle))?;
    }
    let tar_sizes: Vec<u64> = releases.iter().map(|r| file_size(&tar_of(r))).collect::<Result<_>>()?;
    let max_tar = *tar_sizes.iter().max().context("no releases")?;
    // The smallest window that covers the reference, as encoder and decoder both need it.
    let long = (64 - (max_tar - 1).leading_zeros()).max(27);
    Ok((tars, long))
}

/// Untimed warm-up: the tars, every tool's binary.
fn warm_up(bench: &Bench<'_>, releases: &[&Release]) -> Result<()> {
    for r in releases {
        run(Command::new("cat").arg(bench.tar_of(r)).stdout(Stdio::null()))?;
    }
    run(Command::new(bench.ferry).arg("--version"))?;
    run(Command::new("xdelta3").arg("-V"))?;
    run(Command::new("zstd").arg("--version"))?;
    run(Command::new("rsync").arg("--version"))?;
    Ok(())
}
