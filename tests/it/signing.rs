//! Signed releases (`ferry keygen`, `ferry sign`, `trusted_keys`): a host
//! with pinned keys refuses an unsigned, wrongly signed, tampered, expired
//! or downgraded release with the reason, before it writes anything; keys
//! rotate by listing the new beside the old; a rollback to a kept signed
//! release is allowed and journaled with its key.
//!
//! Local stage hosts (directories, `ferry push` over the local transport):
//! the check is the host side's (`Host::stage`), the same code the agent
//! runs over SSH, and what a refusal leaves is read straight from the
//! directory. `ferry host stage --signature` is the host's own command.
//! Over SSH to real test hosts, `signatures_and_pins_cross_the_agents_wire`
//! checks the agent protocol carries the signature and the pins.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kit::{build, current, journal, leftovers, local_stage, read, release_names, tempdir, Project};

/// A key pair made by `ferry keygen --no-password`: its directory and public key.
fn keygen(dir: &Path) -> (PathBuf, String) {
    let r = crate::kit::run(crate::kit::ferry_cmd().args(["keygen", "--no-password", "--out"]).arg(dir)).ok();
    let public = r.stdout.trim().to_owned();
    assert!(public.starts_with("RW"), "{public}");
    assert!(r.stderr.contains("trusted_keys = ["), "{}", r.stderr);
    (dir.join("ferry.key"), public)
}

