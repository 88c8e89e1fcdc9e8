//! The service runtime on real test hosts: each runs the example service
//! under its own supervisord (started by ferry) and Debian's gunicorn,
//! behind the health gates of the stage.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use fs_err as fs;
use serde_json::Value;

use crate::kit::example_project;
use crate::kit::{self, ferry_bin, Project};
use crate::testhosts::TestHosts;

/// The example service with an ssh stage `prod` over `hosts`, gated by its
/// health URL on each host.
pub(crate) fn project(hosts: &TestHosts, extra: &str) -> Project {
    project_with(
        hosts,
        extra,
        "[stages.prod.health.http]\nurl = \"http://{host}:8000/health\"\ntimeout = 2\nretries = 3\n",
    )
}

/// The same, with `health` for the stage's gates.
pub(crate) fn project_with(hosts: &TestHosts, extra: &str, health: &str) -> Project {
    let p = example_project();
    let list: Vec<String> = hosts.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n{extra}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
             known_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n{health}",
            list.join(", "),
            hosts.known_hosts.display(),
            hosts.key.display(),
            ferry_bin()
        ),
    );
    p
}

/// Gives the program 5 s to count as started (supervisord's startsecs),
/// for tests of a release whose program crashes on start: gunicorn's master
/// exits once its workers fail to import the app, which on a loaded machine
/// can take longer than the example's 1 s — a crash supervisord (and so
/// ferry's process check) would see as RUNNING, leaving it to the gate.
/// (3 s was once not enough while the whole suite ran on 2 cores.)
pub(crate) fn slow_start(p: &Project) {
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("startsecs = 1\n", "startsecs = 5\n"));
}

/// Builds the project as `version` (the app says it) and returns the id.
pub(crate) fn build(p: &Project, version: &str) -> String {
    let code = fs::read_to_string(p.path("app/hello.py")).unwrap();
    let line = code.lines().find(|l| l.starts_with("VERSION = ")).unwrap().to_owned();
    p.write("app/hello.py", code.replace(&line, &format!("VERSION = \"{version}\"")));
    kit::build(p, version)
}

/// `GET path` on port 8000 of `addr`: the status and the body.
pub(crate) fn get(addr: Ipv4Addr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&(addr, 8000).into(), Duration::from_secs(3)).expect("the service answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

pub(crate) fn serves(hosts: &TestHosts, version: &str) {
    for h in &hosts.hosts {
        let (status, body) = get(h.addr, "/");
        assert_eq!(status, 200, "{}: {body}", h.name);
        assert!(body.starts_with(&format!("hello from {version} ")), "{} serves {body:?}, not {version}", h.name);
    }
}

pub(crate) fn row(report: &Value, addr: Ipv4Addr) -> Value {
    let name = format!("root@{addr}");
    report["hosts"].as_array().unwrap().iter().find(|h| h["host"] == name.as_str()).unwrap().clone()
}

pub(crate) fn current(hosts: &TestHosts, i: usize) -> String {
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
            "command = \"venv/bin/python -m gunicorn --workers 2 hello:application\"",
            "command = \"venv/bin/python -m gunicorn --workers 2 --chdir /srv/hello/current/app hello:application\"",
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

#[test]
fn a_release_whose_program_crashes_on_start_is_reported_with_its_log_and_the_host_goes_back() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    slow_start(&p);
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let code = fs::read_to_string(p.path("app/hello.py")).unwrap();
    p.write("app/hello.py", format!("{code}\ndef broken(:\n"));
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let canary = row(&r.json(), hosts.hosts[0].addr);
    assert_eq!(canary["step"], "activate", "{canary}");
    let error = canary["error"].as_str().unwrap();
    assert!(error.contains("program web did not start"), "{error}");
    assert!(error.contains("; it said: SyntaxError: "), "the program's own last words: {error}");
    for i in 0..2 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "v1");
    let history = p.ferry(["history", "prod"]).ok().stdout;
    assert!(history.contains("the programs did not take up"), "{history}");
}

#[test]
fn a_host_whose_supervisord_died_gets_it_started_again_and_says_so() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let pid = fs::read_to_string(hosts.hosts[1].srv.join("hello/.ferry/supervisord.pid")).unwrap();
    crate::kit::sh(&format!("kill {}; while kill -0 {0} 2>/dev/null; do sleep 0.05; done", pid.trim()));
    build(&p, "v2");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let second = row(&report, hosts.hosts[1].addr);
    // Said first; a busy machine may add what the restart then saw (a slow stop).
    assert!(
        second["warning"].as_str().unwrap_or_default().starts_with("supervisord was not running: started it"),
        "{second}"
    );
    assert_eq!(second["down_before"][0]["process"], "supervisord", "{second}");
    assert!(row(&report, hosts.hosts[0].addr)["warning"].is_null(), "{report}");
    serves(&hosts, "v2");
}

