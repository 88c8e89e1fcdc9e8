//! The release source of a simulation: payloads of given sizes, put in a
//! simulated store when the hosts pull.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;

use crate::fleet::{Fetch, ReleaseSource, Shipped, SourceError};

/// A bundle and a delta as files of their sizes (sparse: a simulated host
/// reads only their length), every base's delta the same size. With
/// `pull`, each payload asked for is "put" in the store (its bytes counted
/// as leaving the controller) and the hosts get a presigned-looking URL.
#[derive(Debug)]
pub struct SimSource {
    bundle: PathBuf,
    delta: PathBuf,
    pull: bool,
    puts: AtomicUsize,
    put_bytes: AtomicU64,
}

impl SimSource {
    /// The payload files go in `dir`.
    pub fn new(dir: &Path, bundle_len: u64, delta_len: u64, pull: bool) -> std::io::Result<Self> {
        let (bundle, delta) = (dir.join("sim-bundle"), dir.join("sim-delta"));
        fs_err::File::create(&bundle)?.set_len(bundle_len)?;
        fs_err::File::create(&delta)?.set_len(delta_len)?;
        Ok(Self { bundle, delta, pull, puts: AtomicUsize::new(0), put_bytes: AtomicU64::new(0) })
    }

    /// Payloads put in the store so far, and their bytes.
    pub fn uploaded(&self) -> (usize, u64) {
        (self.puts.load(Ordering::Relaxed), self.put_bytes.load(Ordering::Relaxed))
    }
}

impl ReleaseSource for SimSource {
    fn bundle(&self, _id: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(self.bundle.clone())
    }
    fn delta(&self, _base: &ReleaseId, _target: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        Ok(Some(self.delta.clone()))
    }
    fn rsync_delta(&self, _s: &Signature, _t: &ReleaseId) -> Result<PathBuf, SourceError> {
        Err("no rsync delta in the simulation".into())
    }
    fn fetchable(
        &self,
        base: Option<&ReleaseId>,
        target: &ReleaseId,
        _kind: Shipped,
        path: &Path,
    ) -> Result<Option<Fetch>, SourceError> {
        if !self.pull {
            return Ok(None);
        }
        let len = fs_err::metadata(path)?.len();
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(len, Ordering::Relaxed);
        let key = match base {
            Some(b) => format!("deltas/{b}..{target}"),
            None => format!("bundles/{target}.tar.zst"),
        };
        // As long as an S3 presigned GET.
        let url = format!(
            "https://store.sim/ferry/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASIMULATED0000000%2F\
             20261206%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261206T000000Z&X-Amz-Expires=900&\
             X-Amz-SignedHeaders=host&X-Amz-Signature={}",
            "0".repeat(64)
        );
        Ok(Some(Fetch { url, blake3: "0".repeat(64), len }))
    }
}
