//! The measurements: encoding (ferry delta, one stream, xdelta3, zstd, rsync), memory
//! and round trips, and applying (ferry host stage, cp -al, untar).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use ferry_builder::Store;
use serde_json::Value;

use crate::fixture::{Case, Release};
use crate::tools::{
    count_files, ferry_cmd, file_size, max_rss, num, patch_from, remove_if_exists, rotated, run, run_cpu, same_file,
    set_aside, settle, slash, stage, stat, untar, Staged,
};
use crate::{Bench, RSYNC_FLAGS};

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
pub struct FerryDelta {
    pub wall: Duration,
    /// User + system CPU time of the command.
    pub cpu: Duration,
    pub bytes: u64,
    pub patches: u64,
    pub literals: u64,
    pub reused: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug)]
pub struct Rsync {
    pub wall: Duration,
    pub sent: u64,
    pub received: u64,
    pub literal: u64,
}

/// Max resident sets in KiB (None: not measured).
#[derive(Debug, Default)]
pub struct Rss {
    pub ferry: Option<u64>,
    pub xdelta: Option<u64>,
    pub xdelta_dec: Option<u64>,
    pub zstd: Option<u64>,
    pub zstd_dec: Option<u64>,
    pub stage: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Results {
    pub ferry: Vec<FerryDelta>,
    pub one_stream: Vec<(Duration, u64)>,
    /// Wall, bytes, CPU time.
    pub xdelta: Vec<(Duration, u64, Duration)>,
    pub zstd: Vec<(Duration, u64)>,
    pub rsync: Vec<Rsync>,
    pub stage: Vec<(Duration, Staged)>,
    pub untar: Vec<Duration>,
    pub bundle_stage: Vec<(Duration, Staged)>,
    pub rss: Rss,
    pub xdelta_roundtrip: bool,
    pub zstd_roundtrip: bool,
    pub rsync_same: bool,
}

/// `ferry delta`, xdelta3 and zstd --patch-from, each case, `runs` times, in turn. Returns
/// the delta file of each case (its last encode, copied out of the store), for the stages.
pub fn encode(bench: &Bench<'_>, cases: &[Case<'_>], results: &mut [Results]) -> Result<Vec<PathBuf>> {
    let s = bench.scratch;
    let enc = s.join("enc");
    fs_err::create_dir(&enc)?;
    let delta_files: Vec<PathBuf> = cases.iter().map(|c| s.join(format!("{}.delta", c.name))).collect();
    for i in 0..bench.runs {
        for (c, (case, res)) in cases.iter().zip(results.iter_mut()).enumerate() {
            let vcdiff = enc.join(format!("{}.vcdiff", case.name));
            let zst = enc.join(format!("{}.tar.zst-patch", case.name));
            for tool in rotated(&[Encoder::Ferry, Encoder::Xdelta, Encoder::Zstd], i) {
                if !matches!(tool, Encoder::Ferry) {
                    settle()?;
                }
                match tool {
                    Encoder::Ferry => res.ferry.push(ferry_delta(bench, case, i, &delta_files[c])?),
                    Encoder::Xdelta => {
                        let (wall, cpu, _) = run_cpu(&mut xdelta_encode(bench, case, &vcdiff))?;
                        res.xdelta.push((wall, file_size(&vcdiff)?, cpu));
                    }
                    Encoder::Zstd => {
                        let (wall, _) = run(&mut zstd_encode(bench, case, &zst))?;
                        res.zstd.push((wall, file_size(&zst)?));
                    }
                }
            }
        }
    }
    Ok(delta_files)
}

/// One timed `ferry delta` of `case` (its `<store>/deltas` removed first), copied to `kept`.
fn ferry_delta(bench: &Bench<'_>, case: &Case<'_>, i: usize, kept: &Path) -> Result<FerryDelta> {
    remove_if_exists(&bench.store.join("deltas"))?;
    settle()?;
    let (wall, cpu, out) = run_cpu(
        ferry_cmd(bench.ferry)
            .args(["delta", "--json", "--quiet", "--store"])
            .arg(&bench.store)
            .arg(case.base.id.to_hex())
            .arg(case.target.id.to_hex()),
    )?;
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
    Ok(FerryDelta {
        wall,
        cpu,
        bytes,
        patches: num(&json, "patches")?,
        literals: num(&json, "literals")?,
        reused: num(&json, "reused_files")?,
        elapsed_ms: num(&json, "elapsed_ms")?,
    })
}

/// `xdelta3 -e -9 -f -s base.tar target.tar OUT`.
fn xdelta_encode(bench: &Bench<'_>, case: &Case<'_>, out: &Path) -> Command {
    let mut cmd = Command::new("xdelta3");
    cmd.args(["-e", "-9", "-f", "-s"]).arg(bench.tar_of(case.base)).arg(bench.tar_of(case.target)).arg(out);
    cmd
}

/// `zstd -q -f --long=N --patch-from=base.tar target.tar -o OUT`.
fn zstd_encode(bench: &Bench<'_>, case: &Case<'_>, out: &Path) -> Command {
    let mut cmd = Command::new("zstd");
    cmd.args(["-q", "-f"])
        .arg(format!("--long={}", bench.long))
        .arg(patch_from(&bench.tar_of(case.base)))
        .arg(bench.tar_of(case.target))
        .arg("-o")
        .arg(out);
    cmd
}

