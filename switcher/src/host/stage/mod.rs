//! Staging: a bundle or a delta becomes `releases/<id>`, all or nothing.
//!
//! Everything is built in `releases/.staging-<id>`: directories first, then
//! each file — hardlinked from a kept release that has the same (hash, mode),
//! copied when only the hash matches, else written from the bundle or the
//! delta — then symlinks, the release's `.ferry/` head, the `shared/` links,
//! the config link and any bridged assets (see `bridge`). Written files were checked as they were decoded; linked
//! and copied ones are hashed again, so a drifted kept release is caught
//! rather than spread. Then one syncfs(2) makes it all durable and a rename
//! makes it a release. A kill at any point leaves only the staging directory,
//! which the next lock holder removes; a refused stage removes it itself
//! (when its [`Staging`] is dropped).
//!
//! Nothing is removed before the input was read and checked whole: a release
//! staged anew with other options gives way only to its complete
//! replacement. A release whose new files would not fit in the free space
//! is refused before anything is written.

mod already;
mod bridge;
mod checks;
mod options;
mod staging;

use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use ferry_formats::bundle::{self, Head, ReadError, Visitor};
use ferry_formats::delta::{self, Op};
use ferry_formats::{BlobHash, Entry, EntryKind, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;

pub use checks::{check_linked, LinkedError};
pub(crate) use options::{shared_link_target, StagedCheck, VERIFIED};
pub use options::{StageOptions, Staged, ACTIVE_CONFIG};
use staging::{file_parts, Staging};

use super::files::{read_regular, umask};
use super::{at, Host, HostError, Lock};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Host {
    /// Stages the bundle or delta read from `input` (told apart by their
    /// magic), with its `signature` (a minisign file's text), which a host
    /// with pinned keys checks before it writes anything (see `trust`).
    /// Takes the lock's word that nobody else works here.
    pub fn stage(
        &self,
        _lock: &Lock,
        input: &mut dyn Read,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        let start = std::time::Instant::now();
        // A pipe may hand over fewer bytes than a magic at a time.
        let mut magic = Vec::with_capacity(8);
        (&mut *input)
            .take(8)
            .read_to_end(&mut magic)
            .map_err(|e| HostError::Input(format!("cannot read the input: {e}")))?;
        let mut input = BufReader::with_capacity(1 << 20, io::Cursor::new(magic.clone()).chain(input));
        let mut staged = if magic.starts_with(&delta::MAGIC) {
            self.stage_delta(&mut input, opts, signature)
        } else if magic.starts_with(&delta::RSYNC_MAGIC) {
            self.stage_rsync(&mut input, opts, signature)
        } else if magic.starts_with(&ZSTD_MAGIC) {
            self.stage_bundle(&mut input, opts, signature)
        } else if magic.is_empty() {
            Err(HostError::Input("the input is empty: expected a bundle or a delta".into()))
        } else {
            Err(HostError::Input("the input is neither a ferry bundle (.tar.zst) nor a ferry delta".into()))
        };
        if let Ok(s) = &mut staged {
            s.elapsed = start.elapsed();
        }
        staged
    }

    fn stage_delta(
        &self,
        input: &mut dyn Read,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        let mut fixed = Vec::new();
        let ends = {
            let mut tee = TeeRead { inner: &mut *input, copy: &mut fixed };
            delta::read_ends(&mut tee).map_err(HostError::Delta)?
        };
        if let Some(already) = self.already_staged(&ends.target, opts)? {
            self.check_kept(&ends.target, signature)?;
            return Ok(already);
        }
        if !self.has(&ends.base) {
            return Err(HostError::MissingBase { base: ends.base, root: self.root.clone() });
        }
        let base = self.head(&ends.base)?;
        let mut whole = io::Cursor::new(fixed).chain(input);
        let parsed = delta::read(&mut whole, &base).map_err(HostError::Delta)?;
        let needed = delta::needed(&base.manifest, &parsed.head.manifest);
        let base_dir = self.release_dir(&base.id);
        let reference = |op: &Op| match op {
            Op::Patch { reference, .. } => Some(base_dir.join(base.manifest.entries()[*reference].path.as_str())),
            _ => None,
        };
        let signed = self.check_signature(&parsed.head.id, &parsed.head.meta.service, signature, false)?;
        let mut staging = Staging::begin(self, &parsed.head, Some(&base), opts)?;
        staging.signed = signed;
        self.apply(staging, &parsed.head, &needed, &parsed.ops, &reference, opts)
    }

    /// Stages an rsync delta against the signature this host last gave of
    /// its current release.
    fn stage_rsync(
        &self,
        input: &mut dyn Read,
        opts: &StageOptions,
        release_sig: Option<&str>,
    ) -> Result<Staged, HostError> {
        let mut fixed = Vec::new();
        let (basis, target) = {
            let mut tee = TeeRead { inner: &mut *input, copy: &mut fixed };
            delta::read_rsync_basis(&mut tee).map_err(HostError::Delta)?
        };
        if let Some(already) = self.already_staged(&target, opts)? {
            self.check_kept(&target, release_sig)?;
            return Ok(already);
        }
        let (signature, basis_dir) = self.saved_signature()?;
        let now = fs::canonicalize(self.current_link()).map_err(HostError::Fs)?;
        if now != basis_dir {
            return Err(HostError::Input(format!(
                "current is {} now, not the {} this host signed; push again",
                now.display(),
                basis_dir.display()
            )));
        }
        if signature.id != basis {
            return Err(HostError::Delta(delta::DeltaError::WrongBasis { expected: signature.id, actual: basis }));
        }
        let mut whole = io::Cursor::new(fixed).chain(input);
        let parsed = delta::read_rsync(&mut whole, &signature).map_err(HostError::Delta)?;
        let have = signature.files.iter().map(|f| &f.hash).collect();
        let needed = delta::needed_from(&have, &parsed.head.manifest);
        let reference = |op: &Op| match op {
            Op::Rsync { reference, .. } => Some(basis_dir.join(signature.files[*reference].path.as_str())),
            _ => None,
        };
        let signed = self.check_signature(&parsed.head.id, &parsed.head.meta.service, release_sig, false)?;
        let mut staging = Staging::begin(self, &parsed.head, None, opts)?;
        staging.signed = signed;
        // What the signature lists can be copied from where it is (its mode
        // is whatever the host has, so never hardlinked).
        for f in &signature.files {
            staging.kept.any.entry(f.hash).or_insert_with(|| basis_dir.join(f.path.as_str()));
        }
        self.apply(staging, &parsed.head, &needed, &parsed.ops, &reference, opts)
    }

    /// Decodes and writes the ops of a delta (in parallel), places every
    /// other file from what this host has, and completes the release.
    fn apply(
        &self,
        mut staging: Staging<'_>,
        target: &Head,
        needed: &[&Entry],
        ops: &[Op],
        reference: &(dyn Fn(&Op) -> Option<PathBuf> + Sync),
        opts: &StageOptions,
    ) -> Result<Staged, HostError> {
        let result = (|| {
            // Directories (file-system metadata) and the hashing of what the
            // kept releases will lend (reads) go on at once.
            let needed_paths: std::collections::HashSet<&str> = needed.iter().map(|e| e.path.as_str()).collect();
            let (dirs, verified) =
                rayon::join(|| staging.dirs(target), || staging.verify_sources(target, &needed_paths));
            dirs?;
            staging.verified = verified?;
            let written: Vec<(BlobHash, PathBuf, u32, u64)> = needed
                .par_iter()
                .zip(ops.par_iter())
                .map(|(entry, op)| {
                    let base = reference(op).map(|path| read_regular(&path)).transpose()?;
                    let len = staging.write_with(entry, &mut |out| {
                        op.decode_into(entry, base.as_deref(), out).map_err(|e| match e {
                            delta::DeltaError::Write { source, .. } => at(staging.path(entry))(source),
                            other => HostError::Delta(other),
                        })
                    })?;
                    let (mode, hash) = file_parts(entry);
                    Ok((hash, staging.path(entry), mode, len))
                })
                .collect::<Result<_, HostError>>()?;
            for (hash, path, mode, len) in written {
                staging.written.insert(hash, (path, mode));
                staging.counts.written += 1;
                staging.counts.written_bytes += len;
            }
            for entry in target.manifest.entries() {
                match &entry.kind {
                    EntryKind::File { .. } if needed_paths.contains(entry.path.as_str()) => {}
                    EntryKind::File { .. } => staging.reuse(entry)?,
                    EntryKind::Symlink { target } => staging.symlink(entry, target)?,
                    EntryKind::Dir { .. } => {}
                }
            }
            Ok(())
        })();
        staging.finish(result.map(|()| target), opts)
    }

    fn stage_bundle(
        &self,
        input: &mut dyn Read,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        struct Stager<'a> {
            host: &'a Host,
            opts: &'a StageOptions,
            signature: Option<&'a str>,
            staging: Option<Staging<'a>>,
            already: Option<ReleaseId>,
        }
        impl Visitor for Stager<'_> {
            fn head(&mut self, head: &Head) -> io::Result<()> {
                if self.host.already_staged(&head.id, self.opts).map_err(io::Error::other)?.is_some() {
                    self.host.check_kept(&head.id, self.signature).map_err(io::Error::other)?;
                    self.already = Some(head.id);
                    return Err(io::Error::other("already staged"));
                }
                // Checked before the staging directory is made: a release
                // the pinned keys do not vouch for writes nothing.
                let signed = self
                    .host
                    .check_signature(&head.id, &head.meta.service, self.signature, false)
                    .map_err(io::Error::other)?;
                // Directories are made as their entries arrive, not all at
                // once from the manifest: a bundle cut short after its head
                // makes none.
                let mut staging = Staging::begin(self.host, head, None, self.opts).map_err(io::Error::other)?;
                staging.signed = signed;
                self.staging = Some(staging);
                Ok(())
            }

            fn entry(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<()> {
                let staging = self.staging.as_mut().expect("head comes first");
                let done = match &entry.kind {
                    EntryKind::Dir { mode } => staging.dir(entry, *mode | 0o700, umask()),
                    EntryKind::Symlink { target } => staging.symlink(entry, target),
                    EntryKind::File { hash, mode, .. } => {
                        if staging.can_reuse(entry) {
                            staging.reuse(entry)
                        } else {
                            staging.write_file(entry, content).map(|len| {
                                staging.written.insert(*hash, (staging.path(entry), *mode));
                                staging.counts.written += 1;
                                staging.counts.written_bytes += len;
                            })
                        }
                    }
                };
                done.map_err(io::Error::other)
            }
        }
        let mut stager = Stager { host: self, opts, signature, staging: None, already: None };
        let read = bundle::read(input, None, &mut stager);
        if let Some(id) = stager.already {
            return Ok(Staged::already(id));
        }
        let Some(staging) = stager.staging.take() else {
            // Refused at its head (by the pinned keys, say), or no head.
            return Err(match read.expect_err("a bundle read without a head failed") {
                ReadError::Visitor { source, .. } => match source.downcast::<HostError>() {
                    Ok(host) => host,
                    Err(other) => HostError::Input(other.to_string()),
                },
                other => HostError::Bundle(other),
            });
        };
        // The head is the reader's, handed back once every byte was checked
        // (a staging keeps only the id: a second copy of a large manifest
        // would double what a stage holds).
        let result = read.map_err(|e| match e {
            ReadError::Visitor { source, .. } => match source.downcast::<HostError>() {
                Ok(host) => host,
                Err(other) => HostError::Input(other.to_string()),
            },
            other => HostError::Bundle(other),
        });
        let verified;
        let head = match result {
            Ok(v) => {
                verified = v;
                Ok(verified.head())
            }
            Err(e) => Err(e),
        };
        staging.finish(head, opts)
    }
}

struct TeeRead<'a> {
    inner: &'a mut dyn Read,
    copy: &'a mut Vec<u8>,
}

impl Read for TeeRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}
