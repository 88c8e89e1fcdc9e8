//! The load balancer's faults (issue 13), each on real test hosts: the
//! example service on 4 web hosts behind an HAProxy test host (the 5th),
//! with the stage's `[stages.prod.load_balancer]` driving it.
//!
//! Each test names what it checks against: HAProxy's own state (its
//! runtime API, `show stat`, through [`Haproxy::server`]), the hosts'
//! `/srv/hello/current` (the example's deploy_to, read through the host's
//! `/srv`), ferry's exit code, report and words, and what a load through
//! HAProxy saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fs_err as fs;
use serde_json::Value;

use crate::kit::{example_project, ferry_bin, sh, Project};
use crate::lbkit::{Haproxy, HaproxyOpts};
use crate::load::{Load, LoadOpts};
use crate::runtime::{build, current};
use crate::testhosts::TestHosts;

/// The web hosts (0-based) of a set of 5 test hosts; host5 (4) is the LB.
pub(crate) const WEB: [usize; 4] = [0, 1, 2, 3];
pub(crate) const LB: usize = 4;

/// A web host's name in ferry's reports and config: `root@<addr>`.
fn name(hosts: &TestHosts, i: usize) -> String {
    format!("root@{}", hosts.hosts[i].addr)
}

/// The ferry.toml of the example service with the ssh stage `prod` over
/// the web hosts (batches of 1, 50% and 100%: host1 | host2 | host3,
/// host4), gated by its health URL on each host, behind `lb`:
/// `[stages.prod.load_balancer]` with the LB host's admin socket, backend
/// `web`, each host mapped to its server `hostN`. `stage` goes into
/// `[stages.prod]`; `extra` follows the load balancer's keys (more of its
/// keys, then any tables).
fn lb_toml(hosts: &TestHosts, lb: &Haproxy, stage: &str, extra: &str) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/example/ferry.toml");
    let toml = fs::read_to_string(fixture).unwrap();
    let list: Vec<String> = WEB.iter().map(|&i| format!("\"{}\"", name(hosts, i))).collect();
    let servers: Vec<String> =
        WEB.iter().zip(&lb.servers).map(|(&i, server)| format!("\"{}\" = \"{server}\"", name(hosts, i))).collect();
    format!(
        "{toml}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{}]\nenv = \"staging\"\n\
         strategy = [\"1\", \"50%\", \"100%\"]\nknown_hosts = \"{}\"\nidentity = \"{}\"\nagent = \"{}\"\n{stage}\n\
         [stages.prod.health.http]\nurl = \"http://{{host}}:8000/health\"\ntimeout = 2\nretries = 3\n\n\
         [stages.prod.load_balancer]\nkind = \"haproxy\"\nnodes = [{{ host = \"root@{}\", socket = \"{}\" }}]\n\
         backends = [\"{}\"]\nservers = {{ {} }}\n{extra}\n",
        list.join(", "),
        hosts.known_hosts.display(),
        hosts.key.display(),
        ferry_bin(),
        hosts.hosts[LB].addr,
        lb.socket_on_host(),
        lb.backend,
        servers.join(", "),
    )
}

/// The example service behind `haproxy`, as [`lb_toml`] writes it.
fn lb_project(hosts: &TestHosts, haproxy: &Haproxy, extra: &str) -> Project {
    let p = example_project();
    p.write("ferry.toml", lb_toml(hosts, haproxy, "", extra));
    p
}

/// Rewrites `p`'s stage, with `stage` keys and `extra` (see [`lb_toml`]).
fn rewrite(p: &Project, hosts: &TestHosts, haproxy: &Haproxy, stage: &str, extra: &str) {
    p.write("ferry.toml", lb_toml(hosts, haproxy, stage, extra));
}

/// 5 test hosts, HAProxy on the 5th, and the example service's v1 pushed
/// to the 4 others (before the stage has its load balancer: HAProxy
/// starts each server UP until its checks fail, and the capacity guard
/// would go by that), all UP in HAProxy; then the stage with it.
pub(crate) fn fleet(opts: HaproxyOpts, extra: &str) -> (TestHosts, Haproxy, Project, String) {
    fleet_on(TestHosts::start(5), opts, extra)
}

