//! `ferry build`: release tree → manifest → bundle in the store.
//!
//! 1. Walk the components (in parallel) with the include and exclude patterns.
//! 2. Prepare every file in parallel: reuse the cache's hash when the file's
//!    stat is unchanged; otherwise read it, normalize `.pyc` timestamps and
//!    relocate venv scripts, and hash the result with blake3.
//! 3. Make the manifest (modes normalized to 644/755, as git does) and the
//!    release metadata; their hash is the release id.
//! 4. If the store already has that id, stop: nothing changed. Otherwise write
//!    the bundle atomically (temporary file, fsync, rename) with
//!    multi-threaded zstd, hashing every file again as it goes in.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_formats::bundle::{self, Head, WriteOptions};
use ferry_formats::release::{GitInfo, FORMAT_VERSION};
use ferry_formats::{
    atomic, BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta,
};
use fs_err as fs;
use rayon::prelude::*;

use crate::cache::{Cache, Note, Prepared, Stamp, Treatment};
use crate::pyc::{self, Pyc};
use crate::store::{BundleInfo, Store};
use crate::venv::{self, Venv};
use crate::walk::{self, Filter, Found, FoundKind};
use crate::BuildError;

/// Everything a build needs to know, already validated.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub service: String,
    /// The release tree's root, absolute.
    pub root: PathBuf,
    /// Labelled parts of the tree; when empty the whole root is packed.
    pub components: Vec<(ComponentKind, RelPath)>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub version: Option<String>,
    pub git: Option<GitInfo>,
    /// Fail when a venv file cannot be relocated.
    pub strict: bool,
    pub compression: WriteOptions,
}

/// Hears how a build is going (a progress bar, or nothing).
pub trait Progress: Sync {
    fn phase(&self, _name: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug)]
pub struct Silent;
impl Progress for Silent {}

/// What a build made.
#[derive(Debug)]
pub struct Built {
    pub id: ReleaseId,
    pub path: PathBuf,
    pub info: BundleInfo,
    /// The store had this release already; nothing was written.
    pub reused: bool,
    pub entries: usize,
    pub cache_hits: usize,
    pub pycs_normalized: usize,
    pub scripts_relocated: usize,
    /// Venv files that still name the build path.
    pub unrelocated: Vec<String>,
    /// Pycs compiled from another version of their source.
    pub stale_pycs: Vec<String>,
    pub timings: Timings,
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub walk: Duration,
    pub hash: Duration,
    pub write: Duration,
    pub total: Duration,
}

