//! Test hosts: each a network namespace of its own, on a bridge this test
//! made, with its own address, a private `/srv` (a mount namespace over a
//! directory of the test's) and a real OpenSSH `sshd` that accepts the
//! test's key and presents a host key the test generated and wrote to a
//! known_hosts file. Everything is torn down on drop, also when a test
//! panics. Needs root (CI runs the suite as root).
//!
//! A host shares this machine's `/etc` unless the test asks for a private
//! one ([`TestHosts::start_with_etc`]): an overlay over `/etc` in the
//! host's own mount namespace, whose writes land in the test's directory
//! ([`TestHost::etc_upper`]) and go away with the namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fs_err as fs;

use crate::kit::{sh, tempdir};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test host.
#[derive(Debug)]
pub struct TestHost {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    /// Its IPv6 address (sshd listens on both).
    pub addr6: Ipv6Addr,
    /// What the host sees as `/srv`.
    pub srv: PathBuf,
    /// The root-namespace end of its link (down = cut off).
    pub veth: String,
    /// With a private `/etc`: the overlay's upper directory, where what the
    /// host writes to its `/etc` lands.
    pub etc_upper: Option<PathBuf>,
    sshd: Option<Child>,
}

impl TestHost {
    /// Its sshd's pid (the listener, which forks and reaps each session),
    /// while it runs (the fleet benchmark reads the hosts' CPU from it).
    #[allow(dead_code)]
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(Child::id)
    }
}

/// What a test host sees as `/etc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Etc {
    /// This machine's (the default).
    Shared,
    /// This machine's, overlaid: writes land in [`TestHost::etc_upper`].
    Private,
    /// The private overlay, read-only (as on a host whose `/etc` is).
    ReadOnly,
}

/// A set of test hosts on one bridge, and the client's key and known_hosts.
#[derive(Debug)]
pub struct TestHosts {
    pub hosts: Vec<TestHost>,
    /// The client's private key (ed25519, no passphrase).
    pub key: PathBuf,
    /// Every host's key, by address.
    pub known_hosts: PathBuf,
    /// This machine's address on the hosts' bridge: a server of the test
    /// listening there (the S3 kit's) is reached by the hosts and by the
    /// controller alike.
    pub gateway: Ipv4Addr,
    bridge: String,
    dir: tempfile::TempDir,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestHosts {
    /// A ferry.toml `[stages.<name>]` over every host as root, with this kit's
    /// known_hosts and key, then `extra` (more keys of the stage).
    pub fn ssh_stage(&self, name: &str, extra: &str) -> String {
        let list: Vec<String> = self.hosts.iter().map(|h| format!("\"root@{}\"", h.addr)).collect();
        format!(
            "[stages.{name}]\ntransport = \"ssh\"\nhosts = [{}]\nknown_hosts = \"{}\"\nidentity = \"{}\"\n{extra}",
            list.join(", "),
            self.known_hosts.display(),
            self.key.display()
        )
    }

    /// Starts `n` hosts named `host1`…, with sshd listening on port 22.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, |_| None)
    }

    /// Starts `n` hosts; host `i` (0-based) gets a `/srv` of `disk(i)` MiB
    /// (a tmpfs) where that is `Some`, to fill up.
    pub fn start_with(n: usize, disk: impl Fn(usize) -> Option<u32>) -> Self {
        Self::start_all(n, disk, Etc::Shared)
    }

    /// Starts `n` hosts, each with its own `/etc` as `etc` says.
    pub fn start_with_etc(n: usize, etc: Etc) -> Self {
        Self::start_all(n, |_| None, etc)
    }

