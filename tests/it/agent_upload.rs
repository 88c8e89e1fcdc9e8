//! The agent that goes to ssh hosts (`ferry-agent`): small, stripped, linked
//! against nothing but libc, shipped gzipped, and refused to a host whose
//! glibc is older than the one it needs, before a byte of it is sent. The
//! hosts are real test hosts (network namespaces with sshd); what a host
//! says of itself is changed by binding a stand-in over a tool in that
//! host's own mount namespace.

use std::path::Path;
use std::time::Instant;

use ferry_switcher::fleet::{AgentBinary, HostSpec, Ssh, Transport};
use fs_err as fs;
use object::{Object, ObjectSection};

use crate::kit::{self, agent_bin, sample_project, sh};
use crate::testhosts::TestHosts;

/// What the issue asks of the agent, uncompressed and as shipped per host.
const MAX_AGENT: u64 = 15 << 20;
const MAX_SHIPPED_PER_HOST: u64 = 8 << 20;

fn ssh(hosts: &TestHosts) -> Ssh {
    crate::ssh::ssh_with(hosts, AgentBinary::Upload(agent_bin().into()))
}

fn spec(hosts: &TestHosts, i: usize) -> HostSpec {
    HostSpec { name: format!("root@{}", hosts.hosts[i].addr), deploy_to: "/srv/shop".into() }
}

