//! A host pulls its payload from an object store (`fetch = "store"`): the
//! controller sends a short-lived presigned URL and the payload's blake3 and
//! length over the session; the host downloads it into `.ferry/` (bounded
//! retries, with jitter), checks both, and only then stages it as if the
//! controller had sent the bytes. A payload that is not what the controller
//! said is refused whole: nothing of it is applied. The host holds no store
//! credentials; the URL reads one object, for minutes.
//!
//! An `https://` store is checked against the host's own trust store — what
//! curl on that host trusts: `SSL_CERT_FILE` (or `SSL_CERT_DIR`) when set,
//! else the system's CA bundle (`/etc/ssl/certs/ca-certificates.crt` on
//! Debian and Ubuntu, `/etc/pki/tls/certs/ca-bundle.crt` on RHEL…), read by
//! rustls-native-certs. A certificate the host does not trust fails the
//! fetch at once (no retry), saying so; the controller then pushes the
//! bytes. TLS here keeps the URL and the payload private on the way; what
//! the host applies is checked by its blake3 either way.

use std::io::{self, Read, Seek, Write};
use std::sync::{Arc, OnceLock};
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
    let mut agent =
        ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout_read(Duration::from_secs(30));
    if fetch.url.starts_with("https://") {
        let tls = host_trust().map_err(|message| Failed { message, again: false })?;
        agent = agent.tls_config(tls);
    }
    let response = match agent.build().get(&fetch.url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let mut body = String::new();
            let _ = r.into_reader().take(2048).read_to_string(&mut body);
            let said = s3_error(&body);
            return Err(Failed { message: format!("the store answered {code}{said}"), again: code >= 500 });
        }
        Err(ureq::Error::Transport(t)) if tls_error(&t).is_some() => {
            let e = tls_error(&t).expect("just seen");
            return Err(Failed { message: untrusted(e, &fetch.url), again: false });
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

/// The host's trust store as rustls reads it, once per process; `Err`
/// when it has no CA certificate ferry can read.
fn host_trust() -> Result<Arc<rustls::ClientConfig>, String> {
    static TRUST: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    TRUST
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "this host has no CA certificates to check the store's TLS certificate against ({}{}): \
                     install its CA bundle (the ca-certificates package), or point SSL_CERT_FILE at one",
                    trust_store(),
                    if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
                ));
            }
            // ring, not aws-lc-rs: the agent stays a pure-Rust-and-asm build
            // that links nothing beyond libc. rustls deprecates it for its
            // lack of post-quantum key exchange; what it guards here is a
            // URL good for minutes and bytes checked by their blake3.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("cannot set up TLS: {e}"))
        })
        .clone()
}

/// Where the host's trust store was read from, for messages.
fn trust_store() -> String {
    match (std::env::var_os("SSL_CERT_FILE"), std::env::var_os("SSL_CERT_DIR")) {
        (Some(f), _) => format!("SSL_CERT_FILE={}", f.to_string_lossy()),
        (None, Some(d)) => format!("SSL_CERT_DIR={}", d.to_string_lossy()),
        (None, None) => "the system's CA bundle, /etc/ssl/certs/ca-certificates.crt on Debian".into(),
    }
}

/// The TLS error under a transport error, if the handshake failed.
fn tls_error(t: &ureq::Transport) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's source() skips the error it wraps.
        if let Some(tls) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        cur = e.source();
    }
    None
}

/// What a failed TLS handshake with the store means, and what to do.
fn untrusted(e: &rustls::Error, url: &str) -> String {
    use rustls::CertificateError as C;
    let server = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    let fix = "add the CA that signed it to this host's trust store (Debian, Ubuntu: copy it to \
               /usr/local/share/ca-certificates/ and run update-ca-certificates), as curl on the host would need, \
               or give the store a certificate from a CA the host trusts";
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension) => {
            format!(
                "the store's TLS certificate is not trusted by this host ({e}; trust store: {}): {fix}",
                trust_store()
            )
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the store's TLS certificate is not valid for {server} ({e}): give the store a certificate that \
             names the address in [store] endpoint"
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the store's TLS certificate has expired ({e}), or this host's clock is wrong")
        }
        _ => format!("the TLS handshake with the store {server} failed: {e}"),
    }
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
