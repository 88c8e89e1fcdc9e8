//! The Java example (fixtures/java) for real: its jar built from source by
//! the build step (javac and jar), pushed to test hosts where the service's
//! supervisord runs it with `java -jar`, gated by its health URL, a bad
//! release reverted, and a rollback. Needs a JDK (scripts/test installs
//! Debian's default-jdk-headless).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fs_err as fs;
use serde_json::Value;

use crate::kit::{ferry_bin, ferry_cmd, run, sh, tempdir, Project};
use crate::runtime::row;
use crate::testhosts::TestHosts;

/// Where the service lives on each host (`/srv/<service>`).
const DEPLOY_TO: &str = "/srv/hello-java";
/// The port its program listens on (`[programs.web]`'s `PORT`).
const PORT: u16 = 8080;

fn require_jdk() {
    for tool in ["javac", "jar", "java"] {
        let found = run(std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")])).code == 0;
        assert!(found, "{tool} is not installed: scripts/test installs Debian's default-jdk-headless");
    }
}

/// A copy of fixtures/java without anything built, with a store of its own.
fn fixture() -> Project {
    require_jdk();
    let p = Project { dir: tempdir(), store: tempdir() };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/java");
    sh(&format!("cp -r {}/. {}", fixture.display(), p.root().display()));
    // Whatever a hand-run left in the fixture: builds, local hosts, a store.
    sh(&format!("cd {} && rm -rf build fleet .ferry", p.root().display()));
    p
}

/// The fixture with an ssh stage `prod` over `hosts`: a canary, then the
/// rest, each batch gated by the health URL on each host.
fn project(hosts: &TestHosts) -> Project {
    let p = fixture();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let stage = hosts.ssh_stage(
        "prod",
        &format!(
            "env = \"staging\"\nstrategy = [\"1\", \"100%\"]\nagent = \"{}\"\n\n\
             [stages.prod.health.http]\nurl = \"http://{{host}}:{PORT}/health\"\ntimeout = 2\nretries = 10\n",
            ferry_bin()
        ),
    );
    p.write("ferry.toml", format!("{toml}\n{stage}"));
    p
}

/// Writes `version` to VERSION (what the jar's manifest and pom.properties
/// say, and the service serves), builds with that label, and returns the
/// `--json` report.
fn build(p: &Project, version: &str) -> Value {
    p.write("VERSION", format!("{version}\n"));
    p.ferry(["build", "--json", "--version", version]).ok().json()
}

fn id(report: &Value) -> String {
    report["id"].as_str().unwrap().to_owned()
}

/// The build step ran (javac really ran) and said what it built.
#[track_caller]
fn step_ran(report: &Value, version: &str) {
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{report}");
    let jar = &steps[0];
    assert_eq!(
        (jar["name"].as_str(), jar["cached"].as_bool(), jar["exit"].as_i64()),
        (Some("jar"), Some(false), Some(0)),
        "{jar}"
    );
    let said = format!("built build/libs/hello.jar: hello-java {version} (1 classes)");
    assert_eq!(jar["output_tail"], serde_json::json!([said]), "{jar}");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

/// `GET path` on the service's port of `addr`: the status and the body.
fn get(addr: Ipv4Addr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&(addr, PORT).into(), Duration::from_secs(3)).expect("the service answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// Every host answers `/` as `version` from release `id`, and `/health`.
#[track_caller]
fn serves(hosts: &TestHosts, version: &str, id: &str) {
    for h in &hosts.hosts {
        let (status, body) = get(h.addr, "/");
        assert_eq!(status, 200, "{}: {body}", h.name);
        assert_eq!(body, format!("hello from {version} (staging) in {DEPLOY_TO}/releases/{id}\n"), "{}", h.name);
        assert_eq!(get(h.addr, "/health"), (200, format!("ok {version}\n")), "{}", h.name);
    }
}

fn current(hosts: &TestHosts, i: usize) -> String {
    let link = fs::read_link(hosts.hosts[i].srv.join("hello-java/current")).unwrap();
    link.to_string_lossy().trim_start_matches("releases/").to_owned()
}

fn ssh_ok(hosts: &TestHosts, i: usize, command: &str) -> String {
    let out = hosts.ssh(i, command);
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid of each host's program, as `ferry status` has it from supervisord.
fn jvms(p: &Project) -> Vec<u64> {
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let programs = h["status"]["programs"].as_array().unwrap();
            assert_eq!(programs.len(), 1, "{h}");
            assert_eq!(programs[0]["state"], "RUNNING", "{h}");
            programs[0]["pid"].as_u64().unwrap()
        })
        .collect()
}

/// Host `i`'s JVM (`pid`) runs release `id`, as the host's `/proc` sees
/// it: the `java` launcher itself (no shell in between), its working
/// directory that release, and the jar it opened that release's.
#[track_caller]
fn jvm_runs(hosts: &TestHosts, i: usize, pid: u64, id: &str) {
    let out = ssh_ok(
        hosts,
        i,
        &format!(
            "readlink /proc/{pid}/exe; readlink /proc/{pid}/cwd; tr '\\0' ' ' < /proc/{pid}/cmdline; echo; \
             for f in /proc/{pid}/fd/*; do readlink $f; done | grep '\\.jar$'"
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 4, "host {i}, pid {pid}: {out}");
    assert!(lines[0].ends_with("/bin/java"), "host {i}: the program is the JVM itself: {out}");
    assert_eq!(lines[1], format!("{DEPLOY_TO}/releases/{id}"), "host {i}: working directory");
    assert!(lines[2].contains(" -XX:+UseSerialGC ") && lines[2].ends_with(" -jar build/libs/hello.jar "), "{out}");
    assert_eq!(lines[3..], [format!("{DEPLOY_TO}/releases/{id}/build/libs/hello.jar")], "host {i}: the open jar");
}

/// A jar entry's text, read with Python's zipfile (the jar is a zip).
fn jar_entry(jar: &Path, entry: &str) -> String {
    let script = "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode(), end='')";
    let r = run(std::process::Command::new("python3").args(["-c", script]).arg(jar).arg(entry));
    assert_eq!(r.code, 0, "{entry} in {}: {}", jar.display(), r.stderr);
    r.stdout
}

#[test]
fn a_java_service_is_built_by_javac_pushed_gated_reverted_and_rolled_back_under_supervisord() {
    let _one = crate::kit::one_at_a_time();
    let start = Instant::now();
    let hosts = TestHosts::start(2);
    let p = project(&hosts);

    // Built from source by the build step, with javac and jar: the release
    // holds the jar (not the source), with Maven's metadata in it.
    let built = build(&p, "1.0.0");
    step_ran(&built, "1.0.0");
    let v1 = id(&built);
    let listing = sh(&format!("tar --zstd -tf {}", built["path"].as_str().unwrap()));
    let paths: Vec<&str> = listing.lines().filter(|l| !l.starts_with(".ferry")).collect();
    let want = ["build", "build/libs", "build/libs/hello.jar", "config", "config/production"];
    let want =
        [&want[..], &["config/production/hello.properties", "config/staging", "config/staging/hello.properties"]];
    assert_eq!(paths, want.concat(), "{listing}");

    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "1.0.0", &v1);
    let jar = hosts.hosts[0].srv.join(format!("hello-java/releases/{v1}/build/libs/hello.jar"));
    assert_eq!(
        jar_entry(&jar, "META-INF/maven/com.example/hello-java/pom.properties"),
        "artifactId=hello-java\ngroupId=com.example\nversion=1.0.0\n"
    );
    let manifest = jar_entry(&jar, "META-INF/MANIFEST.MF");
    assert!(manifest.contains("Implementation-Title: hello-java\r\nImplementation-Version: 1.0.0\r\n"), "{manifest}");
    let first = jvms(&p);
    for (i, pid) in first.iter().enumerate() {
        jvm_runs(&hosts, i, *pid, &v1);
    }

    // v2: the step runs again (its input VERSION changed); the canary and
    // then the other host restart on it and pass the gate.
    let built = build(&p, "2.0.0");
    step_ran(&built, "2.0.0");
    let v2 = id(&built);
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    for h in &hosts.hosts {
        let line = row(&report, h.addr);
        assert_eq!(line["result"], "ok", "{line}");
        // The JVM stopped on SIGTERM: supervisord did not have to KILL it.
        assert!(line["warning"].is_null(), "{line}");
    }
    serves(&hosts, "2.0.0", &v2);
    let second = jvms(&p);
    for (i, pid) in second.iter().enumerate() {
        assert_ne!(*pid, first[i], "host {i}: restarted");
        jvm_runs(&hosts, i, *pid, &v2);
        // Its shutdown hook ran: it said so in its log before it exited.
        let log = ssh_ok(&hosts, i, &format!("cat {DEPLOY_TO}/shared/log/web.log"));
        assert!(log.contains("hello 1.0.0 listening on port 8080") && log.contains("stopped\n"), "{log}");
    }

    // v3 ships its config without the greeting: the JVM starts, its health
    // URL answers 500, the canary's gate fails and it goes back to v2; the
    // other host is never flipped.
    let config = fs::read_to_string(p.path("config/staging/hello.properties")).unwrap();
    p.write("config/staging/hello.properties", config.replace("greeting=staging\n", ""));
    let built = build(&p, "3.0.0");
    step_ran(&built, "3.0.0");
    let v3 = id(&built);
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    assert_eq!(report["ok"], false, "{report}");
    let gate = report["gate"].as_str().unwrap();
    let canary = format!("http://{}:{PORT}/health answered 500, not 200", hosts.hosts[0].addr);
    assert!(gate.starts_with("gate http failed after batch") && gate.contains(&canary), "{gate}");
    assert_eq!(row(&report, hosts.hosts[0].addr)["result"], "reverted", "{report}");
    assert_eq!(row(&report, hosts.hosts[1].addr)["result"], "skipped", "{report}");
    for i in 0..2 {
        assert_eq!(current(&hosts, i), v2, "host {i}");
    }
    serves(&hosts, "2.0.0", &v2);
    let third = jvms(&p);
    assert_ne!(third[0], second[0], "the canary's JVM was restarted on v3, then on v2");
    jvm_runs(&hosts, 0, third[0], &v2);
    assert_eq!(third[1], second[1], "the other host's JVM was never touched");
    // The canary's journal holds the gate's evidence, and v3 never ran there as deployed.
    let history = p.ferry(["history", "prod", "--json"]).ok().stdout;
    let back: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "rollback" && r["from"] == v3.as_str())
        .collect();
    assert_eq!(back.len(), 1, "{history}");
    assert_eq!(back[0]["to"], v2.as_str());
    assert!(back[0]["reason"].as_str().unwrap().contains("answered 500"), "{history}");
    // The JVM said why itself, in its error log on the host.
    let err = ssh_ok(&hosts, 0, &format!("cat {DEPLOY_TO}/shared/log/web.err.log"));
    assert!(
        err.contains(&format!(
            "3.0.0 is unhealthy: {DEPLOY_TO}/releases/{v3}/config/active/hello.properties has no greeting"
        )),
        "{err}"
    );

    // A rollback to v1, still on every host: nothing to ship, a flip and a
    // restart on each.
    let asked = Instant::now();
    let report = p.ferry(["rollback", "prod", "--to", "1.0.0", "--json"]).ok().json();
    let took = asked.elapsed();
    for h in &hosts.hosts {
        assert_eq!(row(&report, h.addr)["result"], "ok", "{report}");
    }
    for i in 0..2 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "1.0.0", &v1);
    for (i, pid) in jvms(&p).iter().enumerate() {
        jvm_runs(&hosts, i, *pid, &v1);
    }
    assert!(took < Duration::from_secs(15), "the rollback took {took:?}");

    // v4's jar names a main class it does not have: the JVM exits at start,
    // supervisord gives up on it, and the canary fails and goes back to v1
    // before any gate, with the JVM's own last words in the report.
    let script = fs::read_to_string(p.path("build.sh")).unwrap();
    p.write("build.sh", script.replace("Main-Class: com.example.hello.Hello", "Main-Class: com.example.hello.Main"));
    let built = build(&p, "4.0.0");
    step_ran(&built, "4.0.0");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    let canary = row(&report, hosts.hosts[0].addr);
    assert_eq!((canary["step"].as_str(), canary["result"].as_str()), (Some("activate"), Some("failed")), "{canary}");
    let error = canary["error"].as_str().unwrap();
    assert!(error.contains("program web did not start"), "{error}");
    assert!(error.contains("Could not find or load main class com.example.hello.Main"), "{error}");
    assert!(error.contains(&format!("flipped back to {}", &v1[..12])), "{error}");
    assert_eq!(row(&report, hosts.hosts[1].addr)["result"], "skipped", "{report}");
    for i in 0..2 {
        assert_eq!(current(&hosts, i), v1, "host {i}");
    }
    serves(&hosts, "1.0.0", &v1);
    eprintln!("rollback to v1 on 2 hosts: {took:.1?}; the whole test: {:.1?}", start.elapsed());

    // supervisord down (as at the test hosts' teardown): the JVMs go with it.
    let pids = jvms(&p);
    for (i, pid) in pids.iter().enumerate() {
        ssh_ok(&hosts, i, &format!("supervisorctl -c {DEPLOY_TO}/.ferry/supervisord.conf shutdown >/dev/null"));
        let gone = ssh_ok(&hosts, i, &format!("for n in $(seq 100); do [ -e /proc/{pid} ] || break; sleep 0.1; done; [ -e /proc/{pid} ] && echo running || echo gone"));
        assert_eq!(gone.trim(), "gone", "host {i}: JVM {pid}");
    }
}