/// Builds `spec` into `store`.
pub fn build(spec: &BuildSpec, store: &Store, progress: &dyn Progress) -> Result<Built, BuildError> {
    let start = Instant::now();
    let mut timings = Timings::default();

    let filter = Filter::new(&spec.include, &spec.exclude)
        .map_err(|reason| BuildError::BadPath { path: spec.root.join("ferry.toml"), reason })?;
    for (kind, path) in &spec.components {
        let abs = spec.root.join(path.as_str());
        if fs::symlink_metadata(&abs).is_err() {
            return Err(BuildError::Component {
                kind: kind.to_string(),
                path: path.to_string(),
                reason: format!("{} does not exist", abs.display()),
            });
        }
    }
    let starts: Vec<RelPath> = spec.components.iter().map(|(_, p)| p.clone()).collect();
    let skip = vec![store.root().to_path_buf()];
    let found = walk::walk(&spec.root, &starts, &filter, &skip)?;
    timings.walk = start.elapsed();

    let t = Instant::now();
    let ctx = Context::new(spec, &found, store)?;
    let total: u64 = found.iter().filter(|f| f.kind == FoundKind::File).map(|f| f.meta.len()).sum();
    progress.phase("hashing", total);
    let prepared: Vec<Option<Prepared>> = found
        .par_iter()
        .map(|f| {
            let p = if f.kind == FoundKind::File { Some(ctx.prepare(f)?) } else { None };
            progress.advance(f.meta.len());
            Ok(p)
        })
        .collect::<Result<_, BuildError>>()?;
    timings.hash = t.elapsed();

    let mut entries = Vec::with_capacity(found.len());
    let (mut pycs_normalized, mut scripts_relocated) = (0, 0);
    let (mut unrelocated, mut stale_pycs) = (Vec::new(), Vec::new());
    for (f, p) in found.iter().zip(&prepared) {
        let kind = match (&f.kind, p) {
            (FoundKind::Dir, _) => EntryKind::Dir { mode: 0o755 },
            (FoundKind::Symlink(target), _) => EntryKind::Symlink { target: target.clone() },
            (FoundKind::File, Some(p)) => {
                let mode = f.meta.mode();
                if mode & 0o4000 != 0 || mode & 0o2000 != 0 {
                    let bit = if mode & 0o4000 != 0 { "setuid" } else { "setgid" };
                    return Err(BuildError::SetId { path: f.abs.clone(), bit });
                }
                match (p.treatment, p.note) {
                    (_, Some(Note::Unrelocated)) => unrelocated.push(f.rel.to_string()),
                    (_, Some(Note::StalePyc)) => stale_pycs.push(f.rel.to_string()),
                    (Treatment::Pyc, None) => pycs_normalized += 1,
                    (Treatment::Venv(_), None) => scripts_relocated += 1,
                    (Treatment::Plain, None) => {}
                }
                EntryKind::File { mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 }, size: p.size, hash: p.hash }
            }
            (FoundKind::File, None) => unreachable!("every file was prepared"),
        };
        entries.push(Entry { path: f.rel.clone(), kind });
    }
    if spec.strict && !unrelocated.is_empty() {
        return Err(BuildError::Unrelocated { count: unrelocated.len(), list: unrelocated });
    }
    let manifest = Manifest::from_entries(entries).map_err(|e| BuildError::Release(e.into()))?;
    let meta = ReleaseMeta {
        format: FORMAT_VERSION,
        service: spec.service.clone(),
        version: spec.version.clone(),
        git: spec.git.clone(),
        components: components(spec, &found),
    };
    let head = Head::new(manifest, meta)?;
    let id = head.id;
    let (files, bytes) = head.manifest.file_totals();

    store.prepare()?;
    let path = store.bundle_path(&id);
    let reused = store.has(&id);
    let t = Instant::now();
    if !reused {
        progress.phase("compressing", bytes);
        let by_path: HashMap<&str, (&Found, &Prepared)> =
            found.iter().zip(&prepared).filter_map(|(f, p)| p.as_ref().map(|p| (f.rel.as_str(), (f, p)))).collect();
        let open = |e: &Entry| -> io::Result<Box<dyn Read>> {
            let (f, p) = by_path[e.path.as_str()];
            ctx.content(f, p)
        };
        atomic::write_atomic(&path, |file| {
            let out = bundle::write(BufWriter::with_capacity(1 << 20, file), &head, &spec.compression, open, |n| {
                progress.advance(n);
            })?;
            out.into_inner().map_err(|e| bundle::WriteError::Output(e.into_error()))?;
            Ok(())
        })
        .map_err(|source| BuildError::Write { path: path.clone(), source })?;
    }
    progress.finish();
    timings.write = t.elapsed();

    let size = fs::metadata(&path).map_err(BuildError::io(&path))?.len();
    let info = match reused.then(|| store.info(&id).ok()).flatten() {
        Some(info) => info,
        None => {
            let info = BundleInfo {
                id,
                service: spec.service.clone(),
                version: spec.version.clone(),
                git_commit: spec.git.as_ref().map(|g| g.commit.clone()),
                size,
                files,
                bytes,
                built_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                built_on: hostname(),
                ferry_version: env!("CARGO_PKG_VERSION").into(),
            };
            store.record(&info)?;
            info
        }
    };
    let cache_hits = ctx.cache.hits.load(Ordering::Relaxed);
    let mut warnings = Vec::new();
    if let Err(e) = ctx.cache.save() {
        warnings.push(format!("could not save the build cache: {e}"));
    }
    timings.total = start.elapsed();
    Ok(Built {
        id,
        path,
        info,
        reused,
        entries: head.manifest.entries().len(),
        cache_hits,
        pycs_normalized,
        scripts_relocated,
        unrelocated,
        stale_pycs,
        timings,
        warnings,
    })
}

