//! The staging directory: each file of a release written, hardlinked or
//! copied into `releases/.staging-<id>`, and the release completed there
//! (its `.ferry/` head, the `shared/` and config links, its records), synced
//! and renamed into place.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use ferry_formats::bundle::{Head, MANIFEST_PATH, META_DIR, RELEASE_PATH};
use ferry_formats::journal::{Action, Record};
use ferry_formats::{atomic, BlobHash, ComponentKind, Entry, EntryKind, RelPath, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;

use super::checks::{check_env, check_linked, check_space};
use super::options::{shared_link_target, StagedCheck, ACTIVE_CONFIG, STAGED_WITH, VERIFIED};
use super::{StageOptions, Staged};
use crate::error::error_chain;
use crate::host::files::{finish_file, hash_file, open_regular, umask};
use crate::host::{at, Host, HostError};

pub(super) fn file_parts(entry: &Entry) -> (u32, BlobHash) {
    match &entry.kind {
        EntryKind::File { mode, hash, .. } => (*mode, *hash),
        _ => unreachable!("only files are placed"),
    }
}

/// Where each content already is on this host: kept releases, by (hash,
/// mode) for a hardlink and by hash alone for a copy.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) exact: HashMap<(BlobHash, u32), PathBuf>,
    pub(super) any: HashMap<BlobHash, PathBuf>,
}

impl Kept {
    /// `known` is a head already read (a delta's base), not read again.
    fn index(host: &Host, known: Option<&Head>) -> Result<Self, HostError> {
        let mut kept = Kept::default();
        for id in host.releases()? {
            // A release whose head cannot be read offers nothing to link.
            let head = match known.filter(|k| k.id == id) {
                Some(k) => std::borrow::Cow::Borrowed(k),
                None => match host.head(&id) {
                    Ok(h) => std::borrow::Cow::Owned(h),
                    Err(_) => continue,
                },
            };
            let dir = host.release_dir(&id);
            // Paths given over to shared/ are not the release's any more.
            let linked = host.staged_with(&id).map(|o| o.linked()).unwrap_or_default();
            for entry in head.manifest.entries() {
                if linked.iter().any(|l| entry.path.starts_with(l)) {
                    continue;
                }
                if let EntryKind::File { mode, hash, .. } = &entry.kind {
                    let path = dir.join(entry.path.as_str());
                    kept.exact.entry((*hash, *mode)).or_insert_with(|| path.clone());
                    kept.any.entry(*hash).or_insert(path);
                }
            }
        }
        Ok(kept)
    }
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) written: usize,
    pub(super) written_bytes: u64,
    pub(super) linked: usize,
    pub(super) copied: usize,
}

/// A release being built in `releases/.staging-<id>`.
pub(super) struct Staging<'a> {
    pub(super) host: &'a Host,
    pub(super) id: ReleaseId,
    pub(super) dir: PathBuf,
    pub(super) kept: Kept,
    /// Contents written into this staging directory, for later duplicates.
    pub(super) written: HashMap<BlobHash, (PathBuf, u32)>,
    /// Files to place from what this host has, once the rest is written.
    pub(super) deferred: Vec<Entry>,
    /// Kept files already hashed and found right, to hardlink without
    /// hashing them again.
    pub(super) verified: std::collections::HashSet<PathBuf>,
    pub(super) counts: Counts,
    /// The signature the pinned keys vouched for (none pinned: `None`),
    /// kept with the release.
    pub(super) signed: Option<crate::host::Accepted>,
}

