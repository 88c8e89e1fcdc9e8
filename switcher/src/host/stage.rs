//! Staging: a bundle or a delta becomes `releases/<id>`, all or nothing.
//!
//! Everything is built in `releases/.staging-<id>`: directories first, then
//! each file — hardlinked from a kept release that has the same (hash, mode),
//! copied when only the hash matches, else written from the bundle or the
//! delta — then symlinks, the release's `.ferry/` head, the `shared/` links and
//! the config link. Written files were checked as they were decoded; linked
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

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use ferry_formats::bundle::{self, Head, ReadError, Visitor, MANIFEST_PATH, META_DIR, RELEASE_PATH};
use ferry_formats::delta::{self, Op};
use ferry_formats::journal::{Action, Record};
use ferry_formats::{atomic, BlobHash, ComponentKind, Entry, EntryKind, RelPath, ReleaseId};
use fs_err as fs;
use rayon::prelude::*;

use super::files::{finish_file, hash_file, open_regular, read_regular, umask};
use super::{at, Host, HostError, Lock};

/// How a release is staged on this host. Recorded in the release as
/// `.ferry/staged.json`: a release staged with other options is staged anew.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageOptions {
    /// The environment whose `config/<env>/` the release activates.
    pub env: Option<String>,
    /// Paths linked to `shared/<path>` (directories, created when missing).
    pub linked_dirs: Vec<RelPath>,
    /// Paths linked to `shared/<path>` (files, which must exist).
    pub linked_files: Vec<RelPath>,
}

/// What staging did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Staged {
    pub id: Option<ReleaseId>,
    /// The release was already complete here; nothing was done.
    pub already: bool,
    /// The input was not read past its head (an `already` release): it was
    /// neither checked nor used, and may be damaged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub input_unread: bool,
    /// Files written from the bundle or delta, and their bytes.
    pub written: usize,
    pub written_bytes: u64,
    /// Files hardlinked from a kept release, or copied from one (mode differed).
    pub linked: usize,
    pub copied: usize,
    #[serde(with = "millis")]
    pub elapsed: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(std::time::Duration::from_millis)
    }
}

