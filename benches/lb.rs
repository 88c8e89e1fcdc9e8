//! The load balancer benchmark of issue 13, in one run on 5 real test hosts
//! (network namespaces, a real sshd each): 4 web hosts running the example
//! service (`fixtures/example`: gunicorn under the service's own
//! supervisord, on :8000) and 1 running HAProxy in front of them
//! (`tests/it/lbkit.rs`: `check inter 500ms fall 2 rise 2`, `option httpchk
//! GET /health`), under constant load through HAProxy
//! (`tests/it/load.rs`). What a push costs with ferry driving the load
//! balancer, against the same push without.
//!
//! `cargo bench --bench lb` (no arguments; needs root, supervisor, Debian's
//! gunicorn and haproxy). `FERRY_BENCH_RUNS` runs (default 3), medians.
//!
//! What is measured, per run, each push with the same two loads running
//! (one kept alive, one a connection a request; each [`CONNECTIONS`]
//! connections on `/` with a [`PAUSE`] between requests; the kept-alive
//! one also one connection on `/slow`, 2 s requests), from 1 s before the
//! push to 1 s after it:
//! - with: `ferry push prod <vN+1> --json -c lb.toml`, the stage `prod`
//!   (strategy `["1", "50%", "100%"]`: batches of 1, 1 and 2 hosts, gated by
//!   `GET /health` on each host) with `[stages.prod.load_balancer]` (this
//!   HAProxy, backend `web`, servers `host1`…`host4`, `drain_timeout = 30`).
//!   Its wall time; from its report's `load_balancer.batches`, per batch,
//!   the time out of rotation (`seconds`), the drain wait, the flip with
//!   ferry's own gates (`maint` to `ready`), the wait for `UP` after
//!   `ready`, and what the load balancer's steps cost beyond the drain
//!   wait: `seconds - drain_seconds - flip_seconds` (the runtime-API
//!   commands, the polls, the capacity guard and the wait for `UP`; goal
//!   ≤ 0.5 s a batch);
//! - without: `ferry push prod <vN+2> --json -c ferry.toml`, the same stage
//!   without the load balancer table. Its wall time.
//!
//! Both stages have `before_batch` and `after_batch` hooks that append the
//! batch's number and the time to a file: each batch's wall time, from
//! before it goes out of rotation to after it is back, measured the same
//! way with and without (a `sh -c` each, a few ms, in both).
//! The order alternates from run to run (with first in odd runs). Each
//! push must succeed and leave every host serving its release; failed
//! requests (and their kinds) are counted by the loads.
//!
//! `FERRY_BENCH_LB_LOG=1` also prints HAProxy's log of server state
//! changes (drain, maintenance, UP, DOWN with the check's reason);
//! `FERRY_BENCH_LB_CHECK` replaces what follows each server line's address
//! (`check inter 500ms fall 2 rise 2`): the wait for `UP` after `ready` is
//! the wait for HAProxy's next check of the server.
//!
//! The agent is this build's `ferry`, which the test hosts share with this
//! machine (only `/srv` is theirs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use fs_err as fs;
use serde_json::Value;

#[path = "common/kit.rs"]
mod kit;

#[allow(dead_code)]
#[path = "../tests/it/testhosts.rs"]
mod testhosts;

#[path = "common/web.rs"]
mod web;

#[allow(dead_code)]
#[path = "../tests/it/lbkit.rs"]
mod lbkit;

#[allow(dead_code)]
#[path = "../tests/it/load.rs"]
mod load;

use lbkit::{Haproxy, HaproxyOpts};
use load::{Load, LoadOpts, LoadResult};
use testhosts::TestHosts;
use web::{median, serves_all};

/// host1…host4 serve; host5 runs HAProxy.
const WEB: [usize; 4] = [0, 1, 2, 3];
const LB: usize = 4;
const STRATEGY: &str = r#"["1", "50%", "100%"]"#;
/// Each load's connections on `/`.
const CONNECTIONS: usize = 4;
/// Each connection's pause between requests: a few hundred requests a
/// second in all, which leaves the 2 cores to the push (at 1 ms, over 2000).
const PAUSE: Duration = Duration::from_millis(10);
/// Connections on `/slow` (2 s requests), on the kept-alive load. One, not
/// one a load: the example runs 2 sync gunicorn workers, and round-robin
/// sends both `/slow` requests to the same host now and then; both its
/// workers busy for 2 s, HAProxy's check times out (`inter` 500ms), the
/// host goes DOWN although nothing touched it, and every connection whose
/// request went there waits.
const SLOW: usize = 1;
/// What the load balancer's steps may add to a batch beyond its drain wait.
const GOAL_BEYOND_DRAIN: f64 = 0.5;
/// A push's phases, in order (the report's `phases`).
const PHASES: [&str; 7] = ["connect", "load_balancer", "stage", "setup", "migrate", "activate", "cleanup"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    With,
    Without,
}

