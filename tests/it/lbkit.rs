//! An HAProxy test host: Debian's `haproxy` (master-worker mode) run inside
//! one test host's network namespace, in front of some of the others, with
//! a generated config and an admin socket under that host's `/srv`.
//!
//! The tests talk to the runtime API themselves ([`Haproxy::admin`]) over
//! the socket's root-namespace path; ferry, on the LB host over ssh, sees
//! the same socket as `/srv/haproxy/admin.sock`. Everything it writes
//! (config, sockets, HAProxy's log) is in the LB host's `/srv`, a directory
//! of the test's; it listens only in the LB host's network namespace.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fs_err as fs;

use crate::testhosts::TestHosts;

/// What the generated config says, where a test wants another value.
#[derive(Debug, Clone)]
pub struct HaproxyOpts {
    /// The backend's name (`web`).
    pub backend: String,
    /// The servers' names, one per web host; `None`: the hosts' names
    /// (`host1`…).
    pub servers: Option<Vec<String>>,
    /// The port the web hosts' service listens on (8000).
    pub port: u16,
    /// What follows `<addr>:<port>` on each server line.
    pub server_params: String,
    /// `option httpchk <this>`; `None`: no option httpchk (TCP checks).
    pub httpchk: Option<String>,
    /// `retries` in `defaults` (HAProxy's default, 3).
    pub retries: u32,
    /// `option redispatch` in `defaults` (off, as in Debian's config).
    pub redispatch: bool,
    /// Also a second socket, `operator.sock`, at `level operator`.
    pub operator_socket: bool,
    /// `cookie <server name>` on each server line (with a `cookie` line
    /// of [`HaproxyOpts::backend_lines`], sticky sessions).
    pub server_cookies: bool,
    /// Raw lines added to `global`, `defaults`, the frontend and the backend.
    pub global_lines: Vec<String>,
    pub defaults_lines: Vec<String>,
    pub frontend_lines: Vec<String>,
    pub backend_lines: Vec<String>,
}

impl Default for HaproxyOpts {
    fn default() -> Self {
        Self {
            backend: "web".into(),
            servers: None,
            port: 8000,
            server_params: "check inter 500ms fall 2 rise 2".into(),
            httpchk: Some("GET /health".into()),
            retries: 3,
            redispatch: false,
            operator_socket: false,
            server_cookies: false,
            global_lines: Vec::new(),
            defaults_lines: Vec::new(),
            frontend_lines: Vec::new(),
            backend_lines: Vec::new(),
        }
    }
}

/// A running HAProxy on a test host. Stopped when dropped (and killed with
/// every other process of its namespace when the test hosts go).
#[derive(Debug)]
pub struct Haproxy {
    master: Option<Child>,
    /// The frontend: the LB host's address, port 80.
    pub addr: SocketAddr,
    /// The backend's name.
    pub backend: String,
    /// The servers' names, in the web hosts' order.
    pub servers: Vec<String>,
    /// The root-namespace path of the LB host's `/srv/haproxy`.
    pub dir: PathBuf,
    /// HAProxy's stderr and log (one line per request, `option httplog`).
    pub log: PathBuf,
    /// The generated config.
    pub config: PathBuf,
    operator: bool,
}

/// One row of `show stat`: a frontend, a backend or a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatRow {
    pub pxname: String,
    pub svname: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, `UP 1/2` (going down), `OPEN`…
    pub status: String,
    pub scur: u64,
    pub qcur: u64,
    pub stot: u64,
    pub hrsp_2xx: u64,
    pub hrsp_5xx: u64,
    pub ereq: u64,
    pub econ: u64,
    pub eresp: u64,
    pub wretr: u64,
    pub wredis: u64,
    pub dreq: u64,
    pub dresp: u64,
    /// `L7OK`, `L4CON`, `INI`…, empty where no check runs.
    pub check_status: String,
    /// Every field of the row by its header's name, as HAProxy wrote it.
    pub fields: BTreeMap<String, String>,
}

impl StatRow {
    fn parse(header: &[&str], line: &str) -> Self {
        let fields: BTreeMap<String, String> =
            header.iter().zip(line.split(',')).map(|(k, v)| ((*k).to_owned(), v.to_owned())).collect();
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            pxname: text("pxname"),
            svname: text("svname"),
            status: text("status"),
            scur: num("scur"),
            qcur: num("qcur"),
            stot: num("stot"),
            hrsp_2xx: num("hrsp_2xx"),
            hrsp_5xx: num("hrsp_5xx"),
            ereq: num("ereq"),
            econ: num("econ"),
            eresp: num("eresp"),
            wretr: num("wretr"),
            wredis: num("wredis"),
            dreq: num("dreq"),
            dresp: num("dresp"),
            check_status: text("check_status"),
            fields,
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            hrsp_5xx: self.hrsp_5xx,
            ereq: self.ereq,
            econ: self.econ,
            eresp: self.eresp,
            wretr: self.wretr,
            wredis: self.wredis,
            dreq: self.dreq,
            dresp: self.dresp,
        }
    }
}

