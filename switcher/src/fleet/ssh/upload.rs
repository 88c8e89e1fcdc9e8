//! The agent uploaded to a host that lacks it, named by its blake3.

use std::path::PathBuf;

use super::exec::exec;
use super::{quote, refused};
use crate::fleet::HostSpec;
use crate::host::HostError;

/// Where this very agent lives on the host: named by its blake3, so a copy
/// there is this binary (an upload takes the name only once checked).
pub(super) fn agent_path(spec: &HostSpec, local: &std::path::Path) -> Result<String, HostError> {
    let hash = agent_hash(local)?;
    let dir = spec.deploy_to.to_string_lossy().trim_end_matches('/').to_owned();
    Ok(format!("{dir}/.ferry/bin/ferry-{}", &hash[..16]))
}

/// The blake3 of a binary, hashed once per process.
fn agent_hash(local: &std::path::Path) -> Result<String, HostError> {
    static HASHES: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut hashes = HASHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, hash)) = hashes.iter().find(|(p, _)| p == local) {
        return Ok(hash.clone());
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(local).map_err(HostError::Fs)?;
    let hash = hasher.finalize().to_hex().to_string();
    hashes.push((local.to_owned(), hash.clone()));
    Ok(hash)
}

/// Uploads this binary to `path` on a host that runs `uname` (`uname -s`
/// and `uname -m`), once that is what the binary is built for.
pub(super) fn upload_agent(
    session: &ssh2::Session,
    spec: &HostSpec,
    local: &std::path::Path,
    path: &str,
    uname: &str,
) -> Result<(), HostError> {
    let name = &spec.name;
    let (os, machine) = uname.split_once(' ').unwrap_or((uname, ""));
    if !os.eq_ignore_ascii_case(std::env::consts::OS) || machine != std::env::consts::ARCH {
        let way_out = if os.eq_ignore_ascii_case("linux") {
            format!(
                "build ferry for it and name that build with `agent` (a static musl build, \
                 --target {machine}-unknown-linux-musl, runs on any Linux of that machine)"
            )
        } else {
            format!("build ferry on or for {os} {machine} and name that build with `agent`")
        };
        return Err(refused(
            name,
            format!(
                "the host runs {os} {machine}, this ferry is built for {} {}: {way_out}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        ));
    }
    let hash = agent_hash(local)?;
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
    // A temporary name of its own (two pushes may upload at once), checked
    // by running it before it takes the final name.
    let upload = format!(
        "set -e; mkdir -p {dir}; t=$(mktemp {dir}/.upload.XXXXXX); trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; \
         chmod 755 \"$t\"; test \"$(\"$t\" agent-hash)\" = {hash}; mv \"$t\" {path}; trap - EXIT",
        dir = quote(dir),
        path = quote(path)
    );
    let mut binary = fs_err::File::open(local).map_err(HostError::Fs)?;
    let (status, out) = exec(session, name, &format!("{upload} 2>&1"), Some(&mut binary))?;
    if status != 0 {
        return Err(refused(name, format!("uploading the agent to {path} failed (exit {status}): {}", out.trim())));
    }
    Ok(())
}
