//! A host pulls its payload from an object store (`fetch = "store"`): the
//! controller sends a short-lived presigned URL and the payload's blake3 and
//! length over the session; the host downloads it into `.ferry/` (bounded
//! retries, with jitter), checks both, and only then stages it as if the
//! controller had sent the bytes. A payload that is not what the controller
//! said is refused whole: nothing of it is applied. The host holds no store
//! credentials; the URL reads one object, for minutes.

use std::io::{self, Read, Seek, Write};
use std::time::Duration;

use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::{Host, HostError, Lock, StageOptions, Staged};

/// Where a host fetches its payload, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// A presigned GET URL of the payload.
    pub url: String,
    /// The payload's blake3, hex.
    pub blake3: String,
    pub len: u64,
}

/// Attempts per download; only a broken transfer (no answer, a 5xx, fewer
/// bytes than said) is tried again.
const ATTEMPTS: u32 = 3;

/// Why one attempt failed, and whether another could do better.
struct Failed {
    message: String,
    again: bool,
}

impl Fetch {
    /// The URL without its query (the signature), for messages.
    pub fn shown_url(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }
}

impl Host {
    /// Downloads `fetch`, checks its length and blake3, and stages it.
    /// `signature` as for [`Host::stage`]: a host with pinned keys checks it
    /// before it writes a byte, as for a pushed payload.
    pub fn stage_fetched(
        &self,
        lock: &Lock,
        fetch: &Fetch,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        let dir = self.ferry_dir();
        fs::create_dir_all(&dir).map_err(HostError::Fs)?;
        let mut file = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempfile_in(&dir)
            .map_err(|source| HostError::Io { path: dir.clone(), source })?;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt));
            }
            match download(fetch, file.as_file_mut()) {
                Ok(()) => {
                    let f = file.as_file_mut();
                    f.seek(io::SeekFrom::Start(0)).map_err(|source| HostError::Io { path: dir.clone(), source })?;
                    return self.stage(lock, f, opts, signature);
                }
                Err(Failed { message, again }) => {
                    last = message;
                    if !again {
                        break;
                    }
                }
            }
        }
        Err(HostError::Input(format!("cannot fetch the payload from {}: {last}", fetch.shown_url())))
    }
}

/// 200 ms, 400 ms… plus up to as much again: hosts that failed together
/// do not come back together.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64 << attempt.min(5);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    let jitter = blake3::hash(&seed.to_le_bytes()).as_bytes()[0] as u64 * base / 255;
    Duration::from_millis(base + jitter)
}

/// One attempt: the whole body into `out`, checked.
fn download(fetch: &Fetch, out: &mut std::fs::File) -> Result<(), Failed> {
    let io_failed = |e: io::Error| Failed { message: format!("writing the download: {e}"), again: false };
    out.set_len(0).map_err(io_failed)?;
    out.seek(io::SeekFrom::Start(0)).map_err(io_failed)?;
    let agent =
        ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout_read(Duration::from_secs(30)).build();
    let response = match agent.get(&fetch.url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let mut body = String::new();
            let _ = r.into_reader().take(2048).read_to_string(&mut body);
            let said = s3_error(&body);
            return Err(Failed { message: format!("the store answered {code}{said}"), again: code >= 500 });
        }
        // ureq names the URL; the signature in it is no one's business.
        Err(e) => {
            let said = e.to_string().replace(&fetch.url, fetch.shown_url());
            return Err(Failed { message: format!("the store is unreachable: {said}"), again: true });
        }
    };
    let mut hasher = blake3::Hasher::new();
    let mut reader = response.into_reader().take(fetch.len + 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Failed {
                    message: format!("the download broke after {got} of {} bytes: {e}", fetch.len),
                    again: true,
                })
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_failed)?;
        got += n as u64;
    }
    if got < fetch.len {
        return Err(Failed { message: format!("the download ended after {got} of {} bytes", fetch.len), again: true });
    }
    if got > fetch.len {
        return Err(Failed {
            message: format!("the object is longer than the {} bytes expected", fetch.len),
            again: false,
        });
    }
    let hash = hasher.finalize().to_hex();
    if hash.as_str() != fetch.blake3 {
        return Err(Failed {
            message: format!(
                "hash mismatch: the object has blake3 {}, the controller expected {}; refused, nothing applied",
                &hash[..16],
                fetch.blake3.get(..16).unwrap_or(&fetch.blake3)
            ),
            again: false,
        });
    }
    Ok(())
}

/// ` (Code: Message)` of an S3 error body, if it has one.
fn s3_error(body: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        _ => String::new(),
    }
}
