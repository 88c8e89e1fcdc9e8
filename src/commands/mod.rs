//! One module per command; each takes the validated settings.

mod agent;
mod build;
mod bundles;
mod delta;
mod deploy;
mod fleet;
mod host;
mod init;
mod inspect;
mod lb;
mod preview;
mod publish;
mod report;
mod sign;

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use ferry_builder::StoreError;
use ferry_formats::bundle::{self, Head, Verified};
use ferry_formats::ReleaseId;

use crate::settings::{Action, Settings, Target};

/// Runs the command and returns the exit code.
pub fn run(settings: &Settings) -> Result<u8> {
    match &settings.action {
        Action::Build(b) => build::run(settings, b),
        Action::Inspect(t) => inspect::inspect(settings, t),
        Action::Verify(t) => inspect::verify(settings, t),
        Action::Diff(a, b) => inspect::diff(settings, a, b),
        Action::Bundles => bundles::run(settings),
        Action::Delta(a, b) => delta::run(settings, a, b),
        Action::Push(s, id) => fleet::push(settings, s, id.as_deref()),
        Action::Rollback(s, to) => fleet::rollback(settings, s, to.as_deref()),
        Action::Status(s) => fleet::status(settings, s),
        Action::History(s) => fleet::history(settings, s),
        Action::Setup(s, install) => fleet::setup(settings, s, *install),
        Action::Logs(s, args) => fleet::logs(settings, s, args),
        Action::Lb(s, verb) => lb::run(settings, s, verb),
        Action::Exec(s, command, timeout) => fleet::exec(settings, s, command, *timeout),
        Action::Deploy(s, d) => deploy::run(settings, s, d),
        Action::Host(host, action) => host::run(settings, host, action),
        Action::Init(dir, force) => init::run(dir, *force),
        Action::Publish(name) => publish::run(settings, name),
        Action::Keygen(dir, no_password) => sign::keygen(settings, dir, *no_password),
        Action::Sign(name, s) => sign::sign(settings, name, s),
        Action::Completions(shell) => {
            // Made whole first, then written as any output is (a closed
            // pipe, `| head`, ends it quietly).
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "ferry", &mut script);
            crate::output::line(String::from_utf8_lossy(&script).trim_end())?;
            Ok(crate::exit::OK)
        }
        Action::Agent(path) => agent::run(settings, path),
        Action::AgentHash => {
            let exe = std::env::current_exe()?;
            crate::output::line(&blake3::hash(&fs_err::read(exe)?).to_hex())?;
            Ok(crate::exit::OK)
        }
    }
}

/// A release that must be in the store: by any name `Store::find` takes,
/// or a bundle file's name.
fn stored_id(settings: &Settings, target: &Target) -> Result<ReleaseId> {
    match locate(settings, target)? {
        (_, Some(id)) if settings.store.has_intact(&id) => Ok(id),
        (path, _) => {
            anyhow::bail!("{} is not a bundle in the store {}", path.display(), settings.store.root().display())
        }
    }
}

/// A bundle file, and the id it must have if its name or the store says so.
fn locate(settings: &Settings, target: &Target) -> Result<(PathBuf, Option<ReleaseId>)> {
    Ok(match target {
        Target::File(path) => {
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".tar.zst"))
                .and_then(|n| n.parse().ok());
            (path.clone(), named)
        }
        // Any service's: these commands need no ferry.toml.
        Target::Name(name) => match settings.store.find(None, name) {
            Ok(id) => (settings.store.bundle_path(&id), Some(id)),
            Err(e @ StoreError::NoSuchRelease(_)) if name.contains('/') => {
                return Err(anyhow::Error::new(e).context(format!("there is no file {name}")));
            }
            Err(e) => return Err(e.into()),
        },
    })
}

fn open(path: &std::path::Path) -> Result<BufReader<fs_err::File>> {
    Ok(BufReader::with_capacity(1 << 20, open_input(path)?))
}

/// Opens a bundle or delta given by path, which must be a regular file: a
/// FIFO or a device would block the open or the read with no end (and a
/// stage would hold the host's lock all the while). Checked before opening,
/// since opening a FIFO blocks.
pub(crate) fn open_input(path: &std::path::Path) -> Result<fs_err::File> {
    let kind = fs_err::metadata(path)?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        bail!("{} is {what}: give a bundle or delta file, or `-` to read standard input", path.display());
    }
    let file = fs_err::File::open(path)?;
    // Checked again on what was opened: the path may have changed between the two.
    if !file.metadata()?.is_file() {
        bail!("{} is not a regular file: give a bundle or delta file, or `-` to read standard input", path.display());
    }
    Ok(file)
}

/// Reads and checks a bundle's head.
fn head(settings: &Settings, target: &Target) -> Result<Head> {
    let (path, expect) = locate(settings, target)?;
    bundle::read_head(open(&path)?, expect.as_ref()).with_context(|| format!("{}", path.display()))
}

/// Reads and checks a whole bundle.
fn verified(settings: &Settings, target: &Target) -> Result<(PathBuf, Verified)> {
    let (path, expect) = locate(settings, target)?;
    let v = bundle::read(open(&path)?, expect.as_ref(), &mut bundle::Discard)
        .with_context(|| format!("{}", path.display()))?;
    Ok((path, v))
}
