//! `ferry build`: release tree → manifest → bundle in the store.
//!
//! 1. Walk the components (in parallel) with the include and exclude patterns.
//! 2. Check every file's stat against the build cache. If all match, the
//!    manifest — and so the release id — is known without reading a byte; if
//!    the store has that release, the build is done. A cold build (no cache
//!    file) has nothing to check: it packs the paths as the walk finds them,
//!    in manifest order, while threads walk the rest of the tree.
//! 3. Otherwise, one pass in manifest order reads each file once, normalizes
//!    `.pyc` timestamps and relocates venv scripts, and hands the result to the
//!    bundle's files frame, which hashes it (blake3) and compresses it
//!    (multi-threaded zstd) into a temporary file in the store. Reading once
//!    matters: a release larger than the page cache would otherwise come off
//!    the disk twice, and hashing overlaps compression.
//! 4. The manifest (modes normalized to 644/755, as git does) and the release
//!    metadata make the id. The metadata frame goes in front of the files
//!    frame in its temporary file (see `bundle_file`: by moving the frame's
//!    blocks where the file system can, else by copying it into a second
//!    one), which is fsynced and renamed to `bundles/<id>.tar.zst`: an
//!    interrupted build leaves no bundle.

use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_formats::bundle::{self, FilesFrame, FilesWriter, Head, WriteError, WriteOptions};
use ferry_formats::release::{GitInfo, FORMAT_VERSION};
use ferry_formats::{atomic, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta};
use fs_err as fs;
use rayon::prelude::*;

use crate::bundle_file::{self, Writeback};
use crate::cache::{Cache, Note, Prepared, Stamp, Treatment};
use crate::pack::{file_mode, Context, Reader};
use crate::store::{BundleInfo, Store};
use crate::venv;
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
    /// The tag of the `--git-ref` commit, for the store's record (not the id).
    pub git_tag: Option<String>,
    /// Use and update the build cache (off for one-off trees such as git exports).
    pub use_cache: bool,
    /// Fail when a venv file cannot be relocated.
    pub strict: bool,
    pub compression: WriteOptions,
}