/// The name of the symlink that activates one environment's config inside a
/// release: `<config>/active -> <env>`.
pub const ACTIVE_CONFIG: &str = "active";

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Host {
    /// Stages the bundle or delta read from `input` (told apart by their
    /// magic). Takes the lock's word that nobody else works here.
    pub fn stage(&self, _lock: &Lock, input: &mut dyn Read, opts: &StageOptions) -> Result<Staged, HostError> {
        let start = std::time::Instant::now();
        // A pipe may hand over fewer bytes than a magic at a time.
        let mut magic = Vec::with_capacity(8);
        (&mut *input)
            .take(8)
            .read_to_end(&mut magic)
            .map_err(|e| HostError::Input(format!("cannot read the input: {e}")))?;
        let mut input = BufReader::with_capacity(1 << 20, io::Cursor::new(magic.clone()).chain(input));
        let mut staged = if magic.starts_with(&delta::MAGIC) {
            self.stage_delta(&mut input, opts)
        } else if magic.starts_with(&delta::RSYNC_MAGIC) {
            self.stage_rsync(&mut input, opts)
        } else if magic.starts_with(&ZSTD_MAGIC) {
            self.stage_bundle(&mut input, opts)
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

    fn stage_delta(&self, input: &mut dyn Read, opts: &StageOptions) -> Result<Staged, HostError> {
        let mut fixed = Vec::new();
        let ends = {
            let mut tee = TeeRead { inner: &mut *input, copy: &mut fixed };
            delta::read_ends(&mut tee).map_err(HostError::Delta)?
        };
        if let Some(already) = self.already_staged(&ends.target, opts)? {
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
        let staging = Staging::begin(self, &parsed.head, Some(&base), opts)?;
        self.apply(staging, &parsed.head, &needed, &parsed.ops, &reference, opts)
    }

    /// Stages an rsync delta against the signature this host last gave of
    /// its current release.
    fn stage_rsync(&self, input: &mut dyn Read, opts: &StageOptions) -> Result<Staged, HostError> {
        let mut fixed = Vec::new();
        let (basis, target) = {
            let mut tee = TeeRead { inner: &mut *input, copy: &mut fixed };
            delta::read_rsync_basis(&mut tee).map_err(HostError::Delta)?
        };
        if let Some(already) = self.already_staged(&target, opts)? {
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
        let mut staging = Staging::begin(self, &parsed.head, None, opts)?;
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

    fn stage_bundle(&self, input: &mut dyn Read, opts: &StageOptions) -> Result<Staged, HostError> {
        struct Stager<'a> {
            host: &'a Host,
            opts: &'a StageOptions,
            staging: Option<Staging<'a>>,
            already: Option<ReleaseId>,
        }
        impl Visitor for Stager<'_> {
            fn head(&mut self, head: &Head) -> io::Result<()> {
                if self.host.already_staged(&head.id, self.opts).map_err(io::Error::other)?.is_some() {
                    self.already = Some(head.id);
                    return Err(io::Error::other("already staged"));
                }
                // Directories are made as their entries arrive, not all at
                // once from the manifest: a bundle cut short after its head
                // makes none.
                let staging = Staging::begin(self.host, head, None, self.opts).map_err(io::Error::other)?;
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
        let mut stager = Stager { host: self, opts, staging: None, already: None };
        let read = bundle::read(input, None, &mut stager);
        if let Some(id) = stager.already {
            return Ok(Staged::already(id));
        }
        let Some(staging) = stager.staging.take() else {
            return Err(HostError::Bundle(read.expect_err("a bundle read without a head failed")));
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

fn file_parts(entry: &Entry) -> (u32, BlobHash) {
    match &entry.kind {
        EntryKind::File { mode, hash, .. } => (*mode, *hash),
        _ => unreachable!("only files are placed"),
    }
}

/// Where each content already is on this host: kept releases, by (hash,
/// mode) for a hardlink and by hash alone for a copy.
#[derive(Default)]
struct Kept {
    exact: HashMap<(BlobHash, u32), PathBuf>,
    any: HashMap<BlobHash, PathBuf>,
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
struct Counts {
    written: usize,
    written_bytes: u64,
    linked: usize,
    copied: usize,
}

/// A release being built in `releases/.staging-<id>`.
struct Staging<'a> {
    host: &'a Host,
    id: ReleaseId,
    dir: PathBuf,
    kept: Kept,
    /// Contents written into this staging directory, for later duplicates.
    written: HashMap<BlobHash, (PathBuf, u32)>,
    /// Files to place from what this host has, once the rest is written.
    deferred: Vec<Entry>,
    /// Kept files already hashed and found right, to hardlink without
    /// hashing them again.
    verified: std::collections::HashSet<PathBuf>,
    counts: Counts,
}

impl<'a> Staging<'a> {
    fn begin(host: &'a Host, head: &Head, base: Option<&Head>, opts: &StageOptions) -> Result<Self, HostError> {
        check_env(host, head, opts)?;
        let configs: Vec<RelPath> = head.meta.components_of(ComponentKind::Config).map(|c| c.path.clone()).collect();
        check_linked(&opts.linked(), &configs).map_err(HostError::Input)?;
        let kept = Kept::index(host, base)?;
        if let Err(e) = check_space(host, head, &kept) {
            // Journalled as a stage that failed: the host's operator sees why.
            let record = Record::now(super::whoami(), Action::Stage, None, Some(head.id)).failed(error_chain(&e));
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
        })
    }

    fn path(&self, entry: &Entry) -> PathBuf {
        self.dir.join(entry.path.as_str())
    }

    /// Makes every directory, a level at a time (parents first), each level
    /// in parallel: mkdir is most of a hardlink checkout's time on ext4.
    fn dirs(&self, head: &Head) -> Result<(), HostError> {
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
    fn dir(&self, entry: &Entry, mode: u32, umask: u32) -> Result<(), HostError> {
        let path = self.path(entry);
        fs::create_dir(&path).map_err(HostError::Fs)?;
        // mkdir applies the umask; set the mode only where it took bits away.
        if mode & !umask != mode {
            fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(HostError::Fs)?;
        }
        Ok(())
    }

    fn symlink(&self, entry: &Entry, target: &str) -> Result<(), HostError> {
        let path = self.path(entry);
        fs::os::unix::fs::symlink(target, &path).map_err(HostError::Fs)
    }

    fn can_reuse(&self, entry: &Entry) -> bool {
        let (_, hash) = file_parts(entry);
        self.kept.any.contains_key(&hash) || self.written.contains_key(&hash)
    }

    /// Writes one file, read-only, with the normalized mtime, and returns its length.
    fn write_file(&self, entry: &Entry, content: &mut dyn Read) -> Result<u64, HostError> {
        let path = self.path(entry);
        self.write_with(entry, &mut |out| io::copy(content, out).map(drop).map_err(at(&path)))
    }

    /// Writes one file with whatever `fill` writes, then makes it read-only
    /// with the normalized mtime; returns its length.
    fn write_with(
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
    fn reuse(&mut self, entry: &Entry) -> Result<(), HostError> {
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
    fn verify_sources(
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
    fn finish(mut self, head: Result<&Head, HostError>, opts: &StageOptions) -> Result<Staged, HostError> {
        let done = head.and_then(|head| {
            self.place_reused()?;
            self.complete(head, opts)
        });
        match done {
            Ok(staged) => Ok(staged),
            Err(e) => {
                // Drop removes the staging directory.
                let record = Record::now(super::whoami(), Action::Stage, None, Some(self.id)).failed(error_chain(&e));
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
        let (files, bytes) = head.manifest.file_totals();
        let checked = StagedCheck { id: head.id, files, bytes };
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
        self.host.record(&Record::now(super::whoami(), Action::Stage, None, Some(head.id)))?;
        Ok(Staged {
            id: Some(head.id),
            already: false,
            input_unread: false,
            written: self.counts.written,
            written_bytes: self.counts.written_bytes,
            linked: self.counts.linked,
            copied: self.counts.copied,
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

/// Refuses, before anything is written, a release whose files would not fit
/// in the free space of the deploy directory's file system: the declared
/// sizes of the files this host has no (hash, mode) of, each rounded up to a
/// block, a block per directory, and a margin of [`SPACE_MARGIN`] — so a
/// small input that declares gigabytes is refused, not left to fill the disk.
fn check_space(host: &Host, head: &Head, kept: &Kept) -> Result<(), HostError> {
    let releases = host.releases_dir();
    let stat = rustix::fs::statvfs(&releases).map_err(|e| at(&releases)(e.into()))?;
    let block = stat.f_frsize.max(512);
    let free = stat.f_bavail.saturating_mul(block);
    let mut seen = std::collections::HashSet::new();
    let mut need = SPACE_MARGIN;
    for entry in head.manifest.entries() {
        let add = match &entry.kind {
            EntryKind::File { mode, hash, size } => {
                if kept.exact.contains_key(&(*hash, *mode)) || !seen.insert((*hash, *mode)) {
                    continue;
                }
                size.div_ceil(block).saturating_mul(block)
            }
            EntryKind::Dir { .. } => block,
            EntryKind::Symlink { .. } => continue,
        };
        need = need.saturating_add(add);
    }
    if need > free {
        return Err(HostError::NoSpace { id: head.id, dir: releases, need, free });
    }
    Ok(())
}

/// Room kept free beyond what a release's files need: the metadata, the
/// journal, and what the file system needs for itself.
pub const SPACE_MARGIN: u64 = 64 << 10;

/// Where a release records the options it was staged with.
const STAGED_WITH: &str = ".ferry/staged.json";
/// Where a release records that every entry was checked when it was staged
/// (or by `ferry host verify` since): a flip refuses a release without it.
pub(crate) const VERIFIED: &str = ".ferry/verified.json";

/// What [`VERIFIED`] holds: the release, and its files as its manifest has
/// them, checked as they were staged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StagedCheck {
    pub id: ReleaseId,
    pub files: usize,
    pub bytes: u64,
}

impl StageOptions {
    /// Every linked path, directories and files.
    pub fn linked(&self) -> Vec<RelPath> {
        self.linked_dirs.iter().chain(&self.linked_files).cloned().collect()
    }
}

/// Refuses linked paths that overlap (one inside another: the inner one
/// would be made inside `shared/`), that are or hold a config directory (its
/// `active` link would land in `shared/`), or that sit in the `active` link.
pub fn check_linked(linked: &[RelPath], configs: &[RelPath]) -> Result<(), String> {
    for (i, a) in linked.iter().enumerate() {
        if a.components().next() == Some(META_DIR) {
            return Err(format!("linked path {a}: .ferry is ferry's own"));
        }
        for b in &linked[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(format!(
                    "linked paths {a} and {b} overlap: link one directory, or files beside each other"
                ));
            }
        }
        for c in configs {
            let active = c.join(ACTIVE_CONFIG).expect("a valid name");
            if c.starts_with(a) || a.starts_with(&active) {
                return Err(format!(
                    "linked path {a} overlaps the config directory {c}, where ferry links the active environment"
                ));
            }
        }
    }
    Ok(())
}

impl Host {
    /// The options release `id` was staged with (`None` for one staged by an
    /// older ferry, or damaged).
    pub(crate) fn staged_with(&self, id: &ReleaseId) -> Option<StageOptions> {
        let text = fs::read(self.release_dir(id).join(STAGED_WITH)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// `Some` when release `id` is here, staged with these options: the
    /// input is not read past its head. One staged with other options is
    /// staged anew, and gives way only once its replacement is complete
    /// (nothing is removed before the input was read and verified); that is
    /// refused when it is `current` or the previous release (a rollback's
    /// target, whose config must stay as it ran), or a process uses it.
    fn already_staged(&self, id: &ReleaseId, opts: &StageOptions) -> Result<Option<Staged>, HostError> {
        if !self.has(id) {
            return Ok(None);
        }
        let with = self.staged_with(id);
        if with.as_ref() == Some(opts) {
            return Ok(Some(Staged::already(*id)));
        }
        let with = with.map_or_else(|| "unknown".to_owned(), |w| serde_json::to_string(&w).unwrap_or_default());
        if self.current()? == Some(*id) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it is current, staged with other options ({with}); flip to another release first, then stage it again"
                ),
            });
        }
        if super::previous(self)? == Some(*id) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it is the previous release (what a rollback goes back to), staged with other options ({with}); \
                     it is kept as it is: deploy another release first, then stage it again"
                ),
            });
        }
        let releases = fs::canonicalize(self.releases_dir()).map_err(HostError::Fs)?;
        if let Some(hold) = super::procs::users(&releases).remove(&id.to_string()) {
            return Err(HostError::Broken {
                id: *id,
                root: self.root.clone(),
                reason: format!(
                    "it was staged with other options and must be staged anew, but pid {} ({}) still uses it \
                     ({} {}); stop that process, or let the release go with a later push",
                    hold.pid,
                    super::procs::command(hold.pid),
                    hold.via,
                    hold.path.display()
                ),
            });
        }
        Ok(None)
    }
}

impl Staged {
    /// A release that was already here: the input was not read past its head.
    fn already(id: ReleaseId) -> Self {
        Staged { id: Some(id), already: true, input_unread: true, ..Staged::default() }
    }
}

/// What a linked path in a release points at: `shared/<path>` of the
/// deploy directory, relative, so a deploy directory can move.
pub(crate) fn shared_link_target(path: &RelPath) -> String {
    let depth = path.components().count();
    format!("{}shared/{path}", "../".repeat(depth + 1))
}

/// Refuses, before anything is written, a release that has no config for the
/// host's environment or already holds a path named like the config link.
fn check_env(host: &Host, head: &Head, opts: &StageOptions) -> Result<(), HostError> {
    let Some(env) = &opts.env else { return Ok(()) };
    for config in head.meta.components_of(ComponentKind::Config) {
        if !config.environments.iter().any(|e| e == env) {
            return Err(HostError::NoEnvironment { id: head.id, env: env.clone(), have: config.environments.clone() });
        }
        if head.manifest.get(&format!("{}/{ACTIVE_CONFIG}", config.path)).is_some() {
            return Err(HostError::Broken {
                id: head.id,
                root: host.root.clone(),
                reason: format!(
                    "{}/{ACTIVE_CONFIG} is in the release, where ferry links the active config",
                    config.path
                ),
            });
        }
    }
    Ok(())
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
