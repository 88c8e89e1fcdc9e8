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
    /// Removed when dropped; the lock file is unlocked when closed.
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

impl Drop for ExportDir {
    fn drop(&mut self) {
        if let Self::Stable { path, .. } = self {
            let _ = fs_err::remove_dir_all(path);
        }
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
/// another build using it to finish (flock on `<dir>.lock`), then empties it.
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
    match fs_err::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot empty the export directory", e)),
    }
    fs_err::create_dir(dir).map_err(|e| fail("cannot make the export directory", e))?;
    export_into(workdir, reference, ExportDir::Stable { path: dir.to_path_buf(), _lock: lock })
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