    fn start_all(n: usize, disk: impl Fn(usize) -> Option<u32>, etc: Etc) -> Self {
        assert!(
            crate::kit::is_root(),
            "test hosts need root to make network namespaces: run the suite as root (CI does)"
        );
        assert!(
            fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.trim() == "0"),
            "test hosts need IPv6 (each gets an IPv6 address too): enable it with sysctl net.ipv6.conf.all.disable_ipv6=0"
        );
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "test hosts need OpenSSH's sshd: scripts/test installs openssh-server"
        );
        // One of 512 /24s of 198.18.0.0/15 (reserved for benchmarking, so
        // no real network of the machine's), claimed by creating its bridge:
        // a name another test holds makes `ip link add` fail, and the next
        // one is tried.
        let seed = std::process::id().wrapping_mul(7919).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 31);
        let id = (0..512)
            .map(|k| (seed + k) % 512)
            .find(|id| {
                Command::new("ip")
                    .args(["link", "add", &format!("fb{id}"), "type", "bridge"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("a free test network among 512");
        let subnet = [198, 18 + (id / 256) as u8, (id % 256) as u8];
        let dir = tempdir();
        let bridge = format!("fb{id}");
        let mut hosts = TestHosts {
            hosts: Vec::new(),
            key: dir.path().join("id_ed25519"),
            known_hosts: dir.path().join("known_hosts"),
            gateway: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1),
            bridge: bridge.clone(),
            dir,
        };
        fs::create_dir_all("/run/sshd").unwrap();
        let gateway = format!("{}.{}.{}.1/24", subnet[0], subnet[1], subnet[2]);
        run(&["ip", "addr", "add", &gateway, "dev", &bridge]);
        run(&["ip", "-6", "addr", "add", &format!("{}/64", v6(id, 1)), "dev", &bridge, "nodad"]);
        run(&["ip", "link", "set", &bridge, "up"]);
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", hosts.key.display()));
        fs::copy(hosts.key.with_extension("pub"), hosts.dir.path().join("authorized_keys")).unwrap();
        let mut known = String::new();
        for i in 1..=n {
            hosts.add(id, subnet, i, disk(i - 1), etc);
            let pubkey = fs::read_to_string(hosts.dir.path().join(format!("host{i}_key.pub"))).unwrap();
            let mut fields = pubkey.split_whitespace();
            let (addr, addr6) = (hosts.hosts[i - 1].addr, hosts.hosts[i - 1].addr6);
            let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
            known.push_str(&format!("{addr} {kind} {key}\n{addr6} {kind} {key}\n"));
        }
        fs::write(&hosts.known_hosts, known).unwrap();
        for host in &hosts.hosts {
            let log = hosts.dir.path().join(format!("{}_sshd.log", host.name));
            wait_for_port(host.addr.into(), 22, &log);
            wait_for_port(host.addr6.into(), 22, &log);
        }
        hosts
    }

    /// Adds host `i`, registered before anything of it is made, so that a
    /// failure half-way is still torn down.
    fn add(&mut self, id: u32, subnet: [u8; 3], i: usize, disk: Option<u32>, etc: Etc) {
        let name = format!("host{i}");
        let netns = format!("ferry-{id}-{i}");
        let veth = format!("fv{id}h{i}");
        let addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 10 + i as u8);
        let addr6 = v6(id, 10 + i as u16);
        let srv = self.dir.path().join(format!("{name}-srv"));
        fs::create_dir_all(&srv).unwrap();
        let etc_upper = (etc != Etc::Shared).then(|| self.dir.path().join(format!("{name}-etc/upper")));
        self.hosts.push(TestHost {
            name: name.clone(),
            netns: netns.clone(),
            addr,
            addr6,
            srv: srv.clone(),
            veth: veth.clone(),
            etc_upper: etc_upper.clone(),
            sshd: None,
        });
        if let Some(mb) = disk {
            run(&["mount", "-t", "tmpfs", "-o", &format!("size={mb}m"), "ferry-test-disk", srv.to_str().unwrap()]);
        }
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        run(&["ip", "link", "set", &veth, "master", &self.bridge, "up"]);
        run(&["ip", "-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &netns, "-6", "addr", "add", &format!("{addr6}/64"), "dev", "eth0", "nodad"]);
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);

        let host_key = self.dir.path().join(format!("{name}_key"));
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", host_key.display()));
        let config = self.dir.path().join(format!("{name}_sshd_config"));
        fs::write(
            &config,
            format!(
                "ListenAddress {addr}\nListenAddress [{addr6}]\nPort 22\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
                 LogLevel ERROR\n",
                host_key.display(),
                self.dir.path().join("authorized_keys").display()
            ),
        )
        .unwrap();
        // A private /srv: the host's own mount namespace binds the test's
        // directory over it, then becomes sshd. Root's shell rc is a fresh
        // machine's (empty), not this one's: a developer's or CI's .bashrc
        // (pyenv init, say) would run on every SSH command, for ferry and
        // OpenSSH alike, and time that instead.
        let rc = self.dir.path().join("bashrc");
        fs::write(&rc, "").unwrap();
        // A private /etc: an overlay of this machine's, mounted in the
        // host's namespace only (gone with it), its writes in the test's
        // directory; read-only when asked.
        let etc_mount = match &etc_upper {
            None => String::new(),
            Some(upper) => {
                let work = upper.with_file_name("work");
                fs::create_dir_all(upper).unwrap();
                fs::create_dir_all(&work).unwrap();
                let ro = if etc == Etc::ReadOnly { " && mount -o remount,ro /etc" } else { "" };
                format!(
                    "mount -t overlay ferry-test-etc -o lowerdir=/etc,upperdir={},workdir={} /etc{ro} && ",
                    upper.display(),
                    work.display()
                )
            }
        };
        let script = format!(
            "{etc_mount}mount --bind {} /srv && home=$(getent passwd root | cut -d: -f6) && \
             if [ -f \"$home/.bashrc\" ]; then mount --bind {} \"$home/.bashrc\"; fi && exec /usr/sbin/sshd -D -e -f {}",
            srv.display(),
            rc.display(),
            config.display()
        );
        let sshd = Command::new("ip")
            .args(["netns", "exec", &netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.path().join(format!("{name}_sshd.log"))).unwrap().into_file())
            .spawn()
            .unwrap();
        self.hosts.last_mut().expect("registered above").sshd = Some(sshd);
    }

    /// Kills host `i`'s sshd (the host is up; nothing answers on port 22).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut sshd) = self.hosts[i].sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
    }

    /// Cuts host `i` off: its link goes down, packets vanish.
    pub fn cut(&self, i: usize) {
        run(&["ip", "link", "set", &self.hosts[i].veth, "down"]);
    }

    /// `ssh root@<host i> <command>` with the test's key and known_hosts.
    pub fn ssh(&self, i: usize, command: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-i", self.key.to_str().unwrap()])
            .args(["-o", &format!("UserKnownHostsFile={}", self.known_hosts.display())])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
            .arg(format!("root@{}", self.hosts[i].addr))
            .arg(command)
            .output()
            .unwrap()
    }
}

