//! The agent uploaded to a host that lacks it, named by its blake3: checked
//! against what the host says it runs (OS, machine, glibc) before a byte
//! goes, sent gzipped, and checked by its hash on the host.

use std::path::Path;

use sha2::Digest as _;

use super::exec::{exec, exec_shown};
use super::image::{image, Glibc, Image};
use super::{quote, refused};
use crate::fleet::HostSpec;
use crate::host::HostError;

/// The shell words that make a host without the agent say what it runs,
/// on one line after [`super::exec::NO_AGENT`]: read by [`Facts::parse`].
/// `gzip -V` must run, not only be there; the glibc version comes from
/// getconf, else from the first line of `ldd --version`.
/// Then the downloader it has for an agent from the store: curl, else
/// wget, else `no-fetch`.
pub(super) const PROBE: &str = "$(uname -s) $(uname -m) $(gzip -V >/dev/null 2>&1 && echo gzip || echo no-gzip) \
     $(if curl --version >/dev/null 2>&1; then echo curl; elif wget --version >/dev/null 2>&1; then echo wget; \
     else echo no-fetch; fi) libc: $(getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>&1 | head -n 1)";

/// What a host without the agent says of itself.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Facts {
    /// `uname -s`, `uname -m`.
    pub os: String,
    pub machine: String,
    /// It can undo gzip.
    pub gzip: bool,
    /// Its downloader (`curl`, `wget`), if it has one.
    pub fetcher: Option<Fetcher>,
    /// What it says of its libc, as said.
    pub libc: String,
}

impl Facts {
    /// `Linux x86_64 gzip libc: glibc 2.36`, as [`PROBE`] prints it.
    pub(super) fn parse(said: &str) -> Self {
        let (head, libc) = said.split_once("libc:").unwrap_or((said, ""));
        let mut words = head.split_whitespace();
        let mut word = || words.next().unwrap_or_default().to_owned();
        let (os, machine, gzip, fetcher) = (word(), word(), word(), word());
        let fetcher = match fetcher.as_str() {
            "curl" => Some(Fetcher::Curl),
            "wget" => Some(Fetcher::Wget),
            _ => None,
        };
        Facts { os, machine, gzip: gzip == "gzip", fetcher, libc: libc.trim().to_owned() }
    }
}

/// A host's own downloader, for the agent from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetcher {
    Curl,
    Wget,
}

impl std::fmt::Display for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Fetcher::Curl => "curl",
            Fetcher::Wget => "wget",
        })
    }
}

/// Where this very agent lives on the host: named by its blake3, so a copy
/// there is this binary (an upload takes the name only once checked).
pub(super) fn agent_path(spec: &HostSpec, local: &Path) -> Result<String, HostError> {
    let hash = &image(local)?.hash;
    let dir = spec.deploy_to.to_string_lossy().trim_end_matches('/').to_owned();
    Ok(format!("{dir}/.ferry/bin/ferry-{}", &hash[..16]))
}

/// Why the agent cannot run on a host that says `facts`, if it cannot: its
/// OS and machine, then its glibc.
fn unfit(agent: &Image, facts: &Facts) -> Option<String> {
    let Facts { os, machine, libc, .. } = facts;
    let built = format!("the agent {} is built for linux {}", agent.path.display(), agent.machine);
    if !os.eq_ignore_ascii_case("linux") || *machine != agent.machine {
        let way_out = if os.eq_ignore_ascii_case("linux") {
            format!(
                "build ferry-agent for it (--target {machine}-unknown-linux-gnu, or -musl for a static one) and \
                 point FERRY_AGENT at it, or install ferry there and name it with `agent`"
            )
        } else {
            format!("build ferry on or for {os} {machine} and name that build with `agent`")
        };
        return Some(format!("the host runs {os} {machine}, {built}: {way_out}"));
    }
    let need = agent.glibc?;
    // Its glibc sets the floor: glibc's symbols are versioned, and a binary
    // needs the versions of the glibc it was linked against.
    let way_out = "upgrade the host, or build ferry-agent on a machine with an older glibc (the one it is \
                   linked against sets its floor), or install ferry there and name it with `agent`";
    match Glibc::of_host(libc) {
        Some(have) if have >= need => None,
        Some(have) => Some(format!(
            "the host has glibc {have}, and the agent {} needs glibc {need} or newer (its ELF version needs \
             say so): nothing was uploaded; {way_out}",
            agent.path.display()
        )),
        None => Some(format!(
            "the host's libc is not a glibc that says its version (`getconf GNU_LIBC_VERSION` and `ldd --version` \
             said {libc:?}), and the agent {} needs glibc {need} or newer: nothing was uploaded; {way_out}",
            agent.path.display()
        )),
    }
}

