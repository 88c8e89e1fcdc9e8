//! The example service on test hosts, as the benchmarks that run it see
//! it: `GET` on port 8000 and which version every host serves; and the
//! median of a few seconds' figures. Included by `runtime.rs` and `lb.rs`.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context as _, Result};

use crate::testhosts::TestHost;

/// `GET path` on port 8000 of `addr`: the status and the body, or `None`
/// when it does not answer (within 1 s to connect, 2 s to read).
pub fn get(addr: Ipv4Addr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&(addr, 8000).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// Every one of `hosts` answers `GET /` with 200 `hello from <version> …`.
pub fn serves_all<'a>(hosts: impl IntoIterator<Item = &'a TestHost>, version: &str) -> Result<()> {
    for h in hosts {
        let (status, body) = get(h.addr, "/").with_context(|| format!("{} ({}) does not answer", h.name, h.addr))?;
        ensure!(
            status == 200 && body.starts_with(&format!("hello from {version} ")),
            "{} ({}) answers {status} {body:?}, not {version}",
            h.name,
            h.addr
        );
    }
    Ok(())
}

/// The median (the upper middle one for an even count; NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `ferry <args> --store <store> -c <config>`, run in `dir` (the example's
/// copy), with no store or config from the environment.
pub fn ferry(dir: &Path, store: &Path, config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env_remove("FERRY_STORE").env_remove("FERRY_CONFIG");
    c.args(args).arg("--store").arg(store).arg("-c").arg(config);
    c.current_dir(dir);
    c
}

/// Builds the example's copy at `dir` as `version` (its app says it) with
/// its own ferry.toml; the release id.
pub fn build(dir: &Path, store: &Path, version: &str) -> Result<String> {
    let path = dir.join("app/hello.py");
    let code = fs_err::read_to_string(&path)?;
    let line = code.lines().find(|l| l.starts_with("VERSION = ")).context("hello.py has no VERSION line")?;
    fs_err::write(&path, code.replace(line, &format!("VERSION = \"{version}\"")))?;
    let out = ferry(dir, store, &dir.join("ferry.toml"), &["build", "--quiet", "--version", version]).output()?;
    ensure!(out.status.success(), "ferry build of {version} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A copy of fixtures/example at `dir`, with its venv made as the
/// quickstart makes it: Debian's interpreter, whose site has Debian's
/// gunicorn (the program runs `venv/bin/python -m gunicorn`).
pub fn example_at(dir: &Path) -> Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example");
    crate::kit::sh(&format!("cp -r {} {}", fixture.display(), dir.display()));
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--system-site-packages", "--without-pip"])
        .arg(dir.join("venv"))
        .output()?;
    ensure!(
        out.status.success(),
        "/usr/bin/python3 -m venv failed (scripts/bench installs python3-venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
