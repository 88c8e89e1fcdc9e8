//! What ferry reports as running is what runs: each test reproduces one
//! way a push said `ok` (or said nothing) while the host ran something
//! else, on real test hosts with a real sshd, supervisord and gunicorn.

use fs_err as fs;
use serde_json::Value;

use crate::kit::Project;
use crate::runtime::{build, current, get, project, row, serves};
use crate::testhosts::TestHosts;

/// Replaces `[programs.web]`'s command line in the project's ferry.toml.
fn set_command(p: &Project, command: &str) {
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let line = toml.lines().find(|l| l.starts_with("command = ")).unwrap().to_owned();
    p.write("ferry.toml", toml.replace(&line, &format!("command = {command:?}")));
}

/// The journal's records of `ferry history --json`.
fn history(p: &Project) -> Vec<Value> {
    let out = p.ferry(["history", "prod", "--json"]).ok().stdout;
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ssh_ok(hosts: &TestHosts, i: usize, command: &str) -> String {
    let out = hosts.ssh(i, command);
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_gunicorn_from_a_real_venv_reloaded_by_hup_keeps_the_old_interpreter_and_is_caught() {
    let hosts = TestHosts::start(1);
    let p = project(&hosts, "");
    // gunicorn from PyPI in the release's own venv: pip's console script,
    // run through ferry's trampoline by the python beside it.
    fs::remove_dir_all(p.path("venv")).unwrap();
    crate::kit::pypi_gunicorn_venv(&p.path("venv"));
    // --chdir takes the working directory along on a reload, so the old
    // check (the working directory alone) passed this.
    set_command(&p, "venv/bin/gunicorn --workers 2 --chdir /srv/hello/current/app hello:application");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("stopwaitsecs = 5\n", "stopwaitsecs = 5\nreload_signal = \"HUP\"\n"));
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "v1");
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let master = status["hosts"][0]["status"]["programs"][0]["pid"].as_u64().unwrap();
    let cmdline = ssh_ok(&hosts, 0, &format!("tr '\\0' ' ' < /proc/{master}/cmdline"));
    let python = format!("/srv/hello/releases/{v1}/venv/bin/python");
    assert!(cmdline.starts_with(&python), "the master runs the release's interpreter: {cmdline}");

    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "a master still on v1's interpreter is not v2: {}", r.stderr);
    let host = row(&r.json(), hosts.hosts[0].addr);
    let error = host["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("still runs release {v1} after the restart (pid {master}, command line {python})")),
        "{error}"
    );
    assert!(error.contains("drop reload_signal to restart it by stop and start"), "{error}");
    assert_eq!(current(&hosts, 0), v1);
    serves(&hosts, "v1");

    // Done as the message says, the push goes through and runs v2's.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("reload_signal = \"HUP\"\n", ""));
    let v2 = build(&p, "v2");
    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "v2");
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let master = status["hosts"][0]["status"]["programs"][0]["pid"].as_u64().unwrap();
    let cmdline = ssh_ok(&hosts, 0, &format!("tr '\\0' ' ' < /proc/{master}/cmdline"));
    assert!(cmdline.starts_with(&format!("/srv/hello/releases/{v2}/venv/bin/python")), "{cmdline}");
}

#[test]
fn a_first_deploy_whose_command_cannot_be_found_is_journalled_failed_with_supervisords_words() {
    let hosts = TestHosts::start(1);
    let p = project(&hosts, "");
    // Relative to the release, as a venv's scripts are: not there.
    set_command(&p, "venv/bin/no-such-server --workers 2 hello:application");
    let v1 = build(&p, "v1");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let host = row(&r.json(), hosts.hosts[0].addr);
    let error = host["error"].as_str().unwrap();
    // supervisord's own words, with the command resolved against the release.
    assert!(error.contains("can't find command '/srv/hello/current/venv/bin/no-such-server'"), "{error}");
    assert!(!error.contains("its last output:\n;"), "an empty last output is not shown as one: {error}");
    assert!(error.contains("there is no earlier release to go back to"), "{error}");
    // Nothing poses as deployed: no `current`, and the journal says failed.
    assert!(fs::symlink_metadata(hosts.hosts[0].srv.join("hello/current")).is_err(), "current is still there");
    let deploys: Vec<Value> = history(&p).into_iter().filter(|r| r["action"] == "deploy").collect();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert_eq!(deploys[0]["to"], v1.as_str());
    assert_eq!(deploys[0]["result"], "failed", "{deploys:?}");
    assert!(deploys[0]["reason"].as_str().unwrap().contains("can't find command"), "{deploys:?}");
    let text = p.ferry(["history", "prod"]).ok().stdout;
    assert!(!text.lines().any(|l| l.contains("deploy") && l.contains(" ok")), "{text}");

    // The fixed release goes out as a first deploy again.
    set_command(&p, "/usr/bin/gunicorn --workers 2 hello:application");
    build(&p, "v1b");
    p.ferry(["push", "prod"]).ok();
    serves(&hosts, "v1b");
}