/// Bytes sent to host `i` so far (its link's far end received them).
fn sent_to(hosts: &TestHosts, i: usize) -> u64 {
    let path = format!("/sys/class/net/{}/statistics/tx_bytes", hosts.hosts[i].veth);
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Binds a shell script over `tool` in host `i`'s own mount namespace.
fn stand_in(hosts: &TestHosts, i: usize, tool: &str, script: &str) {
    let stand_in = format!("/srv/stand-in-{tool}");
    fs::write(hosts.hosts[i].srv.join(format!("stand-in-{tool}")), format!("#!/bin/sh\n{script}\n")).unwrap();
    let out = hosts.ssh(i, &format!("chmod 755 {stand_in} && mount --bind {stand_in} \"$(command -v {tool})\""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn uploaded(hosts: &TestHosts, i: usize) -> Vec<String> {
    match fs::read_dir(hosts.hosts[i].srv.join("shop/.ferry/bin")) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn the_agent_is_small_stripped_and_links_nothing_beyond_libc() {
    let agent = agent_bin();
    let bytes = fs::read(agent).unwrap();
    assert!(bytes.len() as u64 <= MAX_AGENT, "{} bytes", bytes.len());
    let elf = object::File::parse(&*bytes).unwrap();
    for section in elf.sections() {
        let name = section.name().unwrap();
        assert!(!name.starts_with(".debug") && name != ".symtab", "stripped, yet it has {name}");
    }
    let ldd = sh(&format!("ldd {}", agent.display()));
    for line in ldd.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let known = ["linux-vdso.so", "libc.so", "libm.so", "libgcc_s.so", "ld-linux"];
        assert!(known.iter().any(|k| lib.contains(k)), "ldd shows {lib}: {ldd}");
    }
    assert!(!ldd.contains("libssl") && !ldd.contains("libcrypto"), "{ldd}");
}

#[test]
fn first_contact_with_20_hosts_ships_the_gzipped_agent_to_each_and_it_runs_there() {
    let _one = crate::kit::one_at_a_time();
    let hosts = TestHosts::start(20);
    let agent = agent_bin();
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    // No `agent`: ferry uploads the ferry-agent it finds (target/agent/).
    let stage = hosts.ssh_stage("prod", "env = \"staging\"\n");
    p.write("ferry.toml", format!("{toml}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n{stage}"));
    let n = hosts.hosts.len();
    let before: Vec<u64> = (0..n).map(|i| sent_to(&hosts, i)).collect();
    let start = Instant::now();
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let wall = start.elapsed();
    let shipped: Vec<u64> = (0..n).map(|i| sent_to(&hosts, i) - before[i]).collect();
    let total: u64 = shipped.iter().sum();
    let size = fs::metadata(agent).unwrap().len();
    eprintln!(
        "first contact with {n} hosts: {total} bytes sent in all ({} per host at most; the agent is {size} \
         bytes), {:.2}s",
        shipped.iter().max().unwrap(),
        wall.as_secs_f64()
    );
    assert!(total <= n as u64 * MAX_SHIPPED_PER_HOST, "{total} bytes to {n} hosts");
    // Compressed: each host got less than the agent's own size, SSH and all.
    for (i, bytes) in shipped.iter().enumerate() {
        assert!(*bytes < size, "host{} got {bytes} bytes for an agent of {size}", i + 1);
    }
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["ok"], true, "{h}");
    }
    let hash = kit::run(std::process::Command::new(agent).arg("agent-hash")).ok().stdout.trim().to_owned();
    for (i, h) in hosts.hosts.iter().enumerate() {
        assert_eq!(uploaded(&hosts, i), vec![format!("ferry-{}", &hash[..16])], "{}", h.name);
        assert_eq!(
            fs::read(h.srv.join(format!("shop/.ferry/bin/ferry-{}", &hash[..16]))).unwrap(),
            fs::read(agent).unwrap()
        );
    }
    // Each host runs it: a session open on every host is a process of that
    // very file, in the host's own mount namespace.
    let ssh = ssh(&hosts);
    let sessions: Vec<_> = (0..n).map(|i| ssh.connect(&spec(&hosts, i), None).unwrap()).collect();
    let running = format!(
        "me=$(readlink /proc/self/ns/mnt); for p in /proc/[0-9]*; do \
         [ \"$(readlink $p/ns/mnt 2>/dev/null)\" = \"$me\" ] && readlink $p/exe; done | grep -c '/srv/shop/.ferry/bin/ferry-{}$'",
        &hash[..16]
    );
    for i in 0..n {
        let out = hosts.ssh(i, &running);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "host{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(sessions);
    // A second contact finds it there and ships next to nothing.
    let before: Vec<u64> = (0..n).map(|i| sent_to(&hosts, i)).collect();
    p.ferry(["status", "prod", "--json"]).ok();
    let again: u64 = (0..n).map(|i| sent_to(&hosts, i) - before[i]).sum();
    assert!(again < total / 10, "the agent went again: {again} bytes after {total}");
}

#[test]
fn hosts_with_an_older_glibc_or_none_are_refused_before_anything_is_uploaded() {
    let hosts = TestHosts::start(2);
    stand_in(&hosts, 0, "getconf", "echo glibc 2.17");
    // A musl host: no getconf answer, and musl's ldd.
    stand_in(&hosts, 1, "getconf", "exit 1");
    stand_in(&hosts, 1, "ldd", "echo 'musl libc (x86_64)' >&2; echo 'Version 1.2.4' >&2; exit 1");
    let ssh = ssh(&hosts);
    let before: Vec<u64> = (0..2).map(|i| sent_to(&hosts, i)).collect();
    let err = ssh.connect(&spec(&hosts, 0), None).err().expect("glibc 2.17 is too old").to_string();
    let agent = agent_bin().display().to_string();
    assert!(err.contains(&format!("the host has glibc 2.17, and the agent {agent} needs glibc 2.")), "{err}");
    assert!(err.contains("or newer (its ELF version needs say so): nothing was uploaded;"), "{err}");
    assert!(err.contains("build ferry-agent on a machine with an older glibc"), "{err}");
    let err = ssh.connect(&spec(&hosts, 1), None).err().expect("musl is not glibc").to_string();
    assert!(
        err.contains("the host's libc is not a glibc that says its version (`getconf GNU_LIBC_VERSION` and `ldd --version` said \"musl libc (x86_64)\")"),
        "{err}"
    );
    for (i, before) in before.iter().enumerate() {
        assert!(uploaded(&hosts, i).is_empty(), "nothing was uploaded to host{}", i + 1);
        let sent = sent_to(&hosts, i) - before;
        assert!(sent < 200_000, "host{} was sent {sent} bytes: some of the agent went", i + 1);
    }
}

#[test]
fn a_host_whose_gzip_does_not_run_gets_the_agent_as_it_is() {
    let hosts = TestHosts::start(2);
    stand_in(&hosts, 1, "gzip", "exit 1");
    let ssh = ssh(&hosts);
    let size = fs::metadata(agent_bin()).unwrap().len();
    let mut shipped = Vec::new();
    for i in 0..2 {
        let before = sent_to(&hosts, i);
        let mut session = ssh.connect(&spec(&hosts, i), None).unwrap();
        session.status().unwrap();
        drop(session);
        shipped.push(sent_to(&hosts, i) - before);
    }
    assert!(shipped[0] < size * 3 / 4, "gzipped: {} bytes for {size}", shipped[0]);
    assert!(shipped[1] > size, "as it is: {} bytes for {size}", shipped[1]);
    let agent = fs::read(agent_bin()).unwrap();
    for i in 0..2 {
        let names = uploaded(&hosts, i);
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(fs::read(hosts.hosts[i].srv.join("shop/.ferry/bin").join(&names[0])).unwrap(), agent);
    }
}

#[test]
fn ferry_agent_shows_what_goes_to_hosts_and_where_it_was_found() {
    let agent = agent_bin();
    let bytes = fs::metadata(agent).unwrap().len();
    let hash = kit::run(std::process::Command::new(agent).arg("agent-hash")).ok().stdout.trim().to_owned();
    // From target/debug/ferry: cargo's target/agent/.
    let info = kit::run(kit::ferry_cmd().args(["agent", "--json"])).ok().json();
    assert_eq!((info["bytes"].as_u64(), info["blake3"].as_str()), (Some(bytes), Some(hash.as_str())), "{info:#}");
    assert!(info["gzip_bytes"].as_u64().unwrap() < bytes, "{info:#}");
    assert_eq!(info["machine"], std::env::consts::ARCH);
    let glibc: Vec<u32> = info["glibc"].as_str().unwrap().split('.').map(|n| n.parse().unwrap()).collect();
    let here = sh("getconf GNU_LIBC_VERSION");
    let here: Vec<u32> = here.split_whitespace().last().unwrap().split('.').map(|n| n.parse().unwrap()).collect();
    assert!(glibc >= vec![2, 17] && glibc <= here, "needs {glibc:?}, this machine has {here:?}");
    for lib in info["libraries"].as_array().unwrap() {
        let lib = lib.as_str().unwrap();
        assert!(["libc.so.6", "libm.so.6", "libgcc_s.so.1"].contains(&lib) || lib.starts_with("ld-linux"), "{lib}");
    }
    let human = kit::run(kit::ferry_cmd().arg("agent")).ok().stdout;
    assert!(
        human.contains(&format!(
            "runs on    Linux {}, glibc {} or newer",
            std::env::consts::ARCH,
            info["glibc"].as_str().unwrap()
        )),
        "{human}"
    );

    let err = kit::run(kit::ferry_cmd().arg("agent").env("FERRY_AGENT", "/nonexistent/ferry-agent")).fails(2);
    assert!(err.contains("FERRY_AGENT=/nonexistent/ferry-agent is not a file"), "{err}");
    // A ferry installed alone: it says where it looked and what to do; then
    // one beside it is found.
    // Hard links, not copies: a file this process wrote may still be open
    // for writing in a child another test forks, and then will not run.
    let target = agent.parent().and_then(Path::parent).unwrap();
    let dir = tempfile::Builder::new().prefix("ferry-it-").tempdir_in(target).unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::hard_link(kit::ferry_bin(), bin.join("ferry")).unwrap();
    let err = kit::run(std::process::Command::new(bin.join("ferry")).arg("agent")).fails(2);
    let beside = bin.join("ferry-agent");
    assert!(
        err.contains(&format!("no ferry-agent to upload to ssh hosts: none beside ferry ({})", beside.display())),
        "{err}"
    );
    assert!(err.contains("build it with `cargo build -p ferry-agent --profile agent`"), "{err}");
    fs::hard_link(agent, &beside).unwrap();
    let info = kit::run(std::process::Command::new(bin.join("ferry")).args(["agent", "--json"])).ok().json();
    assert_eq!(info["path"], beside.to_str().unwrap());
}
