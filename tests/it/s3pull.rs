//! Hosts pull (`fetch = "store"`): on real test hosts, each host gets a
//! presigned URL and the payload's hash over its session and downloads the
//! delta (or bundle) from a real S3 server on the hosts' bridge; the
//! controller sends none of the payload's bytes. Faults: an object that is
//! not what its key says, a store the hosts cannot reach, a store that goes
//! down mid-push, an expired URL. Each asserts every host's end state.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fs_err as fs;

use crate::kit::{current, ferry_bin, ferry_cmd, leftovers, release_names, run, sample_project, tempdir, Project, Run};
use crate::s3kit::S3Server;
use crate::testhosts::TestHosts;

/// The sample project with an ssh stage `prod` over `hosts` that fetches
/// from `s3` (under prefix `shop`).
fn pull_project(hosts: &TestHosts, s3: &S3Server, extra: &str) -> Project {
    pull_project_via(hosts, &s3.store_section("shop"), extra)
}

/// [`pull_project`] with its own `[store]` section.
fn pull_project_via(hosts: &TestHosts, section: &str, extra: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let stage = hosts.ssh_stage(
        "prod",
        &format!("env = \"staging\"\nagent = \"{}\"\nfetch = \"store\"\nmax_parallel = 8\n{extra}", ferry_bin()),
    );
    p.write("ferry.toml", format!("{toml}\n{section}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n{stage}"));
    p
}

fn ferry_s3(p: &Project, s3: &S3Server, args: &[&str]) -> Run {
    run(ferry_cmd().args(args).arg("--store").arg(p.store.path()).arg("-c").arg(p.path("ferry.toml")).envs(s3.env()))
}

fn build(p: &Project, s3: &S3Server, version: &str) -> String {
    ferry_s3(p, s3, &["build", "--quiet", "--version", version]).ok().stdout.trim().to_owned()
}

fn rows(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["hosts"].as_array().unwrap().clone()
}

/// Every host runs `cur`, keeps exactly `kept`, and has nothing half-made:
/// no staging directory, no temporary file, no download left in `.ferry/`.
pub(crate) fn end_state(hosts: &TestHosts, cur: &str, kept: &[&str]) {
    let mut kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
    kept.sort();
    for h in &hosts.hosts {
        let dir = h.srv.join("shop");
        assert_eq!(current(&dir).as_deref(), Some(cur), "{}", h.name);
        assert_eq!(release_names(&dir), kept, "{}", h.name);
        assert_eq!(leftovers(&dir), Vec::<String>::new(), "{}", h.name);
        let fetches: Vec<String> = fs::read_dir(dir.join(".ferry"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".fetch-"))
            .collect();
        assert!(fetches.is_empty(), "{}: {fetches:?}", h.name);
    }
}

fn delta_len(p: &Project, from: &str, to: &str) -> u64 {
    fs::metadata(p.store.path().join(format!("deltas/{from}..{to}"))).unwrap().len()
}