#[test]
fn programs_down_before_a_push_are_reported_before_anything_flips_and_the_push_goes_on() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        toml.replace("environment = { PORT = \"8000\" }", "environment = { PORT = \"8000\", SECRET = \"hunter2\" }"),
    );
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // Secrets in the environment are the deploy user's alone.
    for h in &hosts.hosts {
        for file in ["supervisord.conf", "programs.json"] {
            let path = h.srv.join("hello/.ferry").join(file);
            assert!(fs::read_to_string(&path).unwrap().contains("hunter2"), "{}", path.display());
            let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    ssh_ok(&hosts, 1, "supervisorctl -c /srv/hello/.ferry/supervisord.conf stop web");
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 0, "a fix for a service that is down must be deployable: {}", r.stderr);
    let report = r.json();
    let second = row(&report, hosts.hosts[1].addr);
    let down = second["down_before"].as_array().unwrap();
    assert_eq!(down.len(), 1, "{second}");
    assert_eq!((down[0]["process"].as_str(), down[0]["state"].as_str()), (Some("web"), Some("STOPPED")));
    assert!(second["warning"].is_null(), "said once, as down_before: {second}");
    assert!(row(&report, hosts.hosts[0].addr)["down_before"].is_null(), "{report}");
    serves(&hosts, "v2");
    // On a terminal-less run the host's line says so too, before the flips.
    ssh_ok(&hosts, 0, "supervisorctl -c /srv/hello/.ferry/supervisord.conf stop web");
    build(&p, "v3");
    let r = p.ferry(["push", "prod"]).ok();
    let said = r.stderr.find("was down before the push").expect("said");
    let flipped = r.stderr.find("activated").expect("flipped");
    assert!(said < flipped, "{}", r.stderr);
}

#[test]
fn a_gate_answered_by_another_process_on_the_port_fails_and_names_it() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // On host 2, an impostor takes port 8000 once the app is stopped and
    // answers 200 to everything: the new gunicorn keeps retrying its bind
    // (RUNNING, to supervisord), and the gate's 200 comes from the impostor.
    let impostor = "import http.server as h\n\
        class H(h.BaseHTTPRequestHandler):\n    \
            def do_GET(self):\n        \
                self.send_response(200); self.end_headers(); self.wfile.write(b'impostor')\n\
        h.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n";
    fs::write(hosts.hosts[1].srv.join("impostor.py"), impostor).unwrap();
    // It works in v1's directory, as a worker orphaned by an old master would.
    ssh_ok(
        &hosts,
        1,
        &format!(
            "supervisorctl -c /srv/hello/.ferry/supervisord.conf stop web >/dev/null && \
         cd /srv/hello/releases/{v1}/app && (nohup python3 /srv/impostor.py >/dev/null 2>&1 &) && sleep 1"
        ),
    );
    assert_eq!(get(hosts.hosts[1].addr, "/health").1, "impostor");
    build(&p, "v2");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "a 200 from another process is not the new release's: {}", r.stderr);
    let report = r.json();
    let second = row(&report, hosts.hosts[1].addr);
    let error = second["error"].as_str().unwrap();
    assert!(error.contains("port 8000 is held by pid "), "{error}");
    assert!(error.contains(&format!("python3 /srv/impostor.py, running release {v1}")), "names what answered: {error}");
    assert!(error.contains("which is not one of the programs' processes"), "{error}");
    // Flipped back, but the impostor still answers: not a clean revert.
    assert_eq!(second["result"], "failed", "{second}");
    assert_eq!(row(&report, hosts.hosts[0].addr)["result"], "reverted", "{report}");
    assert_eq!((current(&hosts, 0), current(&hosts, 1)), (v1.clone(), v1));

    // A proxy in front answers for the programs: said so, the check is off.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("retries = 3\n", "retries = 3\nanswered_by = \"any\"\n"));
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let notes = report["notes"].to_string();
    assert!(notes.contains("answered_by = \\\"any\\\": the gate's answers were not checked"), "{report}");
}

