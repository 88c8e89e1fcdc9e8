//! The build benchmark of issue 2: `ferry build` against `tar --sort=name … | zstd -3 -T0`
//! on the same release tree, in the same run, plus a no-change rebuild.
//!
//! Run it with `scripts/bench` (it makes the fixture first), or directly:
//! `cargo bench --bench build -- FIXTURE_DIR` where FIXTURE_DIR is the output of
//! `fixtures/bench/make-release.sh` (it has a ferry.toml at its root).
//! `FERRY_BENCH_RUNS` (default 3) sets the repetitions; medians are reported,
//! of wall time and of CPU time (user + system, which other load on the
//! machine changes much less).
//!
//! Scratch stores and archives are made beside FIXTURE_DIR (same file system)
//! and removed afterwards. The page cache is warm for both tools (one untimed
//! read of the tree first). Goals missed are reported, not failed; a failing
//! command fails the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use common::{fmt_mib, list, median_by, secs, verdict, MIB};

mod common;
#[path = "common/cpu.rs"]
mod cpu;

/// What ferry packs, and so what tar gets: the component roots of the fixture's ferry.toml.
const PATHS: [&str; 4] = ["app", "venv", "media", "config"];
/// tar's flags for a reproducible archive (what a user would reach for).
const TAR_FLAGS: [&str; 5] = ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@315532800"];
const GOAL_COLD: f64 = 1.0;
const GOAL_SIZE: f64 = 1.0;
const GOAL_REBUILD: f64 = 0.15;

