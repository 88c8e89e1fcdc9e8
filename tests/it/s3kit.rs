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

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        format!(
            "[store]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{REGION}\"\npath_style = true\n",
            self.bucket, self.endpoint
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