#[test]
fn hooks_setup_logs_and_a_rollback_past_a_migration() {
    let hosts = TestHosts::start(2);
    let p = project(
        &hosts,
        "[hooks]\nmigrate = \"echo migrated to $FERRY_RELEASE > $FERRY_DEPLOY_TO/shared/migrated\"\n\
         before_flip = \"echo before $FERRY_RELEASE in $(pwd)\"\nafter_flip = \"echo after\"\n",
    );
    let v1 = build(&p, "v1");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let first = row(&report, hosts.hosts[0].addr);
    let hooks: Vec<&str> = first["hooks"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(hooks, ["migrate", "before_flip", "after_flip"], "{first}");
    assert_eq!(first["hooks"][1]["output"], format!("before {v1} in /srv/hello/releases/{v1}"));
    let second = row(&report, hosts.hosts[1].addr);
    assert_eq!(second["hooks"].as_array().unwrap().len(), 2, "migrate runs on one host only: {second}");
    let migrated = fs::read_to_string(hosts.hosts[0].srv.join("hello/shared/migrated")).unwrap();
    assert_eq!(migrated, format!("migrated to {v1}\n"));
    assert!(!hosts.hosts[1].srv.join("hello/shared/migrated").exists());

    // setup is safe to re-run, and leaves a unit and an init script.
    let setup = p.ferry(["setup", "prod"]).ok().stdout;
    assert_eq!(setup.matches("already set up").count(), 2, "{setup}");
    for h in &hosts.hosts {
        let unit = fs::read_to_string(h.srv.join("hello/.ferry/ferry-hello.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/supervisord -c /srv/hello/.ferry/supervisord.conf"), "{unit}");
        assert!(h.srv.join("hello/.ferry/init.d/ferry-hello").exists());
    }

    // The programs' logs, by host, through supervisord.
    let logs = p.ferry(["logs", "prod", "--program", "web"]).ok().stdout;
    for h in &hosts.hosts {
        let prefix = format!("root@{} web (stderr): ", h.addr);
        assert!(logs.lines().any(|l| l.starts_with(&prefix) && l.contains("Booting worker")), "{logs}");
    }

    build(&p, "v2");
    p.ferry(["push", "prod"]).ok();
    let back = p.ferry(["rollback", "prod"]).ok();
    assert!(back.stderr.contains("ran migrations here"), "{}", back.stderr);
    assert!(back.stderr.contains("does not roll back the database"), "{}", back.stderr);
    serves(&hosts, "v1");
}

#[test]
fn the_error_rate_gate_and_the_command_gate_each_stop_a_push() {
    let hosts = TestHosts::start(3);
    let errors =
        "[stages.prod.health.errors]\nurl = \"http://{host}:8000/\"\nwindow = 2\ninterval = 0.1\nmin_requests = 10\n";
    let p = project_with(&hosts, "", errors);
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // Broken on the canary only: its error rate against the others'.
    p.write("app/BAD_HOSTS", hosts.hosts[0].addr.to_string());
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let gate = r.json()["gate"].as_str().unwrap().to_owned();
    assert!(gate.starts_with("gate errors failed after batch"), "{gate}");
    assert!(gate.contains("error rate 100.0% over max_rate 5.0%"), "{gate}");
    assert!(gate.contains("hosts not yet flipped "), "{gate}");
    assert_eq!(current(&hosts, 0), v1);

    // A command on the controller, told the batch and the release.
    fs::remove_file(p.path("app/BAD_HOSTS")).unwrap();
    let check = "[stages.prod.health.command]\nrun = \"echo checking $FERRY_RELEASE on $FERRY_HOSTS; exit 7\"\n";
    let p2 = project_with(&hosts, "", check);
    let v3 = build(&p2, "v3");
    let r = p2.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let gate = r.json()["gate"].as_str().unwrap().to_owned();
    assert!(gate.contains("exit status: 7"), "{gate}");
    assert!(gate.contains(&format!("checking {v3} on root@{}", hosts.hosts[0].addr)), "{gate}");
    for i in 0..3 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
}

#[test]
fn a_port_taken_by_another_process_fails_that_host_with_the_programs_words_and_the_push_goes_back() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // On host2, something else holds port 8000 once the app is stopped.
    let out = hosts.ssh(
        1,
        "supervisorctl -c /srv/hello/.ferry/supervisord.conf stop web >/dev/null && \
         (nohup python3 -m http.server 8000 >/dev/null 2>&1 &) && sleep 1",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    // gunicorn keeps trying to bind for a while, so supervisord calls it
    // RUNNING: the health gate is what sees the other process answer.
    let second = row(&report, hosts.hosts[1].addr);
    let error = second["error"].as_str().unwrap();
    assert!(error.contains("gate http: http://") && error.contains("answered 404, not 200"), "{error}");
    assert!(error.contains("its programs' last output: web (stderr): "), "{error}");
    assert!(error.contains("Connection in use: ('0.0.0.0', 8000)"), "the program's own words: {error}");
    // Flipped back too, but v1 cannot have the port either: the host is a
    // failure, not a clean revert.
    assert_eq!(second["result"], "failed", "{second}");
    assert!(error.contains("flipped back, but the old release fails the http gate too"), "{error}");
    // The canary went back with it, and serves.
    assert_eq!(row(&report, hosts.hosts[0].addr)["result"], "reverted", "{report}");
    assert_eq!((current(&hosts, 0), current(&hosts, 1)), (v1.clone(), v1));
    let (status, body) = get(hosts.hosts[0].addr, "/");
    assert_eq!((status, body.starts_with("hello from v1 ")), (200, true), "{body}");
}

#[test]
fn a_health_url_that_never_answers_fails_the_gate_after_its_timeouts() {
    let hosts = TestHosts::start(2);
    let p = project_with(&hosts, "", "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // Port 8001 on each host takes connections and never answers.
    for i in 0..2 {
        let out = hosts.ssh(
            i,
            "(nohup python3 -c 'import socket, time; s = socket.socket(); s.bind((\"0.0.0.0\", 8001)); \
             s.listen(); time.sleep(600)' >/dev/null 2>&1 &) && sleep 0.5",
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!("{toml}[stages.prod.health.http]\nurl = \"http://{{host}}:8001/health\"\ntimeout = 1\nretries = 2\n"),
    );
    build(&p, "v2");
    let start = std::time::Instant::now();
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let gate = r.json()["gate"].as_str().unwrap().to_owned();
    assert!(gate.contains(":8001/health: ") && gate.contains("timed out"), "{gate}");
    assert!(gate.ends_with("(after 2 tries)"), "{gate}");
    assert!(start.elapsed() < Duration::from_secs(60), "the gate gave up in its time");
    assert_eq!((current(&hosts, 0), current(&hosts, 1)), (v1.clone(), v1));
    serves(&hosts, "v1");
}

#[test]
fn a_release_that_dies_on_a_hup_reload_is_caught_and_the_host_goes_back() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    slow_start(&p);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        toml.replace("stopwaitsecs = 5\n", "stopwaitsecs = 5\nreload_signal = \"HUP\"\n").replace(
            "\"venv/bin/python -m gunicorn --workers 2 hello:application\"",
            "\"venv/bin/python -m gunicorn --workers 2 --chdir /srv/hello/current/app hello:application\"",
        ),
    );
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let code = fs::read_to_string(p.path("app/hello.py")).unwrap();
    p.write("app/hello.py", format!("{code}\ndef broken(:\n"));
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let canary = row(&r.json(), hosts.hosts[0].addr);
    let error = canary["error"].as_str().unwrap();
    assert!(error.contains("program web did not start"), "{error}");
    assert!(!error.contains("--chdir"), "the fix is in place; the release is what is broken: {error}");
    let history = p.ferry(["history", "prod"]).ok().stdout;
    assert_eq!(current(&hosts, 0), v1, "{canary}\n{history}");
    serves(&hosts, "v1");
}

#[test]
fn with_on_failure_stop_a_failed_gate_still_fails_the_push_and_flips_nothing_back() {
    let hosts = TestHosts::start(2);
    let p = project_with(&hosts, "", "on_failure = \"stop\"\n");
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}[stages.prod.health.command]\nrun = \"exit 1\"\n"));
    let v2 = build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    assert_eq!(report["ok"], false, "{report}");
    let canary = row(&report, hosts.hosts[0].addr);
    assert_eq!((canary["result"].as_str(), canary["step"].as_str()), (Some("failed"), Some("gate")), "{canary}");
    assert_eq!(row(&report, hosts.hosts[1].addr)["result"], "skipped", "{report}");
    // Stopped where it was: the canary stays on v2, as the policy says.
    assert_eq!(current(&hosts, 0), v2);
    assert!(!r.stderr.contains("went back"), "{}", r.stderr);
}
