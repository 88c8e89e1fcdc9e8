//! The push and the fleet rollback, orchestrated over real host directories
//! (the `local` transport) with the fleet's fault-injecting wrapper: a host
//! named to refuse a step refuses it, as a host with a full disk or a dead
//! link would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_formats::bundle::{self, Head, WriteOptions};
use ferry_formats::release::FORMAT_VERSION;
use ferry_formats::signature::Signature;
use ferry_formats::{BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta};
use ferry_switcher::fleet::fault::{At, Fault, Faults, Then};
use ferry_switcher::fleet::{
    self, HostSpec, HostStep, Local, OnFailure, Outcome, Quiet, ReleaseSource, Shipped, SourceError, Stage,
};
use ferry_switcher::host::{Host, StageOptions};
use fs_err as fs;

/// Bundles written into a directory; no deltas (every host gets the bundle,
/// which a source may always send instead of a delta).
struct Bundles(PathBuf);

impl ReleaseSource for Bundles {
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(self.0.join(format!("{id}.tar.zst")))
    }

    fn delta(&self, _: &ReleaseId, _: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        Ok(None)
    }

    fn rsync_delta(&self, _: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError> {
        self.bundle(target)
    }
}

/// A release of service `shop` whose app says `version`, with staging config.
fn release(dir: &Path, version: &str) -> ReleaseId {
    let files: BTreeMap<&str, Vec<u8>> = [
        ("app/main.py", format!("VERSION = {version:?}\n").into_bytes()),
        ("app/lib.py", b"def f():\n    return 1\n".to_vec()),
        ("config/staging/settings.json", format!("{{\"v\": {version:?}}}\n").into_bytes()),
    ]
    .into();
    let mut entries: Vec<Entry> = ["app", "config", "config/staging"]
        .iter()
        .map(|d| Entry { path: RelPath::new(*d).unwrap(), kind: EntryKind::Dir { mode: 0o755 } })
        .collect();
    for (p, c) in &files {
        entries.push(Entry {
            path: RelPath::new(*p).unwrap(),
            kind: EntryKind::File { mode: 0o644, size: c.len() as u64, hash: BlobHash::of(c) },
        });
    }
    let meta = ReleaseMeta {
        format: FORMAT_VERSION,
        service: "shop".into(),
        version: Some(version.into()),
        git: None,
        components: vec![
            Component { kind: ComponentKind::Code, path: RelPath::new("app").unwrap(), environments: vec![] },
            Component {
                kind: ComponentKind::Config,
                path: RelPath::new("config").unwrap(),
                environments: vec!["staging".into()],
            },
        ],
    };
    let head = Head::new(Manifest::from_entries(entries).unwrap(), meta).unwrap();
    let opts = WriteOptions { level: 3, workers: 1 };
    let bytes = bundle::write(Vec::new(), &head, &opts, |e| Ok(&files[e.path.as_str()][..])).unwrap();
    fs::write(dir.join(format!("{}.tar.zst", head.id)), bytes).unwrap();
    head.id
}

/// The local transport, with the hosts in `stage` refusing to stage and
/// those in `activate` refusing to flip ("injected fault: … on …").
fn faulty(stage: &[&str], activate: &[&str]) -> Faults<Local> {
    let refuse = |hosts: &[&str], at: At| -> Vec<Fault> {
        hosts.iter().map(|h| Fault { host: (*h).to_owned(), at, then: Then::Refuse }).collect()
    };
    let mut faults = refuse(stage, At::BeforeStage);
    faults.extend(refuse(activate, At::BeforeActivate));
    Faults::new(Local, faults)
}

struct Fleet {
    _dir: tempfile::TempDir,
    stage: Stage,
    source: Bundles,
    v1: ReleaseId,
    v2: ReleaseId,
}

/// Four hosts, all on v1, and v2 in the source.
fn fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let bundles = dir.path().join("bundles");
    fs::create_dir(&bundles).unwrap();
    let (v1, v2) = (release(&bundles, "v1"), release(&bundles, "v2"));
    let hosts = (1..=4)
        .map(|i| HostSpec { name: format!("web{i}"), deploy_to: dir.path().join(format!("web{i}/srv/shop")) })
        .collect();
    let stage = Stage {
        options: StageOptions { env: Some("staging".into()), ..StageOptions::default() },
        max_parallel: 4,
        ..Stage::new("test", hosts)
    };
    let source = Bundles(bundles);
    let report = fleet::push(&stage, &Local, &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    Fleet { _dir: dir, stage, source, v1, v2 }
}

impl Fleet {
    fn currents(&self) -> Vec<Option<ReleaseId>> {
        self.stage.hosts.iter().map(|h| Host::new(&h.deploy_to).current().unwrap()).collect()
    }

    fn outcome(report: &fleet::Report, host: &str) -> (Outcome, HostStep) {
        let h = report.hosts.iter().find(|h| h.host == host).unwrap();
        (h.result, h.step)
    }
}