fn main() -> Result<()> {
    // cargo bench passes `--bench` (and maybe other flags); the fixture is the first plain argument.
    let fixture = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(PathBuf::from).context(
        "usage: cargo bench --bench build -- FIXTURE_DIR   (make it with fixtures/bench/make-release.sh, or run scripts/bench)",
    )?;
    let fixture = fs_err::canonicalize(&fixture)?;
    let config = fixture.join("ferry.toml");
    ensure!(config.is_file(), "{} has no ferry.toml; is it a bench fixture?", fixture.display());
    let runs: usize = match std::env::var("FERRY_BENCH_RUNS") {
        Ok(s) => s.parse().ok().filter(|&n| n > 0).context("FERRY_BENCH_RUNS must be a positive integer")?,
        Err(_) => 3,
    };
    let scratch_parent = fixture.parent().context("fixture has no parent directory")?;
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));

    let tree = count_tree(&fixture)?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!("fixture: {} ({})", fixture.display(), PATHS.join(" "));
    println!(
        "fixture: {} files, {:.1} MiB in files ({} dirs, {} symlinks); {cores} cores; {runs} runs each, medians",
        tree.files,
        mib(tree.bytes),
        tree.dirs,
        tree.symlinks
    );
    println!("ferry: {}", ferry.display());
    println!("tar:   tar {} -C FIXTURE -cf - {} | zstd -3 -T0 -q -o OUT", TAR_FLAGS.join(" "), PATHS.join(" "));

    // Untimed warm-up: the tree, both tools' binaries.
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(r#"cd "$1" && tar -cf - app venv media config | cat >/dev/null"#)
            .arg("sh")
            .arg(&fixture),
    )?;
    run_ok(Command::new(ferry).arg("--version"))?;
    run_ok(Command::new("zstd").arg("--version"))?;

    let mut cold: Vec<Ferry> = Vec::new();
    let mut rebuild: Vec<Ferry> = Vec::new();
    let mut tar: Vec<(Duration, u64)> = Vec::new();
    let mut tar_cpu: Vec<Duration> = Vec::new();
    let mut tar_synced: Vec<Duration> = Vec::new();
    let mut last_tar = None;
    for i in 0..runs {
        // Alternate which tool goes first, so drift (writeback of the previous run's output,
        // thermal, neighbours) falls on both.
        let tar_first = i % 2 == 1;
        if tar_first {
            let (wall, size, cpu, synced, dir) = run_tar(&fixture, scratch_parent)?;
            tar.push((wall, size));
            tar_cpu.push(cpu);
            tar_synced.push(synced);
            last_tar = Some(dir);
        }
        let store = scratch_dir(scratch_parent, "store")?;
        let c = run_ferry(ferry, &config, store.path())?;
        ensure!(
            !c.reused && c.cache_hits == 0,
            "cold build {i} was not cold: reused={}, cache_hits={}",
            c.reused,
            c.cache_hits
        );
        let r = run_ferry(ferry, &config, store.path())?;
        ensure!(r.reused, "no-change rebuild {i} did not report \"reused\": true");
        ensure!(r.id == c.id, "no-change rebuild {i} gave another id: {} vs {}", r.id, c.id);
        let on_disk = fs_err::metadata(&c.path)?.len();
        ensure!(on_disk == c.size, "bundle {} is {on_disk} bytes on disk, JSON says {}", c.path, c.size);
        drop(store);
        cold.push(c);
        rebuild.push(r);
        if !tar_first {
            let (wall, size, cpu, synced, dir) = run_tar(&fixture, scratch_parent)?;
            tar.push((wall, size));
            tar_cpu.push(cpu);
            tar_synced.push(synced);
            last_tar = Some(dir);
        }
    }

    let same_id = cold.iter().all(|c| c.id == cold[0].id);
    let same_size = tar.iter().all(|t| t.1 == tar[0].1);
    let cold_med = median_by(&cold, |c| c.wall);
    let reb_med = median_by(&rebuild, |r| r.wall);
    let tar_med = median_by(&tar, |t| t.0);
    let (tar_wall, tar_size) = (tar_med.0, tar_med.1);
    // Untimed, after all timed runs: what the last tar archive holds.
    let listing = list_tar(&last_tar.context("no tar run")?.path().join("out.tar.zst"))?;

    println!();
    println!("{:<28}{:>9}   {:>8}   runs", "", "median", "size");
    println!(
        "{:<28}{:>7.2} s   {:>8}   {}",
        "ferry build (cold)",
        secs(cold_med.wall),
        fmt_mib(cold_med.size),
        list(cold.iter().map(|c| c.wall), 2)
    );
    println!(
        "{:<28}{:>7.2} s   {:>8}   {}",
        "tar | zstd -3 -T0",
        secs(tar_wall),
        fmt_mib(tar_size),
        list(tar.iter().map(|t| t.0), 2)
    );
    let ferry_cpu = median_by(&cold, |c| c.cpu).cpu;
    let tar_cpu_med = *median_by(&tar_cpu, |c| *c);
    println!(
        "{:<28}{:>7.2} s   {:>8}   {}",
        "ferry build (cold) cpu",
        secs(ferry_cpu),
        "",
        list(cold.iter().map(|c| c.cpu), 2)
    );
    println!("{:<28}{:>7.2} s   {:>8}   {}", "tar | zstd cpu", secs(tar_cpu_med), "", list(tar_cpu.iter().copied(), 2));
    println!(
        "{:<28}{:>7.2} s   {:>8}   {}",
        "ferry rebuild (no change)",
        secs(reb_med.wall),
        "",
        list(rebuild.iter().map(|r| r.wall), 2)
    );
    println!();
    let t = &cold_med.timings;
    println!(
        "ferry cold timings_ms (median run): walk {}  check {}  pack {}  write {}  total {}  (wall {} ms, process overhead {} ms)",
        t.walk,
        t.check,
        t.pack,
        t.write,
        t.total,
        cold_med.wall.as_millis(),
        i128::try_from(cold_med.wall.as_millis()).unwrap_or(i128::MAX) - i128::from(t.total)
    );
    let t = &reb_med.timings;
    println!(
        "ferry rebuild timings_ms (median run): walk {}  check {}  pack {}  write {}  total {}  (cache_hits {})",
        t.walk, t.check, t.pack, t.write, t.total, reb_med.cache_hits
    );
    println!(
        "sanity: ferry files {}, entries {}; tar regular files {}, members {}{}",
        cold_med.files,
        cold_med.entries,
        listing.regular,
        listing.members,
        if cold_med.files == listing.regular { " (same file count)" } else { " (FILE COUNTS DIFFER)" }
    );
    println!(
        "sanity: content bytes ferry {} vs fixture {}; size in bytes ferry {} vs tar|zstd {}",
        cold_med.bytes, tree.bytes, cold_med.size, tar_size
    );
    println!(
        "sanity: ferry id {} across cold runs; tar|zstd size {} across runs",
        if same_id { "identical" } else { "DIFFERS" },
        if same_size { "identical" } else { "DIFFERS" }
    );

    let r_cold = secs(cold_med.wall) / secs(tar_wall);
    let r_size = cold_med.size as f64 / tar_size as f64;
    let r_reb = secs(reb_med.wall) / secs(cold_med.wall);
    println!();
    println!(
        "ratio cold wall  ferry / tar|zstd = {r_cold:.2}   (goal <= {GOAL_COLD:.2})  {}",
        verdict(r_cold <= GOAL_COLD)
    );
    println!(
        "ratio size       ferry / tar|zstd = {r_size:.4} (goal <= {GOAL_SIZE:.2})  {}",
        verdict(r_size <= GOAL_SIZE)
    );
    println!(
        "ratio rebuild / cold              = {r_reb:.3}  (goal <= {GOAL_REBUILD:.2})  {}",
        verdict(r_reb <= GOAL_REBUILD)
    );
    // Not a goal: the side of the wall ratio that other load on the machine changes least.
    println!("ratio cold cpu   ferry / tar|zstd = {:.2}   (user + system time)", secs(ferry_cpu) / secs(tar_cpu_med));
    let synced_med = *median_by(&tar_synced, |c| *c);
    println!(
        "ratio cold wall  ferry / (tar|zstd, then fsync of its output {:.2} s) = {:.2}   (ferry fsyncs its bundle; not the goal)",
        secs(synced_med),
        secs(cold_med.wall) / secs(synced_med)
    );
    let met = [r_cold <= GOAL_COLD, r_size <= GOAL_SIZE, r_reb <= GOAL_REBUILD].iter().filter(|&&m| m).count();
    println!("goals met: {met} of 3");
    Ok(())
}

