//! `--git-ref`: building from a clean export of a commit.
//!
//! The commit is exported with `git archive` (so `export-ignore` attributes
//! apply, and nothing untracked or modified in the work tree gets in) into a
//! directory of its own, and the build runs there. The commit id goes into the
//! release metadata; the tag that names it, if any, into the store's record.
//!
//! The directory is a stable one per service when the caller names it
//! ([`export_at`]: `<store>/exports/<hash of the config's path>`, flock(2)ed while a build
//! uses it, emptied before and removed after), so that what a build step
//! makes there — a venv records its absolute path — is the same from one
//! build to the next and its cached outputs can be restored as they are.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_formats::release::GitInfo;

use crate::BuildError;

/// A checked-out export; removed when dropped.
#[derive(Debug)]
pub struct Export {
    pub dir: ExportDir,
    /// The export's counterpart of the directory the export was asked from.
    pub workdir: PathBuf,
    pub info: GitInfo,
    /// The tag that names the commit exactly, if any (the newest, if several).
    /// Recorded in the store, not in the release: tags come and go.
    pub tag: Option<String>,
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> Result<String, BuildError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(BuildError::Git(format!("git {} in {}: {}", args.join(" "), dir.display(), stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit `reference` names now in the repository that holds `dir`
/// (`git rev-parse <reference>^{commit}`), as 40 hex digits.
pub fn commit_of(dir: &Path, reference: &str) -> Result<String, BuildError> {
    git(dir, &["rev-parse", "--verify", "--quiet", "--end-of-options", &format!("{reference}^{{commit}}")])
        .map_err(|_| BuildError::Git(format!("git ref {reference:?} does not name a commit in {}", dir.display())))
}

/// Where an export is: a temporary directory, or a stable one held locked.
#[derive(Debug)]
pub enum ExportDir {
    Temp(tempfile::TempDir),
    /// Kept after the build, with what its steps made, for the next export
    /// there (see [`Export::keep`]); the lock file is unlocked when closed.
    Stable {
        path: PathBuf,
        _lock: std::fs::File,
    },
}

impl ExportDir {
    pub fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Stable { path, .. } => path,
        }
    }
}

impl Export {
    /// Keeps `outputs` (paths in the export that git does not track: what
    /// build steps made) for the next export into the same stable
    /// directory, which gets them back in place, so a step whose inputs did
    /// not change finds its outputs there and copies nothing. Nothing for a
    /// temporary export.
    pub fn keep(&self, outputs: &[PathBuf]) -> std::io::Result<()> {
        let ExportDir::Stable { path, .. } = &self.dir else { return Ok(()) };
        let list: Vec<String> = outputs
            .iter()
            .filter_map(|o| o.strip_prefix(path).ok())
            .map(|o| o.to_string_lossy().into_owned())
            .filter(|o| !o.is_empty() && !o.contains('\n'))
            .collect();
        let keep = keep_list(path);
        let tmp = keep.with_extension("keep.tmp");
        fs_err::write(&tmp, list.join("\n"))?;
        fs_err::rename(&tmp, &keep)
    }
}

/// Where a stable export lists what the next one keeps.
fn keep_list(dir: &Path) -> PathBuf {
    dir.with_extension("keep")
}

/// Moves what the last build kept (see [`Export::keep`]) out of `dir`
/// into `aside`, before `dir` is emptied.
fn set_aside(dir: &Path, aside: &Path) -> std::io::Result<Vec<String>> {
    let _ = fs_err::remove_dir_all(aside);
    let Ok(list) = fs_err::read_to_string(keep_list(dir)) else { return Ok(Vec::new()) };
    let mut kept = Vec::new();
    for rel in list.lines().filter(|l| !l.is_empty()) {
        let from = dir.join(rel);
        if fs_err::symlink_metadata(&from).is_err() {
            continue;
        }
        let to = aside.join(rel);
        if let Some(parent) = to.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::rename(&from, &to)?;
        kept.push(rel.to_owned());
    }
    Ok(kept)
}

/// Puts back, into the fresh export `dir`, what [`set_aside`] kept, where
/// the commit has nothing of its own (a tracked file wins; the kept copy
/// goes); then removes `aside`.
fn put_back(dir: &Path, aside: &Path, kept: &[String]) -> std::io::Result<()> {
    for rel in kept {
        let to = dir.join(rel);
        if fs_err::symlink_metadata(&to).is_ok() {
            continue;
        }
        if let Some(parent) = to.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::rename(aside.join(rel), &to)?;
    }
    match fs_err::remove_dir_all(aside) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Exports `reference` of the repository that holds `workdir` into a new
/// temporary directory.
pub fn export(workdir: &Path, reference: &str) -> Result<Export, BuildError> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-git-")
        .tempdir()
        .map_err(|e| BuildError::Git(format!("cannot make a directory for the export: {e}")))?;
    export_into(workdir, reference, ExportDir::Temp(dir))
}

/// Exports `reference` into `dir`, the same path every time: waits for
/// another build using it to finish (flock on `<dir>.lock`), then empties
/// it, but for what the last build there kept (see [`Export::keep`]), put
/// back where the commit has nothing. The export stays after the build, for
/// the next.
pub fn export_at(workdir: &Path, reference: &str, dir: &Path) -> Result<Export, BuildError> {
    let fail = |what: &str, e: std::io::Error| BuildError::Git(format!("{what} {}: {e}", dir.display()));
    if let Some(parent) = dir.parent() {
        fs_err::create_dir_all(parent).map_err(|e| fail("cannot make the directory for the export", e))?;
    }
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| fail("cannot open the lock of", e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| fail("cannot lock", e.into()))?;
    let aside = dir.with_extension("kept");
    let kept = set_aside(dir, &aside).map_err(|e| fail("cannot set aside what the last build kept in", e))?;
    match fs_err::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot empty the export directory", e)),
    }
    fs_err::create_dir(dir).map_err(|e| fail("cannot make the export directory", e))?;
    let export = export_into(workdir, reference, ExportDir::Stable { path: dir.to_path_buf(), _lock: lock })?;
    put_back(dir, &aside, &kept).map_err(|e| fail("cannot put back what the last build kept in", e))?;
    Ok(export)
}

fn export_into(workdir: &Path, reference: &str, dir: ExportDir) -> Result<Export, BuildError> {
    let commit = commit_of(workdir, reference)?;
    let top = PathBuf::from(git(workdir, &["rev-parse", "--show-toplevel"])?);
    let prefix = git(workdir, &["rev-parse", "--show-prefix"])?;
    let tag = git(workdir, &["tag", "--points-at", &commit, "--sort=-creatordate"])
        .ok()
        .and_then(|tags| tags.lines().next().map(str::to_owned));

    let mut child = Command::new("git")
        .arg("-C")
        .arg(&top)
        .args(["archive", "--format=tar", &commit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Git(format!("cannot run git archive: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let unpacked = tar::Archive::new(stdout).unpack(dir.path());
    let out = child.wait_with_output().map_err(|e| BuildError::Git(format!("git archive: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Git(format!("git archive {commit}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    unpacked.map_err(|e| BuildError::Git(format!("cannot unpack the export of {commit}: {e}")))?;
    let workdir = dir.path().join(prefix.trim_end_matches('/'));
    Ok(Export { workdir, dir, info: GitInfo { commit }, tag })
}