#[test]
fn prune_keeps_a_release_a_process_still_uses_and_failed_releases_never_push_a_good_one_out() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("keep_releases = 3", "keep_releases = 2"));
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    // Something outside the programs works in v1 (a cron job, a shell).
    let holder = ssh_ok(
        &hosts,
        0,
        &format!("cd /srv/hello/releases/{v1}/app && {{ nohup sleep 600 >/dev/null 2>&1 & echo $!; }}"),
    );
    let holder = holder.trim().to_owned();
    let v2 = build(&p, "v2");
    p.ferry(["push", "prod"]).ok();
    let v3 = build(&p, "v3");
    let r = p.ferry(["push", "prod", "--json"]).ok();
    let host = row(&r.json(), hosts.hosts[0].addr);
    let warning = host["warning"].as_str().unwrap_or_default();
    assert!(warning.contains(&format!("kept release {}: pid {holder} ", &v1[..12])), "{host}");
    assert!(warning.contains(&format!("(working directory /srv/hello/releases/{v1}/app)")), "{host}");
    let releases = |hosts: &TestHosts| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(hosts.hosts[0].srv.join("hello/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert!(releases(&hosts).contains(&v1), "v1 is in use: {:?}", releases(&hosts));
    // Host 2 has the same path in its own mount namespace, and nothing
    // there uses v1: the holder on host 1 is not its business.
    let other = row(&r.json(), hosts.hosts[1].addr);
    assert!(!other["warning"].as_str().unwrap_or_default().contains("kept release"), "{other}");
    assert!(!hosts.hosts[1].srv.join("hello/releases").join(&v1).exists(), "v1 is pruned on host 2");
    ssh_ok(&hosts, 0, &format!("kill {holder}"));

    // A failed v4 (reverted by its gate) does not count toward keeping 3:
    // v5, v3 and v2 stay.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("keep_releases = 2", "keep_releases = 3"));
    p.write("app/BAD", "");
    let v4 = build(&p, "v4");
    assert_eq!(p.ferry(["push", "prod"]).code, 1);
    fs::remove_file(p.path("app/BAD")).unwrap();
    let v5 = build(&p, "v5");
    p.ferry(["push", "prod"]).ok();
    let kept = releases(&hosts);
    assert!(!kept.contains(&v4), "the failed release is pruned: {kept:?}");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.contains(&v5) && kept.contains(&v3) && kept.contains(&v2), "{kept:?}");
}

#[test]
fn a_push_of_the_release_every_host_runs_says_already_current_and_changes_nothing() {
    let hosts = TestHosts::start(2);
    let p = project(&hosts, "[hooks]\nafter_flip = \"echo flipped\"\n");
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let pids = |p: &Project| -> Vec<u64> {
        let status = p.ferry(["status", "prod", "--json"]).ok().json();
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["status"]["programs"][0]["pid"].as_u64().unwrap())
            .collect()
    };
    let before = pids(&p);
    let r = p.ferry(["push", "prod", "--json"]).ok();
    let report = r.json();
    for h in &hosts.hosts {
        let line = row(&report, h.addr);
        assert_eq!((line["step"].as_str(), line["result"].as_str()), (Some("current"), Some("ok")), "{line}");
        assert!(line["hooks"].is_null(), "no hook runs for a host left alone: {line}");
    }
    assert_eq!(pids(&p), before, "nothing restarted");
    let r = p.ferry(["push", "prod"]).ok();
    assert!(r.stderr.contains("already current"), "{}", r.stderr);
    serves(&hosts, "v1");

    // --force restarts them and runs the hooks, as for a new release.
    let report = p.ferry(["push", "prod", "--force", "--json"]).ok().json();
    for h in &hosts.hosts {
        let line = row(&report, h.addr);
        assert_eq!((line["step"].as_str(), line["result"].as_str()), (Some("restart"), Some("ok")), "{line}");
        assert_eq!(line["hooks"][0]["output"], "flipped", "{line}");
    }
    let after = pids(&p);
    assert!(after.iter().zip(&before).all(|(a, b)| a != b), "restarted: {before:?} -> {after:?}");
    serves(&hosts, "v1");
}