/// One batch as the load balancer report has it.
#[derive(Debug, Clone, Default)]
struct LbBatch {
    hosts: usize,
    seconds: f64,
    drain: f64,
    flip: f64,
    up: f64,
    forced: u64,
}

impl LbBatch {
    fn beyond_drain(&self) -> f64 {
        self.seconds - self.drain - self.flip
    }
}

/// One measured push.
#[derive(Debug)]
struct Push {
    wall: f64,
    /// Each batch's wall time, `before_batch` to `after_batch`.
    batches: Vec<f64>,
    /// The load balancer's report of each batch (with only).
    lb: Vec<LbBatch>,
    /// The keep-alive load's and the one-connection-a-request load's.
    loads: [LoadResult; 2],
    /// Servers HAProxy marked DOWN (its checks failing) during the push.
    down: usize,
    /// The report's `phases`: wall time of each, s.
    phases: BTreeMap<String, f64>,
}

impl Push {
    fn failed(&self) -> u64 {
        self.loads.iter().map(LoadResult::failed).sum()
    }

    fn requests(&self) -> u64 {
        self.loads.iter().map(|l| l.total).sum()
    }
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("FERRY_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    ensure!(kit::is_root(), "the load balancer benchmark needs root (test hosts are network namespaces)");
    for tool in ["/usr/bin/supervisord", "/usr/bin/supervisorctl", "/usr/bin/gunicorn", "/usr/sbin/haproxy"] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: scripts/bench lb installs supervisor, gunicorn and haproxy"
        );
    }

    println!("starting {} test hosts (network namespaces, one sshd each)", WEB.len() + 1);
    let hosts = TestHosts::start(WEB.len() + 1);
    let scratch = kit::tempdir();
    let p = Project::new(&hosts, scratch.path())?;

    // Every release up front (v1 everywhere, then two a run), untimed.
    let v1 = p.build("v1")?;
    let releases: Vec<(String, String)> = (2..2 + 2 * runs)
        .map(|n| {
            let version = format!("v{n}");
            p.build(&version).map(|id| (version, id))
        })
        .collect::<Result<_>>()?;
    p.push(Mode::Without, &v1)?;
    serves_all(WEB.iter().map(|&i| &hosts.hosts[i]), "v1")?;
    let mut opts = HaproxyOpts::default();
    if let Ok(params) = std::env::var("FERRY_BENCH_LB_CHECK") {
        opts.server_params = params;
    }
    let check = opts.server_params.clone();
    let lb = Haproxy::start(&hosts, LB, &WEB, opts);
    lb.wait_all_up(Duration::from_secs(10));

    let mut next = releases.iter();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let order = if run % 2 == 1 { [Mode::With, Mode::Without] } else { [Mode::Without, Mode::With] };
        for mode in order {
            let (version, id) = next.next().expect("two releases a run");
            let push =
                measured(&p, &hosts, &lb, mode, version, id).with_context(|| format!("run {run}: {mode:?} the LB"))?;
            eprintln!(
                "run {run}: {version} {} the load balancer: {:.2} s, batches {}, {} of {} requests failed",
                if mode == Mode::With { "with" } else { "without" },
                push.wall,
                list(&push.batches),
                push.failed(),
                push.requests()
            );
            match mode {
                Mode::With => with.push(push),
                Mode::Without => without.push(push),
            }
        }
    }
    report(runs, &check, &with, &without, lb.log_text());
    Ok(())
}

