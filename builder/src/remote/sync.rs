//! The local store and its remote: publishing what was built here, and
//! fetching into the local directory (the cache) what was published
//! elsewhere.
//!
//! The local store stays where builds happen and where deltas are made; a
//! store with a remote also lists and resolves names among the remote's
//! releases ([`Store::find`]), and a release found only there is fetched,
//! verified byte by byte, into the local directory before anything uses it.
//! The remote's records are cached under `<store>/remote/bundles/`: they
//! never change once written.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ferry_formats::{atomic, bundle, ReleaseId};
use fs_err as fs;
use serde::Serialize;

use super::{Put, Remote, RemoteError, RemoteSpec};
use crate::{BundleInfo, Store, StoreError};

/// Where signatures live in a store, local and remote:
/// `signatures/<id>.minisig`. A signature the local store has is published
/// with its bundle, and fetched with it.
pub const SIGNATURES: &str = "signatures";

/// The remote's key of a bundle.
pub fn bundle_key(id: &ReleaseId) -> String {
    format!("bundles/{id}.tar.zst")
}

/// The remote's key of a bundle's record.
pub fn record_key(id: &ReleaseId) -> String {
    format!("bundles/{id}.json")
}

/// The remote's key of the delta from `base` to `target`.
pub fn delta_key(base: &ReleaseId, target: &ReleaseId) -> String {
    format!("deltas/{base}..{target}")
}

/// The remote's (and the local store's) key of a release's signature.
pub fn signature_key(id: &ReleaseId) -> String {
    format!("{SIGNATURES}/{id}.minisig")
}

/// A store's remote, opened on first use.
#[derive(Debug)]
pub(crate) struct RemoteHandle {
    spec: RemoteSpec,
    opened: OnceLock<Remote>,
}

impl RemoteHandle {
    pub(crate) fn new(spec: RemoteSpec) -> Arc<Self> {
        Arc::new(Self { spec, opened: OnceLock::new() })
    }
}

/// One object a publish wrote or found.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedObject {
    pub key: String,
    pub bytes: u64,
    /// Whether it was there already (the same bytes).
    pub existed: bool,
}

/// What `ferry publish` did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub id: ReleaseId,
    /// `s3://bucket/prefix`.
    pub store: String,
    pub objects: Vec<PublishedObject>,
}

impl Store {
    /// This store, with a remote.
    pub fn with_remote(mut self, spec: RemoteSpec) -> Self {
        self.remote = Some(RemoteHandle::new(spec));
        self
    }

    /// The remote's settings, if the store has one.
    pub fn remote_spec(&self) -> Option<&RemoteSpec> {
        self.remote.as_ref().map(|r| &r.spec)
    }

    /// The remote, opened (`None`: the store has none).
    pub fn remote(&self) -> Result<Option<&Remote>, StoreError> {
        let Some(handle) = &self.remote else { return Ok(None) };
        if let Some(r) = handle.opened.get() {
            return Ok(Some(r));
        }
        let opened = Remote::open(&handle.spec)?;
        Ok(Some(handle.opened.get_or_init(|| opened)))
    }

    fn remote_or_err(&self) -> Result<&Remote, StoreError> {
        self.remote()?.ok_or_else(|| StoreError::NoRemote { store: self.root().to_owned() })
    }

    /// Uploads the local bundle `id` (and its signature, if the local store
    /// has one, and its record) to the remote.
    pub fn publish(&self, id: &ReleaseId) -> Result<Published, StoreError> {
        let remote = self.remote_or_err()?;
        if !self.has_intact(id) {
            return Err(StoreError::NotLocal { id: *id, store: self.root().to_owned() });
        }
        // The bucket and the keys, checked before any bundle's bytes go:
        // a listing fails on either (and a lax server's PUT would make a
        // missing bucket rather than say so).
        remote.list("bundles")?;
        let mut objects = Vec::new();
        let mut put = |key: String, path: PathBuf, kind: &str| -> Result<(), StoreError> {
            let bytes = fs::metadata(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?.len();
            let existed = remote.put_file(&key, &path, kind)? == Put::Existed;
            objects.push(PublishedObject { key, bytes, existed });
            Ok(())
        };
        put(bundle_key(id), self.bundle_path(id), "application/zstd")?;
        // The signing hook: a signature beside the bundle goes with it.
        let signature = self.root().join(signature_key(id));
        if signature.is_file() {
            put(signature_key(id), signature, "text/plain")?;
        }
        // The record: the first publisher's stays (a later one differs only
        // in when and where it was built).
        let info = self.info(id)?;
        let json = serde_json::to_vec_pretty(&info).expect("bundle info serializes");
        let bytes = json.len() as u64;
        let existed = match remote.put_bytes(&record_key(id), json, "application/json") {
            Ok(p) => p == Put::Existed,
            Err(RemoteError::Conflict { .. }) => true,
            Err(e) => return Err(e.into()),
        };
        objects.push(PublishedObject { key: record_key(id), bytes, existed });
        Ok(Published { id: *id, store: remote.spec().url(), objects })
    }

    /// The remote's releases with their records (`None`: none readable),
    /// or nothing without a remote.
    pub(crate) fn remote_entries(&self) -> Result<Vec<(ReleaseId, Option<BundleInfo>)>, StoreError> {
        let Some(remote) = self.remote()? else { return Ok(vec![]) };
        let names = remote.list("bundles")?;
        let ids: Vec<ReleaseId> =
            names.iter().filter_map(|n| n.strip_suffix(".tar.zst")).filter_map(|n| n.parse().ok()).collect();
        let cache = self.root().join("remote").join("bundles");
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let cached = cache.join(format!("{id}.json"));
            let info = match fs::read(&cached).ok().and_then(|b| serde_json::from_slice::<BundleInfo>(&b).ok()) {
                Some(info) => Some(info),
                None if names.iter().any(|n| *n == format!("{id}.json")) => {
                    let bytes = remote.get_bytes(&record_key(&id))?;
                    let info = serde_json::from_slice::<BundleInfo>(&bytes).ok().filter(|i| i.id == id);
                    if info.is_some() {
                        fs::create_dir_all(&cache).map_err(|source| StoreError::Io { path: cache.clone(), source })?;
                        atomic::write_atomic(&cached, |f| std::io::Write::write_all(f, &bytes))
                            .map_err(|source| StoreError::Io { path: cached.clone(), source })?;
                    }
                    info
                }
                None => None,
            };
            out.push((id, info));
        }
        Ok(out)
    }