impl<'a> Staging<'a> {
    pub(super) fn begin(
        host: &'a Host,
        head: &Head,
        base: Option<&Head>,
        opts: &StageOptions,
    ) -> Result<Self, HostError> {
        check_env(host, head, opts)?;
        let configs: Vec<RelPath> = head.meta.components_of(ComponentKind::Config).map(|c| c.path.clone()).collect();
        check_linked(&opts.linked(), &configs).map_err(|e| HostError::Input(e.to_string()))?;
        let kept = Kept::index(host, base)?;
        if let Err(e) = check_space(host, head, &kept) {
            // Journalled as a stage that failed: the host's operator sees why.
            let record = Record::now(crate::host::whoami(), Action::Stage, None, Some(head.id)).failed(error_chain(&e));
            let _ = host.record(&record);
            return Err(e);
        }
        let dir = host.releases_dir().join(format!(".staging-{}", head.id));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(HostError::Fs)?;
        }
        fs::create_dir(&dir).map_err(HostError::Fs)?;
        Ok(Self {
            host,
            id: head.id,
            dir,
            kept,
            written: HashMap::new(),
            deferred: Vec::new(),
            verified: std::collections::HashSet::new(),
            counts: Counts::default(),
            signed: None,
        })
    }

    pub(super) fn path(&self, entry: &Entry) -> PathBuf {
        self.dir.join(entry.path.as_str())
    }

    /// Makes every directory, a level at a time (parents first), each level
    /// in parallel: mkdir is most of a hardlink checkout's time on ext4.
    pub(super) fn dirs(&self, head: &Head) -> Result<(), HostError> {
        let umask = umask();
        let mut by_depth: Vec<Vec<(&Entry, u32)>> = Vec::new();
        for entry in head.manifest.entries() {
            if let EntryKind::Dir { mode } = entry.kind {
                let depth = entry.path.components().count();
                if by_depth.len() < depth {
                    by_depth.resize_with(depth, Vec::new);
                }
                by_depth[depth - 1].push((entry, mode | 0o700));
            }
        }
        for level in by_depth {
            level.par_iter().try_for_each(|(entry, mode)| self.dir(entry, *mode, umask))?;
        }
        Ok(())
    }

    /// Makes one directory with `mode` (the process's `umask` given).
    pub(super) fn dir(&self, entry: &Entry, mode: u32, umask: u32) -> Result<(), HostError> {
        let path = self.path(entry);
        fs::create_dir(&path).map_err(HostError::Fs)?;
        // mkdir applies the umask; set the mode only where it took bits away.
        if mode & !umask != mode {
            fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(HostError::Fs)?;
        }
        Ok(())
    }

    pub(super) fn symlink(&self, entry: &Entry, target: &str) -> Result<(), HostError> {
        let path = self.path(entry);
        fs::os::unix::fs::symlink(target, &path).map_err(HostError::Fs)
    }

    pub(super) fn can_reuse(&self, entry: &Entry) -> bool {
        let (_, hash) = file_parts(entry);
        self.kept.any.contains_key(&hash) || self.written.contains_key(&hash)
    }

    /// Writes one file, read-only, with the normalized mtime, and returns its length.
    pub(super) fn write_file(&self, entry: &Entry, content: &mut dyn Read) -> Result<u64, HostError> {
        let path = self.path(entry);
        self.write_with(entry, &mut |out| io::copy(content, out).map(drop).map_err(at(&path)))
    }

    /// Writes one file with whatever `fill` writes, then makes it read-only
    /// with the normalized mtime; returns its length.
    pub(super) fn write_with(
        &self,
        entry: &Entry,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<(), HostError>,
    ) -> Result<u64, HostError> {
        let (mode, _) = file_parts(entry);
        let path = self.path(entry);
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(HostError::Fs)?;
        let mut out = io::BufWriter::with_capacity(1 << 16, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| at(&path)(e.into_error()))?;
        let len = file.metadata().map_err(at(&path))?.len();
        finish_file(file.file(), mode).map_err(at(&path))?;
        Ok(len)
    }

    /// Notes a file whose content this host already has; it is placed by
    /// [`Staging::place_reused`], in parallel with the others.
    pub(super) fn reuse(&mut self, entry: &Entry) -> Result<(), HostError> {
        self.deferred.push(entry.clone());
        Ok(())
    }

    /// Places every noted file: a hardlink when a kept file (or one written
    /// in this staging) has the same (hash, mode), a copy when only the
    /// content matches; a file from a kept release is hashed again, so a
    /// release changed on this host is caught rather than spread.
    fn place_reused(&mut self) -> Result<(), HostError> {
        let placed = self
            .deferred
            .par_iter()
            .map(|entry| self.place(entry))
            .try_fold(|| (0, 0), |(l, c), linked| linked.map(|linked| if linked { (l + 1, c) } else { (l, c + 1) }))
            .try_reduce(|| (0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1)))?;
        self.counts.linked += placed.0;
        self.counts.copied += placed.1;
        self.deferred.clear();
        Ok(())
    }

    /// Hashes, in parallel, every kept file that a target file outside
    /// `skip` will be hardlinked from, and returns those that are right. A
    /// wrong one is an error: that release was changed on this host.
    pub(super) fn verify_sources(
        &self,
        target: &Head,
        skip: &std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashSet<PathBuf>, HostError> {
        let mut sources: HashMap<&PathBuf, BlobHash> = HashMap::new();
        for entry in target.manifest.entries() {
            if let EntryKind::File { mode, hash, .. } = &entry.kind {
                if !skip.contains(entry.path.as_str()) {
                    if let Some(source) = self.kept.exact.get(&(*hash, *mode)) {
                        sources.insert(source, *hash);
                    }
                }
            }
        }
        sources
            .into_par_iter()
            .map(|(source, expected)| {
                let actual = hash_file(source)?;
                if actual != expected {
                    return Err(HostError::Input(format!(
                        "{}: a kept release's copy hashes to {actual}, not {expected}; that release was changed on this host (see `ferry host verify`)",
                        source.display()
                    )));
                }
                Ok(source.clone())
            })
            .collect()
    }

    /// Places one file; returns whether it is a hardlink.
    fn place(&self, entry: &Entry) -> Result<bool, HostError> {
        let (mode, hash) = file_parts(entry);
        let path = self.path(entry);
        let (source, exact) = match self.kept.exact.get(&(hash, mode)) {
            Some(p) => (p.clone(), true),
            None => match self.kept.any.get(&hash) {
                Some(p) => (p.clone(), false),
                None => match self.written.get(&hash) {
                    Some((p, m)) => (p.clone(), *m == mode),
                    None => {
                        return Err(HostError::Input(format!(
                            "{}: its content ({hash}) is neither on this host nor in the input",
                            entry.path
                        )))
                    }
                },
            },
        };
        // The content is known by its hash alone; a manifest that gives it
        // another size than the bytes this host has is refused, not staged
        // with a file `verify` would then call wrong.
        let size = entry.size();
        let have = fs::symlink_metadata(&source).map_err(HostError::Fs)?.len();
        if have != size {
            return Err(HostError::Input(format!(
                "{}: the manifest says {size} bytes for content {hash}, but that content, as this host has it in {}, is {have} bytes; the input is inconsistent",
                entry.path,
                source.display()
            )));
        }
        let from_kept = !source.starts_with(&self.dir);
        let linked = exact && fs::hard_link(&source, &path).is_ok();
        if linked && self.verified.contains(&source) {
            return Ok(true);
        }
        if !linked {
            // Another mode, or the link failed (too many links, another file
            // system): copy the bytes.
            let mut from = open_regular(&source)?;
            self.write_file(entry, &mut from)?;
        }
        if from_kept {
            let actual = hash_file(&path)?;
            if actual != hash {
                return Err(HostError::Input(format!(
                    "{}: a kept release's copy hashes to {actual}, not {hash}; that release was changed on this host (see `ferry host verify`)",
                    source.display()
                )));
            }
        }
        Ok(linked)
    }

    /// Completes the release if `head` is Ok (the input was read and
    /// checked whole), else journals the failure; the staging directory goes
    /// when `self` is dropped.
    pub(super) fn finish(mut self, head: Result<&Head, HostError>, opts: &StageOptions) -> Result<Staged, HostError> {
        let done = head.and_then(|head| {
            self.place_reused()?;
            self.complete(head, opts)
        });
        match done {
            Ok(staged) => Ok(staged),
            Err(e) => {
                // Drop removes the staging directory.
                let record =
                    Record::now(crate::host::whoami(), Action::Stage, None, Some(self.id)).failed(error_chain(&e));
                let _ = self.host.record(&record);
                Err(e)
            }
        }
    }

    fn complete(&self, head: &Head, opts: &StageOptions) -> Result<Staged, HostError> {
        let meta_dir = self.dir.join(META_DIR);
        fs::create_dir_all(&meta_dir).map_err(HostError::Fs)?;
        for (name, bytes) in [(MANIFEST_PATH, head.manifest.to_text()), (RELEASE_PATH, head.meta.to_canonical())] {
            let path = self.dir.join(name);
            let mut file = fs::File::create(&path).map_err(HostError::Fs)?;
            file.write_all(&bytes).map_err(at(&path))?;
            finish_file(file.file(), 0o444).map_err(at(&path))?;
        }
        self.link_shared(opts)?;
        self.link_config(head, opts)?;
        // After the links: a bridged directory given over to shared/ is a
        // symlink by now, and gets nothing.
        let bridged = self.bridge(opts)?;
        let (files, bytes) = head.manifest.file_totals();
        let checked = StagedCheck { id: head.id, files, bytes };
        if let Some(signed) = &self.signed {
            let path = self.dir.join(crate::host::trust::SIGNATURE);
            let mut file = fs::File::create(&path).map_err(HostError::Fs)?;
            file.write_all(signed.signature.text().as_bytes()).map_err(at(&path))?;
            finish_file(file.file(), 0o444).map_err(at(&path))?;
        }
        for (name, bytes) in [
            (STAGED_WITH, serde_json::to_vec(opts).expect("options serialize")),
            (VERIFIED, serde_json::to_vec(&checked).expect("a record serializes")),
        ] {
            let record = self.dir.join(name);
            let mut file = fs::File::create(&record).map_err(HostError::Fs)?;
            file.write_all(&bytes).map_err(at(&record))?;
            finish_file(file.file(), 0o444).map_err(at(&record))?;
        }

        // One syncfs for every file and directory written, then the rename.
        let dir = fs::File::open(&self.dir).map_err(HostError::Fs)?;
        rustix::fs::syncfs(&dir).map_err(|e| at(&self.dir)(e.into()))?;
        let release = self.host.release_dir(&head.id);
        // The same release staged with other options gives way only now,
        // once its replacement is complete ([`Host::already_staged`] refused
        // it if it is current or the previous release).
        let doomed = self.host.releases_dir().join(format!(".pruning-{}", head.id));
        let replaced = release.exists();
        if replaced {
            fs::rename(&release, &doomed).map_err(HostError::Fs)?;
        }
        fs::rename(&self.dir, &release).map_err(HostError::Fs)?;
        atomic::fsync_dir(&self.host.releases_dir()).map_err(at(self.host.releases_dir()))?;
        if replaced {
            fs::remove_dir_all(&doomed).map_err(HostError::Fs)?;
        }
        let mut record = Record::now(crate::host::whoami(), Action::Stage, None, Some(head.id));
        if let Some(signed) = &self.signed {
            self.host.raise_serial(signed)?;
            record.key = Some(signed.key.to_string());
            record.serial = Some(signed.serial);
        }
        self.host.record(&record)?;
        Ok(Staged {
            id: Some(head.id),
            already: false,
            input_unread: false,
            written: self.counts.written,
            written_bytes: self.counts.written_bytes,
            linked: self.counts.linked,
            copied: self.counts.copied,
            bridged: bridged.as_ref().map_or(0, |(_, files)| files.len()),
            bridged_from: bridged.map(|(from, _)| from),
            elapsed: Duration::ZERO,
        })
    }

    fn link_shared(&self, opts: &StageOptions) -> Result<(), HostError> {
        let shared = self.host.shared_dir();
        for dir in &opts.linked_dirs {
            let target = shared.join(dir.as_str());
            fs::create_dir_all(&target).map_err(HostError::Fs)?;
        }
        for file in &opts.linked_files {
            let target = shared.join(file.as_str());
            if !target.exists() {
                return Err(HostError::MissingLinked { path: target, shared });
            }
        }
        for path in opts.linked_dirs.iter().chain(&opts.linked_files) {
            let link = self.dir.join(path.as_str());
            // As Capistrano does: whatever the release has there gives way.
            match fs::symlink_metadata(&link) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&link).map_err(HostError::Fs)?,
                Ok(_) => fs::remove_file(&link).map_err(HostError::Fs)?,
                Err(_) => {}
            }
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).map_err(HostError::Fs)?;
                // The parent must be the release's own directory, not a way
                // out through a link (check_linked refuses nesting; this is
                // the belt to its braces).
                let real = fs::canonicalize(parent).map_err(HostError::Fs)?;
                let root = fs::canonicalize(&self.dir).map_err(HostError::Fs)?;
                if !real.starts_with(&root) {
                    return Err(HostError::Input(format!(
                        "linked path {path} would be made outside the release, in {}",
                        real.display()
                    )));
                }
            }
            let target = shared_link_target(path);
            fs::os::unix::fs::symlink(&target, &link).map_err(HostError::Fs)?;
        }
        Ok(())
    }

    fn link_config(&self, head: &Head, opts: &StageOptions) -> Result<(), HostError> {
        let Some(env) = &opts.env else { return Ok(()) };
        let root = fs::canonicalize(&self.dir).map_err(HostError::Fs)?;
        for config in head.meta.components_of(ComponentKind::Config) {
            let dir = self.dir.join(config.path.as_str());
            // The reader refuses a component that is not a directory entry,
            // so this is the belt to its braces: nothing is made outside
            // the staging directory.
            let real = fs::canonicalize(&dir).map_err(HostError::Fs)?;
            if real != root.join(config.path.as_str()) {
                return Err(HostError::Input(format!(
                    "config component {} would have its {ACTIVE_CONFIG} link made in {}, not in the release",
                    config.path,
                    real.display()
                )));
            }
            let link = dir.join(ACTIVE_CONFIG);
            fs::os::unix::fs::symlink(env, &link).map_err(HostError::Fs)?;
        }
        Ok(())
    }
}

impl Drop for Staging<'_> {
    /// Whatever failed, a stage leaves no staging directory (after a
    /// complete one it was renamed, and there is nothing to remove).
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
