//! A load generator for the load balancer tests: a few threads, each one
//! client connection sending `GET`s in a loop, counting every request's
//! outcome by kind.
//!
//! Why not wrk or hey: the tests must assert that *no* request failed and,
//! where one did, say which and how (a 502 from HAProxy, a reset, an EOF
//! while waiting for the answer, a refused connect) and when, and which
//! release answered each one. Debian's wrk counts only "non-2xx" and socket
//! errors in four totals, at a rate it picks (no pause to keep the load
//! constant and bounded on a 2-core machine), without bodies; hey is not
//! packaged for Debian. HTTP/1.1 with Content-Length is all the example
//! app and HAProxy speak here, so a hundred lines of std do.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// Reuse each connection (HTTP/1.1 keep-alive, reconnecting when the
    /// server closes it after a response); otherwise one connection a
    /// request, with `Connection: close`.
    pub keep_alive: bool,
    /// Connections that loop on [`LoadOpts::path`].
    pub connections: usize,
    /// Each connection's pause between requests: keeps the load constant
    /// and bounded.
    pub pause: Duration,
    /// More connections that loop on `/slow?s=2` (2 s requests in flight).
    pub slow: usize,
    /// The fast connections' path (`/`).
    pub path: String,
    /// How long to wait for a connect, or for an answer (`/slow`'s 2 s
    /// included), before counting a `timeout`.
    pub timeout: Duration,
}

impl Default for LoadOpts {
    fn default() -> Self {
        Self {
            keep_alive: true,
            connections: 8,
            pause: Duration::from_millis(2),
            slow: 0,
            path: "/".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Requests done (answered or failed), `/slow` ones included.
    pub total: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Failed requests by kind: the status (`"502"`, `"503"`…) of a non-2xx
    /// answer, or `refused`, `reset`, `eof` (closed before the whole
    /// answer), `timeout`, `broken-pipe`, `bad-response`, or an I/O error's
    /// kind; with `-reused` where the connection had answered before
    /// (kept alive).
    pub failed_by_kind: BTreeMap<String, u64>,
    /// The first failures (at most 20), each with its time since the start.
    pub first_failures: Vec<String>,
    /// Answers by the release that gave them: the body's `vN` word.
    pub versions: BTreeMap<String, u64>,
    /// `/slow` requests answered 2xx.
    pub slow_ok: u64,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Failed requests, of every kind.
    pub fn failed(&self) -> u64 {
        self.failed_by_kind.values().sum()
    }

    /// Requests a second.
    pub fn rate(&self) -> f64 {
        self.total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// What the load saw, as a test prints it: counts, kinds, versions, and
    /// the first failures with their times.
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} requests in {:.1} s ({:.0}/s), {} ok ({} /slow), {} failed {:?}, versions {:?}\n  first \
             failures:\n    {}",
            self.total,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ok,
            self.slow_ok,
            self.failed(),
            self.failed_by_kind,
            self.versions,
            self.first_failures.join("\n    ")
        )
    }
}

#[derive(Debug, Default)]
struct Shared {
    total: AtomicU64,
    failed: AtomicU64,
    tally: Mutex<LoadResult>,
}