#[test]
fn a_good_push_flips_every_host_in_canary_then_halves() {
    let f = fleet();
    let report = fleet::push(&f.stage, &Local, &f.source, &f.v2, &Quiet);
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.batches, vec![vec!["web1"], vec!["web2"], vec!["web3", "web4"]]);
    assert_eq!(f.currents(), vec![Some(f.v2); 4]);
    for h in &f.stage.hosts {
        let settings = fs::read_to_string(h.deploy_to.join("current/config/active/settings.json")).unwrap();
        assert_eq!(settings, "{\"v\": \"v2\"}\n");
    }
}

#[test]
fn a_failing_canary_stops_the_push_before_any_other_host_flips() {
    let f = fleet();
    let faulty = faulty(&[], &["web1"]);
    let report = fleet::push(&f.stage, &faulty, &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    assert_eq!(Fleet::outcome(&report, "web1"), (Outcome::Failed, HostStep::Activate));
    let web1 = report.hosts.iter().find(|h| h.host == "web1").unwrap();
    assert!(web1.error.as_deref().unwrap().contains("injected fault: activate on web1"), "{web1:?}");
    for host in ["web2", "web3", "web4"] {
        assert_eq!(Fleet::outcome(&report, host).0, Outcome::Skipped, "{host}");
    }
    assert_eq!(f.currents(), vec![Some(f.v1); 4]);
}

#[test]
fn a_failure_in_the_last_batch_reverts_every_host_this_push_flipped() {
    let f = fleet();
    let faulty = faulty(&[], &["web3"]);
    let report = fleet::push(&f.stage, &faulty, &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    assert_eq!(Fleet::outcome(&report, "web1"), (Outcome::Reverted, HostStep::Revert));
    assert_eq!(Fleet::outcome(&report, "web2"), (Outcome::Reverted, HostStep::Revert));
    assert_eq!(Fleet::outcome(&report, "web3"), (Outcome::Failed, HostStep::Activate));
    // web4 flipped in the same batch as web3, and went back with the others.
    assert_eq!(Fleet::outcome(&report, "web4"), (Outcome::Reverted, HostStep::Revert));
    assert_eq!(f.currents(), vec![Some(f.v1); 4]);
    // The revert is a rollback in each host's journal.
    let journal = Host::new(&f.stage.hosts[0].deploy_to).journal().unwrap();
    let last = journal.last().unwrap();
    assert_eq!((last.from, last.to), (Some(f.v2), Some(f.v1)));
    // With why: the failure that stopped the push, as the report says it.
    let reason = last.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("web3 failed at activate: injected fault: activate on web3"), "{last:?}");
}

#[test]
fn a_host_whose_old_release_is_gone_says_it_could_not_go_back_and_where_it_stays() {
    let f = fleet();
    // web1's current v1 is removed by hand; v2 is pushed and fails in the
    // last batch, so web1 is to go back to a release it no longer has.
    let web1 = &f.stage.hosts[0].deploy_to;
    fs::remove_dir_all(web1.join(format!("releases/{}", f.v1))).unwrap();
    let report = fleet::push(&f.stage, &faulty(&[], &["web3"]), &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    let w1 = report.hosts.iter().find(|h| h.host == "web1").unwrap();
    assert_eq!(Fleet::outcome(&report, "web1"), (Outcome::Failed, HostStep::Revert), "{w1:?}");
    let error = report.hosts.iter().find(|h| h.host == "web1").unwrap().error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!("could not go back to {}: release {}", f.v1.short(12), f.v1))
            && error.ends_with(&format!("`current` stays on {}", f.v2.short(12))),
        "{error}"
    );
    assert_eq!(Host::new(web1).current().unwrap(), Some(f.v2), "web1 is where the report says");
    assert_eq!(Fleet::outcome(&report, "web2"), (Outcome::Reverted, HostStep::Revert));
}

