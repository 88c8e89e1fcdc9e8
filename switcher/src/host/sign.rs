//! Signing a host's files, for an rsync delta from content the controller
//! does not know (see `ferry_formats::signature`).

use std::io::Write;
use std::path::PathBuf;

use ferry_formats::bundle::META_DIR;
use ferry_formats::signature::{Signature, SignedFile};
use ferry_formats::{atomic, RelPath};
use fs_err as fs;
use rayon::prelude::*;

use super::{at, Host, HostError, Lock};

impl Host {
    /// Signs every regular file of the release `current` points at (which
    /// need not be one ferry staged), saves the signature for the rsync delta
    /// that answers it, and returns it.
    pub fn signature(&self, _lock: &Lock) -> Result<Signature, HostError> {
        let link = self.current_link();
        let dir = fs::canonicalize(&link).map_err(HostError::Fs)?;
        let mut paths = Vec::new();
        list_files(&dir, &dir, &mut paths)?;
        let files = paths
            .par_iter()
            .map(|(rel, path)| {
                let content = fs::read(path).map_err(HostError::Fs)?;
                Ok(SignedFile::of(rel.clone(), &content))
            })
            .collect::<Result<Vec<_>, HostError>>()?;
        let signature = Signature::new(files);
        let saved = self.ferry_dir().join("signature");
        atomic::write_atomic(&saved, |f| {
            f.write_all(dir.as_os_str().as_encoded_bytes())?;
            f.write_all(b"\n")?;
            signature.write(f)
        })
        .map_err(at(&saved))?;
        Ok(signature)
    }

    /// The signature [`Host::signature`] saved, and the directory it signed.
    pub(crate) fn saved_signature(&self) -> Result<(Signature, PathBuf), HostError> {
        let saved = self.ferry_dir().join("signature");
        let bytes = fs::read(&saved).map_err(HostError::Fs)?;
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| HostError::Input(format!("{} is damaged", saved.display())))?;
        let dir = PathBuf::from(String::from_utf8_lossy(&bytes[..newline]).into_owned());
        let signature = Signature::read(&mut &bytes[newline + 1..], u64::MAX)
            .map_err(|e| HostError::Input(format!("{}: {e}", saved.display())))?;
        Ok((signature, dir))
    }
}

/// Every regular file below `dir`, relative to `root`, skipping symlinks
/// (a release's links are in its manifest) and ferry's own `.ferry/`.
fn list_files(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<(RelPath, PathBuf)>,
) -> Result<(), HostError> {
    for entry in fs::read_dir(dir).map_err(HostError::Fs)? {
        let entry = entry.map_err(at(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(at(&path))?;
        let rel = path.strip_prefix(root).expect("below the root");
        if rel == std::path::Path::new(META_DIR) {
            continue;
        }
        if kind.is_dir() {
            list_files(root, &path, out)?;
        } else if kind.is_file() {
            let Some(rel) = rel.to_str().and_then(|r| RelPath::new(r).ok()) else { continue };
            out.push((rel, path));
        }
    }
    Ok(())
}
