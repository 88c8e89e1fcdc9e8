//! The fleet benchmark of issue 4, in one run on real test hosts (network
//! namespaces, a real sshd each): a push of base→deps to N hosts over the
//! ssh transport (stage and activate timed apart, controller bytes sent)
//! against `rsync -az` of the same release tree to the same hosts over the
//! same sshd; a rollback of all N; and the ssh transport's bulk throughput
//! against `ssh host 'cat > /dev/null'` (OpenSSH) for 200 MB.
//!
//! `cargo bench --bench fleet -- DELTA_DIR [HOSTS]` where DELTA_DIR holds the
//! delta benchmark's `base` and `deps` trees (scripts/bench makes them);
//! HOSTS defaults to 20. Needs root. The agent is this build's `ferry`,
//! which the test hosts share with this machine (only `/srv` is theirs), so
//! its upload is not timed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use ferry_builder::Store;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::{self, AgentBinary, HostSpec, Quiet, Ssh, Stage, Transport};
use ferry_switcher::host::StageOptions;
use fs_err as fs;

#[path = "common/cpu.rs"]
mod cpu;

#[path = "common/kit.rs"]
mod kit;

#[path = "../tests/it/source.rs"]
mod source;
use source::Source;

#[allow(dead_code)]
#[path = "../tests/it/testhosts.rs"]
mod testhosts;

#[allow(dead_code)]
#[path = "../tests/it/s3kit.rs"]
mod s3kit;

