//! `ferry setup STAGE --install` on real test hosts without systemd (as
//! where the suite runs): the init script goes to the host's `/etc/init.d`
//! (a private overlay of this machine's `/etc`, so what lands there is in
//! the test's directory), is enabled with update-rc.d, and the host's own
//! `service` command runs the service's supervisord. The systemd branch is
//! unit-tested in the switcher (systemd does not run here).

use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::kit::{ferry_bin, sh, tempdir};
use crate::runtime::{build, get, project, serves};
use crate::testhosts::{Etc, TestHosts};

/// Every file and link under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let out = sh(&format!("cd {} && find . -mindepth 1 | sort", dir.display()));
    out.lines().map(|l| l.trim_start_matches("./").to_owned()).collect()
}

/// `ssh root@host command; echo $?`: its output and exit code.
fn on(hosts: &TestHosts, command: &str) -> (String, i32) {
    let out = hosts.ssh(0, command);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (text, out.status.code().unwrap_or(-1))
}

/// The pids of the host's processes whose command line has `what`.
fn processes(hosts: &TestHosts, what: &str) -> Vec<u32> {
    let pids = sh(&format!("ip netns pids {}", hosts.hosts[0].netns));
    pids.lines()
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p: &u32| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
        })
        .collect()
}

fn nothing_of_ours_in_this_machines_etc() {
    assert!(!Path::new("/etc/init.d/ferry-hello").exists(), "this machine's /etc/init.d got the script");
    for n in 0..=6 {
        let rc = sh(&format!("ls /etc/rc{n}.d 2>/dev/null || true"));
        assert!(!rc.contains("ferry-hello"), "this machine's /etc/rc{n}.d: {rc}");
    }
}