/// [`fleet`] on test hosts already started (5 of them).
pub(crate) fn fleet_on(hosts: TestHosts, opts: HaproxyOpts, extra: &str) -> (TestHosts, Haproxy, Project, String) {
    let lb = Haproxy::start(&hosts, LB, &WEB, opts);
    let p = lb_project(&hosts, &lb, extra);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let (without, _) = toml.split_once("\n[stages.prod.load_balancer]\n").unwrap();
    p.write("ferry.toml", without);
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    lb.wait_all_up(Duration::from_secs(10));
    p.write("ferry.toml", toml);
    (hosts, lb, p, v1)
}

/// Every server's status in HAProxy, by name.
fn states(lb: &Haproxy) -> Vec<(String, String)> {
    lb.servers.iter().map(|s| (s.clone(), lb.server(s).status)).collect()
}

/// Every server's `chkdown` (how often its checks took it down).
fn checks_down(lb: &Haproxy) -> Vec<String> {
    lb.servers.iter().map(|s| lb.server(s).fields.get("chkdown").cloned().unwrap_or_default()).collect()
}

/// Each web host's `current` (the release id it points at).
fn currents(hosts: &TestHosts) -> Vec<String> {
    WEB.iter().map(|&i| current(hosts, i)).collect()
}

/// Whether any web host has release `id` on disk (staged).
fn staged_anywhere(hosts: &TestHosts, id: &str) -> Vec<String> {
    WEB.iter()
        .filter(|&&i| hosts.hosts[i].srv.join("hello/releases").join(id).exists())
        .map(|&i| name(hosts, i))
        .collect()
}