/// Hears how a build is going (a progress bar, or nothing).
pub trait Progress: Sync {
    fn phase(&self, _name: &str, _total_bytes: u64) {}
    /// The phase's total grew to `total_bytes` (a cold build learns it as
    /// the walk goes on).
    fn total(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// What a build made.
#[derive(Debug)]
pub struct Built {
    pub id: ReleaseId,
    pub path: PathBuf,
    pub info: BundleInfo,
    /// The store had this release already; nothing was written (the files
    /// may still have been read, if their stat no longer matched the cache).
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

/// Where a build's time went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Walking the tree; a cold build, which packs while the walk goes on,
    /// counts only its first levels here, and the rest in `pack`.
    pub walk: Duration,
    /// Comparing every file's stat with the build cache.
    pub check: Duration,
    /// Reading, hashing and compressing every file (nothing when reused).
    pub pack: Duration,
    /// Putting the metadata in front and writing the bundle durably.
    pub write: Duration,
    pub total: Duration,
}

/// Builds `spec` into `store`.
pub fn build(spec: &BuildSpec, store: &Store, progress: &dyn Progress) -> Result<Built, BuildError> {
    let start = Instant::now();
    let mut timings = Timings::default();

    let filter = Filter::new(&spec.include, &spec.exclude)
        .map_err(|e| BuildError::BadPath { path: spec.root.join("ferry.toml"), reason: e.to_string() })?;
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
    // The cache is parsed while the tree is walked. A cold build (no cache
    // to check) packs the paths as the walk finds them, while threads walk
    // the rest of the tree.
    let (cache_path, root) = (store.cache_path(&spec.service), spec.root.clone());
    let use_cache = spec.use_cache;
    let cold = !use_cache || fs::symlink_metadata(&cache_path).is_err();
    let loading = std::thread::spawn(move || if use_cache { Cache::load(cache_path, &root) } else { Cache::off() });
    let loaded = move || loading.join().expect("loading the build cache does not panic");
    let begun = walk::begin(&spec.root, &starts, &filter, &skip)?;
    store.prepare()?;
    let mut ctx = Context::new(spec);
    ctx.add_sources(begun.known());

    std::thread::scope(|scope| {
        let walk = if cold { begun.stream(scope) } else { Err(begun) };
        let mut release = None;
        let (paths, cache) = match walk {
            Ok(stream) => {
                timings.walk = start.elapsed();
                (Paths::Walking(Box::new(stream)), loaded())
            }
            Err(begun) => {
                let found = begun.finish()?;
                let cache = loaded();
                ctx.add_sources(&found);
                timings.walk = start.elapsed();
                // 1. When every file's stat is the cache's, the release is known without reading a byte.
                let t = Instant::now();
                release = known_release(spec, store, &ctx, &cache, &found)?;
                timings.check = t.elapsed();
                (Paths::Walked(found), cache)
            }
        };
        let cache_hits = cache.hits.load(Ordering::Relaxed);

        // 2. Otherwise one pass reads each file once, hashing and compressing it,
        //    into the files frame; the metadata frame goes in front of it after.
        let t = Instant::now();
        let (release, reused, saving) = match release {
            Some(r) => (r, true, std::thread::spawn(move || cache.save())),
            None => {
                let packed = pack(spec, store, &mut ctx, cache, paths, progress, t)?;
                (timings.pack, timings.write) = (packed.pack, packed.write);
                (packed.release, packed.reused, packed.saving)
            }
        };
        progress.finish();
        finish(spec, store, release, reused, cache_hits, saving, start, timings)
    })
}

/// Where the packer takes the tree's paths from.
enum Paths {
    /// All of them, walked.
    Walked(Vec<Found>),
    /// A walk going on.
    Walking(Box<walk::Stream>),
}

/// The release, when every file's stat is the cache's and the store has it.
fn known_release(
    spec: &BuildSpec,
    store: &Store,
    ctx: &Context,
    cache: &Cache,
    found: &[Found],
) -> Result<Option<Release>, BuildError> {
    let cached: Vec<Option<Prepared>> = found
        .par_iter()
        .map(|f| match f.kind {
            FoundKind::File => {
                let (_, dep) = ctx.treatment(&f.rel);
                cache.get(f.rel.as_str(), &Stamp::of(&f.meta), dep.as_ref())
            }
            _ => None,
        })
        .collect();
    let all_known = found.iter().zip(&cached).all(|(f, p)| f.kind != FoundKind::File || p.is_some());
    if !all_known {
        return Ok(None);
    }
    let known = Release::of(spec, found, &cached, release_meta(spec, found))?;
    Ok(store.has_intact(&known.head.id).then_some(known))
}

/// Reads, hashes and compresses every path, in path order, into the files
/// frame in a temporary file of the store; works out the release and its
/// metadata frame as zstd compresses its last jobs, which leaves a core
/// free, and puts the metadata in front of the frame (see [`bundle_file`]).
fn pack(
    spec: &BuildSpec,
    store: &Store,
    ctx: &mut Context,
    cache: Cache,
    paths: Paths,
    progress: &dyn Progress,
    start: Instant,
) -> Result<Packed, BuildError> {
    let bundles = store.bundles_dir();
    let writing = |source| BuildError::Write { path: bundles.clone(), source };
    let temp = atomic::temp_file(&bundles).map_err(|e| writing(e.into()))?;
    let out = Writeback::new(temp.as_file()).map_err(|e| writing(e.into()))?;
    let mut files = FilesWriter::new(BufWriter::with_capacity(1 << 20, out), &spec.compression).map_err(writing)?;
    let runs: Box<dyn Iterator<Item = Result<Vec<Found>, BuildError>>> = match paths {
        Paths::Walked(found) => Box::new(std::iter::once(Ok(found))),
        Paths::Walking(stream) => stream,
    };
    progress.phase("packing", 0);
    let (mut found, mut prepared, mut reader, mut total) = (Vec::new(), Vec::new(), Reader::default(), 0);
    for run in runs {
        let run = run?;
        // A run's pycs have their sources in the run or among the paths known from the start.
        ctx.add_sources(&run);
        total += run.iter().filter(|f| f.kind == FoundKind::File).map(|f| f.meta.len()).sum::<u64>();
        progress.total(total);
        for f in run {
            prepared.push(match &f.kind {
                FoundKind::Dir => files.dir(&f.rel, 0o755).map(|()| None).map_err(writing)?,
                FoundKind::Symlink(target) => files.symlink(&f.rel, target).map(|()| None).map_err(writing)?,
                FoundKind::File => Some(ctx.pack(&f, &mut files, &mut reader, &cache, &bundles)?),
            });
            if f.kind == FoundKind::File {
                progress.advance(f.meta.len());
            }
            found.push(f);
        }
    }
    // The cache is saved while the bundle is put in place (it needs nothing
    // from it), once zstd is done: while zstd ends its last jobs, the cores
    // are busy.
    let save = move || std::thread::spawn(move || cache.save());
    let meta = release_meta(spec, &found);
    std::thread::scope(|s| {
        let finishing = s.spawn(move || files.finish());
        let release = Release::of(spec, &found, &prepared, meta)?;
        // Freed on a thread not waited for: 10,000s of paths and the read
        // buffer took 1-2 ms to free after the bundle was in place (a
        // process that ends first frees them as it ends).
        std::thread::spawn(move || drop((found, prepared, reader)));
        let (pack, t) = (start.elapsed(), Instant::now());
        let frame = move || -> Result<FilesFrame, WriteError> {
            let (out, frame) = finishing.join().expect("finishing the files frame does not panic")?;
            out.into_inner().map_err(|e| WriteError::Output(e.into_error()))?;
            Ok(frame)
        };
        let path = store.bundle_path(&release.head.id);
        // Files touched but not changed: the store has this release after all.
        let reused = store.has_intact(&release.head.id);
        let saving = if reused {
            frame().map_err(writing)?;
            save()
        } else {
            progress.phase("writing", 0);
            let bundle_error = |source| BuildError::Write { path: path.clone(), source };
            // Made while zstd compresses the last jobs.
            let head_frames = bundle::head_frames(&release.head, &spec.compression).map_err(bundle_error)?;
            let frame = frame().map_err(writing)?;
            let saving = save();
            let trailer = bundle::seal(&release.head, &head_frames, &frame).map_err(bundle_error)?;
            // Its entries (10,000s of paths) too.
            std::thread::spawn(move || drop(frame));
            bundle_file::put(temp, &head_frames, &trailer, &path).map_err(|e| bundle_error(e.into()))?;
            saving
        };
        Ok(Packed { release, reused, saving, pack, write: t.elapsed() })
    })
}

/// What [`pack`] made.
struct Packed {
    release: Release,
    /// The store had the release already: nothing was written.
    reused: bool,
    /// The build cache, being saved.
    saving: std::thread::JoinHandle<std::io::Result<()>>,
    /// Until the release was known.
    pack: Duration,
    /// From then until the bundle was in the store.
    write: Duration,
}

/// What a build reports once its bundle is in the store.
#[allow(clippy::too_many_arguments)]
fn finish(
    spec: &BuildSpec,
    store: &Store,
    release: Release,
    reused: bool,
    cache_hits: usize,
    saving: std::thread::JoinHandle<std::io::Result<()>>,
    start: Instant,
    mut timings: Timings,
) -> Result<Built, BuildError> {
    let id = release.head.id;
    let path = store.bundle_path(&id);
    // The store keeps what it knows of the first build of this release.
    let info = match store.recorded(&id) {
        Some(info) => info,
        None => {
            let size = fs::metadata(&path).map_err(BuildError::io(&path))?.len();
            let built_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let info = BundleInfo::new(&release.head, size, spec.git_tag.clone(), built_at, hostname());
            store.record(&info)?;
            info
        }
    };
    let mut warnings = Vec::new();
    match saving.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warnings.push(format!("could not save the build cache: {e}")),
        Err(_) => warnings.push("saving the build cache panicked".into()),
    }
    timings.total = start.elapsed();
    let Release { head, report } = release;
    Ok(Built {
        id,
        path,
        info,
        reused,
        entries: head.manifest.entries().len(),
        cache_hits,
        pycs_normalized: report.pycs_normalized,
        scripts_relocated: report.scripts_relocated,
        unrelocated: report.unrelocated,
        stale_pycs: report.stale_pycs,
        timings,
        warnings,
    })
}

/// A release's head, and what its build should tell the user.
struct Release {
    head: Head,
    report: Report,
}

#[derive(Default)]
struct Report {
    pycs_normalized: usize,
    scripts_relocated: usize,
    unrelocated: Vec<String>,
    stale_pycs: Vec<String>,
}

impl Release {
    /// The release made of `found`, whose files were prepared (hashed).
    fn of(
        spec: &BuildSpec,
        found: &[Found],
        prepared: &[Option<Prepared>],
        meta: ReleaseMeta,
    ) -> Result<Self, BuildError> {
        let mut entries = Vec::with_capacity(found.len());
        let mut report = Report::default();
        for (f, p) in found.iter().zip(prepared) {
            let kind = match (&f.kind, p) {
                (FoundKind::Dir, _) => EntryKind::Dir { mode: 0o755 },
                (FoundKind::Symlink(target), _) => EntryKind::Symlink { target: target.clone() },
                (FoundKind::File, Some(p)) => {
                    match (p.treatment, p.note) {
                        (_, Some(Note::Unrelocated)) => report.unrelocated.push(f.rel.to_string()),
                        (_, Some(Note::StalePyc)) => report.stale_pycs.push(f.rel.to_string()),
                        (Treatment::Pyc, None) => report.pycs_normalized += 1,
                        // A config file, not a script.
                        (Treatment::Venv(venv::Rewrite::PyvenvCfg), None) => {}
                        (Treatment::Venv(_), None) => report.scripts_relocated += 1,
                        (Treatment::Plain, None) => {}
                    }
                    EntryKind::File { mode: file_mode(f)?, size: p.size, hash: p.hash }
                }
                (FoundKind::File, None) => unreachable!("every file was prepared"),
            };
            entries.push(Entry { path: f.rel.clone(), kind });
        }
        if spec.strict && !report.unrelocated.is_empty() {
            return Err(BuildError::Unrelocated { count: report.unrelocated.len(), list: report.unrelocated });
        }
        let manifest = Manifest::from_entries(entries).map_err(|e| BuildError::Release(e.into()))?;
        Ok(Self { head: Head::new(manifest, meta)?, report })
    }
}
/// The release metadata of `spec`'s tree, whose paths are `found`.
fn release_meta(spec: &BuildSpec, found: &[Found]) -> ReleaseMeta {
    ReleaseMeta {
        format: FORMAT_VERSION,
        service: spec.service.clone(),
        version: spec.version.clone(),
        git: spec.git.clone(),
        components: components(spec, found),
    }
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

// The same as ferry_switcher::host::hostname: the builder does not depend on the switcher, and
// ferry-formats (the crate both share) holds data formats, not questions to the system.
fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
