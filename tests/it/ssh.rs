//! The `ssh` transport against real test hosts (network namespaces with a
//! real sshd each): a push and a rollback, and host keys checked.

use std::path::PathBuf;
use std::time::Duration;

use ferry_builder::Store;
use ferry_switcher::fleet::fault::{At, Fault, Faults, Then};
use ferry_switcher::fleet::{self, AgentBinary, HostSpec, Quiet, Shipped, Ssh, Stage, Transport};
use fs_err as fs;

use crate::kit::{self, agent_bin, build, build_id, ferry_bin, sample_project, Project};
use crate::source::Source;
use crate::testhosts::TestHosts;

fn ssh(hosts: &TestHosts) -> Ssh {
    // The test hosts share this machine's file system but for /srv.
    ssh_with(hosts, AgentBinary::OnHost(ferry_bin().into()))
}

/// The transport to the test hosts as root with their key, and `ferry` as the agent.
pub(crate) fn ssh_with(hosts: &TestHosts, ferry: AgentBinary) -> Ssh {
    Ssh {
        known_hosts: hosts.known_hosts.clone(),
        accept_new: false,
        identity: Some(hosts.key.clone()),
        user: Some("root".into()),
        ferry,
        connect_timeout: Duration::from_secs(5),
        step_timeout: Duration::from_secs(60),
        ssh_config: None,
    }
}

fn stage(hosts: &TestHosts) -> Stage {
    let specs =
        hosts.hosts.iter().map(|h| HostSpec { name: format!("root@{}", h.addr), deploy_to: "/srv/shop".into() });
    kit::stage("ssh", specs.collect())
}

#[test]
fn a_push_over_ssh_reaches_every_host_by_bundle_then_delta_and_rolls_back() {
    let hosts = TestHosts::start(3);
    let p = sample_project();
    let source = Source(Store::new(p.store.path()));
    let (ssh, mut stage) = (ssh(&hosts), stage(&hosts));
    // Hosts named by IPv4, by IPv6 with a port, and by bare IPv6.
    stage.hosts[1].name = format!("root@[{}]:22", hosts.hosts[1].addr6);
    stage.hosts[2].name = format!("root@{}", hosts.hosts[2].addr6);
    let v1 = build_id(&p, "v1");
    let report = fleet::push(&stage, &ssh, &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build_id(&p, "v2");
    let report = fleet::push(&stage, &ssh, &source, &v2, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert!(report.hosts.iter().all(|h| h.shipped == Shipped::Delta), "{report:#?}");
    for h in &hosts.hosts {
        // Each host's /srv is its own.
        let main = fs::read_to_string(h.srv.join("shop/current/app/main.py")).unwrap();
        assert_eq!(main, "print('shop v2')\n", "{}", h.name);
    }
    let report = fleet::rollback(&stage, &ssh, None, &Quiet).unwrap();
    assert!(report.ok, "{report:#?}");
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}

#[test]
fn an_unknown_host_key_is_refused_with_its_fingerprint_unless_new_keys_are_allowed() {
    let hosts = TestHosts::start(1);
    let mut ssh = ssh(&hosts);
    let empty = hosts.key.with_file_name("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    ssh.known_hosts = empty.clone();
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/shop".into() };
    let err = ssh.connect(&spec, None).err().unwrap().to_string();
    assert!(err.contains("its host key (SHA256:") && err.contains("is not in"), "{err}");
    ssh.accept_new = true;
    ssh.connect(&spec, None).unwrap();
    assert!(fs::read_to_string(&empty).unwrap().contains(&hosts.hosts[0].addr.to_string()));
    ssh.accept_new = false;
    ssh.connect(&spec, None).unwrap();
}

#[test]
fn ferry_push_status_history_and_rollback_over_an_ssh_stage() {
    let hosts = TestHosts::start(6);
    // Built before ferry looks for it.
    agent_bin();
    let p = sample_project();
    let list: Vec<String> = hosts.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
             known_hosts = \"{}\"\nidentity = \"{}\"\n",
            list.join(", "),
            hosts.known_hosts.display(),
            hosts.key.display(),
        ),
    );
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let batches: Vec<usize> =
        report["batches"].as_array().unwrap().iter().map(|b| b.as_array().unwrap().len()).collect();
    assert_eq!(batches, vec![1, 2, 3], "canary, then half, then the rest: {report:#}");
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["shipped"], "delta", "{h}");
    }
    // No `agent` in the stage: ferry uploaded ferry-agent (found in
    // target/agent/), once, named by its hash.
    let hash = kit::run(std::process::Command::new(agent_bin()).arg("agent-hash")).ok().stdout.trim().to_owned();
    for h in &hosts.hosts {
        let agent = h.srv.join(format!("shop/.ferry/bin/ferry-{}", &hash[..16]));
        assert_eq!(fs::read(&agent).unwrap(), fs::read(agent_bin()).unwrap(), "{}", h.name);
    }
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["status"]["current"], v2.as_str(), "{h}");
        assert_eq!(h["status"]["previous"], v1.as_str(), "{h}");
    }
    // The hosts' journals, merged: every host of a batch deployed v2 after
    // every host of the batch before it.
    let history = p.ferry(["history", "prod", "--json"]).ok().stdout;
    let deployed_at: std::collections::BTreeMap<String, String> = history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "deploy" && r["to"] == v2.as_str())
        .map(|r| (r["host"].as_str().unwrap().to_owned(), r["time"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(deployed_at.len(), 6, "{history}");
    let batch_times: Vec<Vec<&String>> = report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_array().unwrap().iter().map(|h| &deployed_at[h.as_str().unwrap()]).collect())
        .collect();
    for pair in batch_times.windows(2) {
        let (last_before, first_after) = (pair[0].iter().max().unwrap(), pair[1].iter().min().unwrap());
        assert!(last_before <= first_after, "batches overlap in the journals: {batch_times:?}");
    }
    p.ferry(["rollback", "prod"]).ok();
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
    // One host pushed alone drifts apart from the rest, and status says so.
    let first = format!("root@{}", hosts.hosts[0].addr);
    p.ferry(["push", "prod", v2.as_str(), "--hosts", first.as_str()]).ok();
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["drifted"], h["host"] == first.as_str(), "{h}");
    }
    let human = p.ferry(["status", "prod"]).ok();
    let line = human.stdout.lines().find(|l| l.starts_with(&first)).unwrap();
    assert!(line.contains("(drifted"), "{}", human.stdout);
    assert!(human.stderr.contains("run 2 different releases"), "{}", human.stderr);
}