/// One push of `id` (`version`) under the two loads.
fn measured(p: &Project, hosts: &TestHosts, lb: &Haproxy, mode: Mode, version: &str, id: &str) -> Result<Push> {
    lb.wait_all_up(Duration::from_secs(10));
    let opts = |keep_alive| LoadOpts {
        keep_alive,
        connections: CONNECTIONS,
        pause: PAUSE,
        slow: if keep_alive { SLOW } else { 0 },
        ..LoadOpts::default()
    };
    let _ = fs::remove_file(&p.batch_log);
    let log_before = lb.log_text().len();
    let kept = Load::start(lb.addr, opts(true));
    let closing = Load::start(lb.addr, opts(false));
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let pushed = p.push(mode, id);
    let wall = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let loads = [kept.stop(), closing.stop()];
    let down = lb
        .log_text()
        .get(log_before..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Server ") && l.contains(" is DOWN"))
        .count();
    let report = pushed?;
    serves_all(WEB.iter().map(|&i| &hosts.hosts[i]), version)?;
    for l in &loads {
        ensure!(l.versions.contains_key(version), "no request was answered by {version}: {l:?}");
    }

    let mut lb_batches = Vec::new();
    if mode == Mode::With {
        let batches =
            report["load_balancer"]["batches"].as_array().context("no load_balancer.batches in the report")?;
        for b in batches {
            let num = |k: &str| b[k].as_f64().with_context(|| format!("no {k} in {b}"));
            lb_batches.push(LbBatch {
                hosts: b["hosts"].as_array().map_or(0, Vec::len),
                seconds: num("seconds")?,
                drain: num("drain_seconds")?,
                flip: num("flip_seconds")?,
                up: num("up_seconds")?,
                forced: b["forced"].as_array().map_or(0, |f| f.iter().filter_map(|x| x[1].as_u64()).sum()),
            });
        }
    } else {
        ensure!(report.get("load_balancer").is_none(), "a load balancer report from the stage without one");
    }
    // The batches' times, from the hooks' lines `before|after <n> <unix time>`.
    let text = fs::read_to_string(&p.batch_log)?;
    let mut marks: BTreeMap<(usize, String), f64> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        ensure!(w.len() == 3, "a stray line in the batch log: {line:?}");
        marks.insert((w[1].parse()?, w[0].to_owned()), w[2].parse()?);
    }
    let n = report["batches"].as_array().map_or(0, Vec::len);
    let batches = (1..=n)
        .map(|b| {
            let at =
                |w: &str| marks.get(&(b, w.to_owned())).copied().with_context(|| format!("no {w} line of batch {b}"));
            Ok(at("after")? - at("before")?)
        })
        .collect::<Result<Vec<f64>>>()?;
    let phases = report["phases"]
        .as_object()
        .context("no phases in the report")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect();
    Ok(Push { wall, batches, lb: lb_batches, loads, down, phases })
}

