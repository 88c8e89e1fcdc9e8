//! What a host's processes run from, read from `/proc`: the check after a
//! restart (nothing a program runs from may be in another release), prune
//! (no release a process still uses is removed) and the health gate (the
//! process that answers on the gate's port is one of the program's).
//!
//! | source | what it gives |
//! |---|---|
//! | `/proc/<pid>/cwd` | the working directory (resolved when it was entered) |
//! | `/proc/<pid>/exe` | the executable (resolved when it was exec'd) |
//! | `/proc/<pid>/cmdline` | arguments that are absolute paths (an interpreter's script, `--chdir` and the like) |
//! | `/proc/<pid>/maps` | files mapped into memory: shared libraries, extension modules |
//! | `/proc/<pid>/fd/*` | open files, and sockets as `socket:[inode]` |
//! | `/proc/net/tcp`, `/proc/net/tcp6` | listening sockets by port, with their inode |
//!
//! A path the kernel resolved under `current` before a flip names the old
//! release, so every path is matched against `releases/<id>/` as it is.
//! Processes of other users are skipped where `/proc` does not let this
//! one read them; nothing here needs more than the deploy user's rights.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fs_err as fs;
use serde::{Deserialize, Serialize};

/// How a process holds a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Cwd,
    Exe,
    Cmdline,
    Mapped,
    Open,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Cwd => "working directory",
            Via::Exe => "executable",
            Via::Cmdline => "command line",
            Via::Mapped => "mapped file",
            Via::Open => "open file",
        })
    }
}

/// One process holding one path in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub pid: u32,
    pub via: Via,
    pub path: PathBuf,
    /// The release's directory name under `releases/`.
    pub release: String,
    /// The path was removed since the process took it (the kernel's
    /// " (deleted)"): a release removed, or staged anew, under it.
    #[serde(default)]
    pub deleted: bool,
}

/// Every pid this process can see.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect()
}

/// Who is whose child, read from `/proc` once: a poll asks it about
/// several processes without reading every `/proc/<pid>/stat` each time.
#[derive(Debug, Default)]
pub struct Tree {
    children: BTreeMap<u32, Vec<u32>>,
}

impl Tree {
    pub fn read() -> Self {
        let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for p in pids() {
            if let Some(ppid) = parent(p) {
                children.entry(ppid).or_default().push(p);
            }
        }
        Self { children }
    }

    /// `pid`'s own children (a pre-forking server's workers).
    pub fn children(&self, pid: u32) -> &[u32] {
        self.children.get(&pid).map_or(&[], Vec::as_slice)
    }

    /// Every descendant of `pid`.
    pub fn descendants(&self, pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            for c in self.children(p) {
                out.push(*c);
                todo.push(*c);
            }
        }
        out
    }
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …; comm may hold spaces and parens.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `pid`'s command line, its arguments joined by spaces (empty when gone).
pub fn command(pid: u32) -> String {
    args(pid).join(" ")
}

fn args(pid: u32) -> Vec<String> {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { return Vec::new() };
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// A path as `/proc` gives it, and whether the kernel marked it
/// " (deleted)" (removed since it was taken).
fn undeleted(text: &str) -> (PathBuf, bool) {
    match text.strip_suffix(" (deleted)") {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(text), false),
    }
}

fn link(path: &str) -> Option<(PathBuf, bool)> {
    let target = fs::read_link(path).ok()?;
    Some(undeleted(&target.to_string_lossy()))
}

/// The paths `pid` runs from: its working directory, executable, the
/// absolute paths in its command line (also after `=`, and a `unix:`
/// socket's), its mapped files and, with `open`, its open files; each with
/// whether it was removed since. Of another user's process only the
/// command line can be read (the rest of `/proc/<pid>` is its own), unless
/// this one is root.
pub fn paths_of(pid: u32, open: bool) -> Vec<(Via, PathBuf, bool)> {
    let mut out = Vec::new();
    for (via, what) in [(Via::Cwd, "cwd"), (Via::Exe, "exe")] {
        if let Some((path, deleted)) = link(&format!("/proc/{pid}/{what}")) {
            out.push((via, path, deleted));
        }
    }
    for arg in args(pid) {
        let value = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
        let value = value.strip_prefix("unix:").unwrap_or(value);
        if let Some(path) = [arg.as_str(), value].into_iter().find(|c| c.starts_with('/')) {
            out.push((Via::Cmdline, PathBuf::from(path), false));
        }
    }
    if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
        let mut seen = BTreeSet::new();
        for line in maps.lines() {
            // address perms offset dev inode path (the path may hold spaces).
            let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim_start) else { continue };
            if path.starts_with('/') && seen.insert(path.to_owned()) {
                let (path, deleted) = undeleted(path);
                out.push((Via::Mapped, path, deleted));
            }
        }
    }
    if open {
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Some((path, deleted)) = link(&fd.path().to_string_lossy()) {
                    if path.is_absolute() {
                        out.push((Via::Open, path, deleted));
                    }
                }
            }
        }
    }
    out
}