#[derive(Debug, Default)]
struct Tree {
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
}

/// Counts what `PATHS` hold under `root` (regular files and their bytes, dirs, symlinks).
fn count_tree(root: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    let mut todo: Vec<PathBuf> = PATHS.iter().map(|p| root.join(p)).collect();
    while let Some(path) = todo.pop() {
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.is_dir() {
            tree.dirs += 1;
            for entry in fs_err::read_dir(&path)? {
                todo.push(entry?.path());
            }
        } else if meta.is_file() {
            tree.files += 1;
            tree.bytes += meta.len();
        } else if meta.is_symlink() {
            tree.symlinks += 1;
        }
    }
    Ok(tree)
}

#[derive(Debug, Default)]
struct Timings {
    walk: u64,
    check: u64,
    pack: u64,
    write: u64,
    total: u64,
}

#[derive(Debug)]
struct Ferry {
    wall: Duration,
    /// User + system time of the process and its threads.
    cpu: Duration,
    id: String,
    path: String,
    size: u64,
    files: u64,
    bytes: u64,
    entries: u64,
    reused: bool,
    cache_hits: u64,
    timings: Timings,
}

fn run_ferry(ferry: &Path, config: &Path, store: &Path) -> Result<Ferry> {
    let mut cmd = Command::new(ferry);
    cmd.args(["build", "--json", "--quiet", "--store"]).arg(store).arg("-c").arg(config);
    cmd.env_remove("FERRY_CONFIG").env_remove("FERRY_STORE");
    let (start, cpu0) = (Instant::now(), children_cpu()?);
    let out = cmd.output().with_context(|| format!("cannot run {}", ferry.display()))?;
    let (wall, cpu) = (start.elapsed(), children_cpu()? - cpu0);
    if !out.status.success() {
        bail!("ferry build failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let json: Value = serde_json::from_slice(&out.stdout).context("ferry build --json printed no JSON")?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).with_context(|| format!("JSON lacks number {k}"));
    let text =
        |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("JSON lacks {k}"));
    let t = json.get("timings_ms").context("JSON lacks timings_ms")?;
    Ok(Ferry {
        wall,
        cpu,
        id: text("id")?,
        path: text("path")?,
        size: num(&json, "size")?,
        files: num(&json, "files")?,
        bytes: num(&json, "bytes")?,
        entries: num(&json, "entries")?,
        reused: json.get("reused").and_then(Value::as_bool).context("JSON lacks reused")?,
        cache_hits: num(&json, "cache_hits")?,
        timings: Timings {
            walk: num(t, "walk")?,
            check: num(t, "check")?,
            pack: num(t, "pack")?,
            write: num(t, "write")?,
            total: num(t, "total")?,
        },
    })
}

#[derive(Debug)]
struct Listing {
    regular: u64,
    members: u64,
}

/// One timed `tar … | zstd -3 -T0` into a fresh directory; returns wall time, archive size,
/// CPU time, the wall time with an fsync of the archive after it, and the directory holding `out.tar.zst` (removed when dropped).
fn run_tar(fixture: &Path, scratch_parent: &Path) -> Result<(Duration, u64, Duration, Duration, tempfile::TempDir)> {
    let dir = scratch_dir(scratch_parent, "tar")?;
    let out = dir.path().join("out.tar.zst");
    // The pipeline is spawned directly (as sh would) so that either side's failure is seen.
    let (start, cpu0) = (Instant::now(), children_cpu()?);
    let mut tar = Command::new("tar")
        .args(TAR_FLAGS)
        .arg("-C")
        .arg(fixture)
        .arg("-cf")
        .arg("-")
        .args(PATHS)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("no tar stdout")?;
    let zstd_status = Command::new("zstd")
        .args(["-3", "-T0", "-q", "-o"])
        .arg(&out)
        .stdin(tar_out)
        .status()
        .context("cannot run zstd")?;
    let tar_status = tar.wait()?;
    let (wall, cpu) = (start.elapsed(), children_cpu()? - cpu0);
    ensure!(tar_status.success(), "tar failed: {tar_status}");
    ensure!(zstd_status.success(), "zstd failed: {zstd_status}");
    // Not part of the goal's wall: what making the archive durable costs
    // (ferry's build fsyncs its bundle before it names it; tar | zstd does not).
    let synced = Instant::now();
    fs_err::File::open(&out)?.sync_all()?;
    let size = fs_err::metadata(&out)?.len();
    Ok((wall, size, cpu, wall + synced.elapsed(), dir))
}

/// User + system time of every child reaped so far (`cutime` + `cstime` of
/// /proc/self/stat, in USER_HZ: 100 a second on Linux): wall time depends on
/// what else the machine runs, this much less.
fn children_cpu() -> Result<Duration> {
    Ok(Duration::from_secs_f64(cpu::of("self").children))
}

/// `zstd -dc ARCHIVE | tar -tvf -`: counts regular files and all members.
fn list_tar(archive: &Path) -> Result<Listing> {
    let mut zstd =
        Command::new("zstd").arg("-dc").arg(archive).stdout(Stdio::piped()).spawn().context("cannot run zstd")?;
    let stream = zstd.stdout.take().context("no zstd stdout")?;
    let list = Command::new("tar").args(["-tvf", "-"]).stdin(stream).output().context("cannot run tar")?;
    let zstd_status = zstd.wait()?;
    ensure!(zstd_status.success(), "zstd -dc {} failed: {zstd_status}", archive.display());
    ensure!(list.status.success(), "tar -tv failed: {}", String::from_utf8_lossy(&list.stderr).trim());
    let text = String::from_utf8_lossy(&list.stdout);
    Ok(Listing {
        regular: text.lines().filter(|l| l.starts_with('-')).count() as u64,
        members: text.lines().count() as u64,
    })
}

fn scratch_dir(parent: &Path, what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!(".ferry-bench-{what}-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot make a scratch dir in {}", parent.display()))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.stdout(Stdio::null()).status().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}