    /// Makes sure the local store has bundle `id`, fetching it from the
    /// remote if it does not; `true` if it was fetched. Every byte is
    /// verified against the id before it lands in the local store.
    pub fn fetch(&self, id: &ReleaseId) -> Result<bool, StoreError> {
        if self.has_intact(id) {
            return Ok(false);
        }
        let Some(remote) = self.remote()? else { return Ok(false) };
        let bytes = remote.get_bytes(&bundle_key(id))?;
        let path = self.bundle_path(id);
        let verified = bundle::read(Cursor::new(&bytes), Some(id), &mut bundle::Discard).map_err(|source| {
            StoreError::Bundle { path: PathBuf::from(remote.spec().url()).join(bundle_key(id)), source }
        })?;
        self.prepare()?;
        atomic::write_atomic(&path, |f| std::io::Write::write_all(f, &bytes))
            .map_err(|source| StoreError::Io { path: path.clone(), source })?;
        let record = match self.remote_entries()?.into_iter().find(|(i, _)| i == id).and_then(|(_, info)| info) {
            Some(info) => BundleInfo { size: bytes.len() as u64, ..info },
            None => BundleInfo::new(verified.head(), bytes.len() as u64, None, 0, String::new()),
        };
        self.record(&record)?;
        let sig = signature_key(id);
        if let Ok(Some(_)) = remote.size(&sig) {
            let local = self.root().join(&sig);
            let body = remote.get_bytes(&sig)?;
            if let Some(dir) = local.parent() {
                fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
            }
            atomic::write_atomic(&local, |f| std::io::Write::write_all(f, &body))
                .map_err(|source| StoreError::Io { path: local.clone(), source })?;
        }
        Ok(true)
    }
}

/// A payload in the remote store, and how a host may read it.
#[derive(Debug, Clone)]
pub struct Presigned {
    /// A GET URL good for the `ttl` it was signed for.
    pub url: String,
    /// The payload's blake3, hex.
    pub blake3: String,
    pub len: u64,
}

/// Makes sure the remote of `store` has the file at `path` under `key`
/// (relative to the prefix), and signs a URL that reads it for `ttl`. A
/// key already there with the file's length is taken as this content (keys
/// are content-addressed; the hosts check the hash before they apply a
/// byte); with another length it is refused.
pub fn put_for_fetch(
    store: &Store,
    key: &str,
    path: &std::path::Path,
    ttl: std::time::Duration,
) -> Result<Presigned, StoreError> {
    let remote = store.remote_or_err()?;
    let bytes = fs::read(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
    let blake3 = blake3::hash(&bytes).to_hex().to_string();
    let len = bytes.len() as u64;
    match remote.size(key)? {
        Some(n) if n == len => {}
        Some(n) => {
            return Err(RemoteError::Conflict {
                url: remote.spec().url(),
                key: key.to_owned(),
                theirs: format!("{n} bytes"),
                ours: format!("{len} bytes"),
            }
            .into())
        }
        None => {
            remote.put_bytes(key, bytes, "application/octet-stream")?;
        }
    }
    Ok(Presigned { url: remote.presign_get(key, ttl)?, blake3, len })
}

/// Makes sure the remote of `store` has the gzipped agent `gz` under
/// `agents/<blake3 of gz>.gz` (a create-only put; a key already there with
/// its length is taken as it, as for [`put_for_fetch`]), and signs a URL
/// that reads it for `ttl`: hosts that lack the agent download it there
/// (`fetch = "store"`) and run it to check its hash before using it.
pub fn put_agent(store: &Store, gz: &[u8], ttl: std::time::Duration) -> Result<String, StoreError> {
    let remote = store.remote_or_err()?;
    let key = format!("agents/{}.gz", blake3::hash(gz).to_hex());
    match remote.size(&key)? {
        Some(n) if n == gz.len() as u64 => {}
        Some(n) => {
            return Err(RemoteError::Conflict {
                url: remote.spec().url(),
                key,
                theirs: format!("{n} bytes"),
                ours: format!("{} bytes", gz.len()),
            }
            .into())
        }
        None => {
            remote.put_bytes(&key, gz.to_vec(), "application/gzip")?;
        }
    }
    Ok(remote.presign_get(&key, ttl)?)
}