fn report(runs: usize, check: &str, with: &[Push], without: &[Push], haproxy_log: String) {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!();
    println!(
        "{} web test hosts behind HAProxy 2.6 ({check}), strategy {STRATEGY}, {cores} cores; \
         {runs} runs (order alternating), medians",
        WEB.len()
    );
    println!(
        "load during each push: 2 loads (keep-alive; one connection a request), each {CONNECTIONS} connections on / \
         ({} ms pause); {SLOW} more on /slow (2 s requests), kept alive",
        PAUSE.as_millis()
    );
    let walls = |v: &[Push]| v.iter().map(|p| p.wall).collect::<Vec<_>>();
    let (w, wo) = (median(&walls(with)), median(&walls(without)));
    println!();
    println!("push wall time, with the load balancer      {w:>6.2} s   (runs: {})", list(&walls(with)));
    println!("push wall time, without                      {wo:>6.2} s   (runs: {})", list(&walls(without)));
    println!("ratio with / without                         {:>6.2}", w / wo);

    let mut names: Vec<&String> = with.iter().chain(without).flat_map(|p| p.phases.keys()).collect();
    names.sort_by_key(|n| PHASES.iter().position(|p| p == n).unwrap_or(PHASES.len()));
    names.dedup();
    let phase =
        |v: &[Push], n: &str| median(&v.iter().map(|p| p.phases.get(n).copied().unwrap_or(0.0)).collect::<Vec<_>>());
    println!(
        "  phases (report, medians, s): {}",
        names
            .iter()
            .map(|n| format!("{n} {:.2} / {:.2}", phase(with, n), phase(without, n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  (with / without; activate is every batch with its gates, and with the load balancer its drain and UP waits)"
    );

    let batches = with.iter().map(|p| p.lb.len()).min().unwrap_or(0);
    println!();
    println!(
        "with the load balancer, per batch (medians, s):\n\
         \x20          hosts  out of rotation  drain wait  flip+gates  UP wait  beyond drain  (not UP wait)  out - drain"
    );
    let col = |b: usize, f: &dyn Fn(&LbBatch) -> f64| median(&with.iter().map(|p| f(&p.lb[b])).collect::<Vec<_>>());
    for b in 0..batches {
        println!(
            "  batch {}  {:>5}  {:>15.3}  {:>10.3}  {:>10.3}  {:>7.3}  {:>12.3}  {:>13.3}  {:>11.3}",
            b + 1,
            with[0].lb[b].hosts,
            col(b, &|x| x.seconds),
            col(b, &|x| x.drain),
            col(b, &|x| x.flip),
            col(b, &|x| x.up),
            col(b, &LbBatch::beyond_drain),
            col(b, &|x| x.beyond_drain() - x.up),
            col(b, &|x| x.seconds - x.drain),
        );
    }
    println!(
        "  (beyond drain = out of rotation - drain wait - flip+gates: the capacity guard, `set … state` commands, \
         `show stat` polls and the wait for UP after `ready`)"
    );
    for b in 0..batches {
        let each: Vec<f64> = with.iter().map(|p| p.lb[b].beyond_drain()).collect();
        let ups: Vec<f64> = with.iter().map(|p| p.lb[b].up).collect();
        let drains: Vec<f64> = with.iter().map(|p| p.lb[b].drain).collect();
        let flips: Vec<f64> = with.iter().map(|p| p.lb[b].flip).collect();
        println!(
            "  batch {} runs: beyond drain {}; UP wait {}; drain wait {}; flip+gates {}",
            b + 1,
            list3(&each),
            list3(&ups),
            list3(&drains),
            list3(&flips)
        );
    }
    let forced: u64 = with.iter().flat_map(|p| &p.lb).map(|b| b.forced).sum();
    if forced > 0 {
        println!("  sessions cut at the drain timeout: {forced}");
    }

    println!();
    println!("batch wall time (before_batch → after_batch hook), medians, s:  with   without   with − without");
    let n = with.iter().chain(without).map(|p| p.batches.len()).min().unwrap_or(0);
    for b in 0..n {
        let (x, y) = (
            median(&with.iter().map(|p| p.batches[b]).collect::<Vec<_>>()),
            median(&without.iter().map(|p| p.batches[b]).collect::<Vec<_>>()),
        );
        println!(
            "  batch {}                                                {x:>6.2}   {y:>7.2}   {:>+8.2}",
            b + 1,
            x - y
        );
    }

    let worst = (0..batches)
        .map(|b| (b + 1, col(b, &LbBatch::beyond_drain)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    let worst_any = with.iter().flat_map(|p| &p.lb).map(LbBatch::beyond_drain).fold(f64::NAN, f64::max);
    println!();
    println!(
        "beyond drain ≤ {GOAL_BEYOND_DRAIN} s: {}   (worst batch: batch {} at {:.3} s, median; worst single: {worst_any:.3} s)",
        if worst.1 <= GOAL_BEYOND_DRAIN { "met" } else { "NOT met" },
        worst.0,
        worst.1
    );

    println!();
    for (what, pushes) in [("with the load balancer", with), ("without", without)] {
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for l in pushes.iter().flat_map(|p| &p.loads) {
            for (k, v) in &l.failed_by_kind {
                *kinds.entry(k.clone()).or_default() += v;
            }
        }
        let failed: Vec<f64> = pushes.iter().map(|p| p.failed() as f64).collect();
        let total: u64 = pushes.iter().map(Push::requests).sum();
        let rate =
            pushes.iter().map(|p| p.loads.iter().map(LoadResult::rate).sum::<f64>()).sum::<f64>() / pushes.len() as f64;
        let kept: u64 = pushes.iter().map(|p| p.loads[0].failed()).sum();
        let closing: u64 = pushes.iter().map(|p| p.loads[1].failed()).sum();
        println!(
            "failed requests, {what:<22} {:>4} a push (median; runs: {}) of {total} in all ({rate:.0}/s); keep-alive {kept}, \
             one a request {closing}: {kinds:?}",
            median(&failed),
            failed.iter().map(|f| format!("{f:.0}")).collect::<Vec<_>>().join(" ")
        );
    }
    let down = |v: &[Push]| v.iter().map(|p| p.down.to_string()).collect::<Vec<_>>().join(" ");
    println!(
        "HAProxy's checks marked a server DOWN: with {} (runs; any is a server in rotation failing its checks), \
         without {} (runs; the restarts)",
        down(with),
        down(without)
    );
    if std::env::var_os("FERRY_BENCH_LB_LOG").is_some() {
        println!("\nHAProxy's log of server state changes:");
        for line in haproxy_log.lines().filter(|l| l.starts_with("Server ")) {
            println!("  {line}");
        }
    }
}

/// The example service in a scratch directory, with an ssh stage `prod`
/// over the web hosts twice: `ferry.toml` without the load balancer,
/// `lb.toml` (beside the tree) with it; and a store beside it.
struct Project {
    dir: PathBuf,
    store: PathBuf,
    with_lb: PathBuf,
    /// Where the batch hooks write.
    batch_log: PathBuf,
}

impl Project {
    fn new(hosts: &TestHosts, scratch: &Path) -> Result<Self> {
        let p = Self {
            dir: scratch.join("example"),
            store: scratch.join("store"),
            with_lb: scratch.join("lb.toml"),
            batch_log: scratch.join("batches"),
        };
        web::example_at(&p.dir)?;
        let addr = |i: usize| hosts.hosts[i].addr;
        let list: Vec<String> = WEB.iter().map(|&i| format!("\"root@{}\"", addr(i))).collect();
        let log = p.batch_log.display();
        let toml = format!(
            "{}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\nstrategy = {STRATEGY}\n\
             known_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n\
             [stages.prod.health.http]\nurl = \"http://{{host}}:8000/health\"\ntimeout = 2\nretries = 3\n\
             [stages.prod.hooks]\n\
             before_batch = \"echo before $FERRY_BATCH $(date +%s.%N) >> {log}\"\n\
             after_batch = \"echo after $FERRY_BATCH $(date +%s.%N) >> {log}\"\n",
            fs::read_to_string(p.dir.join("ferry.toml"))?,
            list.join(", "),
            hosts.known_hosts.display(),
            hosts.key.display(),
            env!("CARGO_BIN_EXE_ferry")
        );
        fs::write(p.dir.join("ferry.toml"), &toml)?;
        let servers: Vec<String> =
            WEB.iter().map(|&i| format!("\"root@{}\" = \"{}\"", addr(i), hosts.hosts[i].name)).collect();
        fs::write(
            &p.with_lb,
            format!(
                "{toml}[stages.prod.load_balancer]\nkind = \"haproxy\"\n\
                 nodes = [{{ host = \"root@{}\", socket = \"/srv/haproxy/admin.sock\" }}]\n\
                 backends = [\"web\"]\nservers = {{ {} }}\ndrain_timeout = 30\n",
                addr(LB),
                servers.join(", ")
            ),
        )?;
        Ok(p)
    }

    /// `ferry <args> --store <store> -c <config>`.
    fn ferry(&self, config: &Path, args: &[&str]) -> Command {
        web::ferry(&self.dir, &self.store, config, args)
    }

    /// Builds the tree as `version` (the app says it) and returns the id.
    fn build(&self, version: &str) -> Result<String> {
        web::build(&self.dir, &self.store, version)
    }

    /// `ferry push prod <id> --json`, with or without the load balancer;
    /// its report.
    fn push(&self, mode: Mode, id: &str) -> Result<Value> {
        let config = match mode {
            Mode::With => self.with_lb.clone(),
            Mode::Without => self.dir.join("ferry.toml"),
        };
        let out = self.ferry(&config, &["push", "prod", id, "--json"]).stdin(Stdio::null()).output()?;
        let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("ferry push prod {id} ({}) printed no report: {}", out.status, String::from_utf8_lossy(&out.stderr))
        })?;
        ensure!(
            out.status.success() && report["ok"] == true,
            "ferry push prod {id} failed ({}): {report:#}",
            out.status
        );
        Ok(report)
    }
}

fn list(v: &[f64]) -> String {
    v.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(" ")
}

fn list3(v: &[f64]) -> String {
    v.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(" ")
}
