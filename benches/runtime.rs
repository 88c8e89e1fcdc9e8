//! The runtime benchmark of issue 5, in one run on 4 real test hosts
//! (network namespaces, a real sshd each) running the example service
//! (`fixtures/example`: gunicorn under the service's own supervisord):
//! how long after a health gate fails the hosts it had flipped serve the
//! old release again, against the program's own start time and against the
//! rollback a Fabric user would run by hand.
//!
//! `cargo bench --bench runtime` (no arguments; needs root, supervisor and
//! Debian's gunicorn). `FERRY_BENCH_RUNS` runs (default 3), medians.
//!
//! What is measured, per run:
//! - ferry: `ferry push prod <v2>` (the CLI, a child process) of a release
//!   whose every answer is a 500 (`app/BAD`), over a stage of strategy
//!   `["50%", "100%"]` gated by `GET /health`: the first batch (2 hosts)
//!   flips, the http gate fails, ferry reverts them to v1. From the instant
//!   the push's stderr line `… gate http failed …` is read, to the instant
//!   the last of the 2 flipped hosts has answered `GET /` with 200
//!   `hello from v1` to a request sent after that line (each polled every
//!   20 ms from this machine). The push must exit 1, name exactly those 2
//!   hosts as reverted, and leave all 4 serving v1.
//! - the program's own start time: on the same 2 hosts at once, a script
//!   on each host stops `web` (`supervisorctl stop web`), then times from
//!   asking supervisord to start it (XML-RPC `startProcess(web, wait=False)`
//!   on its socket, so neither supervisorctl's own start-up nor an SSH
//!   connection is counted) until `GET /` on the host answers 200; the
//!   slower host's time. It is what any restart onto the old release costs
//!   at least, so the goal is on ferry's time beyond it: ≤ 2 s.
//! - the Fabric-style rollback: both hosts first run v3 (a good release,
//!   pushed with ferry, gates passing); then, on the 2 hosts in parallel,
//!   `ssh root@host 'cd /srv/hello && ln -sfn releases/<v1> current &&
//!   supervisorctl -c .ferry/supervisord.conf restart web'` (OpenSSH, a new
//!   connection each, as a Fabric task opens one); from starting the two
//!   ssh commands until both hosts answer `GET /` with v1 (polled as
//!   above). It leaves out, as ferry's figure does, the time to notice the
//!   failure; it includes the connection, which a Fabric user pays and
//!   ferry, holding its sessions through the push, does not. Then v1 is
//!   pushed back everywhere with ferry (untimed) for the next run.
//!
//! The agent is this build's `ferry`, which the test hosts share with this
//! machine (only `/srv` is theirs).

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use fs_err as fs;

#[path = "common/kit.rs"]
mod kit;

#[allow(dead_code)]
#[path = "../tests/it/testhosts.rs"]
mod testhosts;

#[path = "common/web.rs"]
mod web;

use testhosts::TestHosts;
use web::{get, median, serves_all};

const HOSTS: usize = 4;
/// The first batch of `["50%", "100%"]` over 4 hosts.
const FLIPPED: usize = 2;
/// ferry's time from the gate failure to serving the old release, beyond the program's start.
const GOAL_BEYOND_START: f64 = 2.0;
const POLL: Duration = Duration::from_millis(20);
/// How long the hosts get to serve again once the push (or the ssh commands) ended.
const GRACE: Duration = Duration::from_secs(30);
const DEPLOY_TO: &str = "/srv/hello";

