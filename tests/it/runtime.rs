//! The service runtime on real test hosts: each runs the example service
//! under its own supervisord (started by ferry) and Debian's gunicorn,
//! behind the health gates of the stage.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use fs_err as fs;
use serde_json::Value;

use crate::host::example_project;
use crate::kit::{ferry_bin, Project};
use crate::testhosts::TestHosts;

/// The example service with an ssh stage `prod` over `hosts`, gated by its
/// health URL on each host.
fn project(hosts: &TestHosts, extra: &str) -> Project {
    let p = example_project();
    let list: Vec<String> = hosts.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n{extra}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
             known_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n\
             [stages.prod.health.http]\nurl = \"http://{{host}}:8000/health\"\ntimeout = 2\nretries = 3\n",
            list.join(", "),
            hosts.known_hosts.display(),
            hosts.key.display(),
            ferry_bin()
        ),
    );
    p
}

/// Builds the project as `version` (the app says it) and returns the id.
fn build(p: &Project, version: &str) -> String {
    let code = fs::read_to_string(p.path("app/hello.py")).unwrap();
    let line = code.lines().find(|l| l.starts_with("VERSION = ")).unwrap().to_owned();
    p.write("app/hello.py", code.replace(&line, &format!("VERSION = \"{version}\"")));
    p.build(&["--version", version])["id"].as_str().unwrap().to_owned()
}

/// `GET path` on port 8000 of `addr`: the status and the body.
fn get(addr: Ipv4Addr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&(addr, 8000).into(), Duration::from_secs(3)).expect("the service answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn serves(hosts: &TestHosts, version: &str) {
    for h in &hosts.hosts {
        let (status, body) = get(h.addr, "/");
        assert_eq!(status, 200, "{}: {body}", h.name);
        assert!(body.starts_with(&format!("hello from {version} ")), "{} serves {body:?}, not {version}", h.name);
    }
}

fn row(report: &Value, addr: Ipv4Addr) -> Value {
    let name = format!("root@{addr}");
    report["hosts"].as_array().unwrap().iter().find(|h| h["host"] == name.as_str()).unwrap().clone()
}

fn current(hosts: &TestHosts, i: usize) -> String {
    let link = fs::read_link(hosts.hosts[i].srv.join("hello/current")).unwrap();
    link.to_string_lossy().trim_start_matches("releases/").to_owned()
}

#[test]
fn a_good_push_restarts_every_host_on_the_new_release() {
    let hosts = TestHosts::start(4);
    let p = project(&hosts, "");
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "v1");
    let v2 = build(&p, "v2");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    serves(&hosts, "v2");
    // Every process supervisord runs (gunicorn's master and its workers)
    // works in the new release, as the host itself sees it.
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    for (i, h) in status["hosts"].as_array().unwrap().iter().enumerate() {
        let programs = h["status"]["programs"].as_array().unwrap();
        assert_eq!(programs.len(), 1, "{h}");
        assert_eq!(programs[0]["state"], "RUNNING", "{h}");
        let pid = programs[0]["pid"].as_u64().unwrap();
        let out = hosts
            .ssh(i, &format!("readlink /proc/{pid}/cwd; for c in $(pgrep -P {pid}); do readlink /proc/$c/cwd; done"));
        let dirs = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(dirs.lines().count(), 3, "the master and 2 workers: {dirs}");
        for dir in dirs.lines() {
            assert_eq!(dir, format!("/srv/hello/releases/{v2}/app"), "host {i}");
        }
    }
}

#[test]
fn a_bad_canary_fails_its_gate_and_is_rolled_back_while_the_others_never_flip() {
    let hosts = TestHosts::start(4);
    let p = project(&hosts, "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    p.write("app/BAD", "");
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    let gate = report["gate"].as_str().unwrap();
    assert!(gate.starts_with("gate http failed after batch"), "{gate}");
    assert!(gate.contains("answered 500, not 200"), "{gate}");
    assert_eq!(row(&report, hosts.hosts[0].addr)["result"], "reverted", "{report}");
    for h in &hosts.hosts[1..] {
        assert_eq!(row(&report, h.addr)["result"], "skipped", "{report}");
    }
    for i in 0..4 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "v1");
    // The canary's journal holds the gate's evidence.
    let history = p.ferry(["history", "prod", "--json"]).ok().stdout;
    let back: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "rollback")
        .collect();
    assert_eq!(back.len(), 1, "{history}");
    assert_eq!(back[0]["to"], v1.as_str());
    assert!(back[0]["reason"].as_str().unwrap().contains("answered 500"), "{history}");
}

#[test]
fn a_release_that_fails_only_in_the_second_batch_takes_back_every_host_it_reached() {
    let hosts = TestHosts::start(4);
    let p = project(&hosts, "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // Broken everywhere but on the canary: its gate passes by luck.
    let others: Vec<String> = hosts.hosts[1..].iter().map(|h| h.addr.to_string()).collect();
    p.write("app/BAD_HOSTS", others.join("\n"));
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    assert!(report["gate"].as_str().unwrap().contains(&format!("root@{}", hosts.hosts[1].addr)), "{report}");
    for (i, want) in ["reverted", "reverted", "skipped", "skipped"].iter().enumerate() {
        assert_eq!(row(&report, hosts.hosts[i].addr)["result"], *want, "host {i}: {report}");
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "v1");
}

#[test]
fn a_program_reloaded_by_hup_without_chdir_is_caught_still_running_the_old_release() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("stopwaitsecs = 5\n", "stopwaitsecs = 5\nreload_signal = \"HUP\"\n"));
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let canary = row(&r.json(), hosts.hosts[0].addr);
    assert_eq!(canary["step"], "activate", "{canary}");
    let error = canary["error"].as_str().unwrap();
    assert!(error.contains(&format!("still runs release {v1} after the restart")), "{error}");
    assert!(error.contains("add --chdir /srv/hello/current/app to its command"), "{error}");
    assert_eq!(current(&hosts, 0), v1);
    serves(&hosts, "v1");

    // Done as the message says, the same reload takes up the new code.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        toml.replace(
            "command = \"/usr/bin/gunicorn --workers 2 hello:application\"",
            "command = \"/usr/bin/gunicorn --workers 2 --chdir /srv/hello/current/app hello:application\"",
        ),
    );
    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "v2");
}

#[test]
fn a_failed_migration_stops_the_push_before_any_flip() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "[hooks]\nmigrate = \"echo migrating to $FERRY_RELEASE; exit 3\"\ntimeout = 30\n");
    let v1 = build(&p, "v1");
    // The first push runs the migration too: let it pass once.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("exit 3", "test -f app/hello.py"));
    p.ferry(["push", "prod"]).ok();
    p.write("ferry.toml", toml);
    let v2 = build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    let first = row(&report, hosts.hosts[0].addr);
    assert_eq!(first["step"], "migrate", "{first}");
    assert!(first["error"].as_str().unwrap().contains("hook migrate exited with 3"), "{first}");
    assert_eq!(first["hooks"][0]["output"], format!("migrating to {v2}"), "{first}");
    for i in 0..2 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "v1");
}