/// Has a host that said `said` (see [`PROBE`]) download the gzipped agent
/// at `local` from `store` into `path`. What it downloads is checked
/// against the gzip's sha256 (with the host's `sha256sum`: a host has no
/// b3sum) before anything of it runs — the store is not trusted to run code
/// as the host's user — then as an upload is: it takes the name only once
/// it ran and said its hash. `Err` for a host that
/// cannot run it (nothing is sent); `Ok(Err(why))` when it could not come
/// from the store (the caller uploads it); `Ok(Ok(tool))` when it did.
pub(super) fn fetch_agent(
    session: &ssh2::Session,
    spec: &HostSpec,
    local: &Path,
    path: &str,
    said: &str,
    store: &super::AgentStore,
) -> Result<Result<Fetcher, String>, HostError> {
    let name = &spec.name;
    let agent = image(local)?;
    let facts = Facts::parse(said);
    if let Some(why) = unfit(&agent, &facts) {
        return Err(refused(name, why));
    }
    let Some(fetcher) = facts.fetcher else { return Ok(Err("the host has neither curl nor wget".into())) };
    if !facts.gzip {
        return Ok(Err("the host cannot undo gzip".into()));
    }
    let gz = agent.gzip()?;
    let sha256 = sha2::Sha256::digest(gz.as_slice()).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let url = match store.url(&gz) {
        Ok(url) => url,
        Err(e) => return Ok(Err(format!("cannot put it in the store: {e}"))),
    };
    let shown = url.split('?').next().unwrap_or_default().to_owned();
    let get = match fetcher {
        Fetcher::Curl => format!("curl -fsS --connect-timeout 5 --max-time 60 --retry 2 -o \"$t.gz\" {}", quote(&url)),
        Fetcher::Wget => format!("wget -q -T 20 -t 2 -O \"$t.gz\" {}", quote(&url)),
    };
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
    // The download's sha256 first: nothing that is not the agent's gzip
    // runs. Then as an upload: a temporary name of its own, run before it
    // takes the final one.
    let fetch = format!(
        "set -e; command -v sha256sum >/dev/null || {{ echo 'the host has no sha256sum to check the download with'; \
         exit 1; }}; mkdir -p {dir}; t=$(mktemp {dir}/.upload.XXXXXX); trap 'rm -f \"$t\" \"$t.gz\"' EXIT; {get}; \
         set -- $(sha256sum < \"$t.gz\"); if [ \"$1\" != {sha256} ]; then echo \"the download is not the agent: \
         its sha256 is $1, the agent's gzip has {sha256}; nothing of it was run\"; exit 1; fi; \
         gzip -dc < \"$t.gz\" > \"$t\"; rm -f \"$t.gz\"; chmod 755 \"$t\"; h=$(\"$t\" agent-hash 2>&1 || true); \
         if [ \"$h\" != {hash} ]; then echo \"what came is not the agent (its agent-hash said: $h)\"; exit 1; fi; \
         mv \"$t\" {path}; trap - EXIT",
        dir = quote(dir),
        path = quote(path),
        hash = agent.hash,
    );
    // Everything it says, to stdout: the report says why it failed.
    let command = format!("exec 2>&1; {fetch}");
    let (status, out) = exec_shown(session, name, &command, &command.replace(&url, &shown), None)?;
    if status != 0 {
        let out = out.replace(&url, &shown);
        let said: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let said = said[..said.len().min(2)].join(" / ");
        return Ok(Err(format!("{fetcher} {shown}, exit {status}: {said}")));
    }
    Ok(Ok(fetcher))
}

/// Uploads the agent at `local` to `path` on a host that said `said` (see
/// [`PROBE`]), once that host can run it: gzipped when the host has gzip.
pub(super) fn upload_agent(
    session: &ssh2::Session,
    spec: &HostSpec,
    local: &Path,
    path: &str,
    said: &str,
) -> Result<(), HostError> {
    let name = &spec.name;
    let agent = image(local)?;
    let facts = Facts::parse(said);
    if let Some(why) = unfit(&agent, &facts) {
        return Err(refused(name, why));
    }
    let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
    let (unpack, gzipped) = match facts.gzip {
        true => ("gzip -dc", Some(agent.gzip()?)),
        false => ("cat", None),
    };
    let mut payload: &[u8] = gzipped.as_deref().map_or(agent.bytes(), Vec::as_slice);
    // A temporary name of its own (two pushes may upload at once), checked
    // by running it before it takes the final name.
    let upload = format!(
        "set -e; mkdir -p {dir}; t=$(mktemp {dir}/.upload.XXXXXX); trap 'rm -f \"$t\"' EXIT; {unpack} > \"$t\"; \
         chmod 755 \"$t\"; test \"$(\"$t\" agent-hash)\" = {hash}; mv \"$t\" {path}; trap - EXIT",
        dir = quote(dir),
        path = quote(path),
        hash = agent.hash,
    );
    let (status, out) = exec(session, name, &format!("exec 2>&1; {upload}"), Some(&mut payload))?;
    if status != 0 {
        return Err(refused(name, format!("uploading the agent to {path} failed (exit {status}): {}", out.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_host_says_is_read_word_by_word_and_its_libc_whole() {
        assert_eq!(
            Facts::parse(" Linux x86_64 gzip curl libc: ldd (Debian GLIBC 2.36-9) 2.36\n"),
            Facts {
                os: "Linux".into(),
                machine: "x86_64".into(),
                gzip: true,
                fetcher: Some(Fetcher::Curl),
                libc: "ldd (Debian GLIBC 2.36-9) 2.36".into()
            }
        );
        let facts = Facts::parse("Linux aarch64 no-gzip no-fetch libc:");
        assert!(!facts.gzip);
        assert_eq!(facts.fetcher, None);
        assert_eq!(Facts::parse("Linux x86_64 gzip wget libc: glibc 2.36").fetcher, Some(Fetcher::Wget));
        assert_eq!(facts.libc, "");
    }
}