/// The release metadata's components, with each config's environments.
fn components(spec: &BuildSpec, found: &[Found]) -> Vec<Component> {
    let mut out: Vec<Component> = spec
        .components
        .iter()
        .map(|(kind, path)| {
            let environments = if *kind == ComponentKind::Config {
                let mut envs: Vec<String> = found
                    .iter()
                    .filter(|f| f.kind == FoundKind::Dir && f.rel.parent().as_ref() == Some(path))
                    .map(|f| f.rel.file_name().to_owned())
                    .collect();
                envs.sort();
                envs
            } else {
                Vec::new()
            };
            Component { kind: *kind, path: path.clone(), environments }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    out
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// What preparing a file needs to know about the whole tree.
struct Context {
    venvs: Vec<Venv>,
    /// Each `.py` file's stat, for pycs to check themselves against.
    sources: HashMap<RelPath, Stamp>,
    cache: Cache,
}

impl Context {
    fn new(spec: &BuildSpec, found: &[Found], store: &Store) -> Result<Self, BuildError> {
        let mut venvs = Vec::new();
        for (kind, rel) in &spec.components {
            if *kind != ComponentKind::Venv {
                continue;
            }
            let abs = spec.root.join(rel.as_str());
            let mut origins = Vec::new();
            if let Ok(activate) = fs::read(abs.join("bin/activate")) {
                origins.extend(venv::origin_from_activate(&activate));
            }
            origins.push(abs.to_string_lossy().into_owned());
            if let Ok(canonical) = fs::canonicalize(&abs) {
                origins.push(canonical.to_string_lossy().into_owned());
            }
            origins.sort();
            origins.dedup();
            venvs.push(Venv { rel: rel.clone(), origins });
        }
        let sources = found
            .iter()
            .filter(|f| f.kind == FoundKind::File && f.rel.as_str().ends_with(".py"))
            .map(|f| (f.rel.clone(), Stamp::of(&f.meta)))
            .collect();
        let cache = Cache::load(store.cache_path(&spec.service), &spec.root);
        Ok(Self { venvs, sources, cache })
    }

    fn venv_of(&self, rel: &RelPath) -> Option<&Venv> {
        self.venvs.iter().find(|v| rel.starts_with(&v.rel))
    }

    fn treatment(&self, rel: &RelPath) -> (Treatment, Option<Stamp>) {
        if let Some(source) = pyc::source_of(rel) {
            if let Some(stamp) = self.sources.get(&source) {
                return (Treatment::Pyc, Some(*stamp));
            }
        }
        match self.venv_of(rel).and_then(|v| v.rewrite_for(rel)) {
            Some(r) => (Treatment::Venv(r), None),
            None => (Treatment::Plain, None),
        }
    }

    /// Hashes one file (or takes its hash from the cache).
    fn prepare(&self, f: &Found) -> Result<Prepared, BuildError> {
        let stamp = Stamp::of(&f.meta);
        let (treatment, dep) = self.treatment(&f.rel);
        if let Some(p) = self.cache.get(f.rel.as_str(), &stamp, dep.as_ref()) {
            return Ok(p);
        }
        let data = fs::read(&f.abs).map_err(BuildError::Fs)?;
        if data.len() as u64 != stamp.size {
            return Err(BuildError::Io {
                path: f.abs.clone(),
                source: io::Error::other("the file changed size while it was read; build again"),
            });
        }
        let (content, note) = self.transform(f, treatment, dep.as_ref(), &data);
        let mut hasher = blake3::Hasher::new();
        if content.len() > 1 << 20 {
            hasher.update_rayon(&content);
        } else {
            hasher.update(&content);
        }
        let prepared =
            Prepared { hash: BlobHash::from(hasher.finalize()), size: content.len() as u64, treatment, note };
        self.cache.put(f.rel.as_str(), stamp, dep, prepared.clone());
        Ok(prepared)
    }

    /// The bundled content of a file, and anything to tell about it.
    fn transform<'a>(
        &self,
        f: &Found,
        treatment: Treatment,
        dep: Option<&Stamp>,
        data: &'a [u8],
    ) -> (std::borrow::Cow<'a, [u8]>, Option<Note>) {
        use std::borrow::Cow;
        match treatment {
            Treatment::Pyc => {
                let source = dep.expect("a pyc's treatment comes with its source's stamp");
                match pyc::normalize(data.to_vec(), source.mtime.0, source.size) {
                    Pyc::Normalized(out) => (Cow::Owned(out), None),
                    Pyc::Stale => (Cow::Borrowed(data), Some(Note::StalePyc)),
                    Pyc::HashBased | Pyc::Unknown => (Cow::Borrowed(data), None),
                }
            }
            Treatment::Venv(r) => {
                let v = self.venv_of(&f.rel).expect("venv treatment is only given inside a venv");
                let out = v.apply(r, data);
                let note = v.names_build_path(&out).then_some(Note::Unrelocated);
                (out, note)
            }
            Treatment::Plain => {
                let unrelocated =
                    self.venv_of(&f.rel).is_some_and(|v| !is_informational(&f.rel, &v.rel) && v.names_build_path(data));
                (Cow::Borrowed(data), unrelocated.then_some(Note::Unrelocated))
            }
        }
    }

    /// What goes into the bundle for a prepared file.
    fn content(&self, f: &Found, p: &Prepared) -> io::Result<Box<dyn Read>> {
        if p.treatment == Treatment::Plain {
            return Ok(Box::new(fs::File::open(&f.abs)?));
        }
        let data = fs::read(&f.abs)?;
        let (content, _) = self.transform(f, p.treatment, self.treatment(&f.rel).1.as_ref(), &data);
        Ok(Box::new(io::Cursor::new(content.into_owned())))
    }
}

/// Venv files that name the build path but are never read by Python:
/// `pyvenv.cfg` (its `command` line), bytecode (Python replaces `co_filename`
/// with the real source path when it loads a pyc) and pip's `RECORD`s.
fn is_informational(rel: &RelPath, venv: &RelPath) -> bool {
    let name = rel.file_name();
    rel.parent().as_ref() == Some(venv) && name == "pyvenv.cfg" || name.ends_with(".pyc") || name == "RECORD"
}
