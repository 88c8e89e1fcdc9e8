//! An S3-compatible object store (`[store] url = "s3://bucket/prefix"`),
//! through the `object_store` crate.
//!
//! ```text
//! s3://<bucket>/<prefix>/
//!   bundles/<id>.tar.zst       a bundle, by its release id
//!   bundles/<id>.json          what `ferry bundles` shows (the first publisher's record)
//!   deltas/<from>..<to>        a delta, by the two release ids
//!   signatures/<id>.minisig    a release's signature, when the local store has one
//!   agents/<blake3>.gz         the gzipped agent hosts download (fetch = "store"), by its hash
//! ```
//!
//! Every object is written once, with a conditional put (`If-None-Match:
//! *`), and never changed: a key names its content. A put that finds the
//! key taken compares what is there with what it would have written: the
//! same bytes are success (two CI jobs publishing one release at once both
//! succeed), other bytes an error. Objects carry `Cache-Control: public,
//! max-age=31536000, immutable`.
//!
//! The client is `object_store`'s, driven from this synchronous code by a
//! small tokio runtime of its own. Credentials come from the environment or
//! the AWS profile files ([`credentials`]), never from an instance metadata
//! service.

pub mod credentials;
pub mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fs_err as fs;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig,
};

/// What every object is served with: it never changes.
pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// `[store]`'s remote settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host[:port]` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `bucket` in the path (`endpoint/bucket/key`) rather than the host name.
    pub path_style: bool,
    /// The AWS profile to read (default: `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// PEM CA certificates trusted for an `https://` endpoint beside the
    /// system's ([`read_ca_file`]); hosts check the store against their own.
    pub ca_file: Option<PathBuf>,
}

/// The CA certificates of a PEM file (`[store] ca_file`); the error says
/// why there are none.
pub fn read_ca_file(path: &Path) -> Result<Vec<object_store::Certificate>, String> {
    let pem = fs::read(path).map_err(|e| e.to_string())?;
    match object_store::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())),
        Err(e) => Err(format!("{}: not PEM certificates: {e}", path.display())),
    }
}

impl RemoteSpec {
    /// Reads `s3://bucket[/prefix]`; the error says what is wrong.
    pub fn parse_url(url: &str) -> Result<(String, String), String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!("{url:?} is not an s3:// URL (s3://BUCKET/PREFIX)"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
            return Err(format!("bucket {bucket:?} of {url:?} is not a bucket name (3 to 63 of a-z, 0-9, '-', '.')"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(format!("prefix {prefix:?} of {url:?} has an empty, '.' or '..' part"));
        }
        Ok((bucket.to_owned(), prefix.to_owned()))
    }

    /// `s3://bucket/prefix`, as the user wrote it.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Errors of the remote store. Each names the store and, where there is
/// one, the key, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "no credentials for the store {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add \
         aws_access_key_id and aws_secret_access_key to profile {profile:?} of {files}"
    )]
    NoCredentials { url: String, profile: String, files: String },
    #[error(
        "the store {url} refused the credentials from {source_of} (access key {key_id}) for {key}: {message}; \
         check the keys (or the profile), and that they may read and write the bucket"
    )]
    Denied { url: String, source_of: String, key_id: String, key: String, message: String },
    #[error("the bucket {bucket:?} does not exist at {endpoint}: create it, or fix [store] url")]
    NoBucket { bucket: String, endpoint: String },
    #[error("{key} is not in the store {url}")]
    NotFound { url: String, key: String },
    #[error(
        "{key} is already in the store {url} with other content (there: {theirs}; ours: {ours}): objects there \
         never change; remove it by hand if it is damaged"
    )]
    Conflict { url: String, key: String, theirs: String, ours: String },
    #[error("the store {url} at {endpoint}, {op} {key}: {message}")]
    Other { url: String, endpoint: String, op: &'static str, key: String, message: String },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// This call wrote the object.
    Created,
    /// It was there already, with the same bytes.
    Existed,
}

/// An opened remote store.
#[derive(Debug, Clone)]
pub struct Remote {
    spec: RemoteSpec,
    endpoint: String,
    s3: Arc<AmazonS3>,
    rt: Arc<tokio::runtime::Runtime>,
    creds: String,
    key_id: String,
}

