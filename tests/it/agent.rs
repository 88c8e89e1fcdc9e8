//! The agent session protocol (`ferry host serve`) driven by the fleet's
//! `Agent` transport over a pipe to the real binary: the same bytes the SSH
//! transport sends down an exec channel.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_builder::Store;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::{self, Agent, HostSpec, Quiet, Shipped, Stage};
use ferry_switcher::host::Host;
use fs_err as fs;

use crate::kit::{self, build_id, ferry_bin, sample_project, tempdir, Project};
use crate::source::Source;

fn agent() -> Agent<impl Fn(&HostSpec) -> Command + Sync> {
    Agent::new(|spec: &HostSpec| {
        let mut c = Command::new(ferry_bin());
        c.arg("host").arg("--deploy-to").arg(&spec.deploy_to).arg("serve");
        c
    })
}

fn stage(root: &Path, hosts: usize) -> Stage {
    let specs =
        (1..=hosts).map(|i| HostSpec { name: format!("web{i}"), deploy_to: root.join(format!("web{i}/srv/shop")) });
    kit::stage("agents", specs.collect())
}

fn currents(stage: &Stage) -> Vec<Option<ReleaseId>> {
    stage.hosts.iter().map(|h| Host::new(&h.deploy_to).current().unwrap()).collect()
}

#[test]
fn a_push_through_agent_sessions_ships_bundles_then_deltas_and_rolls_back() {
    let p = sample_project();
    let hosts = tempdir();
    let stage = stage(hosts.path(), 3);
    let source = Source(Store::new(p.store.path()));
    let v1 = build_id(&p, "v1");
    let report = fleet::push(&stage, &agent(), &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert!(report.hosts.iter().all(|h| h.shipped == Shipped::Bundle));

    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build_id(&p, "v2");
    let report = fleet::push(&stage, &agent(), &source, &v2, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert!(report.hosts.iter().all(|h| h.shipped == Shipped::Delta), "{report:#?}");
    assert_eq!(report.batches, vec![vec!["web1"], vec!["web2"], vec!["web3"]]);
    assert_eq!(currents(&stage), vec![Some(v2); 3]);
    let main = fs::read_to_string(stage.hosts[2].deploy_to.join("current/app/main.py")).unwrap();
    assert_eq!(main, "print('shop v2')\n");

    let report = fleet::rollback(&stage, &agent(), None, &Quiet).unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(currents(&stage), vec![Some(v1); 3]);

    // The store forgets v1: the hosts sign what they have, over the
    // session, and get rsync deltas to v3.
    fs::remove_file(source.0.bundle_path(&v1)).unwrap();
    p.write("app/main.py", "print('shop v3')\n");
    let v3 = build_id(&p, "v3");
    let report = fleet::push(&stage, &agent(), &source, &v3, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert!(report.hosts.iter().all(|h| h.shipped == Shipped::Rsync), "{report:#?}");
    assert_eq!(currents(&stage), vec![Some(v3); 3]);
}

#[test]
fn a_session_refused_by_the_lock_names_its_holder_and_a_bad_payload_leaves_the_session_usable() {
    let p = sample_project();
    let hosts = tempdir();
    let stage = stage(hosts.path(), 1);
    let spec = &stage.hosts[0];
    let v1 = build_id(&p, "v1");
    let first = fleet::Transport::connect(&agent(), spec, Some("ferry push agents (first)")).unwrap();
    let err = fleet::Transport::connect(&agent(), spec, Some("ferry push agents (second)")).err().unwrap();
    assert!(err.to_string().contains("is locked by `ferry push agents (first)`"), "{err}");
    drop(first);

    let mut session = fleet::Transport::connect(&agent(), spec, Some("test")).unwrap();
    let junk = p.store.path().join("junk.delta");
    fs::write(&junk, b"FERRYDLT\x01\x00\x00\x00 and then nothing that makes sense").unwrap();
    let err = session.stage(&junk, &stage.options, None).unwrap_err();
    assert!(err.to_string().contains("the delta is refused"), "{err}");
    // The payload was read to its end: the next request is understood.
    let staged = session.stage(&source_bundle(&p, &v1), &stage.options, None).unwrap();
    assert_eq!(staged.id, Some(v1));
    session.activate(&v1, &stage.options).unwrap();
    assert_eq!(session.status().unwrap().current, Some(v1));
}

fn source_bundle(p: &Project, id: &ReleaseId) -> PathBuf {
    Store::new(p.store.path()).bundle_path(id)
}
