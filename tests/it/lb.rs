//! Load balancers: the example service on test hosts behind an HAProxy
//! test host ([`crate::lbkit`]), under load ([`crate::load`]).

use std::time::{Duration, Instant};

use fs_err as fs;

use crate::lb_faults::{fleet, LB, WEB};
use crate::lbkit::{send, ErrorCounters, Haproxy, HaproxyOpts};
use crate::load::{Load, LoadOpts};
use crate::runtime::build;
use crate::testhosts::TestHosts;

/// HAProxy's log lines of requests not answered 200 (at most 40).
fn not_200(lb: &Haproxy) -> String {
    let log = lb.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("GET ") && !l.contains(" 200 ")).take(40).collect();
    lines.join("\n")
}

#[test]
fn haproxy_test_host_balances_and_reports_its_servers() {
    let (hosts, lb, _p, _) = fleet(HaproxyOpts { operator_socket: true, ..HaproxyOpts::default() }, "");
    assert_eq!(lb.servers, ["host1", "host2", "host3", "host4"]);
    assert_eq!(lb.errors(), ErrorCounters::default(), "{:#?}", lb.stats());
    // ferry, on the LB host, finds the socket where the config says.
    for socket in [lb.socket_on_host(), lb.operator_socket_on_host().unwrap()] {
        let out = hosts.ssh(LB, &format!("test -S {socket}"));
        assert!(out.status.success(), "no socket at {socket} on the LB host");
    }
    assert!(fs::read_to_string(&lb.config).unwrap().contains("option httpchk GET /health\n"));
    let before = lb.errors();

    // As fast as 8 connections go, kept alive and not: every request is
    // answered, by all four servers.
    let fast = |keep_alive| LoadOpts { keep_alive, connections: 8, pause: Duration::ZERO, ..LoadOpts::default() };
    let load = Load::start(lb.addr, fast(true));
    std::thread::sleep(Duration::from_secs(2));
    let kept = load.stop();
    eprintln!("{}", kept.summary("8 keep-alive connections, no pause"));
    let load = Load::start(lb.addr, fast(false));
    std::thread::sleep(Duration::from_secs(2));
    let closing = load.stop();
    eprintln!("{}", closing.summary("8 connections, one a request, no pause"));
    for r in [&kept, &closing] {
        assert_eq!(r.failed(), 0, "{}\nHAProxy said:\n{}", r.summary("load"), not_200(&lb));
        assert!(r.ok > 100, "{}", r.summary("load"));
        assert_eq!(r.versions.get("v1"), Some(&r.ok), "{r:?}");
    }
    for name in &lb.servers {
        let row = lb.server(name);
        assert!(row.stot > 0, "{name} served nothing: {row:?}");
        assert_eq!((row.status.as_str(), row.check_status.as_str()), ("UP", "L7OK"), "{row:?}");
    }
    assert_eq!(lb.errors(), before, "no error counter moved");

    // The runtime API, at level admin and not.
    assert_eq!(lb.admin("set server web/host1 state maint").trim(), "");
    assert_eq!(lb.server("host1").status, "MAINT");
    lb.admin("set server web/host3 state drain");
    lb.wait_status("host3", "DRAIN", Duration::from_secs(2));
    lb.admin("set server web/host3 state ready");
    lb.wait_status("host3", "UP", Duration::from_secs(2));
    let operator = send(&lb.operator_socket_here().unwrap(), "set server web/host2 state maint").unwrap();
    assert!(operator.contains("Permission denied"), "{operator}");
    assert_eq!(lb.server("host2").status, "UP");
    let load = Load::start(lb.addr, LoadOpts { connections: 4, ..LoadOpts::default() });
    load.wait_total(200, Duration::from_secs(20));
    assert_eq!(load.failed(), 0);
    let r = load.stop();
    assert_eq!(r.failed(), 0, "{}", r.summary("load"));
    let host1 = lb.server("host1").stot;
    assert!(lb.server("host2").stot > 0);

    // A reload starts every server as the config says: MAINT is forgotten.
    let worker = lb.worker_pid();
    lb.reload();
    assert_ne!(lb.worker_pid(), worker);
    lb.wait_all_up(Duration::from_secs(10));
    let load = Load::start(lb.addr, LoadOpts { connections: 4, ..LoadOpts::default() });
    load.wait_total(400, Duration::from_secs(20));
    let r = load.stop();
    assert_eq!(r.failed(), 0, "{}", r.summary("load"));
    assert!(lb.server("host1").stot > 0, "host1 serves again (its count restarted at {host1} in the new worker)");
}