impl Remote {
    /// Opens the store `spec` names; nothing is sent until it is used.
    pub fn open(spec: &RemoteSpec) -> Result<Self, RemoteError> {
        let found = credentials::find(spec.profile.as_deref());
        let Some(creds) = found.credentials else {
            return Err(RemoteError::NoCredentials {
                url: spec.url(),
                profile: found.profile,
                files: found.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "),
            });
        };
        let region = spec.region.clone().or(found.region).unwrap_or_else(|| "us-east-1".into());
        let endpoint = spec.endpoint.clone().or(found.endpoint);
        let mut options = ClientOptions::new()
            .with_allow_http(endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(600));
        if let Some(path) = &spec.ca_file {
            let certs = read_ca_file(path).map_err(|message| RemoteError::Other {
                url: spec.url(),
                endpoint: endpoint.clone().unwrap_or_default(),
                op: "reading ca_file",
                key: String::new(),
                message,
            })?;
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(15), ..RetryConfig::default() };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(&region)
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_virtual_hosted_style_request(!spec.path_style)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(token) = &creds.session_token {
            builder = builder.with_token(token);
        }
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e);
        }
        let shown_endpoint = endpoint.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let s3 = builder.build().map_err(|e| RemoteError::Other {
            url: spec.url(),
            endpoint: shown_endpoint.clone(),
            op: "opening",
            key: String::new(),
            message: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-s3")
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Io { path: PathBuf::from("(tokio runtime)"), source })?;
        Ok(Self {
            spec: spec.clone(),
            endpoint: shown_endpoint,
            s3: Arc::new(s3),
            rt: Arc::new(rt),
            creds: creds.source,
            key_id: creds.access_key_id,
        })
    }

    /// The store's settings.
    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// The full key of `rel` (a key relative to the prefix).
    fn key(&self, rel: &str) -> Key {
        if self.spec.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.spec.prefix))
        }
    }

    fn error(&self, op: &'static str, rel: &str, e: object_store::Error) -> RemoteError {
        let message = error_chain(&e);
        let key = self.key(rel).to_string();
        if message.contains("NoSuchBucket") {
            return RemoteError::NoBucket { bucket: self.spec.bucket.clone(), endpoint: self.endpoint.clone() };
        }
        let denied =
            matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
                || ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"]
                    .iter()
                    .any(|m| message.contains(m));
        if denied {
            return RemoteError::Denied {
                url: self.spec.url(),
                source_of: self.creds.clone(),
                key_id: self.key_id.clone(),
                key,
                message: first_line(&message),
            };
        }
        if matches!(e, object_store::Error::NotFound { .. }) {
            return RemoteError::NotFound { url: self.spec.url(), key };
        }
        RemoteError::Other { url: self.spec.url(), endpoint: self.endpoint.clone(), op, key, message }
    }

    /// Writes `bytes` at `rel` unless the key is taken; taken by the same
    /// bytes is [`Put::Existed`], by others [`RemoteError::Conflict`].
    pub fn put_bytes(&self, rel: &str, bytes: Vec<u8>, content_type: &str) -> Result<Put, RemoteError> {
        let ours = blake3::hash(&bytes);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::CacheControl, CACHE_CONTROL.into());
        attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        let opts = PutOptions { mode: PutMode::Create, attributes, ..PutOptions::default() };
        let key = self.key(rel);
        match self.rt.block_on(self.s3.put_opts(&key, bytes.into(), opts)) {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let theirs = blake3::hash(&self.get_bytes(rel)?);
                if theirs == ours {
                    Ok(Put::Existed)
                } else {
                    Err(RemoteError::Conflict {
                        url: self.spec.url(),
                        key: key.to_string(),
                        theirs: format!("blake3 {}", &theirs.to_hex()[..16]),
                        ours: format!("blake3 {}", &ours.to_hex()[..16]),
                    })
                }
            }
            Err(e) => Err(self.error("writing", rel, e)),
        }
    }

    /// [`Remote::put_bytes`] of a file's content.
    pub fn put_file(&self, rel: &str, path: &Path, content_type: &str) -> Result<Put, RemoteError> {
        let bytes = fs::read(path).map_err(|source| RemoteError::Io { path: path.to_owned(), source })?;
        self.put_bytes(rel, bytes, content_type)
    }

    /// The object at `rel`, whole.
    pub fn get_bytes(&self, rel: &str) -> Result<Vec<u8>, RemoteError> {
        let key = self.key(rel);
        self.rt
            .block_on(async { self.s3.get(&key).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.error("reading", rel, e))
    }

    /// The object's size, or `None` if there is none at `rel`.
    pub fn size(&self, rel: &str) -> Result<Option<u64>, RemoteError> {
        match self.rt.block_on(self.s3.head(&self.key(rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => match self.error("looking up", rel, e) {
                RemoteError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The names directly under `dir` (relative to the prefix).
    pub fn list(&self, dir: &str) -> Result<Vec<String>, RemoteError> {
        let key = self.key(dir);
        let listed =
            self.rt.block_on(self.s3.list_with_delimiter(Some(&key))).map_err(|e| self.error("listing", dir, e))?;
        Ok(listed.objects.into_iter().filter_map(|o| o.location.filename().map(str::to_owned)).collect())
    }

    /// A URL that lets whoever holds it GET `rel` for `ttl`, and nothing
    /// else: signed with the store's credentials, which it does not carry.
    pub fn presign_get(&self, rel: &str, ttl: Duration) -> Result<String, RemoteError> {
        self.rt
            .block_on(self.s3.signed_url(http::Method::GET, &self.key(rel), ttl))
            .map(|u| u.to_string())
            .map_err(|e| self.error("signing", rel, e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::RemoteSpec;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        assert_eq!(RemoteSpec::parse_url("s3://my-bucket/a/b/").unwrap(), ("my-bucket".into(), "a/b".into()));
        assert_eq!(RemoteSpec::parse_url("s3://my-bucket").unwrap(), ("my-bucket".into(), String::new()));
        assert!(RemoteSpec::parse_url("https://x/y").unwrap_err().contains("not an s3:// URL"));
        assert!(RemoteSpec::parse_url("s3://My_Bucket/x").unwrap_err().contains("not a bucket name"));
        assert!(RemoteSpec::parse_url("s3://bucket/a/../b").unwrap_err().contains("'..'"));
    }
}
