//! The agent via the store (`fetch = "store"`): on first contact the
//! controller puts the gzipped agent in the store once
//! (`agents/<blake3>.gz`) and each host that lacks it downloads it with its
//! own curl or wget, unpacks it and runs it to check its hash before it
//! takes its name. A host that cannot (no curl or wget, the store out of
//! its reach, a download that is not the agent) is sent it over SSH, and
//! its report says why. The bytes the controller sends each host over SSH
//! are counted by a forwarder in front of its sshd (the host's link also
//! carries what it downloads from the store).

use std::net::SocketAddr;

use fs_err as fs;

use crate::kit::{self, agent_bin, current, ferry_cmd, run, sample_project, Project, Run};
use crate::s3kit::{CountingForward, S3Server};
use crate::testhosts::TestHosts;

/// A counting forwarder in front of each host's sshd, and a known_hosts
/// that knows each host under its forwarder's address.
struct Links {
    forwards: Vec<CountingForward>,
    known_hosts: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Links {
    fn start(hosts: &TestHosts) -> Self {
        let dir = kit::tempdir();
        let known = fs::read_to_string(&hosts.known_hosts).unwrap();
        let mut ours = String::new();
        let forwards: Vec<CountingForward> = hosts
            .hosts
            .iter()
            .map(|h| {
                let f = CountingForward::start(SocketAddr::from((h.addr, 22)));
                let line = known.lines().find(|l| l.starts_with(&format!("{} ", h.addr))).unwrap();
                ours.push_str(&format!("[127.0.0.1]:{}{}\n", f.port, &line[h.addr.to_string().len()..]));
                f
            })
            .collect();
        let known_hosts = dir.path().join("known_hosts");
        fs::write(&known_hosts, ours).unwrap();
        Links { forwards, known_hosts, _dir: dir }
    }

    fn name(&self, i: usize) -> String {
        format!("root@127.0.0.1:{}", self.forwards[i].port)
    }

    fn sent(&self) -> Vec<u64> {
        self.forwards.iter().map(CountingForward::sent).collect()
    }
}

/// The sample project with the store `s3` and a stage `prod` over the hosts
/// through `links`, fetching from the store, the agent uploaded (no `agent`).
fn project(hosts: &TestHosts, links: &Links, s3: &S3Server) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let list: Vec<String> = (0..hosts.hosts.len()).map(|i| format!("\"{}\"", links.name(i))).collect();
    let stage = format!(
        "[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nknown_hosts = \"{}\"\nidentity = \"{}\"\n\
         env = \"staging\"\nfetch = \"store\"\nmax_parallel = 20\n",
        list.join(", "),
        links.known_hosts.display(),
        hosts.key.display()
    );
    p.write(
        "ferry.toml",
        format!("{toml}\n{}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n{stage}", s3.store_section("shop")),
    );
    p
}

fn ferry_s3(p: &Project, s3: &S3Server, args: &[&str]) -> Run {
    run(ferry_cmd().args(args).arg("--store").arg(p.store.path()).arg("-c").arg(p.path("ferry.toml")).envs(s3.env()))
}