/// A project with an ssh stage over `hosts` (the agent is this binary, in place).
fn ssh_project(hosts: &TestHosts, identity: &std::path::Path) -> Project {
    let p = sample_project();
    let list: Vec<String> = hosts.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
             known_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n",
            list.join(", "),
            hosts.known_hosts.display(),
            identity.display(),
            ferry_bin()
        ),
    );
    p
}

/// The report row of the host at `addr`.
fn row(report: &serde_json::Value, addr: std::net::Ipv4Addr) -> serde_json::Value {
    let name = format!("root@{addr}");
    report["hosts"].as_array().unwrap().iter().find(|h| h["host"] == name.as_str()).unwrap().clone()
}

#[test]
fn unreachable_refusing_and_locked_hosts_stop_the_push_before_anything_changes() {
    let mut hosts = TestHosts::start(4);
    let p = ssh_project(&hosts, &hosts.key.clone());
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    build(&p, "v2");

    // host2's sshd is gone, host3 is cut off, host4 is locked by a session.
    hosts.stop(1);
    hosts.cut(2);
    let held = ssh(&hosts)
        .connect(
            &HostSpec { name: format!("root@{}", hosts.hosts[3].addr), deploy_to: "/srv/shop".into() },
            Some("ferry push prod (the other one)"),
        )
        .unwrap();
    let run = p.ferry(["push", "prod", "--json"]);
    assert_eq!(run.code, 2, "nothing could start: {}{}", run.stdout, run.stderr);
    let report = run.json();
    let refused = row(&report, hosts.hosts[1].addr);
    assert_eq!(refused["step"], "connect");
    assert!(refused["error"].as_str().unwrap().contains("Connection refused"), "{refused}");
    let cut = row(&report, hosts.hosts[2].addr);
    assert_eq!(cut["step"], "connect");
    assert!(cut["error"].as_str().unwrap().contains("cannot connect"), "{cut}");
    let locked = row(&report, hosts.hosts[3].addr);
    assert!(locked["error"].as_str().unwrap().contains("locked by `ferry push prod (the other one)`"), "{locked}");
    drop(held);
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{} did not change", h.name);
    }
}

