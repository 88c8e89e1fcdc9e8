//! The local fleet (`ferry push`, `rollback`, `status`, `history` over a
//! `transport = "local"` stage), end to end: batches, locks, a host that
//! cannot stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fs_err as fs;
use serde_json::Value;

use crate::kit::{
    build, bundle, current, example_project, host, host_cmd, leftovers, noise, read, release_names, sample_project, sh,
    tempdir, Project, StopSupervisors, Tmpfs,
};

/// The sample project with a local stage of two hosts under fleet/.
fn sample_with_stage() -> Project {
    let p = sample_project();
    let toml = read(p.path("ferry.toml"));
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.local]\ntransport = \"local\"\nhosts = [\"fleet/web1\", \"fleet/web2\"]\nenv = \"staging\"\n"
        ),
    );
    p
}

// ---------------------------------------------------------------------------
// Locks

#[test]
fn a_push_to_a_locked_host_fails_naming_the_holder_and_changes_nothing() {
    let p = sample_with_stage();
    let v1 = build(&p, "v1");
    let web1 = p.path("fleet/web1/srv/shop");
    let web2 = p.path("fleet/web2/srv/shop");
    // A real ferry holds web2's lock: it takes it before reading its input,
    // and the input never comes while the pipe is open.
    let mut holder = host_cmd(&web2)
        .args(["stage", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = holder.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let st = host(&web2, &["status", "--json"]).ok().json();
        if !st["lock"].is_null() {
            break st;
        }
        assert!(Instant::now() < deadline, "the holder never took the lock: {st}");
        assert!(holder.try_wait().unwrap().is_none(), "the holder exited");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status["lock"]["command"], "ferry host stage", "{status}");
    assert_eq!(status["lock"]["pid"], pid, "{status}");
    let human = host(&web2, &["status"]).ok().stdout;
    assert!(human.contains("lock       `ferry host stage` (") && human.contains(&format!("pid {pid})")), "{human}");

    let r = p.ferry(["push", "local", &v1, "--json"]);
    assert_eq!(r.code, 2, "{r:?}");
    let report = r.json();
    assert_eq!(report["ok"], false);
    let hosts = report["hosts"].as_array().unwrap();
    let w2 =
        hosts.iter().find(|h| h["host"] == "fleet/web2" || h["host"] == "web2").unwrap_or_else(|| panic!("{report}"));
    let err = w2["error"].as_str().unwrap_or_default();
    assert!(err.contains("is locked by `ferry host stage`") && err.contains(&format!("pid {pid})")), "{report}");
    assert_eq!(w2["step"], "connect", "{report}");
    let w1 = hosts.iter().find(|h| h != &w2).unwrap();
    assert_eq!(w1["result"], "skipped", "{report}");
    // Without --json, the same on stderr.
    let err = p.ferry(["push", "local", &v1]).fails(2);
    assert!(err.contains("connect failed") && err.contains(&format!("pid {pid})")), "{err}");
    // The stage's status shows the holder meanwhile.
    let st = p.ferry(["status", "local", "--json"]).ok().json();
    let locks: Vec<&Value> = st["hosts"].as_array().unwrap().iter().map(|h| &h["status"]["lock"]).collect();
    assert!(locks[0].is_null() && locks[1]["pid"] == pid, "{st}");
    // Nothing was staged anywhere.
    for d in [&web1, &web2] {
        assert_eq!(release_names(d), Vec::<String>::new(), "{}", d.display());
        assert_eq!(current(d), None);
    }

    // The holder's input ends (empty): it fails and lets go; the push goes through.
    drop(holder.stdin.take());
    let out = holder.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the input is empty"));
    assert!(host(&web2, &["status", "--json"]).ok().json()["lock"].is_null());
    let report = p.ferry(["push", "local", &v1, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    for d in [&web1, &web2] {
        assert_eq!(current(d).as_deref(), Some(v1.as_str()));
    }
}

// ---------------------------------------------------------------------------
// Batches, a bundle then a delta, rollback

#[test]
fn push_to_a_local_fleet_ships_a_bundle_then_a_delta_in_batches_and_rolls_back() {
    let p = example_project();
    // The example runs under a supervisord per host, on this machine: on
    // ports of this test's own (not the quickstart's 8101-8104).
    let ports = crate::kit::local_ports(4);
    let toml = read(p.path("ferry.toml"));
    let toml = (1..=4).fold(toml, |t, n| t.replace(&format!("810{n}"), &ports[n - 1].to_string()));
    p.write("ferry.toml", toml);
    let _stop = StopSupervisors(p.path("fleet"));
    let v1 = build(&p, "v1");
    let report = p.ferry(["push", "local", &v1, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    let bundle_bytes = fs::metadata(bundle(&p, &v1)).unwrap().len();
    let names = ["web1", "web2", "web3", "web4"];
    let hosts = |report: &Value| -> Vec<Value> { report["hosts"].as_array().unwrap().clone() };
    for h in hosts(&report) {
        assert_eq!((h["shipped"].as_str(), h["result"].as_str()), (Some("bundle"), Some("ok")), "{h}");
        assert_eq!(h["bytes"], bundle_bytes, "{h}");
    }
    let host_dir = |name: &str| p.path(&format!("fleet/{name}/srv/hello"));

    p.write("app/hello.py", read(p.path("app/hello.py")).replace("VERSION = \"v1\"", "VERSION = \"v2\""));
    let fixture_settings = read(p.path("config/staging/settings.json"));
    p.write("config/staging/settings.json", "{\"greeting\": \"staging, now v2\"}\n");
    let v2 = build(&p, "v2");
    let r = p.ferry(["push", "local", &v2, "--json"]).ok();
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["release"], v2.as_str());
    let batches: Vec<Vec<String>> = serde_json::from_value(report["batches"].clone()).unwrap();
    let short = |b: &[String]| -> Vec<String> { b.iter().map(|h| h.rsplit('/').next().unwrap().to_owned()).collect() };
    assert_eq!(
        batches.iter().map(|b| short(b)).collect::<Vec<_>>(),
        [vec!["web1"], vec!["web2"], vec!["web3", "web4"]]
    );
    for h in hosts(&report) {
        assert_eq!(h["shipped"], "delta", "{h}");
        assert_eq!(h["from"], v1.as_str(), "{h}");
        let bytes = h["bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes * 4 < bundle_bytes, "a delta of {bytes} bytes for a bundle of {bundle_bytes}: {h}");
    }
    for name in names {
        let dir = host_dir(name);
        assert_eq!(current(&dir).as_deref(), Some(v2.as_str()), "{name}");
        assert_eq!(read(dir.join("current/config/active/settings.json")), "{\"greeting\": \"staging, now v2\"}\n");
        assert_eq!(fs::read_link(dir.join("current/log")).unwrap(), Path::new("../../shared/log"));
        assert!(dir.join("shared/log").is_dir());
    }
    // The service answers from web3's current release with its own venv and config.
    let web3 = host_dir("web3");
    let answer = sh(&format!(
        "cd {} && current/venv/bin/python -c 'import sys; sys.path.insert(0, \"current/app\"); import hello; \
         print(hello.application({{\"PATH_INFO\": \"/\"}}, lambda *a: None)[0].decode(), end=\"\")'",
        web3.display()
    ));
    assert_eq!(answer, "hello from v2 (staging, now v2)\n");

    // The merged history: each push's deploys in batch order.
    let history: Vec<Value> =
        p.ferry(["history", "local", "--json"]).ok().stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for id in [&v1, &v2] {
        let deploys: BTreeMap<String, String> = history
            .iter()
            .filter(|r| r["action"] == "deploy" && r["to"] == id.as_str() && r["result"] == "ok")
            .map(|r| {
                (
                    r["host"].as_str().unwrap().rsplit('/').next().unwrap().to_owned(),
                    r["time"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(deploys.keys().map(String::as_str).collect::<Vec<_>>(), names, "{history:?}");
        let t = |h: &str| deploys[h].as_str();
        assert!(t("web1") <= t("web2") && t("web2") <= t("web3") && t("web2") <= t("web4"), "{deploys:?}");
    }
    let times: Vec<&str> = history.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "history is in time order: {times:?}");

    let status = p.ferry(["status", "local", "--json"]).ok().json();
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(
            (&h["status"]["current"], &h["status"]["previous"]),
            (&Value::from(v2.clone()), &Value::from(v1.clone())),
            "{h}"
        );
        // The program runs the interpreter of the release's own venv,
        // through current (its relative command resolved by the host).
        let name = h["host"].as_str().unwrap().rsplit('/').next().unwrap();
        let pid = h["status"]["programs"][0]["pid"].as_u64().unwrap();
        let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        let python = host_dir(name).join("current/venv/bin/python");
        assert_eq!(
            cmdline.trim_end(),
            format!("{} -m gunicorn --workers 2 hello:application", python.display()),
            "{h}"
        );
        assert_eq!(fs::read_link(format!("/proc/{pid}/exe")).unwrap(), fs::canonicalize(&python).unwrap());
    }
    let report = p.ferry(["rollback", "local", "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["release"], v1.as_str());
    for name in names {
        let dir = host_dir(name);
        assert_eq!(current(&dir).as_deref(), Some(v1.as_str()), "{name}");
        assert_eq!(read(dir.join("current/config/active/settings.json")), fixture_settings);
        host(&dir, &["verify"]).ok();
    }
}

// ---------------------------------------------------------------------------
// A host that cannot stage

/// A host whose disk is full fails its stage: the push reports that host and
/// step, exits 1, and no host flips — the other host keeps the staged
/// release for the next push. Needs root, for a small tmpfs.
#[test]
fn a_push_where_one_host_cannot_stage_exits_1_and_flips_nothing() {
    let p = sample_with_stage();
    let v1 = build(&p, "v1");
    p.ferry(["push", "local"]).ok();
    p.write("media/noise.bin", noise(3 << 20));
    let v2 = build(&p, "v2");

    // web2's /srv is a full disk from now on (its v1 release moves onto it).
    let web2 = p.path("fleet/web2/srv");
    let saved = tempdir();
    sh(&format!("cp -a {}/. {}", web2.display(), saved.path().display()));
    let _disk = Tmpfs::mount(&web2, "1m");
    sh(&format!("cp -a {}/. {}", saved.path().display(), web2.display()));

    let run = p.ferry(["push", "local", "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    let hosts = report["hosts"].as_array().unwrap();
    let web2 = hosts.iter().find(|h| h["host"] == "web2").unwrap();
    assert_eq!((web2["step"].as_str(), web2["result"].as_str()), (Some("stage"), Some("failed")), "{web2}");
    // Refused before a byte is written: v2's files do not fit in what is free.
    assert!(web2["error"].as_str().unwrap().contains(&format!("release {v2} needs ")), "{web2}");
    assert!(web2["error"].as_str().unwrap().contains("free some space"), "{web2}");
    assert!(report["batches"].as_array().unwrap().is_empty(), "no batch started: {report}");
    for host in ["web1", "web2"] {
        let dir = p.path(&format!("fleet/{host}/srv/shop"));
        assert_eq!(current(&dir).as_deref(), Some(v1.as_str()), "{host} did not flip");
    }
    assert!(p.path(&format!("fleet/web1/srv/shop/releases/{v2}")).exists(), "web1 keeps v2 staged");
    assert!(leftovers(&p.path("fleet/web2/srv/shop")).is_empty());
    // The text report names the host and the step.
    let err = p.ferry(["push", "local"]).fails(1);
    assert!(err.contains("web2: stage failed:") && err.contains("free some space"), "{err}");
}
