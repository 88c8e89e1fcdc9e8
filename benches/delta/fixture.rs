//! The three releases: built untimed into one store, and their bundles decompressed
//! to tars for the byte-level tools.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use ferry_formats::ReleaseId;
use serde_json::Value;

use crate::tools::{ferry_cmd, num, remove_if_exists, run};

#[derive(Debug)]
pub struct Release {
    pub label: &'static str,
    pub id: ReleaseId,
    pub bundle: PathBuf,
    pub size: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Case<'a> {
    pub name: &'static str,
    pub base: &'a Release,
    pub target: &'a Release,
    /// The target's release tree, rsync's source.
    pub tree: &'a Path,
}

impl<'a> Case<'a> {
    pub fn new(name: &'static str, base: &'a Release, target: &'a Release, tree: &'a Path) -> Self {
        Self { name, base, target, tree }
    }
}

/// Copies `src` to `at` (`cp -a`, so mtimes and the pycs' validity stay), applies the
/// edits, and builds it with a cold build cache. The tree is then moved to `keep`.
pub fn build(
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
pub fn remove_bench_tree(at: &Path) -> Result<()> {
    if !at.exists() {
        return Ok(());
    }
    let ours = fs_err::read_to_string(at.join("ferry.toml")).is_ok_and(|t| t.contains("service = \"bench\""));
    ensure!(ours, "{} exists and is not a bench release tree; not touching it", at.display());
    fs_err::remove_dir_all(at)?;
    Ok(())
}

/// The Django version make-release.sh recorded beside a tree.
pub fn marker(dir: &Path, name: &str) -> String {
    fs_err::read_to_string(dir.join(format!("{name}.done"))).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}