#[test]
fn with_on_failure_stop_flipped_hosts_stay_where_they_are() {
    let mut f = fleet();
    f.stage.on_failure = OnFailure::Stop;
    let faulty = faulty(&[], &["web3", "web4"]);
    let report = fleet::push(&f.stage, &faulty, &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    assert_eq!(f.currents(), vec![Some(f.v2), Some(f.v2), Some(f.v1), Some(f.v1)]);
}

#[test]
fn a_delta_refused_by_its_host_is_replaced_by_the_bundle_but_a_broken_link_is_not() {
    let f = fleet();
    // web4 refuses the delta (as a host whose base file changed would): it
    // gets the whole bundle, which it refuses too (the fault stays).
    let report = fleet::push(&f.stage, &faulty(&["web4"], &[]), &f.source, &f.v2, &Quiet);
    let web4 = report.hosts.iter().find(|h| h.host == "web4").unwrap();
    assert!(web4.bytes > 0, "the delta was sent: {web4:?}");
    let sent = web4.bytes;
    // Its link breaks instead: no bundle goes after the delta.
    let broken = Faults::new(Local, vec![Fault { host: "web4".into(), at: At::AfterStage, then: Then::Break }]);
    let f = fleet();
    let report = fleet::push(&f.stage, &broken, &f.source, &f.v2, &Quiet);
    let web4 = report.hosts.iter().find(|h| h.host == "web4").unwrap();
    assert_eq!((web4.result, web4.step), (Outcome::Failed, HostStep::Stage), "{web4:?}");
    assert!(web4.error.as_deref().unwrap().contains("the link to web4 broke at stage"), "{web4:?}");
    assert!(web4.bytes < sent, "the bundle was not sent after the delta: {} vs {sent}", web4.bytes);
    assert_eq!(f.currents(), vec![Some(f.v1); 4]);
}

#[test]
fn a_host_that_cannot_stage_stops_the_push_before_anything_flips() {
    let f = fleet();
    let faulty = faulty(&["web4"], &[]);
    let report = fleet::push(&f.stage, &faulty, &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    assert_eq!(Fleet::outcome(&report, "web4"), (Outcome::Failed, HostStep::Stage));
    assert!(report.batches.is_empty(), "no batch started");
    assert_eq!(f.currents(), vec![Some(f.v1); 4]);
    // The others staged v2 and keep it for the next try, which ships nothing to them.
    assert!(Host::new(&f.stage.hosts[0].deploy_to).has(&f.v2));
    let report = fleet::push(&f.stage, &Local, &f.source, &f.v2, &Quiet);
    assert!(report.ok);
    let shipped: Vec<&str> = report.hosts.iter().map(|h| h.shipped.as_str()).collect();
    // web4 is on v1, which this source has no delta from: it asks for an
    // rsync delta (and this source answers with the whole bundle).
    assert_eq!(shipped, vec!["none", "none", "none", "rsync"]);
}

#[test]
fn a_fleet_rollback_needs_a_release_every_host_has() {
    let f = fleet();
    assert!(fleet::push(&f.stage, &Local, &f.source, &f.v2, &Quiet).ok);
    let report = fleet::rollback(&f.stage, &Local, None, &Quiet).unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(f.currents(), vec![Some(f.v1); 4]);

    // web4 is moved on alone to a v3 the others never had: no common release.
    let v3 = release(&f.source.0, "v3");
    let mut one = f.stage.clone();
    one.hosts.retain(|h| h.name == "web4");
    assert!(fleet::push(&one, &Local, &f.source, &v3, &Quiet).ok);
    let err = fleet::rollback(&f.stage, &Local, Some(&v3), &Quiet).unwrap_err().to_string();
    assert!(err.contains("not every host of test has release"), "{err}");
    assert!(err.contains("web1, web2, web3"), "{err}");
    assert_eq!(f.currents(), vec![Some(f.v1), Some(f.v1), Some(f.v1), Some(v3)], "nothing changed");
}

#[test]
fn a_second_push_is_refused_while_a_host_is_locked() {
    let f = fleet();
    let held = Host::new(&f.stage.hosts[2].deploy_to).lock("ferry push test (the first one)").unwrap();
    let report = fleet::push(&f.stage, &Local, &f.source, &f.v2, &Quiet);
    assert!(!report.ok);
    let web3 = report.hosts.iter().find(|h| h.host == "web3").unwrap();
    assert_eq!(web3.step, HostStep::Connect);
    let error = web3.error.as_deref().unwrap();
    assert!(error.contains("locked by `ferry push test (the first one)`"), "{error}");
    assert!(error.contains(&format!("pid {}", std::process::id())), "{error}");
    assert_eq!(f.currents(), vec![Some(f.v1); 4], "nothing flipped");
    drop(held);
    assert!(fleet::push(&f.stage, &Local, &f.source, &f.v2, &Quiet).ok, "the lock is gone with its holder");
}

/// Offers a delta for every base, and every one of them is damaged.
struct BadDeltas(Bundles);

impl ReleaseSource for BadDeltas {
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError> {
        self.0.bundle(id)
    }

    fn delta(&self, _: &ReleaseId, _: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        let path = self.0 .0.join("damaged.delta");
        fs::write(&path, b"FERRYDLT\x01\x00\x00\x00 and then nonsense").unwrap();
        Ok(Some(path))
    }

    fn rsync_delta(&self, _: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError> {
        self.0.bundle(target)
    }
}

#[test]
fn a_host_that_refuses_its_delta_gets_the_whole_bundle() {
    let f = fleet();
    let source = BadDeltas(Bundles(f.source.0.clone()));
    let report = fleet::push(&f.stage, &Local, &source, &f.v2, &Quiet);
    assert!(report.ok, "{report:#?}");
    for h in &report.hosts {
        assert_eq!(h.shipped, Shipped::Bundle, "{h:?}");
        let bundle = fs::metadata(f.source.0.join(format!("{}.tar.zst", f.v2))).unwrap().len();
        assert!(h.bytes > bundle, "the refused delta counts too: {h:?}");
    }
    assert_eq!(f.currents(), vec![Some(f.v2); 4]);
}
