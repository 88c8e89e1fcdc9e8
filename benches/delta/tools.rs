//! Running the tools: commands to success and timed, ferry's own commands, and the
//! small file and number helpers the steps share.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::common::median_by;
use crate::GNU_TIME;

#[derive(Debug)]
pub struct Staged {
    pub already: bool,
    pub written: u64,
    pub written_bytes: u64,
    pub linked: u64,
    pub copied: u64,
    pub elapsed_ms: u64,
}

/// `ferry host --deploy-to HOST stage INPUT --json`, timed.
pub fn stage(ferry: &Path, host: &Path, input: &Path) -> Result<(Staged, Duration)> {
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
pub fn untar(bundle: &Path, dest: &Path) -> Result<Duration> {
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
pub fn max_rss(have_time: bool, scratch: &Path, cmd: &mut Command) -> Result<Option<u64>> {
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
pub fn run(cmd: &mut Command) -> Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((wall, out.stdout))
}

/// Runs a command to success like [`run`]; also returns its CPU time (user + system, from
/// this process's waited-for children's times in /proc/self/stat, in clock ticks).
pub fn run_cpu(cmd: &mut Command) -> Result<(Duration, Duration, Vec<u8>)> {
    let before = children_cpu()?;
    let (wall, out) = run(cmd)?;
    Ok((wall, children_cpu()? - before, out))
}

/// The user + system time of this process's waited-for children so far.
fn children_cpu() -> Result<Duration> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    });
    let stat = fs_err::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses: cutime and cstime are
    // the 16th and 17th of the line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/self/stat has no ')'")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).with_context(|| format!("/proc/self/stat: no field {}", i + 3))
    };
    let total = field(13)? + field(14)?;
    Ok(Duration::from_micros(total * 1_000_000 / ticks))
}

pub fn ferry_cmd(ferry: &Path) -> Command {
    let mut cmd = Command::new(ferry);
    cmd.env_remove("FERRY_CONFIG").env_remove("FERRY_STORE").env_remove("FERRY_DEPLOY_TO");
    cmd
}

pub fn patch_from(reference: &Path) -> OsString {
    let mut arg = OsString::from("--patch-from=");
    arg.push(reference);
    arg
}

/// `path/`, so rsync copies the directory's contents.
pub fn slash(path: &Path) -> OsString {
    let mut s = path.as_os_str().to_owned();
    s.push("/");
    s
}

/// A number from rsync's --stats output ("Total bytes sent: 1,234").
pub fn stat(text: &str, key: &str) -> Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("rsync --stats printed no {key:?}"))?;
    let word = line.split_whitespace().next().unwrap_or("");
    let digits: String = word.chars().filter(char::is_ascii_digit).collect();
    digits.parse().with_context(|| format!("cannot read {key}: {line:?}"))
}

pub fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let status = Command::new("cmp").arg("-s").arg(a).arg(b).status().context("cannot run cmp")?;
    Ok(status.success())
}

pub fn count_files(root: &Path) -> Result<u64> {
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
pub fn set_aside(targets: &[PathBuf], trash: &Path) -> Result<()> {
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
pub fn settle() -> Result<()> {
    run(&mut Command::new("sync")).map(drop)
}

pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(path)?,
        Ok(_) => fs_err::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub fn file_size(path: &Path) -> Result<u64> {
    Ok(fs_err::metadata(path)?.len())
}

pub fn num(v: &Value, k: &str) -> Result<u64> {
    v.get(k).and_then(Value::as_u64).with_context(|| format!("JSON lacks number {k}"))
}

/// `items` rotated left by `i`, so each tool goes first in turn.
pub fn rotated<T: Copy>(items: &[T], i: usize) -> Vec<T> {
    let mut v = items.to_vec();
    v.rotate_left(i % items.len());
    v
}

pub fn median(items: &[Duration]) -> Duration {
    *median_by(items, |d| *d)
}

pub fn kib_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