fn sign(p: &Project, id: &str, key: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["sign", id, "--json", "--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    p.ferry(args).ok().json()
}

fn project(keys: &[&str]) -> Project {
    let list: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    local_stage(&["web1"], &format!("# keys\ntrusted_keys = [{}]\n", list.join(", ")))
}

fn set_keys(p: &Project, keys: &[&str]) {
    let toml = read(p.path("ferry.toml"));
    let start = toml.find("# keys\n").unwrap() + "# keys\n".len();
    let end = start + toml[start..].find('\n').unwrap();
    let list: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let line = if keys.is_empty() { String::new() } else { format!("trusted_keys = [{}]", list.join(", ")) };
    p.write("ferry.toml", format!("{}{line}{}", &toml[..start], &toml[end..]));
}

/// Everything a refused push could have changed on the host.
#[derive(Debug, PartialEq)]
struct HostState {
    releases: Vec<String>,
    leftovers: Vec<String>,
    current: Option<String>,
    journal: Vec<Value>,
    serial: String,
}

fn state(dir: &Path) -> HostState {
    HostState {
        releases: release_names(dir),
        leftovers: leftovers(dir),
        current: current(dir),
        journal: journal(dir),
        serial: read(dir.join(".ferry/serial")),
    }
}

/// Pushes `id` and expects the host to refuse it, saying `reason`, with
/// nothing on the host changed.
#[track_caller]
fn refused(p: &Project, host: &Path, id: &str, reason: &str) {
    let before = state(host);
    let err = p.ferry(["push", "web", id]).fails(2);
    assert!(err.contains("refused before anything was written") && err.contains(reason), "wanted {reason:?}:\n{err}");
    assert_eq!(state(host), before, "a refused release changed the host");
}

#[test]
fn a_host_with_pinned_keys_refuses_unsigned_wrong_key_tampered_expired_and_downgraded_releases_before_writing() {
    let keys = tempdir();
    let (key_a, pub_a) = keygen(&keys.path().join("a"));
    let (key_b, _) = keygen(&keys.path().join("b"));
    let p = project(&[&pub_a]);
    let host = p.path("fleet/web1/srv/shop");
    let v1 = build(&p, "v1");
    let signed_v1 = sign(&p, &v1, &key_a, &[]);
    let key_id = signed_v1["key_id"].as_str().unwrap().to_owned();
    let out = p.ferry(["push", "web", &v1]).ok();
    assert!(out.stderr.contains(&format!("pinned keys {key_id}")), "{}", out.stderr);
    assert_eq!(current(&host).as_deref(), Some(v1.as_str()));
    assert_eq!(read(host.join(".ferry/trusted_keys")).lines().last(), Some(pub_a.as_str()));
    let last = journal(&host).pop().unwrap();
    assert_eq!((last["action"].as_str(), last["key"].as_str()), (Some("deploy"), Some(key_id.as_str())), "{last}");
    assert_eq!(last["serial"], signed_v1["serial"]);
    let inspect = p.ferry(["inspect", &v1]).ok().stdout;
    assert!(inspect.contains(&format!("signed    key {key_id}, serial ")), "{inspect}");

    let v2 = build(&p, "v2");
    assert!(p.ferry(["inspect", &v2]).ok().stdout.contains("signed    no (unsigned)"));
    // Unsigned, and the controller no longer even lists keys: the host's
    // own pins decide.
    set_keys(&p, &[]);
    refused(&p, &host, &v2, "it is not signed");
    set_keys(&p, &[&pub_a]);
    // With the keys listed, the controller says so before it ships a byte.
    let err = p.ferry(["push", "web", &v2]).fails(2);
    assert!(err.contains("is not signed, and stage web's hosts take only signed releases"), "{err}");

    // Signed by a key the host does not trust.
    let by_b = sign(&p, &v2, &key_b, &[]);
    refused(&p, &host, &v2, &format!("signed by key {}, which is not trusted here", by_b["key_id"].as_str().unwrap()));

    // Tampered: the statement's serial raised after signing.
    let good = sign(&p, &v2, &key_a, &[]);
    let sig_path = PathBuf::from(good["signature"].as_str().unwrap());
    let text = read(&sig_path);
    let serial = good["serial"].as_u64().unwrap();
    fs_err::write(&sig_path, text.replace(&format!("serial={serial}"), &format!("serial={}", serial + 1000))).unwrap();
    refused(&p, &host, &v2, "bad signature");
    // Tampered: another release's (valid) signature beside this bundle.
    fs_err::write(&sig_path, read(PathBuf::from(signed_v1["signature"].as_str().unwrap()))).unwrap();
    refused(&p, &host, &v2, &format!("the signature is for release {v1}, not this one"));

    // Expired.
    sign(&p, &v2, &key_a, &["--expires", "0s"]);
    refused(&p, &host, &v2, "the signature expired at");

    // Downgraded: a serial below the one v1 came with.
    sign(&p, &v2, &key_a, &["--serial", "5"]);
    refused(&p, &host, &v2, &format!("downgrade: serial 5 is not above {}", signed_v1["serial"]));
    // … or the same serial as v1's, for another release.
    sign(&p, &v2, &key_a, &["--serial", &signed_v1["serial"].to_string()]);
    refused(&p, &host, &v2, &format!("downgrade: serial {0} is not above {0}", signed_v1["serial"]));

    // Signed properly, it goes.
    let ok = sign(&p, &v2, &key_a, &["--serial", &(signed_v1["serial"].as_u64().unwrap() + 1).to_string()]);
    p.ferry(["push", "web", &v2]).ok();
    assert_eq!(current(&host).as_deref(), Some(v2.as_str()));
    assert_eq!(read(host.join(".ferry/serial")).trim(), format!("{} {v2}", ok["serial"]));
    assert!(leftovers(&host).is_empty());
    let status = p.ferry(["status", "web"]).ok().stdout;
    assert!(status.contains(&format!("trusts keys {key_id}; current signed by {key_id}")), "{status}");
    let json = p.ferry(["status", "web", "--json"]).ok().json();
    assert_eq!(json["hosts"][0]["status"]["trusted_keys"], serde_json::json!([key_id]), "{json}");
}

#[test]
fn keys_rotate_by_listing_the_new_beside_the_old_then_dropping_the_old() {
    let keys = tempdir();
    let (key_old, pub_old) = keygen(&keys.path().join("old"));
    let (key_new, pub_new) = keygen(&keys.path().join("new"));
    let p = project(&[&pub_old]);
    let host = p.path("fleet/web1/srv/shop");
    let v1 = build(&p, "v1");
    sign(&p, &v1, &key_old, &["--serial", "1"]);
    p.ferry(["push", "web", &v1]).ok();

    // Not yet pinned: a push never changes the keys a host has.
    let v2 = build(&p, "v2");
    let by_new = sign(&p, &v2, &key_new, &["--serial", "2"]);
    set_keys(&p, &[&pub_old, &pub_new]);
    refused(&p, &host, &v2, "which is not trusted here");
    let setup = p.ferry(["setup", "web"]).ok();
    assert!(setup.stdout.contains("pinned keys") || setup.stderr.contains("pinned keys"), "{setup:?}");
    p.ferry(["push", "web", &v2]).ok();
    assert_eq!(journal(&host).pop().unwrap()["key"], by_new["key_id"]);

    // The old key dropped: what it signs is refused.
    set_keys(&p, &[&pub_new]);
    p.ferry(["setup", "web"]).ok();
    let v3 = build(&p, "v3");
    let by_old = sign(&p, &v3, &key_old, &["--serial", "3"]);
    refused(&p, &host, &v3, &format!("signed by key {}", by_old["key_id"].as_str().unwrap()));
    assert_eq!(
        read(host.join(".ferry/trusted_keys")).lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
        [pub_new.as_str()]
    );
}

#[test]
fn a_rollback_or_a_push_to_a_kept_signed_release_is_allowed_and_journaled_with_its_key() {
    let keys = tempdir();
    let (key, public) = keygen(&keys.path().join("k"));
    let p = project(&[&public]);
    let host = p.path("fleet/web1/srv/shop");
    let v1 = build(&p, "v1");
    let s1 = sign(&p, &v1, &key, &["--serial", "10"]);
    p.ferry(["push", "web", &v1]).ok();
    let v2 = build(&p, "v2");
    sign(&p, &v2, &key, &["--serial", "11"]);
    p.ferry(["push", "web", &v2]).ok();

    p.ferry(["rollback", "web"]).ok();
    assert_eq!(current(&host).as_deref(), Some(v1.as_str()));
    let last = journal(&host).pop().unwrap();
    assert_eq!(last["action"], "rollback", "{last}");
    assert_eq!((&last["key"], &last["serial"]), (&s1["key_id"], &Value::from(10)), "{last}");

    // v2 again, then v1 by push: kept, so its lower serial is no downgrade.
    p.ferry(["push", "web", &v2]).ok();
    p.ferry(["push", "web", &v1]).ok();
    assert_eq!(current(&host).as_deref(), Some(v1.as_str()));
    let last = journal(&host).pop().unwrap();
    assert_eq!((last["action"].as_str(), last["serial"].as_u64()), (Some("deploy"), Some(10)), "{last}");
}

#[test]
fn a_swapped_bundle_is_refused_on_the_host_itself() {
    // `ferry host stage` as the agent runs it: the signature of v1 beside
    // v2's bundle (a bundle swapped in the store or in transit).
    let keys = tempdir();
    let (key, public) = keygen(&keys.path().join("k"));
    let p = project(&[&public]);
    let v1 = build(&p, "v1");
    let v2 = build(&p, "v2");
    let s1 = sign(&p, &v1, &key, &[]);
    let dir = tempdir();
    let host = dir.path().join("srv/shop");
    fs_err::create_dir_all(host.join(".ferry")).unwrap();
    fs_err::write(host.join(".ferry/trusted_keys"), format!("{public}\n")).unwrap();
    let bundle = crate::kit::bundle(&p, &v2);
    let r =
        crate::kit::host(&host, &["stage", bundle.to_str().unwrap(), "--signature", s1["signature"].as_str().unwrap()]);
    let err = r.fails(2);
    assert!(err.contains(&format!("the signature is for release {v1}, not this one")), "{err}");
    assert!(release_names(&host).is_empty(), "{:?}", release_names(&host));
    let ok = crate::kit::host(
        &host,
        &["stage", crate::kit::bundle(&p, &v1).to_str().unwrap(), "--signature", s1["signature"].as_str().unwrap()],
    );
    ok.ok();
    assert!(host.join(format!("releases/{v1}/.ferry/signature.minisig")).exists());
}

#[test]
fn signatures_and_pins_cross_the_agents_wire() {
    use ferry_builder::Store;
    use ferry_switcher::fleet::{self, AgentBinary, HostSpec, Quiet, Ssh};

    let hosts = crate::testhosts::TestHosts::start(2);
    let keys = tempdir();
    let (key, public) = keygen(&keys.path().join("k"));
    let p = crate::kit::sample_project();
    let source = crate::source::Source(Store::new(p.store.path()));
    let ssh = Ssh {
        known_hosts: hosts.known_hosts.clone(),
        accept_new: false,
        identity: Some(hosts.key.clone()),
        user: Some("root".into()),
        ferry: AgentBinary::OnHost(crate::kit::ferry_bin().into()),
        connect_timeout: std::time::Duration::from_secs(5),
        step_timeout: std::time::Duration::from_secs(60),
        ssh_config: None,
    };
    let specs =
        hosts.hosts.iter().map(|h| HostSpec { name: format!("root@{}", h.addr), deploy_to: "/srv/shop".into() });
    let mut stage = crate::kit::stage("ssh", specs.collect());
    stage.trusted_keys = vec![public.clone()];
    let v1 = crate::kit::build_id(&p, "v1");

    // Unsigned: the first push pins the key, then every host refuses.
    let report = fleet::push(&stage, &ssh, &source, &v1, &Quiet);
    assert!(!report.ok, "{report:#?}");
    for (h, r) in hosts.hosts.iter().zip(&report.hosts) {
        let err = r.error.as_deref().unwrap_or_default();
        assert!(err.contains("refused before anything was written: it is not signed"), "{err}");
        assert_eq!(read(h.srv.join("shop/.ferry/trusted_keys")).lines().last(), Some(public.as_str()));
        assert!(release_names(&h.srv.join("shop")).is_empty(), "{:?}", release_names(&h.srv.join("shop")));
        assert!(!h.srv.join("shop/current").exists());
    }

    let signed = sign(&p, &v1.to_string(), &key, &["--serial", "20"]);
    let report = fleet::push(&stage, &ssh, &source, &v1, &Quiet);
    assert!(report.ok, "{report:#?}");
    for h in &hosts.hosts {
        let last = journal(&h.srv.join("shop")).pop().unwrap();
        assert_eq!((&last["key"], &last["serial"]), (&signed["key_id"], &Value::from(20)), "{last}");
    }

    // A downgrade, refused over the wire too; the stage's keys dropped from
    // the controller change nothing.
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = crate::kit::build_id(&p, "v2");
    sign(&p, &v2.to_string(), &key, &["--serial", "19"]);
    stage.trusted_keys.clear();
    let report = fleet::push(&stage, &ssh, &source, &v2, &Quiet);
    for (h, r) in hosts.hosts.iter().zip(&report.hosts) {
        let err = r.error.as_deref().unwrap_or_default();
        assert!(err.contains("downgrade: serial 19 is not above 20"), "{err}");
        assert_eq!(current(&h.srv.join("shop")), Some(v1.to_string()));
        assert!(leftovers(&h.srv.join("shop")).is_empty());
    }
}

#[test]
fn a_trusted_key_that_is_not_one_is_refused_at_its_place_in_ferry_toml() {
    let p = project(&["RWQnot-a-key"]);
    let line = read(p.path("ferry.toml")).lines().position(|l| l.starts_with("trusted_keys")).unwrap() + 1;
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(
        err.contains(&format!("ferry.toml:{line}:17: stage web: trusted_keys: not a minisign public key")),
        "{err}"
    );
    let keys = tempdir();
    let (_, public) = keygen(keys.path());
    let p = project(&[&public, &public]);
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("trusted_keys lists key") && err.contains("twice"), "{err}");
}

