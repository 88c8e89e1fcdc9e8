//! `[build]` steps: commands run in the release tree before it is packed
//! (making a venv, compiling assets), and the cache of their outputs.
//!
//! Each step runs as `sh -c <run>` in the tree's root, in a process group of
//! its own, with no stdin and its stdout and stderr in one file; the whole
//! group is killed at its timeout. A step's inputs must exist before it runs.
//!
//! A step with `outputs` is cached. Its key is a blake3 hash of the step's
//! name, `run` text and outputs, the tree's absolute path (a venv records the
//! path it was made at), the `python3` on `PATH` (its resolved path, size and
//! mtime), and the content of every input (path, executable bit, bytes or
//! symlink target). When an entry with that key is in the cache the step does
//! not run: its outputs are copied from the cache into the tree (mtimes kept,
//! so `.pyc` files stay valid against their sources), unless the tree already
//! holds exactly what this step last put there.
//!
//! ```text
//! <cache>/<step>/<key>/outputs/…     the outputs, as the step made them
//! <cache>/<step>/<key>/entry.json    when and how long it ran
//! <cache>/<step>/tree-<hash>.json    what the step last put in one tree
//! ```
//!
//! The newest [`KEEP`] entries of each step are kept.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_formats::RelPath;
use fs_err as fs;
use serde::{Deserialize, Serialize};

/// Cache entries kept per step.
pub const KEEP: usize = 3;
/// Lines of a step's output kept for its report and its error.
pub const TAIL_LINES: usize = 20;