/// Two loads through HAProxy, one on kept-alive connections and one a
/// connection a request, each 4 connections on `/` 1 ms apart and one on
/// `/slow` (2 s), so a drain has requests to wait for.
pub(crate) fn two_loads(lb: &Haproxy) -> (Load, Load) {
    let opts = |keep_alive| LoadOpts {
        keep_alive,
        connections: 4,
        pause: Duration::from_millis(1),
        slow: 1,
        ..LoadOpts::default()
    };
    (Load::start(lb.addr, opts(true)), Load::start(lb.addr, opts(false)))
}

/// The push of issue 13's first promise: behind HAProxy, under constant
/// load (kept alive and not, with slow requests in flight), a rolling push
/// of v2 to 4 hosts fails no request of at least 10,000 of each load, and
/// moves none of HAProxy's error counters; then the same push (of v3) with
/// the load balancer left out of the config fails requests.
///
/// Why the second half fails: what fails is not the refused connects while
/// gunicorn is down (HAProxy retries those, `wretr`, and they succeed). It
/// is the connections the kernel still accepts on gunicorn's listening
/// socket between SIGTERM and the exit of its last worker (a worker
/// finishing a `/slow` request keeps it open for up to 2 s; without one, the
/// few ms a worker takes to exit): they are reset unanswered, after HAProxy
/// sent the request, so it does not retry them. A client of its own
/// connection gets a 502 (`SH--` in HAProxy's log); a kept-alive client's
/// connection is closed with no answer (no 502, no log line), which counts
/// as `eof-reused`. Measured when the kit was written: 4 to 15 such failures
/// of each load a push. HAProxy's `retry-on all-retryable-errors` (which
/// also retries requests the server dropped) hid them in 2 runs of 2 — for
/// these GETs; `option redispatch` did not. So the kit keeps HAProxy's
/// default `retry-on`, or the first half would prove nothing.
#[test]
fn a_rolling_push_behind_haproxy_fails_no_request_and_the_same_push_without_it_does() {
    let _one = crate::kit::one_at_a_time();
    let (_hosts, lb, p, _) = fleet(HaproxyOpts::default(), "drain_timeout = 30\n");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let (plain, _) = toml.split_once("\n[stages.prod.load_balancer]\n").unwrap();
    let plain = plain.to_owned();

    build(&p, "v2");
    let before = lb.errors();
    let (kept, closing) = two_loads(&lb);
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let push = start.elapsed();
    let during = (kept.total(), closing.total());
    // At least 10,000 of each, the push's and after it.
    kept.wait_total(10_000, Duration::from_secs(120));
    closing.wait_total(10_000, Duration::from_secs(120));
    let (kept, closing) = (kept.stop(), closing.stop());
    let said = format!(
        "push of v2 behind HAProxy: {:.1} s ({} and {} requests during it)\n{}\n{}\nHAProxy's errors before {before:?}, \
         after {:?}\nHAProxy's log of requests not answered 200:\n{}\nreport: {report:#}",
        push.as_secs_f64(),
        during.0,
        during.1,
        kept.summary("keep-alive"),
        closing.summary("one connection a request"),
        lb.errors(),
        not_200(&lb)
    );
    eprintln!("{said}");
    for r in [&kept, &closing] {
        assert_eq!(r.failed(), 0, "{said}");
        assert!(r.total >= 10_000, "{said}");
        assert!(r.versions.contains_key("v1") && r.versions.contains_key("v2"), "{said}");
    }
    assert_eq!(lb.errors(), before, "HAProxy counted errors:\n{said}");
    // Each batch went out of rotation and came back, by HAProxy's word:
    // none is left in ferry's maint or drain, and every one is UP once its
    // checks pass again (the load just stopped: on a busy 2-core machine a
    // check timed out under it and HAProxy counted a server DOWN for a rise).
    let batches = report["load_balancer"]["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 3, "{report:#}");
    for name in &lb.servers {
        let status = lb.server(name).status;
        assert!(!status.starts_with("MAINT") && !status.starts_with("DRAIN"), "{name}: {status}");
    }
    lb.wait_all_up(Duration::from_secs(10));

    // The same push, without the load balancer in the config.
    p.write("ferry.toml", &plain);
    build(&p, "v3");
    let (kept, closing) = two_loads(&lb);
    std::thread::sleep(Duration::from_secs(1));
    p.ferry(["push", "prod"]).ok();
    std::thread::sleep(Duration::from_secs(1));
    let (kept, closing) = (kept.stop(), closing.stop());
    let said = format!(
        "push of v3 without the load balancer:\n{}\n{}\nHAProxy's errors: {:?}\nHAProxy's log of requests not answered 200:\n{}",
        kept.summary("keep-alive"),
        closing.summary("one connection a request"),
        lb.errors(),
        not_200(&lb)
    );
    eprintln!("{said}");
    for r in [&kept, &closing] {
        assert!(r.versions.contains_key("v3"), "{said}");
        assert!(r.failed() > 0, "a rolling push without the load balancer failed no request:\n{said}");
    }
}

/// What `GET /` on a web host answers, directly (not through HAProxy).
fn serves(hosts: &TestHosts, i: usize) -> String {
    crate::runtime::get(hosts.hosts[i].addr, "/").1
}

/// Each server's status in HAProxy, in the kit's order.
fn statuses(lb: &Haproxy) -> Vec<String> {
    lb.servers.iter().map(|s| lb.server(s).status).collect()
}

/// OpenSky's flow — group1 out, deploy to it, flip the groups, deploy to
/// group2, all back in — by hand with `ferry lb` and `ferry push --out`,
/// then as one `ferry push` with a strategy of the two groups; each step
/// asserted from HAProxy's own state and from what each host serves.
#[test]
fn the_opensky_group_flow_by_hand_and_as_one_push() {
    let _one = crate::kit::one_at_a_time();
    let hosts = TestHosts::start(5);
    let host = |i: usize| format!("\"root@{}\"", hosts.hosts[i].addr);
    let groups =
        format!("[stages.prod.groups]\ngroup1 = [{}, {}]\ngroup2 = [{}, {}]\n", host(0), host(1), host(2), host(3));
    let (hosts, lb, p, _) = crate::lb_faults::fleet_on(hosts, HaproxyOpts::default(), &groups);
    let (up, maint) = ("UP", "MAINT");

    p.ferry(["lb", "prod", "out", "group1"]).ok();
    assert_eq!(statuses(&lb), [maint, maint, up, up]);
    build(&p, "v2");
    let report = p.ferry(["push", "prod", "--out", "--json"]).ok().json();
    let pushed: Vec<&str> = report["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(pushed, [format!("root@{}", hosts.hosts[0].addr), format!("root@{}", hosts.hosts[1].addr)]);
    assert!(report.get("load_balancer").is_none(), "--out leaves the load balancer alone: {report:#}");
    assert_eq!(statuses(&lb), [maint, maint, up, up], "--out changed HAProxy's states");
    let served: Vec<String> = WEB.iter().map(|&i| serves(&hosts, i)).collect();
    assert!(served[0].contains("v2") && served[1].contains("v2"), "{served:?}");
    assert!(served[2].contains("v1") && served[3].contains("v1"), "{served:?}");

    p.ferry(["lb", "prod", "flip"]).ok();
    assert_eq!(statuses(&lb), [up, up, maint, maint]);
    p.ferry(["push", "prod", "--out"]).ok();
    assert_eq!(statuses(&lb), [up, up, maint, maint]);
    assert!(WEB.iter().all(|&i| serves(&hosts, i).contains("v2")));
    p.ferry(["lb", "prod", "all"]).ok();
    assert_eq!(statuses(&lb), [up, up, up, up]);
    let status = p.ferry(["lb", "prod", "status", "--json"]).ok().json();
    assert_eq!(status["mismatches"], serde_json::json!([]), "{status:#}");
    assert_eq!(status["servers"].as_array().unwrap().len(), 4, "{status:#}");
    // Nothing out: --out has nothing to push to, and says so.
    let err = p.ferry(["push", "prod", "--out"]).fails(2);
    assert!(err.contains("no host of stage prod is out of the load balancer's rotation"), "{err}");

    // As one push: strategy = the groups. A watcher samples HAProxy's
    // states throughout.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let (local, prod) = toml.split_once("[stages.prod]").unwrap();
    let prod = prod.replacen("strategy = [\"1\", \"50%\", \"100%\"]", "strategy = [\"group1\", \"group2\"]", 1);
    p.write("ferry.toml", format!("{local}[stages.prod]{prod}"));
    build(&p, "v3");
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen: Vec<Vec<String>> = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let now = statuses(&lb);
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let report = p.ferry(["push", "prod", "--json"]).ok().json();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let batches: Vec<usize> = report["load_balancer"]["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["hosts"].as_array().unwrap().len())
            .collect();
        assert_eq!(batches, [2, 2], "{report:#}");
        watcher.join().unwrap()
    });
    let out = |s: &Vec<String>, i: usize| s[i] != "UP";
    let group1_out = seen.iter().position(|s| out(s, 0) && out(s, 1) && !out(s, 2) && !out(s, 3));
    let group2_out = seen.iter().position(|s| !out(s, 0) && !out(s, 1) && out(s, 2) && out(s, 3));
    assert!(matches!((group1_out, group2_out), (Some(a), Some(b)) if a < b), "HAProxy's states went: {seen:?}");
    assert!(!seen.iter().any(|s| (0..4).all(|i| out(s, i))), "all four were out at once: {seen:?}");
    assert_eq!(statuses(&lb), [up, up, up, up]);
    assert!(WEB.iter().all(|&i| serves(&hosts, i).contains("v3")));
}