const GOAL_ROLLBACK: f64 = 1.0;
const GOAL_ACTIVATE: f64 = 3.0;
const GOAL_THROUGHPUT: f64 = 0.7;
const PAYLOAD: usize = 200 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let dir = PathBuf::from(args.first().context("usage: cargo bench --bench fleet -- DELTA_DIR [HOSTS]")?);
    let n: usize = args.get(1).map_or(Ok(20), |s| s.parse()).context("HOSTS must be a number")?;
    let runs: usize = std::env::var("FERRY_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    ensure!(dir.join("base").is_dir() && dir.join("deps").is_dir(), "{} has no base/ and deps/ trees", dir.display());
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let scratch = kit::tempdir();
    let store = Store::new(scratch.path().join("store"));

    // The two releases, built at one path (a venv's bytecode records it).
    let tree = dir.join("tree");
    let mut ids = Vec::new();
    for version in ["base", "deps"] {
        let _ = fs::remove_dir_all(&tree);
        kit::sh(&format!("cp -a {}/{version} {}", dir.display(), tree.display()));
        fs::write(
            tree.join("ferry.toml"),
            "service = \"bench\"\n[components]\ncode = \"app\"\nvenv = \"venv\"\nmedia = \"media\"\nconfig = \"config\"\n",
        )?;
        let out = Command::new(ferry)
            .args(["build", "--quiet", "--version", version, "--store"])
            .arg(store.root())
            .current_dir(&tree)
            .output()?;
        ensure!(out.status.success(), "ferry build failed: {}", String::from_utf8_lossy(&out.stderr));
        ids.push(String::from_utf8(out.stdout)?.trim().parse::<ReleaseId>()?);
    }
    let (base, deps) = (ids[0], ids[1]);

    println!("starting {n} test hosts (network namespaces, one sshd each)");
    let hosts = testhosts::TestHosts::start(n);
    let ssh = Ssh {
        known_hosts: hosts.known_hosts.clone(),
        accept_new: false,
        identity: Some(hosts.key.clone()),
        user: Some("root".into()),
        ferry: AgentBinary::OnHost(ferry.to_string_lossy().into_owned()),
        connect_timeout: Duration::from_secs(10),
        step_timeout: Duration::from_secs(600),
        ssh_config: None,
    };
    let specs = hosts
        .hosts
        .iter()
        .map(|h| HostSpec { name: format!("root@{}", h.addr), deploy_to: "/srv/bench".into() })
        .collect();
    let stage = Stage {
        options: StageOptions { env: Some("staging".into()), ..StageOptions::default() },
        max_parallel: 10,
        ..Stage::new("bench", specs)
    };
    let source = Source(store.clone());

    // --- push: base everywhere (untimed), then base→deps ---------------------
    let first = fleet::push(&stage, &ssh, &source, &base, &Quiet);
    ensure!(first.ok, "the push of base failed: {first:#?}");
    let push = fleet::push(&stage, &ssh, &source, &deps, &Quiet);
    ensure!(push.ok, "the push of deps failed: {push:#?}");
    let sent: u64 = push.hosts.iter().map(|h| h.bytes).sum();
    let phase = |p: &str| push.phases.get(p).copied().unwrap_or(f64::NAN);

    // --- rsync -az of the same trees to the same hosts, same sshd ------------
    let ssh_cmd = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        hosts.key.display(),
        hosts.known_hosts.display()
    );
    let rsync_all = |from: &Path| -> Result<(f64, u64)> {
        let list: Vec<String> = hosts.hosts.iter().map(|h| h.addr.to_string()).collect();
        let script = format!(
            "printf '%s\\n' {} | xargs -P 10 -I{{}} rsync -az --delete --stats -e '{ssh_cmd}' {}/ root@{{}}:/srv/rsync/",
            list.join(" "),
            from.display()
        );
        let start = Instant::now();
        let out = Command::new("sh").arg("-c").arg(&script).output()?;
        let wall = start.elapsed().as_secs_f64();
        ensure!(out.status.success(), "rsync failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes = text
            .lines()
            .filter_map(|l| l.strip_prefix("Total bytes sent: "))
            .map(|v| v.replace(',', "").trim().parse::<u64>().unwrap_or(0))
            .sum();
        Ok((wall, bytes))
    };
    rsync_all(&dir.join("base"))?;
    let (rsync_wall, rsync_bytes) = rsync_all(&dir.join("deps"))?;

    // --- rollback of all hosts ------------------------------------------------
    // Where a rollback's time goes: the controller's CPU (this process), and
    // the hosts' (each sshd with everything it ran: the handshakes, the
    // sessions, the agents), against N OpenSSH handshakes alone (`ssh host
    // true`, 10 at a time as the stage's max_parallel) on the same sshds.
    let mut rollbacks = Vec::new();
    let mut rollback_phases = Vec::new();
    let (mut ctl_cpu, mut host_cpu) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Back to base, then forward again, so each rollback has somewhere to go.
        let (ctl0, hosts0) = (self_cpu(), hosts_cpu(&hosts));
        let start = Instant::now();
        let report = fleet::rollback(&stage, &ssh, Some(&base), &Quiet)?;
        rollbacks.push(start.elapsed().as_secs_f64());
        ctl_cpu.push(self_cpu() - ctl0);
        // The sessions' CPU reaches their sshd once it has reaped them.
        std::thread::sleep(Duration::from_millis(300));
        host_cpu.push(hosts_cpu(&hosts) - hosts0);
        ensure!(report.ok, "rollback {i} failed: {report:#?}");
        rollback_phases.push((rollbacks[i], report.phases));
        let forward = fleet::push(&stage, &ssh, &source, &deps, &Quiet);
        ensure!(forward.ok, "the push back to deps failed");
    }

    let (mut hs_wall, mut hs_cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let list: Vec<String> = hosts.hosts.iter().map(|h| h.addr.to_string()).collect();
        let hosts0 = hosts_cpu(&hosts);
        let start = Instant::now();
        kit::sh(&format!("printf '%s\\n' {} | xargs -P 10 -I{{}} {ssh_cmd} root@{{}} true", list.join(" ")));
        hs_wall.push(start.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(300));
        hs_cpu.push(hosts_cpu(&hosts) - hosts0);
    }

    // --- one connection: ferry's session (SSH + agent greeting) vs `ssh host true`
    let one = &hosts.hosts[0];
    let one_spec = HostSpec { name: format!("root@{}", one.addr), deploy_to: "/srv/connect".into() };
    let (mut ferry_connect, mut openssh_connect) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(5) {
        let start = Instant::now();
        drop(ssh.connect(&one_spec, None)?);
        ferry_connect.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        kit::sh(&format!("{ssh_cmd} root@{} true", one.addr));
        openssh_connect.push(start.elapsed().as_secs_f64());
    }

    // --- bulk throughput: 200 MB through the session and through OpenSSH -----
    let payload = scratch.path().join("payload");
    kit::sh(&format!("head -c {PAYLOAD} /dev/urandom > {}", payload.display()));
    let target = &hosts.hosts[0];
    let spec = HostSpec { name: format!("root@{}", target.addr), deploy_to: "/srv/throughput".into() };
    let (mut ours, mut openssh) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut session = ssh.connect(&spec, Some("ferry bench"))?;
        let start = Instant::now();
        // Not a bundle: the agent reads the whole payload, then refuses it.
        let refused = session.stage(&payload, &StageOptions::default(), None);
        ours.push(start.elapsed().as_secs_f64());
        ensure!(refused.is_err(), "the agent took random bytes for a release");
        drop(session);
        let start = Instant::now();
        kit::sh(&format!("{ssh_cmd} root@{} 'cat > /dev/null' < {}", target.addr, payload.display()));
        openssh.push(start.elapsed().as_secs_f64());
    }

    // --- pull against push: base→deps, the hosts fetching from an S3 store --
    // The CLI as a user runs it, on fresh deploy directories each run: base
    // (untimed; first contact uploads the agent), then deps, timed.
    let s3 = s3kit::S3Server::start_on(std::net::IpAddr::V4(hosts.gateway));
    let project = scratch.path().join("pull.toml");
    let mut toml = format!("service = \"bench\"\n{}\n", s3.store_section("bench"));
    for mode in ["push", "pull"] {
        let fetch = if mode == "pull" { "fetch = \"store\"\n" } else { "" };
        toml += &hosts.ssh_stage(
            mode,
            &format!(
                "agent = \"{}\"\nenv = \"staging\"\nmax_parallel = 10\nstrategy = [\"1\", \"50%\", \"100%\"]\n\
                     deploy_to = \"/srv/{mode}\"\n{fetch}",
                ferry.display()
            ),
        );
        toml += "\n";
    }
    fs::write(&project, toml)?;
    let ferry_push = |stage: &str, id: &ReleaseId| -> Result<(f64, u64, u64)> {
        let start = Instant::now();
        let out = Command::new(ferry)
            .args(["push", stage, &id.to_string(), "--json", "-c"])
            .arg(&project)
            .arg("--store")
            .arg(store.root())
            .envs(s3.env())
            .output()?;
        let wall = start.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "ferry push {stage} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let rows = report["hosts"].as_array().context("a report without hosts")?;
        let sum = |key: &str| rows.iter().map(|h| h[key].as_u64().unwrap_or(0)).sum::<u64>();
        Ok((wall, sum("bytes"), sum("fetched")))
    };
    let (mut push_runs, mut pull_runs) = (Vec::new(), Vec::new());
    // The test hosts' disks are small: only this section's releases on them.
    for h in &hosts.hosts {
        for dir in ["bench", "throughput", "rsync", "connect"] {
            let _ = fs::remove_dir_all(h.srv.join(dir));
        }
    }
    for _ in 0..runs {
        for (mode, out) in [("push", &mut push_runs), ("pull", &mut pull_runs)] {
            for h in &hosts.hosts {
                let _ = fs::remove_dir_all(h.srv.join(mode));
            }
            ferry_push(mode, &base)?;
            out.push(ferry_push(mode, &deps)?);
        }
    }
    let delta_len = fs::metadata(store.root().join(format!("deltas/{base}..{deps}")))?.len();

    let mb = |bytes: f64| bytes / 1e6;
    let (roll, ours_t, openssh_t) = (median(&mut rollbacks), median(&mut ours), median(&mut openssh));
    let (ours_rate, openssh_rate) = (mb(PAYLOAD as f64) / ours_t, mb(PAYLOAD as f64) / openssh_t);
    println!("{n} test hosts, 2 cores; {runs} runs for rollback and throughput, medians");
    println!("push base→deps (gates off):   connect {:.2} s  stage {:.2} s  activate {:.2} s  cleanup {:.2} s  total {:.2} s",
        phase("connect"), phase("stage"), phase("activate"), phase("cleanup"), push.seconds);
    println!(
        "  controller bytes sent        ferry {sent} (deltas)   rsync -az {rsync_bytes}   ratio {:.4}",
        sent as f64 / rsync_bytes.max(1) as f64
    );
    println!(
        "  wall                         ferry stage+activate {:.2} s   rsync -az {rsync_wall:.2} s",
        phase("stage") + phase("activate")
    );
    rollback_phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, median_phases) = &rollback_phases[rollback_phases.len() / 2];
    let phases: Vec<String> = ["connect", "rollback", "cleanup"]
        .iter()
        .map(|p| format!("{p} {:.2} s", median_phases.get(*p).copied().unwrap_or(f64::NAN)))
        .collect();
    println!(
        "rollback of {n} hosts          {roll:.2} s   ({}; connect includes each host's status)",
        phases.join("  ")
    );
    println!(
        "  CPU of the rollback          controller {:.2} s   hosts (sshd, sessions, agents) {:.2} s   on {} cores",
        median(&mut ctl_cpu),
        median(&mut host_cpu),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "  {n} OpenSSH handshakes alone  `ssh host true`, 10 at a time: wall {:.2} s   hosts' CPU {:.2} s",
        median(&mut hs_wall),
        median(&mut hs_cpu)
    );
    println!(
        "one connection, idle fleet     ferry session open+close {:.3} s   ssh host true {:.3} s   ratio {:.2}",
        median(&mut ferry_connect),
        median(&mut openssh_connect),
        median(&mut ferry_connect) / median(&mut openssh_connect)
    );
    println!("throughput, {} MB           ferry session {ours_rate:.0} MB/s ({ours_t:.2} s)   ssh 'cat > /dev/null' {openssh_rate:.0} MB/s ({openssh_t:.2} s)", PAYLOAD >> 20);
    let walls = |v: &[(f64, u64, u64)]| v.iter().map(|r| format!("{:.2}", r.0)).collect::<Vec<_>>().join(" ");
    let mid = |v: &[(f64, u64, u64)]| median(&mut v.iter().map(|r| r.0).collect::<Vec<_>>());
    let (push_mid, pull_mid) = (mid(&push_runs), mid(&pull_runs));
    println!("push base→deps, `ferry push` (the CLI), {n} hosts, gates off; {runs} runs, medians; the delta is {delta_len} bytes");
    println!(
        "  fetch = \"push\"   wall {push_mid:.2} s ({})   controller sent hosts {} payload bytes",
        walls(&push_runs),
        push_runs[0].1
    );
    println!(
        "  fetch = \"store\"  wall {pull_mid:.2} s ({})   controller sent hosts {} payload bytes and the store {delta_len} (one delta); hosts fetched {}",
        walls(&pull_runs),
        pull_runs[0].1,
        pull_runs[0].2
    );
    println!(
        "  ratio pull / push: wall {:.2}   controller bytes {:.3}",
        pull_mid / push_mid,
        (pull_runs[0].1 + delta_len) as f64 / push_runs[0].1.max(1) as f64
    );
    let goal = |name: &str, value: f64, bound: f64, less: bool| {
        let met = if less { value < bound } else { value >= bound };
        println!(
            "{name:<34} = {value:.2} (goal {} {bound})  {}",
            if less { "<" } else { ">=" },
            if met { "met" } else { "NOT met" }
        );
    };
    goal("rollback wall (s)", roll, GOAL_ROLLBACK, true);
    goal("canary→50%→50% activation (s)", phase("activate"), GOAL_ACTIVATE, true);
    goal("transport / OpenSSH throughput", ours_rate / openssh_rate, GOAL_THROUGHPUT, false);
    Ok(())
}

/// This process's CPU seconds, all its threads and what it reaped.
fn self_cpu() -> f64 {
    cpu::of("self").total()
}

/// The test hosts' CPU seconds: each sshd and what it ran and reaped.
fn hosts_cpu(hosts: &testhosts::TestHosts) -> f64 {
    hosts.hosts.iter().filter_map(testhosts::TestHost::sshd_pid).map(|pid| cpu::of(&pid.to_string()).total()).sum()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