/// Binds a script over `tool` in host `i`'s own mount namespace.
fn stand_in(hosts: &TestHosts, i: usize, tool: &str, script: &str) {
    let stand_in = format!("/srv/stand-in-{tool}");
    fs::write(hosts.hosts[i].srv.join(format!("stand-in-{tool}")), format!("#!/bin/sh\n{script}\n")).unwrap();
    let out = hosts.ssh(i, &format!("chmod 755 {stand_in} && mount --bind {stand_in} \"$(command -v {tool})\""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The agent's blake3 and its gzipped size, as ferry shows them.
fn agent() -> (String, u64) {
    let info = run(ferry_cmd().args(["agent", "--json"])).ok().json();
    (info["blake3"].as_str().unwrap().to_owned(), info["gzip_bytes"].as_u64().unwrap())
}

/// Host `i` has this very agent, once, and it runs there and says its hash.
fn has_the_agent(hosts: &TestHosts, i: usize, hash: &str) {
    let bin = hosts.hosts[i].srv.join("shop/.ferry/bin");
    let names: Vec<String> =
        fs::read_dir(&bin).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let name = format!("ferry-{}", &hash[..16]);
    assert_eq!(names, std::slice::from_ref(&name), "host{}", i + 1);
    assert!(fs::read(bin.join(&name)).unwrap() == fs::read(agent_bin()).unwrap(), "host{}: not the agent", i + 1);
    let out = hosts.ssh(i, &format!("/srv/shop/.ferry/bin/{name} agent-hash"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hash, "host{}", i + 1);
}

fn agent_keys(s3: &S3Server) -> Vec<String> {
    s3.keys().into_iter().filter(|k| k.starts_with("shop/agents/")).collect()
}

#[test]
fn first_contact_with_20_hosts_fetching_from_the_store_sends_the_agent_over_ssh_only_to_one_without_curl_or_wget() {
    let _one = kit::one_at_a_time();
    agent_bin();
    let hosts = TestHosts::start(20);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let links = Links::start(&hosts);
    // Host 1 has neither curl nor wget that runs.
    stand_in(&hosts, 0, "curl", "exit 127");
    stand_in(&hosts, 0, "wget", "exit 127");
    // Host 2 has wget, no curl.
    stand_in(&hosts, 1, "curl", "exit 127");
    let p = project(&hosts, &links, &s3);
    let v1 = ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v1"]).ok().stdout.trim().to_owned();
    let (hash, gz) = agent();
    let before = links.sent();
    let start = std::time::Instant::now();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let wall = start.elapsed();
    let sent: Vec<u64> = links.sent().iter().zip(&before).map(|(a, b)| a - b).collect();
    let rows = report["hosts"].as_array().unwrap();
    let by_ssh = rows[0]["notes"].to_string();
    assert!(
        by_ssh
            .contains("the agent could not come from the store (the host has neither curl nor wget); sent it over SSH"),
        "{}",
        rows[0]
    );
    assert!(sent[0] > gz, "host1 got {} bytes over SSH, the gzipped agent is {gz}", sent[0]);
    for (i, h) in rows.iter().enumerate().skip(1) {
        assert_eq!(h["result"], "ok", "{h}");
        let tool = if i == 1 { "wget" } else { "curl" };
        assert!(h["notes"].to_string().contains(&format!("the agent came from the store ({tool} on the host)")), "{h}");
        assert_eq!(h["bytes"], 0, "{h}");
        // SSH's handshake, the session's requests and replies: a few KiB.
        assert!(sent[i] < 64 << 10, "host{} was sent {} bytes over SSH; the gzipped agent is {gz}", i + 1, sent[i]);
    }
    for (i, h) in hosts.hosts.iter().enumerate() {
        has_the_agent(&hosts, i, &hash);
        assert_eq!(current(&h.srv.join("shop")).as_deref(), Some(v1.as_str()), "{}", h.name);
    }
    // One object for all: the gzipped agent, under its hash.
    let keys = agent_keys(&s3);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let object = fs::read(s3.object_path(&keys[0])).unwrap();
    assert_eq!(object.len() as u64, gz);
    assert_eq!(keys[0], format!("shop/agents/{}.gz", blake3::hash(&object).to_hex()));
    let most = sent[1..].iter().max().unwrap();
    eprintln!(
        "first contact, 20 hosts, fetch = \"store\": {} bytes over SSH to each of 19 hosts at most (the gzipped agent \
         is {gz}); {} to the host without curl or wget; {:.2}s",
        most,
        sent[0],
        wall.as_secs_f64()
    );
    // A second contact finds it there: nothing more from the store or over SSH.
    let before = links.sent();
    ferry_s3(&p, &s3, &["status", "prod", "--json"]).ok();
    let again: Vec<u64> = links.sent().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(again.iter().all(|&b| b < 64 << 10), "{again:?}");
}

#[test]
fn a_host_that_cannot_reach_the_store_or_gets_something_else_is_sent_the_agent_over_ssh_and_says_why() {
    agent_bin();
    // On loopback: the controller reaches it, the hosts do not.
    let hosts = TestHosts::start(1);
    let s3 = S3Server::start();
    let links = Links::start(&hosts);
    let p = project(&hosts, &links, &s3);
    ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v1"]).ok();
    let (hash, gz) = agent();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let h = &report["hosts"][0];
    let notes = h["notes"].to_string();
    assert!(notes.contains("the agent could not come from the store (curl http://127.0.0.1:"), "{h}");
    assert!(notes.contains(", exit 7: curl: (7)"), "{h}");
    eprintln!("a host that cannot reach the store: {notes}");
    assert!(notes.contains("sent it over SSH"), "{h}");
    assert!(!notes.contains("X-Amz-Signature"), "the report shows the signed URL: {h}");
    assert!(links.sent()[0] > gz, "{} bytes over SSH", links.sent()[0]);
    has_the_agent(&hosts, 0, &hash);

    // A store the hosts reach, whose agent object turns out not to be the
    // agent (replaced after the first host fetched it, by bytes of its
    // length: the controller takes the key as the agent, as it takes every
    // content-addressed key; the hosts' check is the gate).
    let hosts = TestHosts::start(3);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let links = Links::start(&hosts);
    let p = project(&hosts, &links, &s3);
    ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v1"]).ok();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json", "--hosts", &links.name(0)]).ok().json();
    let h = &report["hosts"][0];
    assert!(h["notes"].to_string().contains("the agent came from the store (curl on the host)"), "{h}");
    let keys = agent_keys(&s3);
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Not the agent's gzip: refused by its sha256.
    fs::write(s3.object_path(&keys[0]), vec![b'x'; gz as usize]).unwrap();
    let before = links.sent()[1];
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json", "--hosts", &links.name(1)]).ok().json();
    let h = &report["hosts"][0];
    let notes = h["notes"].to_string();
    assert!(notes.contains("the agent could not come from the store (curl http://"), "{h}");
    assert!(notes.contains("the download is not the agent: its sha256 is "), "{h}");
    assert!(notes.contains("nothing of it was run"), "{h}");
    eprintln!("a host given something else: {notes}");
    assert!(notes.contains("sent it over SSH"), "{h}");
    assert!(links.sent()[1] - before > gz, "the agent went over SSH");
    // A gzipped program of the object's length: refused by its sha256
    // before anything of it runs (it would leave a mark).
    fs::write(s3.object_path(&keys[0]), impostor(gz as usize)).unwrap();
    let before = links.sent()[2];
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json", "--hosts", &links.name(2)]).ok().json();
    let h = &report["hosts"][0];
    let notes = h["notes"].to_string();
    assert!(notes.contains("the download is not the agent: its sha256 is "), "{h}");
    assert!(!hosts.hosts[2].srv.join("impostor-ran").exists(), "the host ran what it downloaded");
    assert!(notes.contains("sent it over SSH"), "{h}");
    eprintln!("a host given another program: {notes}");
    assert!(links.sent()[2] - before > gz, "the agent went over SSH");
    for i in 0..3 {
        has_the_agent(&hosts, i, &hash);
    }
}

/// A gzip stream of exactly `len` bytes that unpacks to a shell script
/// that leaves `/srv/impostor-ran` and says `not-the-agent` (its tail:
/// random bytes, which gzip cannot shrink, to make up the length).
fn impostor(len: usize) -> Vec<u8> {
    let dir = kit::tempdir();
    let script = dir.path().join("impostor");
    let mut pad = len.saturating_sub(100);
    for _ in 0..20 {
        let mut tail = vec![0u8; pad];
        blake3::Hasher::new().update(b"impostor").finalize_xof().fill(&mut tail);
        fs::write(
            &script,
            [b"#!/bin/sh\ntouch /srv/impostor-ran\necho not-the-agent\nexit 0\n".as_slice(), &tail].concat(),
        )
        .unwrap();
        let out = std::process::Command::new("gzip").arg("-9nc").arg(&script).output().unwrap();
        match out.stdout.len().cmp(&len) {
            std::cmp::Ordering::Equal => return out.stdout,
            std::cmp::Ordering::Less => pad += len - out.stdout.len(),
            std::cmp::Ordering::Greater => pad -= out.stdout.len() - len,
        }
    }
    panic!("no gzip stream of {len} bytes");
}
