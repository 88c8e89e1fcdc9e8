//! A real S3-compatible server for the tests: s3s-fs (the s3s project's
//! file-system backend), installed by scripts/test into
//! `target/s3s-fs/bin/s3s-fs` (or wherever `FERRY_S3S_FS` says). It checks
//! SigV4 signatures, presigned URLs included, and honours `If-None-Match: *`
//! on PUT, as S3 does.
//!
//! Each server gets a fresh data directory with one bucket, a free port on
//! loopback — or, for tests whose hosts must reach it, on the test hosts'
//! bridge ([`S3Server::start_on`] with [`TestHosts::gateway`]), an address of
//! this machine that the controller reaches as well — and is killed on drop,
//! also when a test panics.
//!
//! [`TestHosts::gateway`]: crate::testhosts::TestHosts

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_err as fs;

use crate::kit::{local_ports, tempdir};

/// The access key every test server accepts.
pub const ACCESS_KEY: &str = "ferrytestaccess";
/// Its secret.
pub const SECRET_KEY: &str = "ferrytestsecret0123456789";
/// The region the tests sign for (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// The s3s-fs binary.
pub fn s3s_fs_bin() -> PathBuf {
    match std::env::var_os("FERRY_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3s-fs/bin/s3s-fs"),
    }
}