/// The release directory name `path` lies in, under the canonical
/// `releases` directory.
pub fn release_of(path: &Path, releases: &Path) -> Option<String> {
    let first = path.strip_prefix(releases).ok()?.components().next()?;
    Some(first.as_os_str().to_string_lossy().into_owned())
}

/// What `pid` holds in releases other than `wanted` (every release when
/// `wanted` is `None`), and in `wanted` where that was removed since: a
/// process in a deleted copy of the release does not run the release.
pub fn holds(pid: u32, releases: &Path, wanted: Option<&str>, open: bool) -> Vec<Hold> {
    paths_of(pid, open)
        .into_iter()
        .filter_map(|(via, path, deleted)| {
            let release = release_of(&path, releases)?;
            (deleted || Some(release.as_str()) != wanted).then_some(Hold { pid, via, path, release, deleted })
        })
        .collect()
}

/// The mount namespace `pid` lives in (`mnt:[4026531841]`), if it can be read.
fn mount_namespace(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// For each release under `releases`, the first process found holding it
/// (working directory, executable, command line, mapped or open file).
/// Only processes that see the same files count: one in another mount
/// namespace (a container, another test host on the same machine) may
/// name the same path and mean another directory.
pub fn users(releases: &Path) -> BTreeMap<String, Hold> {
    let own = std::process::id();
    let ours = mount_namespace("self");
    let mut found = BTreeMap::new();
    let same = |pid: &u32| ours.is_some() && mount_namespace(&pid.to_string()) == ours;
    for pid in pids().into_iter().filter(|p| *p != own).filter(same) {
        for hold in holds(pid, releases, None, true) {
            found.entry(hold.release.clone()).or_insert(hold);
        }
    }
    found
}

/// A socket listening on a port, and the processes that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// The address as the kernel has it (`0.0.0.0`, `::`, `127.0.0.1`…).
    pub address: String,
    /// The processes that have it open (a pre-forking server's master and
    /// its workers all do); empty when they are another user's, which this
    /// process cannot see.
    pub pids: Vec<u32>,
}

/// The TCP sockets listening on `port` in this network namespace.
pub fn listeners(port: u16) -> Vec<Listener> {
    let mut sockets: Vec<(String, u64)> = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let Some((addr, p)) = local.split_once(':') else { continue };
            if *state != "0A" || u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            if let Ok(inode) = inode.parse::<u64>() {
                sockets.push((address(addr, v6), inode));
            }
        }
    }
    if sockets.is_empty() {
        return Vec::new();
    }
    let mut holders: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let Some(inode) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) else { continue };
            if let Some((_, inode)) = inode.parse::<u64>().ok().and_then(|i| sockets.iter().find(|(_, s)| *s == i)) {
                let pids = holders.entry(*inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    sockets
        .into_iter()
        .map(|(address, inode)| Listener { address, pids: holders.remove(&inode).unwrap_or_default() })
        .collect()
}

/// `/proc/net/tcp`'s hex address (little-endian words) as text.
fn address(hex: &str, v6: bool) -> String {
    let bytes: Vec<u8> =
        (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    // Each 32-bit word is in host order (little-endian here).
    let mut ordered = Vec::with_capacity(bytes.len());
    for word in bytes.chunks(4) {
        ordered.extend(word.iter().rev());
    }
    if v6 {
        let octets: [u8; 16] = ordered.try_into().unwrap_or([0; 16]);
        std::net::Ipv6Addr::from(octets).to_string()
    } else {
        let octets: [u8; 4] = ordered.try_into().unwrap_or([0; 4]);
        std::net::Ipv4Addr::from(octets).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_read_as_text() {
        assert_eq!(address("0100007F", false), "127.0.0.1");
        assert_eq!(address("00000000", false), "0.0.0.0");
        assert_eq!(address("00000000000000000000000001000000", true), "::1");
    }

    #[test]
    fn a_listening_socket_of_this_process_is_found_with_its_pid() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let found = listeners(port);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].address, "127.0.0.1");
        assert_eq!(found[0].pids, [std::process::id()]);
        drop(socket);
        assert!(listeners(port).is_empty());
    }

    #[test]
    fn a_path_is_placed_in_its_release_or_none() {
        let releases = Path::new("/srv/app/releases");
        assert_eq!(release_of(Path::new("/srv/app/releases/abc/venv/bin/python"), releases).as_deref(), Some("abc"));
        assert_eq!(release_of(Path::new("/srv/app/current/app"), releases), None);
        assert_eq!(release_of(Path::new("/usr/bin/python3"), releases), None);
    }

    #[test]
    fn a_process_working_in_a_directory_holds_it_and_says_how() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().canonicalize().unwrap();
        let release = releases.join("r1");
        fs::create_dir_all(&release).unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").current_dir(&release).spawn().unwrap();
        let found = holds(child.id(), &releases, None, true);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|h| h.via == Via::Cwd && h.release == "r1"), "{found:?}");
        assert!(holds(std::process::id(), &releases, Some("r1"), false).is_empty());
    }
}