#[test]
fn setup_install_enables_the_init_script_and_the_hosts_service_command_runs_supervisord() {
    let hosts = TestHosts::start_with_etc(1, Etc::Private);
    let upper = hosts.hosts[0].etc_upper.clone().unwrap();
    let p = project(&hosts, "");
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let host = format!("root@{}", hosts.hosts[0].addr);
    let pid = fs::read_to_string(hosts.hosts[0].srv.join("hello/.ferry/supervisord.pid")).unwrap();
    let pid = pid.trim();

    let out = p.ferry(["setup", "prod", "--install"]).ok().stdout;
    assert_eq!(
        out,
        format!(
            "{host}: already set up\n{host}: installed /etc/init.d/ferry-hello\n\
             {host}: enabled at boot: update-rc.d ferry-hello defaults\n\
             {host}: running: supervisord (pid {pid}) (`service ferry-hello status` finds it)\n"
        )
    );
    // In the host's /etc, which is the overlay's upper directory here.
    let script = upper.join("init.d/ferry-hello");
    assert_eq!(
        fs::read(&script).unwrap(),
        fs::read(hosts.hosts[0].srv.join("hello/.ferry/init.d/ferry-hello")).unwrap()
    );
    assert!(tree(&upper).contains(&"init.d/ferry-hello".to_owned()), "{:?}", tree(&upper));
    for (n, kind) in [(0, 'K'), (1, 'K'), (2, 'S'), (3, 'S'), (4, 'S'), (5, 'S'), (6, 'K')] {
        let links: Vec<PathBuf> = fs::read_dir(upper.join(format!("rc{n}.d")))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("ferry-hello"))
            .map(|e| e.path())
            .collect();
        assert_eq!(links.len(), 1, "rc{n}.d: {links:?}");
        assert!(links[0].file_name().unwrap().to_string_lossy().starts_with(kind), "{links:?}");
        assert_eq!(fs::read_link(&links[0]).unwrap(), PathBuf::from("../init.d/ferry-hello"));
    }
    nothing_of_ours_in_this_machines_etc();

    // The init script finds the supervisord ferry started, and starts no second one.
    let (said, code) = on(&hosts, "service ferry-hello status");
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with(&format!("ferry-hello: supervisord is running (pid {pid})\n")), "{said}");
    assert!(said.contains("web ") && said.contains("RUNNING"), "{said}");
    let (said, code) = on(&hosts, "service ferry-hello start");
    assert_eq!((said.trim(), code), (format!("ferry-hello: supervisord runs already (pid {pid})").as_str(), 0));
    assert_eq!(processes(&hosts, "supervisord").len(), 1);

    // Stopped as shutdown would, and started as boot would: the programs
    // run from current again and answer.
    let (said, code) = on(&hosts, "/etc/init.d/ferry-hello stop");
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("stopped supervisord"), "{said}");
    assert!(processes(&hosts, "supervisord").is_empty());
    assert!(std::net::TcpStream::connect((hosts.hosts[0].addr, 8000)).is_err(), "the program still answers");
    let (said, code) = on(&hosts, "service ferry-hello status");
    assert_eq!((said.trim(), code), ("ferry-hello: supervisord is not running", 3));
    let (said, code) = on(&hosts, "service ferry-hello start");
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("ferry-hello: started supervisord (pid "), "{said}");
    let started = processes(&hosts, "supervisord");
    assert_eq!(started.len(), 1);
    assert_ne!(started[0].to_string(), pid, "a new supervisord");
    let web = processes(&hosts, "gunicorn");
    assert!(!web.is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect((hosts.hosts[0].addr, 8000)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the program did not answer in 20 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    serves(&hosts, "v1");
    assert_eq!(get(hosts.hosts[0].addr, "/health").0, 200);
    let current = fs::read_link(hosts.hosts[0].srv.join("hello/current")).unwrap();
    for pid in &web {
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert_eq!(cwd, Path::new("/srv/hello").join(&current).join("app"), "gunicorn {pid} runs elsewhere");
    }
    // ferry sees what the init script started.
    let status = p.ferry(["status", "prod", "--json"]).ok().json();
    let program = &status["hosts"][0]["status"]["programs"][0];
    assert_eq!(program["name"], "web", "{status}");
    assert!(web.contains(&(program["pid"].as_u64().unwrap() as u32)), "{status}");

    // Again: nothing to do, in both forms.
    let out = p.ferry(["setup", "prod", "--install"]).ok().stdout;
    assert_eq!(
        out,
        format!(
            "{host}: already set up\n{host}: already installed: /etc/init.d/ferry-hello (init.d, enabled with update-rc.d)\n\
             {host}: running: supervisord (pid {}) (`service ferry-hello status` finds it)\n",
            started[0]
        )
    );
    let json = p.ferry(["setup", "prod", "--install", "--json"]).ok().json();
    let install = &json["hosts"][0]["install"];
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(install["ok"], true, "{json}");
    assert_eq!(install["already"], true, "{json}");
    assert_eq!(install["init"], "init.d", "{json}");
    assert_eq!(install["enabled_with"], "update-rc.d", "{json}");
    assert_eq!(install["path"], "/etc/init.d/ferry-hello", "{json}");
    assert_eq!(install["now"], serde_json::json!({"state": "running", "pid": started[0]}), "{json}");
    nothing_of_ours_in_this_machines_etc();
}

/// An agent that runs as nobody (uid 65534), as a deploy user would.
fn agent_as_nobody() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    sh(&format!("chmod 755 {}", dir.path().display()));
    let agent = dir.path().join("ferry-as-nobody");
    fs::write(
        &agent,
        format!("#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {} \"$@\"\n", ferry_bin()),
    )
    .unwrap();
    sh(&format!("chmod 755 {}", agent.display()));
    (dir, agent)
}