/// One `[[build.steps]]`, already checked.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub run: String,
    /// Paths or globs, relative to the tree's root.
    pub inputs: Vec<String>,
    pub outputs: Vec<RelPath>,
    pub timeout: Duration,
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    /// Its inputs were unchanged: it did not run, its outputs came from the cache.
    pub cached: bool,
    /// The outputs were copied from the cache into the tree (false when the
    /// tree already held them, or the step ran).
    #[serde(skip)]
    pub restored: bool,
    pub seconds: f64,
    /// Its exit code; `None` when it did not run.
    pub exit: Option<i32>,
    /// Its last lines of output (stdout and stderr together).
    pub output_tail: Vec<String>,
    /// Something the user should know (outputs changed by hand, a cache that
    /// could not be written).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("build step {step}: input {input:?} {what} in {}; the step was not run", root.display())]
    MissingInput { step: String, input: String, what: &'static str, root: PathBuf },
    #[error("build step {step} failed ({}) after {seconds:.1} s; no bundle was made. Its last output:\n{}", exit_text(*.exit), tail_text(.tail))]
    Failed { step: String, exit: Option<i32>, seconds: f64, tail: Vec<String> },
    #[error("build step {step} timed out after {timeout} s and was killed (its whole process group); no bundle was made. Its last output:\n{}", tail_text(.tail))]
    TimedOut { step: String, timeout: u64, tail: Vec<String> },
    #[error("build step {step} succeeded but did not make its output {output:?}; no bundle was made")]
    NoOutput { step: String, output: String },
    #[error("build step {step}: {what}: {source}")]
    Io {
        step: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn exit_text(exit: Option<i32>) -> String {
    match exit {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".into(),
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return "  (no output)".into();
    }
    tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// Runs `steps` in order in the tree at `root`, with `cache` as the
/// service's step cache directory. Stops at the first that fails.
/// `owned`: the tree is ferry's own (a `--git-ref` export), where outputs
/// a step made for other inputs are removed before it runs again, however
/// they were changed since; in a user's tree, only when they are exactly
/// what the step made.
pub fn run_all(
    steps: &[Step],
    root: &Path,
    cache: &Path,
    env: &[(String, String)],
    owned: bool,
) -> Result<Vec<StepReport>, StepError> {
    steps.iter().map(|s| run_one(s, root, cache, env, owned)).collect()
}

fn run_one(
    step: &Step,
    root: &Path,
    cache: &Path,
    env: &[(String, String)],
    owned: bool,
) -> Result<StepReport, StepError> {
    let start = Instant::now();
    let io = |what: String| {
        let step = step.name.clone();
        move |source| StepError::Io { step, what, source }
    };
    let inputs = resolve_inputs(step, root)?;
    let mut report = StepReport {
        name: step.name.clone(),
        cached: false,
        restored: false,
        seconds: 0.0,
        exit: None,
        output_tail: Vec::new(),
        warnings: Vec::new(),
    };
    let cached = if step.outputs.is_empty() {
        None
    } else {
        let key = key(step, root, &inputs).map_err(io("hashing its inputs".into()))?;
        let dir = cache.join(&step.name);
        let entry = dir.join(&key);
        let state_path =
            dir.join(format!("tree-{}.json", &blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex()[..16]));
        Some((key, dir, entry, state_path))
    };

    if let Some((key, _, entry, state_path)) = &cached {
        let state: Option<TreeState> = fs::read(state_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let now = fingerprint(root, &step.outputs);
        // Outputs this step made here for other inputs (a kept export's venv
        // of the old lock file) are its own stale ones: it starts without
        // them, as from a fresh tree, whether it runs or restores.
        if state.as_ref().is_some_and(|s| s.key != *key && (owned || Some(&s.fingerprint) == now.as_ref())) {
            for o in &step.outputs {
                let stale = root.join(o.as_str());
                remove(&stale).map_err(io(format!("removing {}", stale.display())))?;
            }
        }
        if entry.join("entry.json").is_file() {
            report.cached = true;
            let all_there = step.outputs.iter().all(|o| fs::symlink_metadata(root.join(o.as_str())).is_ok());
            match state {
                Some(s) if s.key == *key && Some(s.fingerprint.clone()) == now => {}
                Some(s) if s.key == *key && all_there => report.warnings.push(format!(
                    "build step {}: its outputs in the tree ({}) changed since it last made them; they are packed as they are (remove them to get the cached ones back)",
                    step.name,
                    step.outputs.iter().map(RelPath::as_str).collect::<Vec<_>>().join(", ")
                )),
                _ => {
                    for o in &step.outputs {
                        let dst = root.join(o.as_str());
                        remove(&dst).map_err(io(format!("removing {}", dst.display())))?;
                        copy_tree(&entry.join("outputs").join(o.as_str()), &dst)
                            .map_err(io(format!("restoring {} from the cache", dst.display())))?;
                    }
                    report.restored = true;
                    let fp = fingerprint(root, &step.outputs).unwrap_or_default();
                    if let Err(e) = write_state(state_path, key, fp) {
                        report.warnings.push(format!("build step {}: could not record its outputs: {e}", step.name));
                    }
                }
            }
            // The entry was used: the newest of the step's entries, for pruning.
            let _ = touch(&entry.join("entry.json"));
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
    }

    let (status, tail) = execute(step, root, env).map_err(io("cannot run sh".into()))?;
    let seconds = start.elapsed().as_secs_f64();
    report.output_tail = tail;
    let Some(status) = status else {
        return Err(StepError::TimedOut {
            step: step.name.clone(),
            timeout: step.timeout.as_secs(),
            tail: report.output_tail,
        });
    };
    report.exit = status.code();
    if !status.success() {
        return Err(StepError::Failed {
            step: step.name.clone(),
            exit: status.code(),
            seconds,
            tail: report.output_tail,
        });
    }
    for o in &step.outputs {
        if fs::symlink_metadata(root.join(o.as_str())).is_err() {
            return Err(StepError::NoOutput { step: step.name.clone(), output: o.to_string() });
        }
    }
    if let Some((key, dir, entry, state_path)) = &cached {
        if let Err(e) = save(step, root, dir, entry, key, seconds) {
            report.warnings.push(format!("build step {}: could not cache its outputs: {e}", step.name));
        } else {
            let fp = fingerprint(root, &step.outputs).unwrap_or_default();
            if let Err(e) = write_state(state_path, key, fp) {
                report.warnings.push(format!("build step {}: could not record its outputs: {e}", step.name));
            }
            prune(dir);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What a step last put in one tree.
#[derive(Debug, Serialize, Deserialize)]
struct TreeState {
    key: String,
    fingerprint: String,
}

fn write_state(path: &Path, key: &str, fingerprint: String) -> std::io::Result<()> {
    let state = TreeState { key: key.to_owned(), fingerprint };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec(&state)?)?;
    fs::rename(&tmp, path)
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    step: String,
    run: String,
    made_at: u64,
    seconds: f64,
}

/// Copies the outputs into a new cache entry, atomically (a temporary
/// directory renamed into place).
fn save(step: &Step, root: &Path, dir: &Path, entry: &Path, _key: &str, seconds: f64) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(dir)?;
    for o in &step.outputs {
        copy_tree(&root.join(o.as_str()), &tmp.path().join("outputs").join(o.as_str()))?;
    }
    let made_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let meta = Entry { step: step.name.clone(), run: step.run.clone(), made_at, seconds };
    fs::write(tmp.path().join("entry.json"), serde_json::to_vec_pretty(&meta)?)?;
    let tmp = tmp.keep();
    if entry.exists() {
        remove(entry)?;
    }
    if let Err(e) = fs::rename(&tmp, entry) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Keeps the newest [`KEEP`] entries of a step (by their `entry.json`'s
/// mtime, which a hit renews).
fn prune(dir: &Path) {
    let Ok(list) = fs::read_dir(dir) else { return };
    let mut entries: Vec<(SystemTime, PathBuf)> = list
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let m = fs::metadata(p.join("entry.json")).ok()?.modified().ok()?;
            Some((m, p))
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(KEEP) {
        let _ = fs::remove_dir_all(p);
    }
}

fn touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_modified(SystemTime::now())
}

/// Files an input names, as (path relative to the root, absolute path).
fn resolve_inputs(step: &Step, root: &Path) -> Result<Vec<(String, PathBuf)>, StepError> {
    let missing = |input: &str, what| StepError::MissingInput {
        step: step.name.clone(),
        input: input.to_owned(),
        what,
        root: root.to_path_buf(),
    };
    let mut out = Vec::new();
    for input in &step.inputs {
        if is_glob(input) {
            let glob = globset::GlobBuilder::new(input)
                .literal_separator(true)
                .build()
                .map_err(|_| missing(input, "is not a valid glob"))?
                .compile_matcher();
            let before = out.len();
            for e in walkdir::WalkDir::new(root)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| e.file_name() != ".git" && e.file_name() != ".ferry")
                .flatten()
            {
                let Ok(rel) = e.path().strip_prefix(root) else { continue };
                if !e.file_type().is_dir() && glob.is_match(rel) {
                    out.push((rel.to_string_lossy().into_owned(), e.path().to_path_buf()));
                }
            }
            if out.len() == before {
                return Err(missing(input, "matches no file"));
            }
        } else {
            let abs = root.join(input);
            if fs::symlink_metadata(&abs).is_err() {
                return Err(missing(input, "does not exist"));
            }
            out.push((input.trim_end_matches('/').to_owned(), abs));
        }
    }
    Ok(out)
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The cache key of a step in `root` with these inputs.
fn key(step: &Step, root: &Path, inputs: &[(String, PathBuf)]) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"ferry build step 1");
    field(step.name.as_bytes());
    field(step.run.as_bytes());
    for o in &step.outputs {
        field(o.as_str().as_bytes());
    }
    field(root.as_os_str().as_encoded_bytes());
    field(python_identity().as_bytes());
    let mut files = Vec::new();
    for (rel, abs) in inputs {
        for e in walkdir::WalkDir::new(abs).sort_by_file_name() {
            let e = e.map_err(std::io::Error::other)?;
            let sub = e.path().strip_prefix(abs).unwrap_or(Path::new(""));
            let rel = Path::new(rel).join(sub).to_string_lossy().into_owned();
            files.push((rel, e.path().to_path_buf(), e.file_type()));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    for (rel, abs, kind) in files {
        let mut h2 = blake3::Hasher::new();
        if kind.is_symlink() {
            h2.update(b"l");
            h2.update(fs::read_link(&abs)?.as_os_str().as_encoded_bytes());
        } else if kind.is_dir() {
            h2.update(b"d");
        } else {
            let exec = fs::metadata(&abs)?.permissions().mode() & 0o111 != 0;
            h2.update(if exec { b"x" } else { b"f" });
            h2.update_reader(fs::File::open(&abs)?)?;
        }
        field(rel.as_bytes());
        field(h2.finalize().as_bytes());
    }
    Ok(h.finalize().to_hex()[..32].to_owned())
}

/// The `python3` on `PATH`, resolved, with its size and mtime: a venv is
/// made for one interpreter.
fn python_identity() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("python3");
        if let Ok(real) = fs::canonicalize(&p) {
            if let Ok(m) = fs::metadata(&real) {
                return format!("{} {} {}", real.display(), m.len(), m.mtime());
            }
        }
    }
    "no python3".into()
}

/// A hash of the outputs' paths, kinds, sizes, mtimes and modes: whether the
/// tree still holds what a step put there. `None` when an output is missing.
fn fingerprint(root: &Path, outputs: &[RelPath]) -> Option<String> {
    let mut h = blake3::Hasher::new();
    for o in outputs {
        let abs = root.join(o.as_str());
        for e in walkdir::WalkDir::new(&abs).sort_by_file_name() {
            let e = e.ok()?;
            let m = e.metadata().ok()?;
            h.update(e.path().as_os_str().as_encoded_bytes());
            h.update(&[0]);
            for n in [m.size(), m.mtime() as u64, m.mtime_nsec() as u64, u64::from(m.mode()), m.ino()] {
                h.update(&n.to_le_bytes());
            }
        }
    }
    Some(h.finalize().to_hex().to_string())
}

/// Removes a file, symlink or directory tree, if there.
fn remove(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a file, symlink or directory tree, keeping modes and mtimes.
/// (`std::fs::copy` uses copy_file_range: a reflink where the filesystem can.)
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    for e in walkdir::WalkDir::new(src) {
        let e = e.map_err(std::io::Error::other)?;
        // `src` itself is `dst`, not `dst/` (a file output, a jar, joined
        // with "" would name a directory).
        let to = match e.path().strip_prefix(src) {
            Ok(rel) if !rel.as_os_str().is_empty() => dst.join(rel),
            _ => dst.to_path_buf(),
        };
        let kind = e.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &to)?;
        } else if kind.is_dir() {
            fs::create_dir(&to)?;
            let mode = e.metadata().map_err(std::io::Error::other)?.permissions().mode();
            fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o7777))?;
        } else {
            fs::copy(e.path(), &to)?;
            let m = e.metadata().map_err(std::io::Error::other)?;
            let f = std::fs::OpenOptions::new().write(true).open(&to)?;
            f.set_times(std::fs::FileTimes::new().set_modified(m.modified()?).set_accessed(m.accessed()?))?;
        }
    }
    Ok(())
}

/// Runs the step; returns its status (`None`: killed at its timeout) and
/// its last lines of output.
fn execute(
    step: &Step,
    root: &Path,
    env: &[(String, String)],
) -> std::io::Result<(Option<std::process::ExitStatus>, Vec<String>)> {
    let log = tempfile::tempfile()?;
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&step.run)
        .current_dir(root)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        .spawn()?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > step.timeout {
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Nothing a step started outlives it.
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    Ok((status, tail(log)?))
}

/// The last [`TAIL_LINES`] lines of the log (from its last 64 KiB).
fn tail(mut log: std::fs::File) -> std::io::Result<Vec<String>> {
    let len = log.seek(SeekFrom::End(0))?;
    log.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))?;
    let mut bytes = Vec::new();
    log.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: VecDeque<String> = VecDeque::new();
    for line in text.lines() {
        let line: String = line.chars().take(400).collect();
        lines.push_back(line);
        if lines.len() > TAIL_LINES {
            lines.pop_front();
        }
    }
    Ok(lines.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: &str, inputs: &[&str], outputs: &[&str]) -> Step {
        Step {
            name: "s".into(),
            run: run.into(),
            inputs: inputs.iter().map(ToString::to_string).collect(),
            outputs: outputs.iter().map(|o| RelPath::new(*o).unwrap()).collect(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_cached_step_restores_its_outputs_with_their_mtimes() {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        fs::write(root.path().join("req.txt"), "a\n").unwrap();
        let s = step("mkdir -p out && touch -d 2001-01-01 out/f && echo hi", &["req.txt"], &["out"]);
        let r = run_all(std::slice::from_ref(&s), root.path(), cache.path(), &[], false).unwrap();
        assert!(!r[0].cached);
        assert_eq!(r[0].output_tail, ["hi"]);
        let mtime = fs::metadata(root.path().join("out/f")).unwrap().modified().unwrap();
        // Unchanged tree: nothing to do.
        let r = run_all(std::slice::from_ref(&s), root.path(), cache.path(), &[], false).unwrap();
        assert!(r[0].cached && !r[0].restored, "{r:?}");
        // Outputs gone: restored.
        fs::remove_dir_all(root.path().join("out")).unwrap();
        let r = run_all(std::slice::from_ref(&s), root.path(), cache.path(), &[], false).unwrap();
        assert!(r[0].cached && r[0].restored, "{r:?}");
        assert_eq!(fs::metadata(root.path().join("out/f")).unwrap().modified().unwrap(), mtime);
        // A changed input reruns it.
        fs::write(root.path().join("req.txt"), "b\n").unwrap();
        let r = run_all(std::slice::from_ref(&s), root.path(), cache.path(), &[], false).unwrap();
        assert!(!r[0].cached);
    }

    #[test]
    fn at_most_keep_entries_per_step() {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let s = step("mkdir -p out", &["req.txt"], &["out"]);
        for n in 0..5 {
            fs::write(root.path().join("req.txt"), format!("{n}\n")).unwrap();
            run_all(std::slice::from_ref(&s), root.path(), cache.path(), &[], false).unwrap();
        }
        let keys = fs::read_dir(cache.path().join("s"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("entry.json").exists())
            .count();
        assert_eq!(keys, KEEP);
    }

    #[test]
    fn a_glob_that_matches_nothing_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let err = run_all(&[step("touch ran", &["*.lock"], &[])], root.path(), cache.path(), &[], false).unwrap_err();
        assert!(err.to_string().contains("\"*.lock\" matches no file"), "{err}");
        assert!(!root.path().join("ran").exists());
    }
}