/// ferry's per-file ops against one stream over the same changed files.
pub fn one_stream(bench: &Bench<'_>, cases: &[Case<'_>], results: &mut [Results]) -> Result<()> {
    let st = Store::new(&bench.store);
    for i in 0..bench.runs {
        for (case, res) in cases.iter().zip(results.iter_mut()) {
            let (bytes, time) = ferry_builder::delta::one_stream_size(&st, &case.base.id, &case.target.id)
                .with_context(|| format!("one_stream_size {} run {i}", case.name))?;
            res.one_stream.push((time, bytes));
        }
    }
    Ok(())
}

/// rsync: the target tree onto a fresh copy of the base tree.
pub fn rsync(bench: &Bench<'_>, base_src: &Path, cases: &[Case<'_>], results: &mut [Results]) -> Result<()> {
    for i in 0..bench.runs {
        for (case, res) in cases.iter().zip(results.iter_mut()) {
            let rsync_dest = bench.scratch.join(format!("rsync-{}-{i}", case.name));
            run(Command::new("cp").arg("-a").arg(base_src).arg(&rsync_dest))?;
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
            if i + 1 == bench.runs {
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
    Ok(())
}

/// Memory and round trips (untimed, once each): every encoder's max RSS, and whether
/// xdelta3 and zstd decode back to the target tar.
pub fn memory(bench: &Bench<'_>, have_time: bool, cases: &[Case<'_>], results: &mut [Results]) -> Result<()> {
    let enc = bench.scratch.join("enc");
    for (case, res) in cases.iter().zip(results.iter_mut()) {
        let vcdiff = enc.join(format!("{}.vcdiff", case.name));
        let zst = enc.join(format!("{}.tar.zst-patch", case.name));
        let back = enc.join("back.tar");
        remove_if_exists(&bench.store.join("deltas"))?;
        res.rss.ferry = max_rss(
            have_time,
            enc.as_path(),
            ferry_cmd(bench.ferry)
                .args(["delta", "--quiet", "--store"])
                .arg(&bench.store)
                .arg(case.base.id.to_hex())
                .arg(case.target.id.to_hex()),
        )?;
        res.rss.xdelta = max_rss(have_time, &enc, &mut xdelta_encode(bench, case, &vcdiff))?;
        res.rss.xdelta_dec = max_rss(
            have_time,
            &enc,
            Command::new("xdelta3").args(["-d", "-f", "-s"]).arg(bench.tar_of(case.base)).arg(&vcdiff).arg(&back),
        )?;
        res.xdelta_roundtrip = same_file(&back, &bench.tar_of(case.target))?;
        res.rss.zstd = max_rss(have_time, &enc, &mut zstd_encode(bench, case, &zst))?;
        res.rss.zstd_dec = max_rss(
            have_time,
            &enc,
            Command::new("zstd")
                .args(["-d", "-q", "-f"])
                .arg(format!("--long={}", bench.long))
                .arg(patch_from(&bench.tar_of(case.base)))
                .arg(&zst)
                .arg("-o")
                .arg(&back),
        )?;
        res.zstd_roundtrip = same_file(&back, &bench.tar_of(case.target))?;
        remove_if_exists(&back)?;
    }
    Ok(())
}

/// What applying measured besides each case's results.
#[derive(Debug)]
pub struct Applied {
    /// `cp -al` of the staged base release, each run.
    pub cp_al: Vec<Duration>,
    /// The files of the base release on the host (what cp -al links).
    pub base_files: u64,
}

/// Applying: `ferry host stage DELTA` onto a host holding base, against `cp -al` of the
/// base release and a full untar; and the target bundle staged on a fresh host.
pub fn apply(
    bench: &Bench<'_>,
    base: &Release,
    cases: &[Case<'_>],
    delta_files: &[PathBuf],
    have_time: bool,
    results: &mut [Results],
) -> Result<Applied> {
    let (s, ferry) = (bench.scratch, bench.ferry);
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
    let mut tasks: Vec<Apply> = (0..cases.len()).map(Apply::Stage).collect();
    tasks.push(Apply::CpAl);
    tasks.extend((0..cases.len()).map(Apply::Untar));
    tasks.push(Apply::Bundle(1));
    for i in 0..bench.runs {
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
                Apply::Bundle(c) => results[c].bundle_stage.push(stage_fresh(bench, &cases[c], i)?),
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
    Ok(Applied { cp_al, base_files: count_files(&base_release)? })
}

/// The target's whole bundle staged on a fresh host, timed.
fn stage_fresh(bench: &Bench<'_>, case: &Case<'_>, i: usize) -> Result<(Duration, Staged)> {
    let fresh_host = bench.scratch.join(format!("fresh-host-{i}"));
    settle()?;
    let (staged, wall) = stage(bench.ferry, &fresh_host, &case.target.bundle)
        .with_context(|| format!("staging the {} bundle on a fresh host, run {i}", case.name))?;
    Ok((wall, staged))
}