#[test]
fn the_same_java_source_builds_the_same_jar_and_release_and_an_unchanged_build_reuses_the_step() {
    let a = fixture();
    let first = a.ferry(["build", "--json"]).ok().json();
    step_ran(&first, "1.0.0");
    let jar = fs::read(a.path("build/libs/hello.jar")).unwrap();

    // Nothing changed under its inputs: the step does not run again.
    let again = a.ferry(["build", "--json"]).ok().json();
    assert_eq!(again["steps"][0]["cached"], true, "{again}");
    assert_eq!(again["warnings"], serde_json::json!([]), "{again}");
    assert_eq!(id(&again), id(&first));
    // The jar gone from the tree: the cache puts the step's output back
    // (a file, not a directory), and the release is the same.
    fs::remove_file(a.path("build/libs/hello.jar")).unwrap();
    let restored = a.ferry(["build", "--json"]).ok().json();
    assert_eq!(restored["steps"][0]["cached"], true, "{restored}");
    assert_eq!(fs::read(a.path("build/libs/hello.jar")).unwrap(), jar);
    assert_eq!(id(&restored), id(&first));

    // Another checkout at another path, built a minute later in another
    // time zone: javac and jar run again and make the same bytes.
    let b = fixture();
    sh(&format!("touch -d '-1 minute' {}/src/main/java/com/example/hello/Hello.java", b.root().display()));
    let mut cmd = ferry_cmd();
    cmd.args(["build", "--json", "--store"]).arg(b.store.path()).arg("-c").arg(b.path("ferry.toml"));
    let other = run(cmd.env("TZ", "Pacific/Kiritimati")).ok().json();
    step_ran(&other, "1.0.0");
    assert_eq!(fs::read(b.path("build/libs/hello.jar")).unwrap(), jar, "the same jar");
    assert_eq!(id(&other), id(&first), "the same release");
}

#[test]
fn init_on_a_built_java_tree_finds_the_jar_and_suggests_running_it_from_the_release() {
    let p = fixture();
    sh(&format!("cd {} && sh build.sh && rm ferry.toml", p.root().display()));
    let r = run(ferry_cmd().arg("init").arg(p.root()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    assert!(toml.contains("\njar = \"build/libs/hello.jar\"\n"), "{toml}");
    // The program runs in <deploy_to>/current: the jar's path is the
    // release's, not current/… (which would be current/current/…).
    assert!(toml.contains("\n# command = \"java -Xmx256m -jar build/libs/hello.jar\""), "{toml}");
    p.ferry(["build"]).ok();
}