#[test]
fn a_program_that_ignores_sigterm_is_killed_after_stopwaitsecs_and_the_push_says_so_with_its_pid() {
    let hosts = TestHosts::start(1);
    let p = crate::runtime::project_with(&hosts, "", "");
    set_command(&p, "/bin/sh -c \"trap '' TERM; while true; do sleep 1; done\"");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("stopwaitsecs = 5", "stopwaitsecs = 1"));
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let pid = status["hosts"][0]["status"]["programs"][0]["pid"].as_u64().unwrap();
    let v2 = build(&p, "v2");
    let report = p.ferry(["push", "prod", "--json"]).ok().json();
    let host = row(&report, hosts.hosts[0].addr);
    let warning = host["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains(&format!(
            "program web (pid {pid}) did not stop on SIGTERM within stopwaitsecs (1 s) and was killed"
        )),
        "{host}"
    );
    assert!(warning.contains("make it exit on SIGTERM"), "{host}");
    // Without a gate that asks the program, ferry says what it did not know.
    assert!(report["notes"][0].as_str().unwrap().starts_with("no http or errors gate: "), "{report}");
    assert_eq!(current(&hosts, 0), v2);
}

#[test]
fn a_current_release_removed_by_hand_under_its_running_programs_is_never_pointed_at_again() {
    let hosts = TestHosts::start(1);
    let p = project(&hosts, "");
    crate::runtime::slow_start(&p);
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let v2 = build(&p, "v2");
    p.ferry(["push", "prod"]).ok();
    ssh_ok(&hosts, 0, &format!("rm -rf /srv/hello/releases/{v2}"));

    // Pushed again, v2 is staged anew; its programs still run in the
    // removed copy, so they are restarted on the new one.
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let host = row(&r.json(), hosts.hosts[0].addr);
    assert_eq!(host["shipped"], "bundle", "the delta's base is gone: {host}");
    let warning = host["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains(&format!("its current release {} is not on disk (removed by hand?)", &v2[..12])),
        "{host}"
    );
    assert!(warning.contains(&format!("program web did not run release {}", &v2[..12])), "{host}");
    assert!(warning.contains("a removed copy of release") && warning.contains("restarted it"), "{host}");
    serves(&hosts, "v2");
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let master = status["hosts"][0]["status"]["programs"][0]["pid"].as_u64().unwrap();
    assert_eq!(
        ssh_ok(&hosts, 0, &format!("readlink /proc/{master}/cwd")).trim(),
        format!("/srv/hello/releases/{v2}/app")
    );

    // Removed again, then a release that does not start: there is nothing
    // to go back to, and `current` must not point at the missing v2.
    ssh_ok(&hosts, 0, &format!("rm -rf /srv/hello/releases/{v2}"));
    let code = fs::read_to_string(p.path("app/hello.py")).unwrap();
    p.write("app/hello.py", format!("{code}\ndef broken(:\n"));
    build(&p, "v3");
    let r = p.ferry(["push", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let error = row(&r.json(), hosts.hosts[0].addr)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("there is no earlier release to go back to"), "{error}");
    assert!(fs::symlink_metadata(hosts.hosts[0].srv.join("hello/current")).is_err(), "current points nowhere");
    p.write("app/hello.py", code);
    let v4 = build(&p, "v4");
    p.ferry(["push", "prod"]).ok();
    assert_eq!(current(&hosts, 0), v4);
    serves(&hosts, "v4");
}

#[test]
fn a_rollback_to_a_release_that_no_longer_starts_goes_back_to_the_one_that_ran() {
    let hosts = TestHosts::start(1);
    let p = project(&hosts, "");
    crate::runtime::slow_start(&p);
    let v1 = build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let v2 = build(&p, "v2");
    p.ferry(["push", "prod"]).ok();
    // v1 breaks on the host (an edit by hand, a disk gone bad).
    ssh_ok(&hosts, 0, &format!("cd /srv/hello/releases/{v1}/app && chmod u+w hello.py && echo 'def (' >> hello.py"));
    let r = p.ferry(["rollback", "prod", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let host = row(&r.json(), hosts.hosts[0].addr);
    let error = host["error"].as_str().unwrap();
    assert!(error.contains("program web did not start"), "{error}");
    assert_eq!(current(&hosts, 0), v2, "back on the release that ran");
    serves(&hosts, "v2");
    let rollbacks: Vec<Value> = history(&p).into_iter().filter(|r| r["action"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert_eq!(rollbacks[0]["result"], "failed", "{rollbacks:?}");
    let reason = rollbacks[0]["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("flipped back to {}", &v2[..12])), "{reason}");
}