#[test]
fn a_key_the_hosts_do_not_accept_is_refused_by_name() {
    let hosts = TestHosts::start(1);
    let other = hosts.key.with_file_name("other_key");
    crate::kit::sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", other.display()));
    let p = ssh_project(&hosts, &other);
    build(&p, "v1");
    let run = p.ferry(["push", "prod", "--json"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let host = row(&run.json(), hosts.hosts[0].addr);
    assert_eq!(host["step"], "connect");
    assert!(host["error"].as_str().unwrap().contains("authentication as root was refused"), "{host}");
}

/// The ssh transport, with the host `victim` cut off (its link down) just
/// before it stages, or just after.
fn cut(ssh: Ssh, victim: &str, veth: &str, at: At) -> Faults<Ssh> {
    let veth = veth.to_owned();
    let down = move || drop(crate::kit::sh(&format!("ip link set {veth} down")));
    Faults::new(ssh, vec![Fault { host: victim.to_owned(), at, then: Then::Run(Box::new(down)) }])
}

#[test]
fn a_host_lost_between_stage_and_activate_fails_its_step_and_the_flipped_hosts_go_back() {
    let hosts = TestHosts::start(4);
    let p = sample_project();
    let source = Source(Store::new(p.store.path()));
    let mut ssh = ssh(&hosts);
    ssh.step_timeout = Duration::from_secs(3);
    let stage = stage(&hosts);
    let v1 = build_id(&p, "v1");
    assert!(fleet::push(&stage, &ssh, &source, &v1, &Quiet).ok);
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build_id(&p, "v2");
    // host3 (batch 3 of 1, 50%, 100%) drops off the network once it staged.
    let victim = format!("root@{}", hosts.hosts[2].addr);
    let faulty = cut(ssh, &victim, &hosts.hosts[2].veth, At::AfterStage);
    let report = fleet::push(&stage, &faulty, &source, &v2, &Quiet);
    assert!(!report.ok);
    let lost = report.hosts.iter().find(|h| h.host == victim).unwrap();
    assert_eq!((lost.step.as_str(), lost.result), ("activate", fleet::Outcome::Failed), "{lost:?}");
    for (i, h) in hosts.hosts.iter().enumerate() {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        // Every host but the lost one was flipped and flipped back; the lost
        // one never heard of the flip.
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "host {i}");
    }
}

#[test]
fn hosts_named_by_ssh_config_aliases_are_reached_through_their_entries() {
    let hosts = TestHosts::start(2);
    let p = sample_project();
    let mut config = String::new();
    for (i, h) in hosts.hosts.iter().enumerate() {
        config.push_str(&format!(
            "Host app-{i}\n  HostName {}\n  User root\n  IdentityFile {}\n",
            h.addr,
            hosts.key.display()
        ));
    }
    fs::write(p.path("ssh_config"), config).unwrap();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n[stages.prod]\ntransport = \"ssh\"\nhosts = [\"app-0\", \"app-1\"]\n\
             env = \"staging\"\nknown_hosts = \"{}\"\nssh_config = \"ssh_config\"\nagent = \"{}\"\n",
            hosts.known_hosts.display(),
            ferry_bin()
        ),
    );
    let v1 = build(&p, "v1");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let names: Vec<&str> = report["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["app-0", "app-1"]);
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}

