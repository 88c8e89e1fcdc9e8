//! The `ssh` transport against real test hosts (network namespaces with a
//! real sshd each): a push and a rollback, and host keys checked.

use std::path::PathBuf;
use std::time::Duration;

use ferry_builder::{delta, Store};
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::{
    self, AgentBinary, HostSpec, OnFailure, Quiet, ReleaseSource, SourceError, Ssh, Stage, Step, Transport,
};
use ferry_switcher::host::StageOptions;
use fs_err as fs;

use crate::kit::{ferry_bin, sample_project, Project};
use crate::testhosts::TestHosts;

struct Source(Store);

impl ReleaseSource for Source {
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(self.0.bundle_path(id))
    }

    fn delta(&self, base: &ReleaseId, target: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        if !self.0.has_intact(base) {
            return Ok(None);
        }
        Ok(Some(delta::encode(&self.0, base, target)?.path))
    }

    fn rsync_delta(&self, signature: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(delta::encode_rsync(&self.0, signature, target)?.path)
    }
}

fn ssh(hosts: &TestHosts) -> Ssh {
    Ssh {
        known_hosts: hosts.known_hosts.clone(),
        accept_new: false,
        identity: Some(hosts.key.clone()),
        user: "root".into(),
        // The test hosts share this machine's file system but for /srv.
        ferry: AgentBinary::OnHost(ferry_bin().into()),
        connect_timeout: Duration::from_secs(5),
        step_timeout: Duration::from_secs(60),
    }
}

fn stage(hosts: &TestHosts) -> Stage {
    Stage {
        name: "ssh".into(),
        hosts: hosts
            .hosts
            .iter()
            .map(|h| HostSpec { name: format!("root@{}", h.addr), deploy_to: "/srv/shop".into() })
            .collect(),
        strategy: ["1", "50%", "100%"].iter().map(|s| s.parse::<Step>().unwrap()).collect(),
        options: StageOptions { env: Some("staging".into()), ..StageOptions::default() },
        keep_releases: 5,
        max_parallel: 4,
        on_failure: OnFailure::Revert,
    }
}

fn build(p: &Project, version: &str) -> ReleaseId {
    p.build(&["--version", version])["id"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_push_over_ssh_reaches_every_host_by_bundle_then_delta_and_rolls_back() {
    let hosts = TestHosts::start(3);
    let p = sample_project();
    let source = Source(Store::new(p.store.path()));
    let (ssh, stage) = (ssh(&hosts), stage(&hosts));
    let v1 = build(&p, "v1");
    let report = fleet::push(&stage, &ssh, &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let report = fleet::push(&stage, &ssh, &source, &v2, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert!(report.hosts.iter().all(|h| h.shipped == "delta"), "{report:#?}");
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
    let hosts = TestHosts::start(4);
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
    let v1 = build(&p, "v1").to_string();
    p.ferry(["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2").to_string();
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let batches: Vec<usize> =
        report["batches"].as_array().unwrap().iter().map(|b| b.as_array().unwrap().len()).collect();
    assert_eq!(batches, vec![1, 1, 2], "{report:#}");
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["shipped"], "delta", "{h}");
    }
    // No `agent` in the stage: ferry uploaded itself, once, named by its hash.
    let hash = p.ferry(["agent-hash"]).ok().stdout.trim().to_owned();
    for h in &hosts.hosts {
        let agent = h.srv.join(format!("shop/.ferry/bin/ferry-{}", &hash[..16]));
        assert_eq!(fs::read(&agent).unwrap(), fs::read(ferry_bin()).unwrap(), "{}", h.name);
    }
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["status"]["current"], v2.as_str(), "{h}");
        assert_eq!(h["status"]["previous"], v1.as_str(), "{h}");
    }
    // The journals, merged: the canary's deploy of v2 comes before every other host's.
    let history = p.ferry(["history", "prod", "--json"]).ok().stdout;
    let deploys: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "deploy" && r["to"] == v2.as_str())
        .collect();
    assert_eq!(deploys.len(), 4, "{history}");
    assert_eq!(deploys[0]["host"], format!("root@{}", hosts.hosts[0].addr), "{history}");
    p.ferry(["rollback", "prod"]).ok();
    for h in &hosts.hosts {
        let current = fs::read_link(h.srv.join("shop/current")).unwrap();
        assert_eq!(current, PathBuf::from(format!("releases/{v1}")), "{}", h.name);
    }
}