#[test]
fn twenty_hosts_pull_bundle_then_delta_from_the_store_and_the_controller_ships_none_of_their_bytes() {
    let _one = crate::kit::one_at_a_time();
    let hosts = TestHosts::start(20);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let p = pull_project(&hosts, &s3, "");
    let v1 = build(&p, &s3, "v1");
    let first = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let bundle = fs::metadata(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap().len();
    for h in rows(&first) {
        assert_eq!(h["shipped"], "bundle", "{h}");
        assert_eq!(h["bytes"], 0, "the controller pushed bytes: {h}");
        assert_eq!(h["fetched"], bundle, "{h}");
    }
    end_state(&hosts, &v1, &[&v1]);

    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, &s3, "v2");
    let second = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let delta = delta_len(&p, &v1, &v2);
    let mut sent = 0;
    for h in rows(&second) {
        assert_eq!(h["result"], "ok", "{h}");
        assert_eq!(h["shipped"], "delta", "{h}");
        assert_eq!(h["fetched"], delta, "{h}");
        sent += h["bytes"].as_u64().unwrap();
    }
    assert_eq!(sent, 0, "payload bytes the controller sent the hosts");
    end_state(&hosts, &v2, &[&v1, &v2]);
    // The delta went to the store once, for all 20 hosts; its bytes are the
    // local store's.
    let deltas: Vec<String> = s3.keys().into_iter().filter(|k| k.starts_with("shop/deltas/")).collect();
    assert_eq!(deltas, [format!("shop/deltas/{v1}..{v2}")]);
    assert_eq!(
        fs::read(s3.object_path(&deltas[0])).unwrap(),
        fs::read(p.store.path().join(format!("deltas/{v1}..{v2}"))).unwrap()
    );
    // What the controller sends each host instead of the bytes: one request
    // line with the URL, hash and length, well under 1 KiB.
    let r = {
        for (k, v) in s3.env() {
            std::env::set_var(k, v);
        }
        let spec = ferry_builder::remote::RemoteSpec {
            bucket: s3.bucket.clone(),
            prefix: "shop".into(),
            endpoint: Some(s3.endpoint.clone()),
            region: Some(crate::s3kit::REGION.into()),
            path_style: true,
            profile: None,
            ca_file: None,
        };
        ferry_builder::remote::Remote::open(&spec).unwrap()
    };
    let url = r.presign_get(&format!("deltas/{v1}..{v2}"), Duration::from_secs(900)).unwrap();
    let request = serde_json::to_string(&ferry_switcher::host::serve::Request::Fetch {
        url,
        blake3: blake3::hash(b"x").to_hex().to_string(),
        len: delta,
        options: ferry_switcher::host::StageOptions { env: Some("staging".into()), ..Default::default() },
        signature: None,
    })
    .unwrap();
    assert!(request.len() < 1024, "{} bytes of control: {request}", request.len());
    eprintln!(
        "pull, 20 hosts: controller sent 0 payload bytes to hosts and {delta} bytes (one delta) to the store; \
         hosts fetched {} bytes; control request {} bytes per host",
        delta * 20,
        request.len()
    );
}