#[test]
fn a_host_behind_a_bastion_is_reached_through_proxy_jump() {
    let hosts = TestHosts::start(2);
    let (bastion, target) = (hosts.hosts[0].addr, hosts.hosts[1].addr);
    // From here, the target is unreachable: only the bastion can talk to it.
    crate::kit::sh(&format!("ip route add blackhole {target}/32"));
    struct Unroute(std::net::Ipv4Addr);
    impl Drop for Unroute {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", "blackhole", &format!("{}/32", self.0)])
                .status();
        }
    }
    let _unroute = Unroute(target);
    let mut ssh = ssh(&hosts);
    let config = format!(
        "Host inner\n  HostName {target}\n  User root\n  ProxyJump root@{bastion}\nHost {bastion}\n  User root\n"
    );
    let config_path = hosts.key.with_file_name("ssh_config");
    fs::write(&config_path, config).unwrap();
    ssh.ssh_config = fleet::read_ssh_config(&config_path).unwrap();
    let direct = HostSpec { name: format!("root@{target}"), deploy_to: "/srv/shop".into() };
    assert!(ssh.connect(&direct, None).is_err(), "the target must not be reachable directly");

    let p = sample_project();
    let source = Source(Store::new(p.store.path()));
    let mut stage = stage(&hosts);
    stage.hosts = vec![HostSpec { name: "inner".into(), deploy_to: "/srv/shop".into() }];
    let v1 = build_id(&p, "v1");
    let report = fleet::push(&stage, &ssh, &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    let current = fs::read_link(hosts.hosts[1].srv.join("shop/current")).unwrap();
    assert_eq!(current, PathBuf::from(format!("releases/{v1}")));
    assert!(!hosts.hosts[0].srv.join("shop").exists(), "the bastion only carried the connection");
}

#[test]
fn a_proxy_jump_chain_goes_through_each_hop_in_turn() {
    let hosts = TestHosts::start(3);
    let (first, second, target) = (hosts.hosts[0].addr, hosts.hosts[1].addr, hosts.hosts[2].addr);
    // This machine reaches only the first hop; the first hop only the
    // second; only the second reaches the target.
    struct Unroute(Vec<std::net::Ipv4Addr>);
    impl Drop for Unroute {
        fn drop(&mut self) {
            for addr in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["route", "del", "blackhole", &format!("{addr}/32")])
                    .status();
            }
        }
    }
    // Made before the routes, so a failure half-way still removes them.
    let _unroute = Unroute(vec![second, target]);
    for blocked in [second, target] {
        crate::kit::sh(&format!("ip route add blackhole {blocked}/32"));
    }
    crate::kit::sh(&format!("ip -n {} route add blackhole {target}/32", hosts.hosts[0].netns));
    let mut ssh = ssh(&hosts);
    let config_path = hosts.key.with_file_name("ssh_config");
    fs::write(&config_path, format!("Host inner\n  HostName {target}\n  ProxyJump root@{first},root@{second}\n"))
        .unwrap();
    ssh.ssh_config = fleet::read_ssh_config(&config_path).unwrap();
    let inner = HostSpec { name: "inner".into(), deploy_to: "/srv/shop".into() };
    let mut session = ssh.connect(&inner, None).unwrap();
    assert_eq!(session.status().unwrap().current, None);
    drop(session);

    // Without the second hop, the first cannot reach the target.
    fs::write(&config_path, format!("Host inner\n  HostName {target}\n  ProxyJump root@{first}\n")).unwrap();
    ssh.ssh_config = fleet::read_ssh_config(&config_path).unwrap();
    let err = ssh.connect(&inner, None).err().expect("the first hop alone cannot reach the target").to_string();
    assert!(err.contains(&format!("cannot open a connection to {target}:22")), "{err}");
}

#[test]
fn an_agent_killed_mid_session_is_reported_with_its_signal() {
    let hosts = TestHosts::start(1);
    let ssh = ssh(&hosts);
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/killed-agent".into() };
    let mut session = ssh.connect(&spec, Some("ferry test")).unwrap();
    session.status().unwrap();
    // The brackets keep pkill from matching the shell that runs it.
    let out = hosts.ssh(0, "pkill -KILL -f '[d]eploy-to /srv/killed-agent serve'");
    assert!(out.status.success(), "pkill found the agent: {}", String::from_utf8_lossy(&out.stderr));
    let err = session.status().expect_err("a killed agent answers nothing").to_string();
    assert!(err.contains(&format!("root@{}", hosts.hosts[0].addr)), "names the host: {err}");
    assert!(err.contains("the agent was killed by SIGKILL"), "{err}");
    drop(session);
    // Its lock died with it: the next session takes the host.
    ssh.connect(&spec, Some("ferry test")).unwrap().status().unwrap();
}