#[test]
fn build_sign_signs_what_it_built_and_inspect_says_by_which_key() {
    let keys = tempdir();
    let (key, public) = keygen(keys.path());
    let p = project(&[&public]);
    let built = p.ferry(["build", "--quiet", "--version", "v1", "--sign", "--key", key.to_str().unwrap()]).ok();
    let id = built.stdout.trim();
    let inspect = p.ferry(["inspect", id, "--json"]).ok().json();
    let key_id = inspect["signature"]["key_id"].as_str().unwrap().to_owned();
    assert_eq!(key_id.len(), 16, "{inspect}");
    assert!(inspect["signature"]["serial"].as_u64().unwrap() > 1_700_000_000, "the time of signing: {inspect}");
    assert!(p.store.path().join(format!("signatures/{id}.minisig")).exists());
    // The key from FERRY_SIGNING_KEY, as CI passes it.
    p.write("app/main.py", "print('v2')\n");
    let r = crate::kit::run(
        crate::kit::ferry_cmd()
            .args(["build", "--quiet", "--version", "v2", "--sign", "--store"])
            .arg(p.store.path())
            .arg("-c")
            .arg(p.path("ferry.toml"))
            .env("FERRY_SIGNING_KEY", &key),
    )
    .ok();
    p.ferry(["push", "web", r.stdout.trim()]).ok();
    assert_eq!(journal(&p.path("fleet/web1/srv/shop")).pop().unwrap()["key"], Value::from(key_id));
}