/// A running load. [`Load::stop`] ends it and returns what it saw.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts `connections + slow` client threads on `addr`.
    pub fn start(addr: SocketAddr, opts: LoadOpts) -> Self {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut threads = Vec::new();
        for n in 0..opts.connections + opts.slow {
            let path = if n < opts.connections { opts.path.clone() } else { "/slow?s=2".to_owned() };
            let client = Client {
                n,
                addr,
                path,
                slow: n >= opts.connections,
                keep_alive: opts.keep_alive,
                pause: opts.pause,
                timeout: opts.timeout,
                shared: shared.clone(),
                stop: stop.clone(),
                started,
            };
            threads.push(std::thread::spawn(move || client.run()));
        }
        Self { shared, stop, threads, started }
    }

    /// Requests done so far.
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` requests are done; panics after `timeout`.
    #[track_caller]
    pub fn wait_total(&self, n: u64, timeout: Duration) {
        let start = Instant::now();
        while self.total() < n {
            assert!(start.elapsed() < timeout, "only {} of {n} requests done in {timeout:?}", self.total());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops every connection (each finishes the request it is in) and
    /// returns the tally.
    pub fn stop(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        let mut result = self.shared.tally.lock().unwrap().clone();
        result.elapsed = self.started.elapsed();
        result
    }
}

#[derive(Debug)]
struct Client {
    n: usize,
    addr: SocketAddr,
    path: String,
    slow: bool,
    keep_alive: bool,
    pause: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl Client {
    fn run(self) {
        let mut conn: Option<TcpStream> = None;
        while !self.stop.load(Ordering::Relaxed) {
            // A kept connection the other end closed after its last answer
            // (idle timeout, a reload) is not a failure: reconnect.
            if conn.as_ref().is_some_and(closed) {
                conn = None;
            }
            let outcome = match conn.take() {
                // HAProxy closes a kept-alive connection whose request the
                // server dropped without a word (no 502, and no log line):
                // RFC 9112 §9.3.1 lets a client retry an idempotent request
                // then, as browsers do. Still a failure here, told apart.
                Some(s) => self.request(s).map_err(|kind| format!("{kind}-reused")),
                None => match TcpStream::connect_timeout(&self.addr, self.timeout) {
                    Ok(s) => self.request(s),
                    Err(e) => Err(kind(&e)),
                },
            };
            let outcome = outcome.map(|(status, body, s)| {
                conn = s;
                (status, body)
            });
            self.count(outcome);
            if !self.pause.is_zero() {
                std::thread::sleep(self.pause);
            }
        }
    }

    /// Sends one request on `s`; the status, the body, and the connection
    /// if it can be used again.
    fn request(&self, mut s: TcpStream) -> Result<(u16, String, Option<TcpStream>), String> {
        s.set_read_timeout(Some(self.timeout)).map_err(|e| kind(&e))?;
        s.set_write_timeout(Some(self.timeout)).map_err(|e| kind(&e))?;
        s.set_nodelay(true).map_err(|e| kind(&e))?;
        let connection = if self.keep_alive { "keep-alive" } else { "close" };
        let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\n\r\n", self.path, self.addr);
        s.write_all(request.as_bytes()).map_err(|e| kind(&e))?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err("eof".into()),
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(e) => return Err(kind(&e)),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "bad-response".to_owned())?;
        let mut length = None;
        let mut close = !self.keep_alive;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let mut body = buf[head_end..].to_vec();
        match length {
            Some(len) => {
                while body.len() < len {
                    match s.read(&mut chunk) {
                        Ok(0) => return Err("eof".into()),
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                        Err(e) => return Err(kind(&e)),
                    }
                }
            }
            None => {
                // No length: the body ends with the connection.
                close = true;
                s.read_to_end(&mut body).map_err(|e| kind(&e))?;
            }
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok((status, body, (!close).then_some(s)))
    }

    /// Counts one request's outcome: its status and body, or the kind of
    /// failure.
    fn count(&self, outcome: Result<(u16, String), String>) {
        self.shared.total.fetch_add(1, Ordering::Relaxed);
        let mut tally = self.shared.tally.lock().unwrap();
        tally.total += 1;
        let failure = match outcome {
            Ok((status, body)) if (200..300).contains(&status) => {
                tally.ok += 1;
                if self.slow {
                    tally.slow_ok += 1;
                }
                if let Some(v) = version(&body) {
                    *tally.versions.entry(v).or_default() += 1;
                }
                None
            }
            Ok((status, body)) => {
                Some((status.to_string(), format!("{status} {}", body.lines().next().unwrap_or_default())))
            }
            Err(kind) => Some((kind.clone(), kind)),
        };
        if let Some((kind, what)) = failure {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            *tally.failed_by_kind.entry(kind).or_default() += 1;
            if tally.first_failures.len() < 20 {
                let at = self.started.elapsed().as_secs_f64();
                let ka = if self.keep_alive { "keep-alive" } else { "close" };
                tally.first_failures.push(format!("+{at:.3}s conn {} ({ka}) GET {}: {what}", self.n, self.path));
            }
        }
    }
}

/// Whether the other end of an idle connection has closed it (or sent
/// something unasked).
fn closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut one = [0u8; 1];
    let gone = !matches!(s.peek(&mut one), Err(e) if e.kind() == ErrorKind::WouldBlock);
    gone || s.set_nonblocking(false).is_err()
}

fn kind(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => "reset".into(),
        ErrorKind::BrokenPipe => "broken-pipe".into(),
        ErrorKind::UnexpectedEof => "eof".into(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout".into(),
        other => format!("{other:?}"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body's release word: the first `v<digits…>` (`hello from v2 (…)`).
fn version(body: &str) -> Option<String> {
    body.split_whitespace()
        .find(|w| w.len() > 1 && w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}