#[test]
fn a_session_that_began_with_an_upload_keeps_the_step_timeout() {
    let hosts = TestHosts::start(1);
    let mut ssh = ssh(&hosts);
    ssh.ferry = AgentBinary::Upload(agent_bin().into());
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/slow".into() };
    // A fresh host: the agent is uploaded in this very connection.
    let mut session = ssh.connect(&spec, Some("ferry test")).unwrap();
    assert!(hosts.hosts[0].srv.join("slow/.ferry/bin").exists());
    // The agent pauses for longer than the 5 s a session's close waits:
    // the step timeout (60 s here) is what bounds its answer.
    let out = hosts.ssh(0, "pkill -STOP -f '[d]eploy-to /srv/slow serve'");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resume = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(7));
        crate::kit::sh("pkill -CONT -f '[d]eploy-to /srv/slow serve'");
    });
    session.status().expect("a slow answer within the step timeout is an answer");
    resume.join().unwrap();
}

#[test]
fn a_host_of_another_os_is_refused_before_anything_is_uploaded() {
    let hosts = TestHosts::start(1);
    // The host's own mount namespace gets a uname that says FreeBSD.
    let out = hosts.ssh(
        0,
        "printf '#!/bin/sh\\ncase \"$1\" in -s) echo FreeBSD;; -m) echo amd64;; *) echo FreeBSD amd64;; esac\\n' \
         > /srv/uname && chmod 755 /srv/uname && mount --bind /srv/uname /usr/bin/uname && uname -s",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FreeBSD\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(crate::kit::sh("uname -s"), "Linux\n", "only the test host's uname changed");
    let mut ssh = ssh(&hosts);
    ssh.ferry = AgentBinary::Upload(agent_bin().into());
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/shop".into() };
    let err = ssh.connect(&spec, None).err().expect("a FreeBSD host is refused").to_string();
    let ours = format!("the agent {} is built for linux {}", agent_bin().display(), std::env::consts::ARCH);
    assert!(err.contains(&format!("the host runs FreeBSD amd64, {ours}")), "{err}");
    assert!(err.contains("build ferry on or for FreeBSD amd64 and name that build with `agent`"), "{err}");
    assert!(!hosts.hosts[0].srv.join("shop/.ferry/bin").exists(), "nothing was uploaded");
}

#[test]
fn a_host_whose_disk_is_full_fails_its_stage_and_no_host_flips() {
    // host2's /srv is a 2 MiB disk: v1 fits, v2's 3 MiB of noise does not.
    let hosts = TestHosts::start_with(3, |i| (i == 1).then_some(2));
    let p = ssh_project(&hosts, &hosts.key.clone());
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    p.write("media/noise.bin", crate::kit::noise(3 << 20));
    build(&p, "v2");
    let run = p.ferry(["push", "prod", "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    let full = row(&report, hosts.hosts[1].addr);
    assert_eq!((full["step"].as_str(), full["result"].as_str()), (Some("stage"), Some("failed")), "{full}");
    // Refused before a byte is written: v2's files do not fit in what is free.
    assert!(full["error"].as_str().unwrap().contains("are free; free some space"), "{full}");
    assert!(report["batches"].as_array().unwrap().is_empty(), "nothing flipped: {report:#}");
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}

/// The ssh transport, with one host cut off as its stage starts.
#[test]
fn a_host_cut_off_mid_stage_fails_its_stage_and_no_host_flips() {
    let hosts = TestHosts::start(3);
    let p = sample_project();
    let source = Source(Store::new(p.store.path()));
    let mut ssh = ssh(&hosts);
    ssh.step_timeout = Duration::from_secs(3);
    let stage = stage(&hosts);
    let v1 = build_id(&p, "v1");
    assert!(fleet::push(&stage, &ssh, &source, &v1, &Quiet).ok);
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build_id(&p, "v2");
    let victim = format!("root@{}", hosts.hosts[1].addr);
    let faulty = cut(ssh, &victim, &hosts.hosts[1].veth, At::BeforeStage);
    let report = fleet::push(&stage, &faulty, &source, &v2, &Quiet);
    assert!(!report.ok);
    let cut = report.hosts.iter().find(|h| h.host == victim).unwrap();
    assert_eq!((cut.step.as_str(), cut.result), ("stage", fleet::Outcome::Failed), "{cut:?}");
    assert!(report.batches.is_empty(), "nothing flipped");
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}

#[test]
fn new_host_keys_accepted_in_parallel_are_all_recorded_and_nothing_else_is_lost() {
    let hosts = TestHosts::start(6);
    let known = hosts.key.with_file_name("shared_known_hosts");
    let others: String =
        (0..50).map(|i| format!("other{i}.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO{i:02}\n")).collect();
    fs::write(&known, format!("# kept\n{others}")).unwrap();
    let mut ssh = ssh(&hosts);
    ssh.known_hosts = known.clone();
    ssh.accept_new = true;
    let stage = stage(&hosts);
    let report = fleet::status(&stage, &ssh);
    assert!(report.iter().all(|(_, s)| s.is_ok()), "{report:?}");
    let text = fs::read_to_string(&known).unwrap();
    assert!(text.starts_with(&format!("# kept\n{others}")), "the old lines are untouched:\n{text}");
    for h in &hosts.hosts {
        assert_eq!(text.matches(&format!("{} ssh-ed25519 ", h.addr)).count(), 1, "{}:\n{text}", h.addr);
    }
    // Recorded right: without accept_new, every host is known now.
    ssh.accept_new = false;
    assert!(fleet::status(&stage, &ssh).iter().all(|(_, s)| s.is_ok()));
}

#[test]
fn two_pushes_uploading_the_agent_at_once_both_get_it() {
    let hosts = TestHosts::start(1);
    let mut ssh = ssh(&hosts);
    ssh.ferry = AgentBinary::Upload(agent_bin().into());
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/shop".into() };
    std::thread::scope(|s| {
        let a = s.spawn(|| ssh.connect(&spec, None).map(drop));
        let b = s.spawn(|| ssh.connect(&spec, None).map(drop));
        a.join().unwrap().unwrap();
        b.join().unwrap().unwrap();
    });
    let bin = hosts.hosts[0].srv.join("shop/.ferry/bin");
    let names: Vec<String> =
        fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 1, "one agent, no temporary file left: {names:?}");
}

#[test]
fn an_agent_that_does_not_run_on_the_host_is_named_with_its_error() {
    let hosts = TestHosts::start(1);
    let mut ssh = ssh(&hosts);
    ssh.ferry = AgentBinary::OnHost("/opt/nowhere/ferry".into());
    let spec = HostSpec { name: format!("root@{}", hosts.hosts[0].addr), deploy_to: "/srv/shop".into() };
    let err = ssh.connect(&spec, None).err().unwrap().to_string();
    assert!(err.contains("the agent /opt/nowhere/ferry did not start: the agent exited with status 127"), "{err}");
    assert!(err.contains("No such file or directory"), "the host's own words: {err}");
}

#[test]
fn an_old_entry_of_another_key_type_does_not_read_as_a_changed_key() {
    let hosts = TestHosts::start(1);
    let addr = hosts.hosts[0].addr;
    // An ecdsa entry for the same host, listed before the right ed25519 one.
    let known = fs::read_to_string(&hosts.known_hosts).unwrap();
    let mixed = hosts.key.with_file_name("mixed_known_hosts");
    fs::write(
        &mixed,
        format!("{addr} ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBBB\n{known}"),
    )
    .unwrap();
    let mut ssh = ssh(&hosts);
    ssh.known_hosts = mixed;
    let spec = HostSpec { name: format!("root@{addr}"), deploy_to: "/srv/shop".into() };
    ssh.connect(&spec, None).unwrap();
}

/// A push holds one session per host until it ends, so a fleet bigger than
/// the soft limit on open files a shell gives (1024 on most machines) would
/// run out of descriptors: ferry raises its soft limit to the hard one.
#[test]
fn a_push_to_more_hosts_than_the_soft_open_files_limit_allows_still_reaches_every_host() {
    let _one = kit::one_at_a_time();
    let hosts = TestHosts::start(20);
    let p = ssh_project(&hosts, &hosts.key.clone());
    let v1 = build(&p, "v1");
    // 20 sessions need 20 sockets besides stdio: a soft limit of 16 is too few.
    let mut push = std::process::Command::new("prlimit");
    push.args(["--nofile=16:4096", "--"])
        .arg(ferry_bin())
        .args(["push", "prod", "--json", "--store"])
        .arg(p.store.path())
        .arg("-c")
        .arg(p.path("ferry.toml"));
    let run = kit::run(&mut push);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}