/// A running s3s-fs with one bucket.
#[derive(Debug)]
pub struct S3Server {
    /// `http://<addr>:<port>`.
    pub endpoint: String,
    pub addr: IpAddr,
    pub port: u16,
    /// The bucket made at start.
    pub bucket: String,
    /// Its data directory: `<root>/<bucket>/<key>` is an object's bytes.
    pub root: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a server listening on `addr` (this machine's), on a free port.
    pub fn start_on(addr: IpAddr) -> Self {
        let bin = s3s_fs_bin();
        assert!(
            bin.exists(),
            "the S3 test server {} is not installed: scripts/test installs it (cargo install s3s-fs@0.14.1 \
             --features binary --locked --root target/s3s-fs), or set FERRY_S3S_FS to an s3s-fs binary",
            bin.display()
        );
        let dir = tempdir();
        let root = dir.path().join("data");
        let bucket = "ferry-test".to_owned();
        fs::create_dir_all(root.join(&bucket)).unwrap();
        let port = local_ports(1)[0] as u16;
        let log = dir.path().join("s3s-fs.log");
        let mut server = S3Server {
            endpoint: format!("http://{addr}:{port}"),
            addr,
            port,
            bucket,
            root,
            child: None,
            log,
            _dir: dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(s3s_fs_bin())
            .args(["--host", &self.addr.to_string(), "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&self.log).unwrap().into_file())
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&self.log).unwrap().into_file()))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect_timeout(&(self.addr, self.port).into(), Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3s-fs exited ({status}) at start: {}", fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s3s-fs on {} did not come up in 10 s: {}",
                self.endpoint,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (the store is down; its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address, port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The object's bytes on the server's disk, under `key`.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(&self.bucket).join(key)
    }

    /// Every key in the bucket, sorted (s3s-fs's metadata sidecars left out).
    pub fn keys(&self) -> Vec<String> {
        let base = self.root.join(&self.bucket);
        let mut keys: Vec<String> = walkdir(&base)
            .into_iter()
            .filter_map(|p| p.strip_prefix(&base).ok().map(|r| r.to_string_lossy().into_owned()))
            .filter(|k| !k.contains(".s3s") && !k.starts_with('.'))
            .collect();
        keys.sort();
        keys
    }

    /// The environment a `ferry` (or `curl`) run needs to use the store:
    /// the AWS tools' own variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
        ]
    }

    /// A `[store]` section that uses this server under `prefix`.
    pub fn store_section(&self, prefix: &str) -> String {
        self.store_section_via(prefix, &self.endpoint)
    }

    /// A `[store]` section that reaches this server at `endpoint` (a
    /// [`CuttingProxy`] in front of it).
    pub fn store_section_via(&self, prefix: &str, endpoint: &str) -> String {
        format!(
            "[store]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{endpoint}\"\nregion = \"{REGION}\"\npath_style = true\n",
            self.bucket
        )
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A TCP forwarder in front of an [`S3Server`] that cuts short the first
/// `cuts` presigned downloads (a GET with `X-Amz-Signature` in its URL):
/// their response headers and `keep` bytes of body go through, then the
/// connection closes. Everything else passes whole. Stopped on drop.
#[derive(Debug)]
pub struct CuttingProxy {
    /// `http://<addr>:<port>`: the endpoint to give ferry.
    pub endpoint: String,
    /// How many downloads it has cut.
    pub cut: Arc<AtomicUsize>,
    left: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CuttingProxy {
    pub fn start(addr: IpAddr, upstream: &S3Server, cuts: usize, keep: usize) -> Self {
        let port = local_ports(1)[0] as u16;
        let listener = TcpListener::bind((addr, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let to: SocketAddr = (upstream.addr, upstream.port).into();
        let (stop, cut) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let left = Arc::new(AtomicUsize::new(cuts));
        let (stop2, cut2, left2) = (stop.clone(), cut.clone(), left.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (left, cut) = (left2.clone(), cut2.clone());
                        std::thread::spawn(move || forward(client, to, &left, &cut, keep));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CuttingProxy { endpoint: format!("http://{addr}:{port}"), cut, left, stop, thread: Some(thread) }
    }

    /// Cuts the next `n` presigned downloads.
    pub fn cut_next(&self, n: usize) {
        self.left.store(n, Ordering::SeqCst);
    }
}

fn forward(mut client: TcpStream, to: SocketAddr, left: &AtomicUsize, cut: &AtomicUsize, keep: usize) {
    let _ = client.set_nonblocking(false);
    let Ok(mut upstream) = TcpStream::connect(to) else { return };
    let mut first = vec![0u8; 64 * 1024];
    let n = client.read(&mut first).unwrap_or(0);
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    let cutting = head.starts_with("GET ")
        && head.lines().next().is_some_and(|l| l.contains("X-Amz-Signature"))
        && left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1)).is_ok();
    if upstream.write_all(&first[..n]).is_err() {
        return;
    }
    let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut u_out);
    });
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match upstream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !cutting {
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let upto = (end + 4 + keep).min(seen.len());
            let _ = client.write_all(&seen[..upto]);
            cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = upstream.shutdown(std::net::Shutdown::Both);
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `curl` against the server, signing with SigV4 as `key`:`secret`;
/// returns the HTTP status.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}"]).args(args).output().unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_test_server_checks_signatures_and_honours_if_none_match() {
    let s3 = S3Server::start();
    let dir = tempdir();
    let file = dir.path().join("f");
    fs::write(&file, "hello").unwrap();
    let url = format!("{}/{}/a/b", s3.endpoint, s3.bucket);
    let sign = format!("{ACCESS_KEY}:{SECRET_KEY}");
    // curl 7.88 signs but sends no payload hash, which S3 requires.
    let sigv4 =
        ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &sign, "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"];
    let put = |extra: &[&str]| {
        let mut args = sigv4.to_vec();
        args.extend(extra);
        args.extend(["-T", file.to_str().unwrap(), &url]);
        curl(&args)
    };
    assert_eq!(put(&[]).0, 200);
    assert_eq!(s3.keys(), ["a/b"]);
    assert_eq!(fs::read_to_string(s3.object_path("a/b")).unwrap(), "hello");
    // A create-only PUT of a key that exists is refused.
    assert_eq!(put(&["-H", "If-None-Match: *"]).0, 412);
    // Unsigned, or signed with the wrong secret: refused.
    assert_eq!(curl(&[&url]).0, 403);
    let wrong = format!("{ACCESS_KEY}:not-the-secret");
    assert_eq!(curl(&[&sigv4[..2], &["--user", &wrong], &sigv4[4..], &[&url]].concat()).0, 403);
    let mut s3 = s3;
    s3.stop();
    assert_ne!(curl(&["--max-time", "2", &url]).0, 200, "a stopped server answers nothing");
    s3.restart();
    assert_eq!(curl(&[&sigv4[..], &[&url]].concat()).0, 200, "a restarted server has its data");
}

/// A test CA and a server certificate it signed for one IP address, made
/// with the `openssl` CLI at test time (valid for two days).
#[derive(Debug)]
pub struct TestCa {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// Its path (for `[store] ca_file`).
    pub ca_file: PathBuf,
    /// The server's certificate then its key, PEM (what HAProxy's `crt` reads).
    pub server_pem: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A CA and a certificate for `ip` (its subjectAltName), signed by it.
    pub fn for_ip(ip: IpAddr) -> Self {
        let dir = tempdir();
        let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca = ["-keyout", &at("ca.key"), "-out", &at("ca.pem"), "-days", "2", "-subj", "/CN=ferry test CA"];
        openssl(&[&["req", "-x509"], &ec[..], &ca[..]].concat());
        fs::write(
            at("ext"),
            format!(
                "subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        let (key, csr) = (at("srv.key"), at("srv.csr"));
        openssl(&[&["req"], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", "/CN=s3"]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            &at("srv.csr"),
            "-CA",
            &at("ca.pem"),
            "-CAkey",
            &at("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &at("ext"),
            "-out",
            &at("srv.pem"),
        ]);
        let server_pem = dir.path().join("haproxy.pem");
        let both = fs::read_to_string(at("srv.pem")).unwrap() + &fs::read_to_string(at("srv.key")).unwrap();
        fs::write(&server_pem, both).unwrap();
        TestCa {
            ca_pem: fs::read_to_string(at("ca.pem")).unwrap(),
            ca_file: at("ca.pem").into(),
            server_pem,
            _dir: dir,
        }
    }
}

/// Debian's HAProxy terminating TLS in front of an [`S3Server`], on this
/// machine (the same address as the server, a port of its own): the
/// store's `https://` endpoint. Stopped on drop.
#[derive(Debug)]
pub struct TlsFront {
    /// `https://<addr>:<port>`.
    pub endpoint: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    pub fn start(upstream: &S3Server, ca: &TestCa) -> Self {
        let dir = tempdir();
        let port = local_ports(1)[0] as u16;
        let addr = upstream.addr;
        let cfg = format!(
            "global\n    log stderr format raw local0 info\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 60s\n    timeout server 60s\n\nfrontend s3tls\n    bind {addr}:{port} ssl crt {crt}\n    \
             default_backend s3\n\nbackend s3\n    server s3s {addr}:{up}\n",
            crt = ca.server_pem.display(),
            up = upstream.port
        );
        let config = dir.path().join("haproxy.cfg");
        fs::write(&config, cfg).unwrap();
        let log = dir.path().join("haproxy.log");
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap().into_file())
            .spawn()
            .expect("Debian's haproxy (scripts/test installs it)");
        let mut front = TlsFront { endpoint: format!("https://{addr}:{port}"), child: Some(child), _dir: dir };
        let start = Instant::now();
        while TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200)).is_err() {
            if let Some(status) = front.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("haproxy exited ({status}): {}", fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "haproxy did not come up in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        front
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP forwarder on loopback that counts the bytes its clients send
/// upstream: put in front of a test host's sshd, it measures what the
/// controller sent that host over SSH alone (the host's link also carries
/// what it downloads from the store). Stopped on drop.
#[derive(Debug)]
pub struct CountingForward {
    pub port: u16,
    /// Bytes from clients to upstream so far.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingForward {
    pub fn start(upstream: SocketAddr) -> Self {
        let port = local_ports(1)[0] as u16;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let sent = sent2.clone();
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let Ok(up) = TcpStream::connect(upstream) else { return };
                    let _ = (client.set_nodelay(true), up.set_nodelay(true));
                    let (mut c_in, mut u_out) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                    let (mut u_in, mut c_out) = (up, client);
                    let back = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u_in, &mut c_out);
                        let _ = c_out.shutdown(std::net::Shutdown::Write);
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sent.fetch_add(n as u64, Ordering::SeqCst);
                                if u_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = u_out.shutdown(std::net::Shutdown::Write);
                    let _ = back.join();
                });
            }
        });
        CountingForward { port, sent, stop, thread: Some(thread) }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for CountingForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