/// Host `n` of test network `id` in IPv6: a unique local address (fd00::/8,
/// never routed beyond this machine).
fn v6(id: u32, n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd66, 0x6572, 0x7279, id as u16, 0, 0, 0, n)
}

fn wait_for_port(addr: IpAddr, port: u16, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sshd on {addr}:{port} did not come up in 10 s; it said: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut sshd) = host.sshd.take() {
                let _ = sshd.kill();
                let _ = sshd.wait();
            }
            // Whatever sshd forked for sessions dies with the namespace's processes.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("ip netns pids {0} | xargs -r kill -9; ip netns del {0}", host.netns))
                .status();
            let _ = Command::new("umount").arg("-l").arg(&host.srv).stderr(Stdio::null()).status();
            // Usually gone with the namespace that held its peer.
            let _ = Command::new("ip").args(["link", "del", &host.veth]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}

#[test]
fn test_hosts_answer_ssh_with_their_own_srv_and_go_away() {
    let hosts = TestHosts::start(2);
    for i in 0..2 {
        assert_eq!(hosts.hosts[i].name, format!("host{}", i + 1));
        let out = hosts.ssh(i, &format!("echo hello from {i} > /srv/mark && cat /srv/mark"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hello from {i}\n"));
        // The host's /srv is the test's directory, and no one else's.
        assert_eq!(fs::read_to_string(hosts.hosts[i].srv.join("mark")).unwrap(), format!("hello from {i}\n"));
    }
    assert!(!Path::new("/srv/mark").exists(), "the root namespace's /srv is untouched");

    // An unknown host key is refused by the client.
    let wrong = hosts.dir.path().join("wrong_known_hosts");
    fs::write(&wrong, "").unwrap();
    let out = Command::new("ssh")
        .args(["-i", hosts.key.to_str().unwrap(), "-o", &format!("UserKnownHostsFile={}", wrong.display())])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg(format!("root@{}", hosts.hosts[0].addr))
        .arg("true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"));

    let names: Vec<String> = hosts.hosts.iter().map(|h| h.netns.clone()).collect();
    let mut hosts = hosts;
    hosts.stop(1);
    assert!(!hosts.ssh(1, "true").status.success(), "a stopped host refuses connections");
    hosts.cut(0);
    assert!(!hosts.ssh(0, "true").status.success(), "a cut-off host times out");
    drop(hosts);
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    for ns in names {
        assert!(!left.contains(&ns), "{ns} was not torn down: {left}");
    }
}

#[test]
fn a_private_etc_takes_the_hosts_writes_and_leaves_this_machines_etc_alone() {
    let hosts = TestHosts::start_with_etc(1, Etc::Private);
    let upper = hosts.hosts[0].etc_upper.clone().expect("a private /etc");
    let mark = format!("ferry-test-{}", hosts.hosts[0].netns);
    let out = hosts.ssh(0, &format!("echo private > /etc/{mark} && cat /etc/{mark} && cat /etc/os-release | head -1"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("private\n"), "{said}");
    // The rest of /etc is this machine's, read through the overlay.
    assert_eq!(said.lines().nth(1), fs::read_to_string("/etc/os-release").unwrap().lines().next());
    assert_eq!(fs::read_to_string(upper.join(&mark)).unwrap(), "private\n");
    assert!(!Path::new("/etc").join(&mark).exists(), "this machine's /etc got the host's write");
    // The overlay is the host's namespace's alone.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("ferry-test-etc"), "{mounts}");
    drop(hosts);
    assert!(!upper.exists(), "the test's directory is removed");

    let hosts = TestHosts::start_with_etc(1, Etc::ReadOnly);
    let out = hosts.ssh(0, &format!("echo x > /etc/{mark}"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    assert_eq!(fs::read_dir(hosts.hosts[0].etc_upper.as_ref().unwrap()).unwrap().count(), 0);
}