/// The push report's row for `host`.
fn row(report: &Value, host: &str) -> Value {
    report["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap_or_else(|| panic!("{report}")).clone()
}

/// One `GET path` through `addr` on a connection of its own, with the
/// extra header lines `headers`: the status, or why it failed.
fn get(addr: SocketAddr, path: &str, headers: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {text:?}"))
}

/// Sticky clients: `n` threads, each looping `GET /slow?s=1` through HAProxy
/// with the cookie that pins it to `server`, started a third of a second
/// apart so that some request of theirs is always in flight there. Runs
/// `body`, then stops them; their (answered, failed) counts.
fn with_sticky_clients<T>(lb: &Haproxy, server: &str, n: usize, body: impl FnOnce(&AtomicBool) -> T) -> (T, u64, u64) {
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let cookie = format!("Cookie: SRV={server}\r\n");
    let out = std::thread::scope(|s| {
        for k in 0..n {
            let (stop, ok, failed, cookie) = (&stop, &ok, &failed, &cookie);
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(330 * k as u64));
                while !stop.load(Ordering::Relaxed) {
                    match get(lb.addr, "/slow?s=1", cookie) {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let out = body(&stop);
        stop.store(true, Ordering::Relaxed);
        out
    });
    (out, ok.into_inner(), failed.into_inner())
}

/// Waits until server `name` has at least `n` sessions in HAProxy, and no
/// other server has any; panics after 10 s.
#[track_caller]
fn wait_sessions_only_on(lb: &Haproxy, name: &str, n: u64) {
    let start = Instant::now();
    loop {
        let rows: Vec<(String, u64)> = lb.servers.iter().map(|s| (s.clone(), lb.server(s).scur)).collect();
        if rows.iter().all(|(s, scur)| if s == name { *scur >= n } else { *scur == 0 }) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "sessions (scur) by server: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checked against: ferry's exit code and words; `current` on every web
/// host and the new release not staged anywhere; HAProxy's states.
#[test]
fn an_admin_socket_not_at_level_admin_is_refused_before_any_flip() {
    let (hosts, lb, p, v1) = fleet(HaproxyOpts { operator_socket: true, ..HaproxyOpts::default() }, "");
    let v2 = build(&p, "v2");
    let before = states(&lb);
    assert!(before.iter().all(|(_, s)| s == "UP"), "{before:?}");
    let checks_down_before = checks_down(&lb);
    // The same config, with the node's socket the `level operator` one.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let operator = lb.operator_socket_on_host().unwrap();
    p.write("ferry.toml", toml.replace(lb.socket_on_host(), operator));

    let err = p.ferry(["push", "prod"]).fails(2);
    eprintln!("{err}");
    let lb_node = format!("load balancer root@{}", hosts.hosts[LB].addr);
    assert!(err.contains(&lb_node), "names the LB node: {err}");
    assert!(err.contains(&format!("the admin socket {operator} is at level \"operator\"")), "{err}");
    assert!(err.contains("`stats socket") && err.contains("level admin`"), "says what to write: {err}");
    assert_eq!(currents(&hosts), vec![v1; 4], "no host flipped");
    assert!(staged_anywhere(&hosts, &v2).is_empty(), "nothing staged: {:?}", staged_anywhere(&hosts, &v2));
    assert_eq!(states(&lb), before, "HAProxy's states did not move");
    // No check of HAProxy's went down meanwhile either.
    assert_eq!(checks_down(&lb), checks_down_before, "{:?}", states(&lb));
}

/// Checked against: ferry's exit code and words (HAProxy's servers listed);
/// `current` on every web host, nothing staged; HAProxy's states.
#[test]
fn a_server_name_not_in_the_backend_is_refused_listing_the_backends_servers() {
    let (hosts, lb, p, v1) = fleet(HaproxyOpts::default(), "");
    let v2 = build(&p, "v2");
    let before = states(&lb);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let host3 = name(&hosts, 2);
    let mapped = format!("\"{host3}\" = \"host3\"");
    assert!(toml.contains(&mapped), "{toml}");
    p.write("ferry.toml", toml.replace(&mapped, &format!("\"{host3}\" = \"nosuch\"")));

    let err = p.ferry(["push", "prod"]).fails(2);
    eprintln!("{err}");
    assert!(
        err.contains(&format!(
            "load balancer root@{}: backend web has no server nosuch (for host {host3}); its servers: host1, host2, \
             host3, host4",
            hosts.hosts[LB].addr
        )),
        "{err}"
    );
    assert!(err.contains("servers"), "{err}");
    assert_eq!(currents(&hosts), vec![v1; 4], "no host flipped");
    assert!(staged_anywhere(&hosts, &v2).is_empty(), "nothing staged");
    assert_eq!(states(&lb), before, "HAProxy's states did not move");
}

/// Sticky sessions (cookie persistence) keep host1 busy while it drains:
/// HAProxy keeps sending a draining server the requests that carry its
/// cookie, so its `scur` never reaches 0. Checked against: HAProxy's
/// `scur` (the clients really hold host1), the push's exit code, the
/// report's `forced` and drain time, ferry's warning line, and HAProxy's
/// states at the end.
#[test]
fn a_drain_that_times_out_shuts_the_sessions_down_and_says_so() {
    let _one = crate::kit::one_at_a_time();
    let opts = HaproxyOpts {
        server_cookies: true,
        backend_lines: vec!["cookie SRV insert indirect nocache".into()],
        ..HaproxyOpts::default()
    };
    let (hosts, lb, p, _) = fleet(opts, "drain_timeout = 2\n");
    let host1 = name(&hosts, 0);
    let v2 = build(&p, "v2");

    // A push with sticky clients on host1 throughout its drain, as JSON.
    let push = |args: &[&str]| {
        let (run, ok, failed) = with_sticky_clients(&lb, "host1", 3, |stop| {
            wait_sessions_only_on(&lb, "host1", 2);
            std::thread::scope(|s| {
                let push = s.spawn(|| p.ferry(args));
                // Once host1 is in maint its sessions were shut down: the
                // clients stop (HAProxy would send them elsewhere now).
                let start = Instant::now();
                while lb.server("host1").status != "MAINT" && start.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                stop.store(true, Ordering::Relaxed);
                push.join().unwrap()
            })
        });
        eprintln!("sticky clients: {ok} answered, {failed} failed (shut down)\n{}", run.stderr);
        assert!(ok > 0, "the sticky clients were answered before the drain");
        run
    };
    let run = push(&["push", "prod", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let batches = report["load_balancer"]["batches"].as_array().unwrap().clone();
    assert_eq!(batches.len(), 3, "{report}");
    let forced = batches[0]["forced"].as_array().unwrap_or_else(|| panic!("no forced in {}", batches[0]));
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert_eq!(forced[0][0], host1.as_str(), "{forced:?}");
    assert!(forced[0][1].as_u64().unwrap() >= 1, "{forced:?}");
    // It waited the drain timeout, not longer (ferry polls every 50 ms).
    let drain = batches[0]["drain_seconds"].as_f64().unwrap();
    assert!((2.0..3.5).contains(&drain), "drained for {drain} s with drain_timeout = 2: {report}");
    for b in &batches[1..] {
        assert!(b["forced"].is_null(), "only host1 had sticky sessions: {b}");
        assert!(b["drain_seconds"].as_f64().unwrap() < 1.0, "{b}");
    }
    assert!(report["load_balancer"]["left_out"].is_null(), "{report}");
    assert_eq!(currents(&hosts), vec![v2; 4]);
    lb.wait_all_up(Duration::from_secs(5));

    // The same, said to a person.
    let v3 = build(&p, "v3");
    let run = push(&["push", "prod"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("sessions outlived the drain timeout and were shut down"))
        .unwrap_or_else(|| panic!("no warning of the shut down sessions:\n{}", run.stderr));
    assert!(line.starts_with(&format!("warning: {host1}: ")), "{line}");
    assert_eq!(run.stderr.matches("sessions outlived the drain timeout").count(), 1, "only host1's: {}", run.stderr);
    assert_eq!(currents(&hosts), vec![v3; 4]);
    assert!(states(&lb).iter().all(|(_, s)| s == "UP"), "{:?}", states(&lb));
}

/// A cut link makes each admin socket call wait for the ssh step timeout
/// (then 2 s more for the channel's end): the stage's are short here. Not
/// under 10 s: a web host's activate is one step, and gunicorn now and then
/// outlives SIGTERM until supervisord kills it at `stopwaitsecs` (5 s), so
/// with 5 s a restart sometimes timed out.
const TIMEOUTS: &str = "connect_timeout = 3\nstep_timeout = 10\n";

/// The LB host is cut off (its link down) before batch 2 goes out: the
/// stage's before_batch hook cuts it. Checked against: the exit code; the
/// report's `load_balancer` (its error, nothing left out) and the hosts'
/// results and warnings; `current` on every web host; HAProxy's states
/// once the link is back.
#[test]
fn an_lb_node_lost_before_a_batch_stops_the_push_and_flips_back_without_draining() {
    let _one = crate::kit::one_at_a_time();
    let (hosts, lb, p, v1) = fleet(HaproxyOpts::default(), "");
    let veth = hosts.hosts[LB].veth.clone();
    let lb_node = format!("load balancer root@{}", hosts.hosts[LB].addr);
    build(&p, "v2");
    // Batch 1 (host1) goes through and is back in rotation; then the LB
    // is lost: ferry took nothing out that it did not put back, and flips
    // host1 back without draining.
    let hook = format!(
        "[stages.prod.hooks]\nbefore_batch = 'if [ \"$FERRY_BATCH\" = 2 ]; then ip link set {veth} down; fi'\n"
    );
    rewrite(&p, &hosts, &lb, TIMEOUTS, &hook);
    let start = Instant::now();
    let run = p.ferry(["push", "prod", "--json"]);
    let took = start.elapsed();
    sh(&format!("ip link set {veth} up"));
    eprintln!(
        "push with the LB cut before batch 2: {:.1} s, exit {}\n{}\n{}",
        took.as_secs_f64(),
        run.code,
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, 1, "some hosts changed: exit 1\n{}", run.stderr);
    let report = run.json();
    let error = report["load_balancer"]["error"].as_str().unwrap_or_else(|| panic!("no load_balancer.error: {report}"));
    assert!(error.contains(&lb_node), "{error}");
    assert!(report["load_balancer"]["left_out"].is_null(), "nothing was out when the LB went: {report}");
    assert_eq!(report["load_balancer"]["batches"].as_array().unwrap().len(), 1, "batch 2 never went out: {report}");
    let host1 = row(&report, &name(&hosts, 0));
    assert_eq!(host1["result"], "reverted", "{host1}");
    let warning = host1["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("flipped back without draining: the load balancer did not answer"), "{host1}");
    // host2 (batch 2, whose take_out found the LB gone) never flipped — its
    // row says `skipped` at step `setup` — so no "flipped back without
    // draining" on it (ferry once warned every host of the failed batch).
    let mut wrong = Vec::new();
    for i in 1..4 {
        let r = row(&report, &name(&hosts, i));
        if r["warning"].as_str().unwrap_or_default().contains("flipped back") {
            wrong.push(format!("host{} never flipped, so it was not flipped back: {r}", i + 1));
        }
    }
    assert_eq!(currents(&hosts), vec![v1.clone(); 4], "host1 went back, the others never flipped");
    lb.wait_all_up(Duration::from_secs(5));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // Once the LB node's session broke (a reply not read within
    // step_timeout), ferry asks it nothing more: before that fix it waited
    // step_timeout (+ 2 s) again for each command of the revert, with host1
    // on the new release in rotation meanwhile (600 s each by default).
    // Flipping host1 back takes about 2 s here.
    let revert = report["phases"]["revert"].as_f64().unwrap();
    if revert >= 10.0 {
        wrong.push(format!("the revert waited {revert:.1} s on a load balancer already lost"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The LB host is cut off (its link down) while batch 2 (host2) is out of
/// rotation: a command gate, which runs then, cuts it. ferry cannot put
/// host2 back, and says so. Checked against: the exit code and the
/// warnings; `current` on every web host; and, with the link up again,
/// HAProxy's states against what ferry said it left out — then `ferry lb
/// prod status` (no mismatch: ferry recorded it) and `ferry lb prod in`.
#[test]
fn an_lb_node_lost_mid_push_stops_the_push_and_reports_what_it_left_out() {
    let _one = crate::kit::one_at_a_time();
    let (hosts, lb, p, v1) = fleet(HaproxyOpts::default(), "");
    let veth = hosts.hosts[LB].veth.clone();
    let lb_node = format!("load balancer root@{}", hosts.hosts[LB].addr);
    build(&p, "v2");
    let gate = format!(
        "[stages.prod.health.command]\nrun = 'case \" $FERRY_HOSTS \" in *\" {} \"*) ip link set {veth} down;; esac'\n",
        name(&hosts, 1)
    );
    rewrite(&p, &hosts, &lb, TIMEOUTS, &gate);
    let start = Instant::now();
    let run = p.ferry(["push", "prod"]);
    let took = start.elapsed();
    // What ferry wrote to the LB node's agent before it gave up is still in
    // its exited process's TCP send queue, retransmitted until the kernel
    // gives up: with the link back, the `set … state ready` ferry reported
    // failed would reach HAProxy and put host2 in rotation after all. The
    // LB node comes back here as after a reboot: that connection is gone.
    eprintln!("{}", sh(&format!("ss -tn dst {}", hosts.hosts[LB].addr)));
    sh(&format!("ss -K -tn dst {}", hosts.hosts[LB].addr));
    sh(&format!("ip link set {veth} up"));
    eprintln!(
        "push with the LB cut while batch 2 is out: {:.1} s, exit {}\n{}",
        took.as_secs_f64(),
        run.code,
        run.stderr
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&lb_node), "{}", run.stderr);
    let host2 = name(&hosts, 1);
    let left: Vec<&str> = run.stderr.lines().filter(|l| l.contains("is left out of rotation")).collect();
    assert_eq!(left.len(), 1, "{}", run.stderr);
    assert!(left[0].starts_with(&format!("warning: {host2} is left out of rotation")), "{}", left[0]);
    assert!(left[0].contains(&format!("`ferry lb prod in {host2}` puts it back")), "{}", left[0]);
    // host2 was out of rotation from its drain to the end of the push,
    // flipped and gated meanwhile: its batch's line says so (it once said
    // 0.00 s for all of it).
    let batch2 = run
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("load balancer: {host2} out of rotation")))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let mut wrong = Vec::new();
    if batch2.contains("out of rotation 0.00 s") || batch2.contains("flip and gates 0.00 s") {
        wrong.push(format!("host2's time out of rotation is not 0: {batch2}"));
    }
    // A node that stopped answering is not a socket misconfigured: no
    // advice to check `stats socket … level admin`.
    if run.stderr.contains("level admin` in haproxy.cfg") {
        wrong.push("a lost LB node is not a misconfigured socket: no advice to check `stats socket`".to_owned());
    }
    assert_eq!(currents(&hosts), vec![v1.clone(); 4], "host1 and host2 went back, host3 and host4 never flipped");
    // HAProxy agrees: what is in maint is what ferry said it left out (the
    // others are UP again once its checks reach them).
    lb.wait_up(&["host1", "host3", "host4"], Duration::from_secs(5));
    let maint: Vec<String> = states(&lb).into_iter().filter(|(_, s)| s == "MAINT").map(|(n, _)| n).collect();
    assert_eq!(maint, ["host2"], "{:?}", states(&lb));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // ferry remembers it set host2 out, so status sees no mismatch; `in`
    // puts it back.
    let status = p.ferry(["lb", "prod", "status"]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
    p.ferry(["lb", "prod", "in", &host2]).ok();
    lb.wait_all_up(Duration::from_secs(1));
    assert_eq!(current(&hosts, 1), v1);
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), run.stderr);
}

/// Checked against: ferry's exit code and words; `current` on every web
/// host, nothing staged; HAProxy's states (set by ferry: none; by hand:
/// only those).
#[test]
fn the_capacity_guard_refuses_before_anything_changes() {
    let (hosts, lb, p, v1) = fleet(HaproxyOpts::default(), "");
    let v2 = build(&p, "v2");
    // Batches host1 | host2 | host3, host4: the last would leave 2 < 3.
    rewrite(&p, &hosts, &lb, "", "min_in_service = 3\n");
    let before = states(&lb);
    let err = p.ferry(["push", "prod"]).fails(2);
    eprintln!("{err}");
    let (h3, h4) = (name(&hosts, 2), name(&hosts, 3));
    assert!(
        err.contains(&format!(
            "taking {h3}, {h4} out of backend web would leave 2 of its servers in service (4 are now: host1, host2, \
             host3, host4), fewer than min_in_service = 3; nothing was changed"
        )),
        "{err}"
    );
    assert_eq!(currents(&hosts), vec![v1.clone(); 4]);
    assert!(staged_anywhere(&hosts, &v2).is_empty(), "nothing staged");
    assert_eq!(states(&lb), before);

    // With host2 and host3 out by hand, host1 and host4 are the last two.
    lb.admin("set server web/host2 state maint");
    lb.admin("set server web/host3 state maint");
    let r = p.ferry(["lb", "prod", "out", &format!("{},{h4}", name(&hosts, 0))]);
    eprintln!("{}", r.stderr);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "taking {}, {h4} out of backend web would leave 0 of its servers in service (2 are now: host1, host4)",
            name(&hosts, 0)
        )),
        "{}",
        r.stderr
    );
    let now = states(&lb);
    assert_eq!(now.iter().filter(|(_, s)| s == "UP").count(), 2, "host1 and host4 untouched: {now:?}");
    assert_eq!(lb.server("host1").status, "UP");
    assert_eq!(lb.server("host4").status, "UP");
    // And a push now would leave too few too.
    let err = p.ferry(["push", "prod"]).fails(2);
    assert!(err.contains("(2 are now: host1, host4)"), "{err}");
    assert_eq!(currents(&hosts), vec![v1; 4]);
}

/// Checked against: HAProxy's states (MAINT, then UP after the reload,
/// then MAINT again), and `ferry lb prod status`'s exit code and words.
#[test]
fn a_reload_of_haproxy_shows_as_a_mismatch_and_out_sets_it_again() {
    let (hosts, lb, p, _) = fleet(HaproxyOpts::default(), "");
    let groups = format!(
        "groups = {{ group1 = [\"{}\", \"{}\"], group2 = [\"{}\", \"{}\"] }}\n",
        name(&hosts, 0),
        name(&hosts, 1),
        name(&hosts, 2),
        name(&hosts, 3)
    );
    rewrite(&p, &hosts, &lb, &groups, "");
    p.ferry(["lb", "prod", "out", "group1"]).ok();
    for s in ["host1", "host2"] {
        assert_eq!(lb.server(s).status, "MAINT", "{:?}", states(&lb));
    }
    for s in ["host3", "host4"] {
        assert_eq!(lb.server(s).status, "UP");
    }
    p.ferry(["lb", "prod", "status"]).ok();

    lb.reload();
    lb.wait_all_up(Duration::from_secs(10));
    let r = p.ferry(["lb", "prod", "status"]);
    eprintln!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "a mismatch exits 1\n{}\n{}", r.stdout, r.stderr);
    let mismatches: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("mismatch: ")).collect();
    assert_eq!(mismatches.len(), 2, "{}", r.stderr);
    for (m, (server, host)) in mismatches.iter().zip([("host1", name(&hosts, 0)), ("host2", name(&hosts, 1))]) {
        assert!(
            m.starts_with(&format!(
                "mismatch: {server} on root@{}: ferry set maint, HAProxy shows UP",
                hosts.hosts[LB].addr
            )),
            "{m}"
        );
        assert!(m.contains(&format!("`ferry lb prod out {host}` sets it again")), "{m}");
    }

    p.ferry(["lb", "prod", "out", "group1"]).ok();
    for s in ["host1", "host2"] {
        assert_eq!(lb.server(s).status, "MAINT", "{:?}", states(&lb));
    }
    let r = p.ferry(["lb", "prod", "status"]).ok();
    assert!(!r.stderr.contains("mismatch"), "{}", r.stderr);
    p.ferry(["lb", "prod", "all"]).ok();
    assert!(states(&lb).iter().all(|(_, s)| s == "UP"));
}

/// Checked against: the exit code and the report (gate evidence, hosts'
/// results); `current` on every web host; HAProxy's states and error
/// counters; and what two loads through HAProxy (kept alive and not) saw.
#[test]
fn a_failed_gate_behind_the_load_balancer_reverts_while_out_of_rotation_and_loses_no_request() {
    let _one = crate::kit::one_at_a_time();
    // Traffic through HAProxy says Host: shop.test; ferry's http gate asks
    // each host directly, as its address.
    let opts =
        HaproxyOpts { frontend_lines: vec!["http-request set-header Host shop.test".into()], ..HaproxyOpts::default() };
    let errors = "\n[stages.prod.health.errors]\nsource = \"load_balancer\"\nwindow = 3\nmin_requests = 20\n";
    let (hosts, lb, p, v1) = fleet(opts, errors);
    let loads = || crate::lb::two_loads(&lb);

    // Part 1: v2 fails on the canary, and only for its own address: the
    // direct http gate sees 500s, the load never does.
    p.write("app/BAD_HOSTS", format!("{}\n", hosts.hosts[0].addr));
    build(&p, "v2");
    let before = lb.errors();
    let (kept, closing) = loads();
    std::thread::sleep(Duration::from_secs(1));
    let run = p.ferry(["push", "prod", "--json"]);
    std::thread::sleep(Duration::from_secs(1));
    // Enough requests to count, however busy the machine (a busy one was
    // seen to slow the load to a few a second for a while).
    for load in [&kept, &closing] {
        load.wait_total(200, Duration::from_secs(60));
    }
    let (kept, closing) = (kept.stop(), closing.stop());
    let said =
        format!("{}\n{}\n{}", run.stderr, kept.summary("keep-alive"), closing.summary("one connection a request"));
    eprintln!("{said}");
    assert_eq!(run.code, 1, "{said}");
    let report = run.json();
    let gate = report["gate"].as_str().unwrap_or_else(|| panic!("{report}"));
    assert!(gate.contains("500"), "{gate}");
    assert_eq!(row(&report, &name(&hosts, 0))["result"], "reverted", "{report}");
    assert_eq!(currents(&hosts), vec![v1.clone(); 4], "host1 went back; the others never flipped");
    let batches = report["load_balancer"]["batches"].as_array().unwrap();
    assert_eq!(batches[0]["hosts"][0], name(&hosts, 0).as_str(), "{report}");
    assert!(report["load_balancer"]["left_out"].is_null(), "host1 passes on v1, so it is back: {report}");
    lb.wait_all_up(Duration::from_secs(2));
    for r in [&kept, &closing] {
        assert_eq!(r.failed(), 0, "{said}");
        assert!(r.ok > 100, "{said}");
        assert_eq!(r.versions.keys().collect::<Vec<_>>(), ["v1"], "the load never reached v2: {said}");
    }
    assert_eq!(lb.errors(), before, "HAProxy counted no error");

    // Part 2: v3 fails only for traffic through HAProxy (Host: shop.test):
    // ferry's direct gate passes, HAProxy's counts do not.
    p.write("app/BAD_HOSTS", "shop.test\n");
    build(&p, "v3");
    let host1_5xx = lb.server("host1").hrsp_5xx;
    let (kept, closing) = loads();
    std::thread::sleep(Duration::from_secs(1));
    let run = p.ferry(["push", "prod", "--json"]);
    std::thread::sleep(Duration::from_secs(1));
    let (kept, closing) = (kept.stop(), closing.stop());
    let said =
        format!("{}\n{}\n{}", run.stderr, kept.summary("keep-alive"), closing.summary("one connection a request"));
    eprintln!("{said}");
    assert_eq!(run.code, 1, "{said}");
    let report = run.json();
    let gate = report["gate"].as_str().unwrap_or_else(|| panic!("{report}")).to_owned();
    assert!(gate.starts_with(&format!("gate errors failed after batch {}", name(&hosts, 0))), "{gate}");
    // host1's every answer through HAProxy failed, and none of the others':
    // said in a failed rate ("error rate 100.0% over max_rate") or, when a
    // busy machine slowed the load to under min_requests in the window (seen
    // once), in an inconclusive one — either way the push fails.
    assert!(gate.contains(" failed (100.0%), hosts not yet flipped 0/"), "{gate}");
    // (Asserted at the end.) A failure says whose counts it judged, as a
    // pass does: "(HAProxy's counts)".
    let says_whose = gate.contains("HAProxy's counts");
    assert_eq!(row(&report, &name(&hosts, 0))["result"], "reverted", "{report}");
    assert_eq!(currents(&hosts), vec![v1.clone(); 4]);
    lb.wait_all_up(Duration::from_secs(2));
    assert!(lb.server("host1").hrsp_5xx > host1_5xx, "HAProxy saw host1's 500s");
    for r in [&kept, &closing] {
        // The window's 500s from host1 (its share of the load for about
        // 3 s), and nothing else: no reset, no 502.
        assert!(r.failed_by_kind.keys().all(|k| k == "500"), "{said}");
        assert!(r.failed() < r.total / 4, "{said}");
    }
    // At the end, every answer is v1's again.
    let load = Load::start(lb.addr, LoadOpts { connections: 4, ..LoadOpts::default() });
    load.wait_total(200, Duration::from_secs(20));
    let r = load.stop();
    assert_eq!(r.failed(), 0, "{}", r.summary("after"));
    assert_eq!(r.versions.keys().collect::<Vec<_>>(), ["v1"], "{}", r.summary("after"));
    assert!(says_whose, "the failed gate's evidence does not say it judged HAProxy's counts: {gate}");
}