#[test]
fn an_object_that_is_not_what_its_key_says_is_refused_by_every_host_and_they_get_the_bytes_pushed() {
    let hosts = TestHosts::start(3);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let p = pull_project(&hosts, &s3, "");
    let v1 = build(&p, &s3, "v1");
    ferry_s3(&p, &s3, &["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, &s3, "v2");
    // The first host pulls the delta; then the object under its key is
    // replaced by other bytes of the same length.
    let first = format!("root@{}", hosts.hosts[0].addr);
    ferry_s3(&p, &s3, &["push", "prod", "--hosts", &first]).ok();
    let key = format!("shop/deltas/{v1}..{v2}");
    let len = fs::metadata(s3.object_path(&key)).unwrap().len() as usize;
    fs::write(s3.object_path(&key), vec![b'x'; len]).unwrap();

    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    for h in rows(&report).iter().filter(|h| h["host"] != first.as_str()) {
        let notes = h["notes"].to_string();
        assert!(notes.contains("hash mismatch"), "{h}");
        assert!(notes.contains("refused, nothing applied"), "{h}");
        assert!(notes.contains("pushed the delta instead"), "{h}");
        assert_eq!(h["bytes"], len as u64, "the controller pushed the delta: {h}");
        assert!(h.get("fetched").is_none(), "{h}");
    }
    end_state(&hosts, &v2, &[&v1, &v2]);
    for i in 0..3 {
        let out = hosts.ssh(i, &format!("{} host --deploy-to /srv/shop verify", ferry_bin()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn hosts_that_cannot_reach_the_store_are_pushed_the_bytes_each_saying_why() {
    let hosts = TestHosts::start(3);
    // On loopback: the controller reaches it, the hosts do not.
    let s3 = S3Server::start();
    let p = pull_project(&hosts, &s3, "");
    let v1 = build(&p, &s3, "v1");
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let bundle = fs::metadata(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap().len();
    for h in rows(&report) {
        let notes = h["notes"].to_string();
        assert!(notes.contains("the store is unreachable"), "{h}");
        assert!(!notes.contains("X-Amz-Signature"), "the report shows the signed URL: {h}");
        assert!(notes.contains("pushed the bundle instead"), "{h}");
        assert_eq!(h["bytes"], bundle, "{h}");
    }
    end_state(&hosts, &v1, &[&v1]);
}

#[test]
fn a_store_that_goes_down_mid_push_leaves_every_host_pushed_the_bytes_and_flipped() {
    let hosts = TestHosts::start(3);
    let mut s3 = S3Server::start_on(hosts.gateway.into());
    let p = pull_project(&hosts, &s3, "");
    let v1 = build(&p, &s3, "v1");
    ferry_s3(&p, &s3, &["push", "prod"]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, &s3, "v2");
    // The store dies the moment the delta lands in it: the controller's
    // put, or the hosts' downloads, find it gone.
    let key = s3.object_path(&format!("shop/deltas/{v1}..{v2}"));
    let mut push = ferry_cmd();
    push.args(["push", "prod", "--json", "--store"])
        .arg(p.store.path())
        .arg("-c")
        .arg(p.path("ferry.toml"))
        .envs(s3.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = push.spawn().unwrap();
    let start = std::time::Instant::now();
    while !key.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    s3.stop();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delta = delta_len(&p, &v1, &v2);
    for h in rows(&report) {
        let notes = h["notes"].to_string();
        assert!(notes.contains("pushed the delta instead"), "{h}");
        assert_eq!(h["bytes"], delta, "{h}");
    }
    end_state(&hosts, &v2, &[&v1, &v2]);
}

/// `ferry host serve` on a directory, fed `requests`; its reply lines.
fn serve(dir: &Path, requests: &[String], env: &[(&str, String)]) -> Vec<serde_json::Value> {
    let mut child = Command::new(ferry_bin())
        .args(["host", "--deploy-to"])
        .arg(dir)
        .args(["serve", "--lock", "test"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        writeln!(stdin, "{r}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn an_expired_url_is_refused_by_the_store_and_nothing_is_staged() {
    let s3 = S3Server::start();
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}\n{}", s3.store_section("shop")));
    let v1 = ferry_s3(&p, &s3, &["build", "--quiet", "--publish"]).ok().stdout.trim().to_owned();
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let spec = ferry_builder::remote::RemoteSpec {
        bucket: s3.bucket.clone(),
        prefix: "shop".into(),
        endpoint: Some(s3.endpoint.clone()),
        region: Some(crate::s3kit::REGION.into()),
        path_style: true,
        profile: None,
        ca_file: None,
    };
    let r = ferry_builder::remote::Remote::open(&spec).unwrap();
    let key = format!("bundles/{v1}.tar.zst");
    let bytes = fs::read(p.store.path().join(&key)).unwrap();
    let request = |url: String| {
        serde_json::to_string(&ferry_switcher::host::serve::Request::Fetch {
            url,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            len: bytes.len() as u64,
            options: ferry_switcher::host::StageOptions { env: Some("staging".into()), ..Default::default() },
            signature: None,
        })
        .unwrap()
    };
    let expired = r.presign_get(&key, Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let host = tempdir();
    let replies = serve(host.path(), &[request(expired)], &[]);
    assert_eq!(replies[1]["ok"], false, "{replies:?}");
    let error = replies[1]["error"].as_str().unwrap();
    assert!(error.contains("the store answered 403"), "{error}");
    assert!(error.contains("expired"), "{error}");
    assert_eq!(release_names(host.path()), Vec::<String>::new());
    assert_eq!(leftovers(host.path()), Vec::<String>::new());
    // A fresh URL for the same object: staged.
    let replies = serve(host.path(), &[request(r.presign_get(&key, Duration::from_secs(60)).unwrap())], &[]);
    assert_eq!(replies[1]["ok"], true, "{replies:?}");
    assert_eq!(release_names(host.path()), [v1]);
}

#[test]
fn a_download_cut_short_is_tried_again_and_one_cut_short_every_time_is_pushed_instead() {
    let hosts = TestHosts::start(2);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let proxy = crate::s3kit::CuttingProxy::start(hosts.gateway.into(), &s3, 1, 100);
    let p = pull_project_via(&hosts, &s3.store_section_via("shop", &proxy.endpoint), "");
    let v1 = build(&p, &s3, "v1");
    // One download cut short: that host tries again, and fetches it whole.
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let bundle = fs::metadata(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap().len();
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 1);
    for h in rows(&report) {
        assert_eq!(h["bytes"], 0, "{h}");
        assert_eq!(h["fetched"], bundle, "{h}");
    }
    end_state(&hosts, &v1, &[&v1]);

    // Every attempt cut short (two hosts, three attempts each): pushed.
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, &s3, "v2");
    proxy.cut_next(6);
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 7);
    let delta = delta_len(&p, &v1, &v2);
    for h in rows(&report) {
        let notes = h["notes"].to_string();
        assert!(notes.contains("the download"), "{h}");
        assert!(notes.contains(&format!("of {delta} bytes")), "{h}");
        assert!(notes.contains("pushed the delta instead"), "{h}");
        assert_eq!(h["bytes"], delta, "{h}");
    }
    end_state(&hosts, &v2, &[&v1, &v2]);

    // Downloads whole again; the push's last line says where the bytes came from.
    p.write("app/extra.py", "X = 2\n");
    let v3 = build(&p, &s3, "v3");
    let said = ferry_s3(&p, &s3, &["push", "prod"]).ok().stderr;
    assert!(said.contains("; shipped 0 B from here, and the hosts fetched "), "{said}");
    assert!(said.trim_end().ends_with("from the store"), "{said}");
    end_state(&hosts, &v3, &[&v1, &v2, &v3]);
}

#[test]
fn hosts_with_pinned_keys_check_the_signature_of_what_they_fetch_as_of_what_is_pushed() {
    let hosts = TestHosts::start(2);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let keys = tempdir();
    let made = run(ferry_cmd().args(["keygen", "--no-password", "--out"]).arg(keys.path())).ok();
    let public = made.stdout.trim().to_owned();
    let p = pull_project(&hosts, &s3, &format!("trusted_keys = [\"{public}\"]\n"));
    let v1 = build(&p, &s3, "v1");
    // Unsigned: refused by every host, fetched or pushed; nothing written.
    let out = ferry_s3(&p, &s3, &["push", "prod", "--json"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    for h in rows(&out.json()) {
        assert!(h["notes"].to_string().contains("it is not signed"), "{h}");
        assert!(h["error"].as_str().unwrap_or_default().contains("it is not signed"), "{h}");
    }
    for h in &hosts.hosts {
        assert!(release_names(&h.srv.join("shop")).is_empty(), "{}", h.name);
        assert_eq!(leftovers(&h.srv.join("shop")), Vec::<String>::new());
    }
    // Signed: fetched, checked, staged and flipped; the journal names the key.
    let key = keys.path().join("ferry.key");
    let signed = ferry_s3(&p, &s3, &["sign", &v1, "--json", "--key", key.to_str().unwrap()]).ok().json();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    for h in rows(&report) {
        assert_eq!(h["bytes"], 0, "{h}");
        assert!(h["fetched"].as_u64().unwrap() > 0, "{h}");
    }
    end_state(&hosts, &v1, &[&v1]);
    for h in &hosts.hosts {
        let last = crate::kit::journal(&h.srv.join("shop")).pop().unwrap();
        assert_eq!(last["key"], signed["key_id"], "{last}");
    }
}