/// On a host: stops `web`, then prints the seconds from asking supervisord
/// to start it until `GET /` answers 200.
const START_SCRIPT: &str = r#"
import subprocess, sys, time, urllib.request, xmlrpc.client
from supervisor.xmlrpc import SupervisorTransport
root = sys.argv[1]
subprocess.run(["supervisorctl", "-c", root + "/.ferry/supervisord.conf", "stop", "web"], check=True, stdout=subprocess.DEVNULL)
rpc = xmlrpc.client.ServerProxy("http://localhost", transport=SupervisorTransport(None, None, "unix://" + root + "/.ferry/supervisor.sock"))
start = time.monotonic()
rpc.supervisor.startProcess("web", False)
while time.monotonic() - start < 60:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000/", timeout=2) as r:
            if r.status == 200:
                print(time.monotonic() - start)
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.02)
sys.exit("web did not answer 200 within 60 s of its start")
"#;

fn main() -> Result<()> {
    let runs: usize = std::env::var("FERRY_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    ensure!(kit::is_root(), "the runtime benchmark needs root (test hosts are network namespaces)");
    for tool in ["/usr/bin/supervisord", "/usr/bin/supervisorctl", "/usr/bin/gunicorn"] {
        ensure!(Path::new(tool).exists(), "{tool} is missing: scripts/bench runtime installs supervisor and gunicorn");
    }

    println!("starting {HOSTS} test hosts (network namespaces, one sshd each)");
    let hosts = TestHosts::start(HOSTS);
    let scratch = kit::tempdir();
    let p = Project::new(&hosts, scratch.path())?;

    // --- the releases: v1, v2 (every answer a 500), v3 (good) ---------------
    let v1 = p.build("v1")?;
    fs::write(p.dir.join("app/BAD"), "")?;
    let v2 = p.build("v2")?;
    fs::remove_file(p.dir.join("app/BAD"))?;
    let v3 = p.build("v3")?;
    p.push_ok(&v1)?;
    serves_all(&hosts.hosts, "v1")?;

    let ssh_cmd = |addr: Ipv4Addr, command: &str| {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&hosts.key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", hosts.known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("root@{addr}"))
            .arg(command);
        c
    };
    let flipped: Vec<Ipv4Addr> = hosts.hosts[..FLIPPED].iter().map(|h| h.addr).collect();

    let (mut ferry, mut start, mut fabric) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        // --- ferry: gate failed → the flipped hosts serve v1 again ----------
        ferry.push(p.failed_push(&v2, &flipped).with_context(|| format!("run {run}: ferry's push of v2"))?);
        serves_all(&hosts.hosts, "v1").with_context(|| format!("run {run}: after ferry's revert"))?;

        // --- the program's own start time, on the same hosts --------------
        let took: Vec<Result<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..FLIPPED)
                .map(|i| {
                    let hosts = &hosts;
                    scope.spawn(move || -> Result<f64> {
                        let out = hosts.ssh(i, &format!("/usr/bin/python3 - {DEPLOY_TO} <<'EOF'\n{START_SCRIPT}\nEOF"));
                        ensure!(
                            out.status.success(),
                            "the start script on host {i} failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        let text = String::from_utf8_lossy(&out.stdout);
                        text.trim().parse::<f64>().with_context(|| format!("the start script printed {text:?}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        let mut slowest = 0.0_f64;
        for t in took {
            slowest = slowest.max(t.with_context(|| format!("run {run}: the program's start"))?);
        }
        start.push(slowest);
        serves_all(&hosts.hosts, "v1").with_context(|| format!("run {run}: after the program's start"))?;

        // --- the Fabric-style rollback: v3 → v1 on the 2 hosts -------------
        p.push_ok(&v3)?;
        serves_all(&hosts.hosts, "v3")?;
        let command = format!(
            "cd {DEPLOY_TO} && test -d releases/{v1} && ln -sfn releases/{v1} current && \
             supervisorctl -c .ferry/supervisord.conf restart web"
        );
        let began = OnceLock::new();
        let stop = AtomicBool::new(false);
        let (children, served) = std::thread::scope(|scope| -> Result<_> {
            let polls: Vec<_> = flipped
                .iter()
                .map(|&addr| {
                    let (began, stop) = (&began, &stop);
                    scope.spawn(move || first_serving(addr, "v1", began, stop))
                })
                .collect();
            began.set(Instant::now()).expect("set once");
            let spawned: Vec<_> = flipped
                .iter()
                .map(|&addr| ssh_cmd(addr, &command).stdout(Stdio::null()).stderr(Stdio::piped()).spawn())
                .collect();
            let children: Vec<_> = spawned.into_iter().map(|c| c.map(std::process::Child::wait_with_output)).collect();
            let deadline = Instant::now() + GRACE;
            while !polls.iter().all(std::thread::ScopedJoinHandle::is_finished) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            stop.store(true, Ordering::Relaxed);
            let served: Vec<Option<Instant>> = polls.into_iter().map(|h| h.join().expect("no panic")).collect();
            Ok((children, served))
        })?;
        for (child, addr) in children.into_iter().zip(&flipped) {
            let out = child.context("ssh runs")?.context("ssh runs")?;
            ensure!(
                out.status.success(),
                "run {run}: the Fabric-style rollback on {addr} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let began = *began.get().expect("set above");
        let mut last = began;
        for (at, addr) in served.into_iter().zip(&flipped) {
            last = last.max(
                at.with_context(|| format!("run {run}: {addr} did not serve v1 after the Fabric-style rollback"))?,
            );
        }
        fabric.push((last - began).as_secs_f64());
        // Back to v1 everywhere for the next run.
        p.push_ok(&v1)?;
        serves_all(&hosts.hosts, "v1").with_context(|| format!("run {run}: after the push back to v1"))?;
    }

    let list = |v: &[f64]| v.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(" ");
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("{HOSTS} test hosts ({FLIPPED} flipped by the failing batch), {cores} cores; {runs} runs, medians");
    println!(
        "ferry: gate failed → {FLIPPED} flipped hosts serve v1 again     {:.2} s   (runs: {})",
        median(&ferry),
        list(&ferry)
    );
    println!(
        "the program's start (supervisord start → GET / 200)  {:.2} s   (runs: {}; slower of {FLIPPED} hosts)",
        median(&start),
        list(&start)
    );
    println!(
        "Fabric-style rollback (ssh ln -sfn + supervisorctl restart, {FLIPPED} hosts) {:.2} s   (runs: {})",
        median(&fabric),
        list(&fabric)
    );
    println!("ratio ferry / Fabric-style                           {:.2}", median(&ferry) / median(&fabric));
    let beyond = median(&ferry) - median(&start);
    println!(
        "{:<52} = {beyond:.2} (goal <= {GOAL_BEYOND_START})  {}",
        "ferry beyond the program's start (s)",
        if beyond <= GOAL_BEYOND_START { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The example service in a scratch directory, with an ssh stage `prod`
/// over the test hosts, and a store beside it.
struct Project {
    dir: PathBuf,
    store: PathBuf,
}

impl Project {
    fn new(hosts: &TestHosts, scratch: &Path) -> Result<Self> {
        let p = Self { dir: scratch.join("example"), store: scratch.join("store") };
        web::example_at(&p.dir)?;
        let list: Vec<String> = hosts.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
        let toml = fs::read_to_string(p.dir.join("ferry.toml"))?;
        fs::write(
            p.dir.join("ferry.toml"),
            format!(
                "{toml}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
                 strategy = [\"50%\", \"100%\"]\nknown_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n\
                 [stages.prod.health.http]\nurl = \"http://{{host}}:8000/health\"\ntimeout = 2\nretries = 3\n",
                list.join(", "),
                hosts.known_hosts.display(),
                hosts.key.display(),
                env!("CARGO_BIN_EXE_ferry")
            ),
        )?;
        Ok(p)
    }

    /// `ferry <args> --store <store> -c <dir>/ferry.toml`.
    fn ferry(&self, args: &[&str]) -> Command {
        web::ferry(&self.dir, &self.store, &self.dir.join("ferry.toml"), args)
    }

    /// Builds the tree as `version` (the app says it) and returns the id.
    fn build(&self, version: &str) -> Result<String> {
        web::build(&self.dir, &self.store, version)
    }

    fn push_ok(&self, id: &str) -> Result<()> {
        let out = self.ferry(&["push", "prod", id]).output()?;
        ensure!(
            out.status.success(),
            "ferry push prod {id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Pushes `bad`, whose gate fails on the first batch (`flipped`), and
    /// returns the seconds from the gate's failure (the push's stderr line)
    /// until every flipped host answered with v1 again.
    fn failed_push(&self, bad: &str, flipped: &[Ipv4Addr]) -> Result<f64> {
        let failed_at = OnceLock::new();
        let stop = AtomicBool::new(false);
        let lines = Mutex::new(Vec::<String>::new());
        let mut child = self
            .ferry(&["push", "prod", bad])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("ferry push runs")?;
        let stderr = child.stderr.take().expect("piped");
        let (status, stdout, served) = std::thread::scope(|scope| -> Result<_> {
            let polls: Vec<_> = flipped
                .iter()
                .map(|&addr| {
                    let (failed_at, stop) = (&failed_at, &stop);
                    scope.spawn(move || first_serving(addr, "v1", failed_at, stop))
                })
                .collect();
            let (failed_at, lines) = (&failed_at, &lines);
            scope.spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // The step line `  <hosts> gate http   failed`, printed
                    // as the gate fails (the evidence comes last, after the
                    // revert, in "push failed: …").
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if words.len() == 4 && words[1..] == ["gate", "http", "failed"] {
                        let _ = failed_at.set(Instant::now());
                    }
                    lines.lock().expect("not poisoned").push(line);
                }
            });
            let mut stdout = String::new();
            child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
            let status = child.wait()?;
            let deadline = Instant::now() + GRACE;
            while !polls.iter().all(std::thread::ScopedJoinHandle::is_finished) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            stop.store(true, Ordering::Relaxed);
            let served: Vec<Option<Instant>> = polls.into_iter().map(|h| h.join().expect("no panic")).collect();
            Ok((status, stdout, served))
        })?;
        let lines = lines.into_inner().expect("not poisoned");
        let said = || format!("its output:\n{}\n{stdout}", lines.join("\n"));
        ensure!(status.code() == Some(1), "ferry push of the bad release exited with {status}, not 1; {}", said());
        let Some(&failed_at) = failed_at.get() else {
            bail!("the push printed no \"gate http failed\" step line; {}", said())
        };
        let mut reverted: Vec<String> = lines
            .iter()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let host = words.next()?;
                (words.next() == Some("reverted")).then(|| host.to_owned())
            })
            .collect();
        reverted.sort();
        let mut want: Vec<String> = flipped.iter().map(|a| format!("root@{a}")).collect();
        want.sort();
        ensure!(reverted == want, "the push reverted {reverted:?}, not the first batch {want:?}; {}", said());
        let mut last = failed_at;
        for (at, addr) in served.into_iter().zip(flipped) {
            last = last.max(at.with_context(|| format!("{addr} did not serve v1 again after the revert; {}", said()))?);
        }
        Ok((last - failed_at).as_secs_f64())
    }
}

/// Polls `GET /` on `addr` every [`POLL`] once `after` is set, and returns
/// when the first request sent after it was answered 200 `hello from
/// <version>`; `None` if `stop` came first.
fn first_serving(addr: Ipv4Addr, version: &str, after: &OnceLock<Instant>, stop: &AtomicBool) -> Option<Instant> {
    let want = format!("hello from {version} ");
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        if after.get().is_some_and(|&a| sent > a) {
            if let Some((200, body)) = get(addr, "/") {
                if body.starts_with(&want) {
                    return Some(Instant::now());
                }
            }
        }
        std::thread::sleep(POLL);
    }
    None
}