/// The error counters of one proxy row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub hrsp_5xx: u64,
    pub ereq: u64,
    pub econ: u64,
    pub eresp: u64,
    pub wretr: u64,
    pub wredis: u64,
    pub dreq: u64,
    pub dresp: u64,
}

/// The frontend's (`http`) and the backend's error counters: a test
/// asserts they did not move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounters {
    pub frontend: Counters,
    pub backend: Counters,
}

impl Haproxy {
    /// Starts HAProxy in test host `lb`'s network namespace (0-based, as
    /// [`TestHosts::ssh`]), balancing over the hosts `web` (0-based) on
    /// port [`HaproxyOpts::port`], and waits until it listens and answers
    /// on its admin socket.
    pub fn start(hosts: &TestHosts, lb: usize, web: &[usize], opts: HaproxyOpts) -> Self {
        assert!(
            Path::new("/usr/sbin/haproxy").exists(),
            "the load balancer tests need Debian's haproxy: scripts/test installs it"
        );
        let host = &hosts.hosts[lb];
        let dir = host.srv.join("haproxy");
        fs::create_dir_all(&dir).unwrap();
        let servers: Vec<String> = match &opts.servers {
            Some(names) => {
                assert_eq!(names.len(), web.len(), "one server name per web host");
                names.clone()
            }
            None => web.iter().map(|&i| hosts.hosts[i].name.clone()).collect(),
        };
        let addr = SocketAddr::from((host.addr, 80));
        let mut cfg = String::new();
        cfg.push_str("global\n    master-worker\n    log stderr format raw local0 info\n");
        cfg.push_str(&format!("    stats socket {} mode 600 level admin\n", dir.join("admin.sock").display()));
        if opts.operator_socket {
            cfg.push_str(&format!(
                "    stats socket {} mode 600 level operator\n",
                dir.join("operator.sock").display()
            ));
        }
        for line in &opts.global_lines {
            cfg.push_str(&format!("    {line}\n"));
        }
        cfg.push_str(&format!(
            "\ndefaults\n    mode http\n    log global\n    option httplog\n    timeout connect 2s\n    timeout client 30s\n    \
             timeout server 30s\n    retries {}\n",
            opts.retries
        ));
        if opts.redispatch {
            cfg.push_str("    option redispatch\n");
        }
        for line in &opts.defaults_lines {
            cfg.push_str(&format!("    {line}\n"));
        }
        cfg.push_str(&format!("\nfrontend http\n    bind {addr}\n    default_backend {}\n", opts.backend));
        for line in &opts.frontend_lines {
            cfg.push_str(&format!("    {line}\n"));
        }
        cfg.push_str(&format!("\nbackend {}\n", opts.backend));
        if let Some(check) = &opts.httpchk {
            cfg.push_str(&format!("    option httpchk {check}\n"));
        }
        for line in &opts.backend_lines {
            cfg.push_str(&format!("    {line}\n"));
        }
        for (name, &i) in servers.iter().zip(web) {
            let cookie = if opts.server_cookies { format!(" cookie {name}") } else { String::new() };
            cfg.push_str(&format!(
                "    server {name} {}:{} {}{cookie}\n",
                hosts.hosts[i].addr, opts.port, opts.server_params
            ));
        }
        let config = dir.join("haproxy.cfg");
        fs::write(&config, &cfg).unwrap();
        let log = dir.join("haproxy.log");
        let check = Command::new("/usr/sbin/haproxy").arg("-c").arg("-q").arg("-f").arg(&config).output().unwrap();
        assert!(
            check.status.success(),
            "haproxy -c refused the generated config:\n{cfg}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        // `ip netns exec` execs haproxy: the child is the master.
        let master = Command::new("ip")
            .args(["netns", "exec", &host.netns, "/usr/sbin/haproxy", "-W", "-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("haproxy.stdout")).unwrap().into_file())
            .stderr(fs::File::create(&log).unwrap().into_file())
            .spawn()
            .unwrap();
        let mut haproxy = Self {
            master: Some(master),
            addr,
            backend: opts.backend.clone(),
            servers,
            dir,
            log,
            config,
            operator: opts.operator_socket,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = haproxy.master.as_mut().unwrap().try_wait().unwrap() {
                panic!("haproxy exited ({status}) on start; it said:\n{}", haproxy.log_text());
            }
            // The master binds the listeners before it starts the worker
            // that answers here. (No TCP probe of the frontend: a
            // connection without a request would count in its `ereq`.)
            if haproxy.try_admin("show info").is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "haproxy did not come up in 10 s; it said:\n{}",
                haproxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    /// The admin socket as the LB host sees it (what ferry's config names).
    pub fn socket_on_host(&self) -> &'static str {
        "/srv/haproxy/admin.sock"
    }

    /// The admin socket's path in the test's (root) mount namespace.
    pub fn socket_here(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// The `level operator` socket as the LB host sees it, if configured.
    pub fn operator_socket_on_host(&self) -> Option<&'static str> {
        self.operator.then_some("/srv/haproxy/operator.sock")
    }

    /// The `level operator` socket's path here, if configured.
    pub fn operator_socket_here(&self) -> Option<PathBuf> {
        self.operator.then(|| self.dir.join("operator.sock"))
    }

    /// HAProxy's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One runtime API command on the admin socket; its whole answer.
    #[track_caller]
    pub fn admin(&self, line: &str) -> String {
        self.try_admin(line).unwrap_or_else(|e| panic!("{line:?} on {}: {e}", self.socket_here().display()))
    }

    fn try_admin(&self, line: &str) -> std::io::Result<String> {
        send(&self.socket_here(), line)
    }

    /// Every row of `show stat`.
    pub fn stats(&self) -> Vec<StatRow> {
        let text = self.admin("show stat");
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let header: Vec<&str> =
            header.strip_prefix("# ").unwrap_or_else(|| panic!("not show stat's CSV:\n{text}")).split(',').collect();
        lines.filter(|l| !l.trim().is_empty()).map(|l| StatRow::parse(&header, l)).collect()
    }

    /// The backend's server `name`.
    #[track_caller]
    pub fn server(&self, name: &str) -> StatRow {
        let stats = self.stats();
        stats
            .iter()
            .find(|r| r.pxname == self.backend && r.svname == name)
            .cloned()
            .unwrap_or_else(|| panic!("no server {}/{name} in {stats:#?}", self.backend))
    }

    /// The frontend's and the backend's error counters.
    pub fn errors(&self) -> ErrorCounters {
        let stats = self.stats();
        let row = |px: &str, sv: &str| {
            stats.iter().find(|r| r.pxname == px && r.svname == sv).map(StatRow::counters).unwrap_or_default()
        };
        ErrorCounters { frontend: row("http", "FRONTEND"), backend: row(&self.backend, "BACKEND") }
    }

    /// Waits until each of `servers` is `UP` (not `UP 1/2`, on its way
    /// down); panics with the stats after `timeout`.
    #[track_caller]
    pub fn wait_up(&self, servers: &[&str], timeout: Duration) {
        let start = Instant::now();
        loop {
            let stats = self.stats();
            let up = servers
                .iter()
                .all(|name| stats.iter().any(|r| r.pxname == self.backend && r.svname == *name && r.status == "UP"));
            if up {
                return;
            }
            if start.elapsed() > timeout {
                let states: Vec<String> = stats
                    .iter()
                    .filter(|r| r.pxname == self.backend)
                    .map(|r| format!("{} {} {}", r.svname, r.status, r.check_status))
                    .collect();
                panic!("{servers:?} not all UP after {timeout:?}: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until server `name`'s status is `status` (`MAINT`, `DRAIN`,
    /// `DOWN`…); panics with its row after `timeout`.
    #[track_caller]
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) -> StatRow {
        let start = Instant::now();
        loop {
            let row = self.server(name);
            if row.status == status {
                return row;
            }
            assert!(start.elapsed() < timeout, "{name} is not {status} after {timeout:?}: {row:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every server of the backend is `UP`.
    #[track_caller]
    pub fn wait_all_up(&self, timeout: Duration) {
        let names: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        self.wait_up(&names, timeout);
    }

    /// The pid of the worker that answers the admin socket.
    pub fn worker_pid(&self) -> u32 {
        let info = self.admin("show info");
        info.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Pid in show info:\n{info}"))
    }

    /// Reloads as `systemctl reload` does in master-worker mode (SIGUSR2 to
    /// the master): a new worker reads the config again and so starts every
    /// server as the config says, forgetting runtime states such as MAINT
    /// or DRAIN; the old worker finishes its connections. Returns once the
    /// new worker answers on the admin socket.
    pub fn reload(&self) {
        let before = self.worker_pid();
        let master = self.master.as_ref().expect("running").id();
        signal("USR2", master);
        let start = Instant::now();
        loop {
            if self.try_admin("show info").ok().is_some_and(|info| !info.contains(&format!("Pid: {before}\n"))) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no new worker 10 s after the reload:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops HAProxy (SIGTERM to the master, which stops its workers), and
    /// kills it if it has not exited within 5 s.
    pub fn stop(&mut self) {
        let Some(mut master) = self.master.take() else { return };
        signal("TERM", master.id());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if master.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = master.kill();
        let _ = master.wait();
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One runtime API command on the socket at `path` (HAProxy answers one
/// command a connection, then closes).
pub fn send(path: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}
