//! Which agent binary goes to ssh hosts that lack one: `ferry-agent` (see
//! agent/), found by `FERRY_AGENT`, beside this binary, or where cargo puts
//! it when both are built from source.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The environment variable that names the agent binary to upload.
pub const FERRY_AGENT: &str = "FERRY_AGENT";

/// The agent to upload to the stage's hosts: `$FERRY_AGENT`, else
/// `ferry-agent` beside this ferry, else in `../agent/` from it (cargo's
/// `target/agent/` when ferry runs from `target/debug/` or
/// `target/release/`).
pub fn to_upload() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(FERRY_AGENT).filter(|p| !p.is_empty()) {
        let path = std::path::absolute(PathBuf::from(path))?;
        if !path.is_file() {
            bail!("{FERRY_AGENT}={} is not a file: point it at a ferry-agent binary", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let cargos = dir.parent().unwrap_or(dir).join("agent");
    let places = [dir.join("ferry-agent"), cargos.join("ferry-agent")];
    match places.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "no ferry-agent to upload to ssh hosts: none beside ferry ({}) nor in {}: build it with `cargo build -p \
             ferry-agent --profile agent` (it lands in target/agent/) and put it beside ferry or set \
             {FERRY_AGENT}=PATH; or name a ferry already on the hosts with `agent` in the stage",
            places[0].display(),
            cargos.display()
        ),
    }
}

/// With `fetch = "store"` and a remote store, a host that lacks the agent
/// downloads it from the store (put there once per run, gzipped, under its
/// hash) rather than being sent it over SSH; see `AgentBinary::Fetch`.
pub fn via_store(stage: &mut super::StageSettings, store: &ferry_builder::Store) {
    let crate::config::FetchFrom::Store { ttl } = stage.fetch else { return };
    if !matches!(store.remote(), Ok(Some(_))) {
        return;
    }
    let Some(ssh) = stage.ssh.as_mut() else { return };
    let ferry_switcher::fleet::AgentBinary::Upload(local) = &ssh.ferry else { return };
    let store = store.clone();
    let put = move |gz: &[u8]| {
        ferry_builder::remote::sync::put_agent(&store, gz, ttl).map_err(|e| ferry_switcher::host::error_chain(&e))
    };
    ssh.ferry = ferry_switcher::fleet::AgentBinary::Fetch(local.clone(), ferry_switcher::fleet::AgentStore::new(put));
}
