//! Huge pages for the commands that build a bundle.
//!
//! A build's memory is mostly zstd's: a 40 MiB ring of input and the tables
//! of each worker, which glibc's `malloc` maps fresh, so the kernel zeroes it
//! 4 KiB at a time on first touch: 21,000 page faults, 6% of a cold build's
//! CPU. glibc backs such mappings with transparent huge pages (2 MiB) when
//! asked at start (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc 2.35+) and
//! the kernel leaves huge pages to programs that ask (`madvise` in
//! `/sys/kernel/mm/transparent_hugepage/enabled`, the default of most
//! distributions). Measured on the benchmark release: 6,800 faults, a cold
//! build 5% faster. A tunable is read only as a process starts, and asking
//! for it from the program (`madvise` on zstd's memory) would take `unsafe`
//! and zstd's addresses, so `ferry build` and `ferry deploy` start themselves
//! again with it — the same process (`exec`), arguments and standard streams.
//!
//! Nothing else sees it: the programs ferry runs (build steps, git, ssh) get
//! the environment as it was. `FERRY_HUGE_PAGES=0` turns it off; a
//! `GLIBC_TUNABLES` that already says `glibc.malloc.hugetlb` is left alone.

use std::ffi::OsString;

use crate::cli::{Cli, Command};

/// What glibc is asked for.
const TUNABLE: &str = "glibc.malloc.hugetlb=1";
/// Set for the started-again process: `GLIBC_TUNABLES` as it was, after a
/// `=` (empty when it was not set), for the programs it runs.
const BEFORE: &str = "FERRY_GLIBC_TUNABLES_BEFORE";

/// Starts the command again with huge pages if it builds and they would be
/// used; returns if not (or if starting again fails, which is not worth
/// failing a build for). In the started-again process, puts the environment
/// back as it was.
pub fn start_again_if_useful(cli: &Cli) {
    if let Some(before) = std::env::var_os(BEFORE) {
        // Before any thread: the environment is this thread's alone.
        std::env::remove_var(BEFORE);
        match before.to_string_lossy().strip_prefix('=') {
            Some(value) => std::env::set_var("GLIBC_TUNABLES", value),
            None => std::env::remove_var("GLIBC_TUNABLES"),
        }
        return;
    }
    let builds = matches!(cli.command, Command::Build(_) | Command::Deploy(_));
    let off = std::env::var_os("FERRY_HUGE_PAGES").is_some_and(|v| v == "0");
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || !builds || off {
        return;
    }
    let thp = fs_err::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[madvise]") {
        // `[always]` gives them without asking; `[never]` not at all.
        return;
    }
    let before = std::env::var_os("GLIBC_TUNABLES");
    if before.as_ref().is_some_and(|b| b.to_string_lossy().contains("glibc.malloc.hugetlb")) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let tunables = match &before {
        Some(b) if !b.is_empty() => format!("{TUNABLE}:{}", b.to_string_lossy()),
        _ => TUNABLE.to_owned(),
    };
    let mut marker = OsString::new();
    if let Some(b) = &before {
        marker.push("=");
        marker.push(b);
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    use std::os::unix::process::CommandExt;
    // Returns only if it could not start.
    let _ = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(BEFORE, marker)
        .exec();
}