#[test]
fn without_root_setup_install_writes_nothing_and_says_the_command_for_root_which_works() {
    let hosts = TestHosts::start_with_etc(1, Etc::Private);
    let upper = hosts.hosts[0].etc_upper.clone().unwrap();
    sh(&format!("chown 65534:65534 {}", hosts.hosts[0].srv.display()));
    let (_dir, agent) = agent_as_nobody();
    let p = project(&hosts, "");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        toml.replace(&format!("agent = \"{}\"", ferry_bin()), &format!("agent = \"{}\"", agent.display())),
    );
    let host = format!("root@{}", hosts.hosts[0].addr);

    let r = p.ferry(["setup", "prod", "--install"]);
    let root_command =
        "sudo cp /srv/hello/.ferry/init.d/ferry-hello /etc/init.d/ferry-hello && sudo update-rc.d ferry-hello defaults";
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let out = r.stdout;
    let failed = out.lines().find(|l| l.contains("FAILED")).unwrap_or_else(|| panic!("no FAILED line: {out}"));
    assert_eq!(
        failed,
        format!(
            "{host}: FAILED to install: cannot install /etc/init.d/ferry-hello: it needs root; this runs as uid 65534; \
             nothing was written. Run as root on the host: {root_command}"
        )
    );
    // setup itself did its part, as the deploy user.
    assert!(out.contains(&format!("{host}: wrote /srv/hello/.ferry/init.d/ferry-hello")), "{out}");
    assert_eq!(
        fs::metadata(hosts.hosts[0].srv.join("hello/.ferry/init.d/ferry-hello"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap(),
        65534
    );
    assert!(tree(&upper).is_empty(), "the host's /etc got {:?}", tree(&upper));
    nothing_of_ours_in_this_machines_etc();

    let json = p.ferry(["setup", "prod", "--install", "--json"]);
    assert_eq!(json.code, 1, "{}", json.stderr);
    let json = json.json();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["hosts"][0]["ok"], false, "{json}");
    assert!(json["hosts"][0]["install"]["error"].as_str().unwrap().ends_with(root_command), "{json}");

    // What it says to run works, as root (here without sudo: ssh is root).
    let (said, code) = on(&hosts, &root_command.replace("sudo ", ""));
    assert_eq!(code, 0, "{said}");
    assert!(tree(&upper).contains(&"init.d/ferry-hello".to_owned()), "{:?}", tree(&upper));
    // Nothing is deployed yet: not running, and nothing to start (LSB's 3 and 6).
    let (said, code) = on(&hosts, "service ferry-hello status");
    assert_eq!((said.trim(), code), ("ferry-hello: supervisord is not running", 3));
    let (said, code) = on(&hosts, "service ferry-hello start");
    assert_eq!(code, 6, "{said}");
    assert!(said.contains("no release is current in /srv/hello"), "{said}");

    // Deployed by the deploy user; started by root as boot would: the
    // supervisord (and so the programs) run as the deploy directory's owner.
    build(&p, "v1");
    p.ferry(["push", "prod"]).ok();
    let (said, code) = on(&hosts, "service ferry-hello stop && service ferry-hello start");
    assert_eq!(code, 0, "{said}");
    let started = processes(&hosts, "supervisord");
    assert_eq!(started.len(), 1, "{said}");
    let status = fs::read_to_string(format!("/proc/{}/status", started[0])).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65534"), "{uid}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect((hosts.hosts[0].addr, 8000)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the program did not answer in 20 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    serves(&hosts, "v1");
    nothing_of_ours_in_this_machines_etc();
}

#[test]
fn a_read_only_etc_fails_the_host_and_writes_nothing() {
    let hosts = TestHosts::start_with_etc(1, Etc::ReadOnly);
    let upper = hosts.hosts[0].etc_upper.clone().unwrap();
    let p = project(&hosts, "");
    let r = p.ferry(["setup", "prod", "--install"]);
    let host = format!("root@{}", hosts.hosts[0].addr);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "{host}: FAILED to install: cannot install /etc/init.d/ferry-hello: /etc/init.d is not writable (Read-only file system"
        )),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Run as root on the host: sudo cp /srv/hello/.ferry/init.d/ferry-hello"), "{}", r.stdout);
    assert!(tree(&upper).is_empty(), "{:?}", tree(&upper));
    nothing_of_ours_in_this_machines_etc();
}
