//! Walking a release tree: which paths go into the bundle.
//!
//! Exclude and include patterns are globs with gitignore's two most-used
//! rules: a pattern without `/` matches a name at any depth (`*.log`,
//! `__pycache__`), a pattern with `/` matches the whole path from the release
//! root (`media/cache/**`, a leading `/` is allowed), and a trailing `/`
//! matches directories only (`.git/`). An excluded directory is not entered.
//! When include patterns are given, only files and symlinks that match one are
//! kept, with the directories above them.
//!
//! The top-level `.ferry` is always left out: a bundle keeps it for metadata,
//! and it is where a project's local store lives.

use std::collections::BTreeMap;
use std::fs::{FileType, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::Scope;

use ferry_formats::RelPath;
use fs_err as fs;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::BuildError;

/// One path of the release tree.
#[derive(Debug)]
pub struct Found {
    pub rel: RelPath,
    pub abs: PathBuf,
    pub meta: Metadata,
    pub kind: FoundKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundKind {
    Dir,
    File,
    Symlink(String),
}

/// An include or exclude pattern that does not compile; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty once its leading and trailing `/` are taken off.
    #[error("pattern {pattern:?} is empty")]
    Empty { pattern: String },
    /// The pattern is not a valid glob.
    #[error("pattern {pattern:?}: {reason}")]
    BadGlob { pattern: String, reason: String },
}

/// Compiled include and exclude patterns.
#[derive(Debug)]
pub struct Filter {
    exclude: Patterns,
    include: Option<Patterns>,
}

#[derive(Debug)]
struct Patterns {
    by_name: GlobSet,
    by_name_dirs: GlobSet,
    by_path: GlobSet,
    by_path_dirs: GlobSet,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let mut sets: [GlobSetBuilder; 4] = std::array::from_fn(|_| GlobSetBuilder::new());
        for p in patterns {
            let (body, dirs_only) = match p.strip_suffix('/') {
                Some(b) => (b, true),
                None => (p.as_str(), false),
            };
            let anchored = body.contains('/');
            let body = body.strip_prefix('/').unwrap_or(body);
            if body.is_empty() {
                return Err(PatternError::Empty { pattern: p.clone() });
            }
            let glob: Glob = GlobBuilder::new(body)
                .literal_separator(true)
                .build()
                .map_err(|e| PatternError::BadGlob { pattern: p.clone(), reason: e.kind().to_string() })?;
            sets[usize::from(anchored) * 2 + usize::from(dirs_only)].add(glob);
        }
        let [a, b, c, d] = sets.map(|s| s.build().expect("globs were each checked"));
        Ok(Self { by_name: a, by_name_dirs: b, by_path: c, by_path_dirs: d })
    }

    fn matches(&self, rel: &RelPath, is_dir: bool) -> bool {
        let name = rel.file_name();
        self.by_name.is_match(name)
            || self.by_path.is_match(rel.as_str())
            || (is_dir && (self.by_name_dirs.is_match(name) || self.by_path_dirs.is_match(rel.as_str())))
    }
}

impl Filter {
    /// Compiles the patterns; an invalid glob is an error that quotes it.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, PatternError> {
        Ok(Self {
            exclude: Patterns::new(exclude)?,
            include: if include.is_empty() { None } else { Some(Patterns::new(include)?) },
        })
    }

    fn excluded(&self, rel: &RelPath, is_dir: bool) -> bool {
        rel.components().next() == Some(".ferry") || self.exclude.matches(rel, is_dir)
    }
}

/// Below this many directories to walk, the walk goes one level deeper
/// before it splits the work across threads (a venv keeps nearly all its files
/// under one directory, so splitting at the top would leave one thread busy).
const PARALLEL_TASKS: usize = 32;

/// Walks `starts` (release-relative paths; the whole root when empty) under
/// `root`, in parallel, and returns every kept path by path order. The
/// directories above each start are included. Paths in `skip` (absolute) are
/// left out with everything below them.
pub fn walk(root: &Path, starts: &[RelPath], filter: &Filter, skip: &[PathBuf]) -> Result<Vec<Found>, BuildError> {
    begin(root, starts, filter, skip)?.finish()
}

/// A walk whose first levels are done, breadth first, until there are enough
/// directories to share out; what lies below those is walked by
/// [`Begun::finish`] or, while the paths are used, by [`Begun::stream`].
#[derive(Debug)]
pub struct Begun<'a> {
    root: &'a Path,
    filter: &'a Filter,
    skip: &'a [PathBuf],
    /// Every path found so far (the frontier directories too).
    known: BTreeMap<RelPath, Found>,
    /// The directories not read yet, each with its path relative to the root.
    frontier: Vec<(RelPath, PathBuf)>,
}

/// Starts a walk: see [`walk`].
pub fn begin<'a>(
    root: &'a Path,
    starts: &[RelPath],
    filter: &'a Filter,
    skip: &'a [PathBuf],
) -> Result<Begun<'a>, BuildError> {
    let mut found: BTreeMap<RelPath, Found> = BTreeMap::new();
    let mut frontier: Vec<PathBuf> = Vec::new();
    if starts.is_empty() {
        frontier.push(root.to_path_buf());
    }
    for start in starts {
        // The directories above a component, and the component itself.
        let mut at = Some(start.clone());
        while let Some(rel) = at {
            let abs = root.join(rel.as_str());
            let meta = fs::symlink_metadata(&abs).map_err(BuildError::Fs)?;
            let kind = classify(&abs, meta.file_type())?;
            if rel != *start && kind != FoundKind::Dir {
                return Err(BuildError::BadPath {
                    path: abs,
                    reason: "a component path goes through something that is not a directory".into(),
                });
            }
            at = rel.parent();
            found.insert(rel.clone(), Found { rel, abs, meta, kind });
        }
        // A component inside another (`app/config` in `app`) is walked as
        // part of it: walked twice, its paths would come out twice.
        let inside_another = starts.iter().any(|s| start.as_str().starts_with(&format!("{}/", s.as_str())));
        if found[start].kind == FoundKind::Dir && !inside_another {
            frontier.push(root.join(start.as_str()));
        }
    }
    // Breadth first until there are enough directories to share out.
    while !frontier.is_empty() && frontier.len() < PARALLEL_TASKS {
        let mut next = Vec::new();
        for dir in frontier {
            for entry in fs::read_dir(&dir).map_err(BuildError::Fs)? {
                let abs = entry.map_err(BuildError::Fs)?.path();
                let meta = fs::symlink_metadata(&abs).map_err(BuildError::Fs)?;
                if let Some(f) = keep(root, abs, meta, filter, skip)? {
                    if f.kind == FoundKind::Dir {
                        next.push(f.abs.clone());
                    }
                    found.insert(f.rel.clone(), f);
                }
            }
        }
        frontier = next;
    }
    let mut frontier =
        frontier.into_iter().map(|dir| Ok((rel_of(root, &dir)?, dir))).collect::<Result<Vec<_>, BuildError>>()?;
    frontier.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Begun { root, filter, skip, known: found, frontier })
}

impl<'a> Begun<'a> {
    /// The paths found so far, in path order.
    pub fn known(&self) -> impl Iterator<Item = &Found> {
        self.known.values()
    }

    /// Walks the rest in parallel; every kept path by path order.
    pub fn finish(self) -> Result<Vec<Found>, BuildError> {
        let Begun { root, filter, skip, known: mut found, frontier } = self;
        let walked: Vec<Result<Vec<Found>, BuildError>> =
            frontier.par_iter().map(|(_, dir)| walk_below(root, dir, filter, skip)).collect();
        for part in walked {
            for f in part? {
                found.insert(f.rel.clone(), f);
            }
        }
        let mut out: Vec<Found> = found.into_values().collect();
        if let Some(include) = &filter.include {
            let mut keep_dir: std::collections::HashSet<RelPath> = Default::default();
            for f in out.iter().filter(|f| f.kind != FoundKind::Dir && include.matches(&f.rel, false)) {
                let mut at = f.rel.parent();
                while let Some(p) = at {
                    at = p.parent();
                    if !keep_dir.insert(p) {
                        break;
                    }
                }
            }
            out.retain(|f| {
                if f.kind == FoundKind::Dir {
                    keep_dir.contains(&f.rel)
                } else {
                    include.matches(&f.rel, false)
                }
            });
        }
        Ok(out)
    }

    /// Walks the rest on a thread of `scope`, in path order, and hands the
    /// paths out in path order as they are found: runs of the paths already
    /// known, and each frontier directory's subtree whole (below a directory
    /// the paths are one run in path order, after the directory's own). Not
    /// with include patterns, which keep a directory only once every path
    /// below it is known: the walk is handed back, for [`Begun::finish`].
    pub fn stream<'scope>(self, scope: &'scope Scope<'scope, '_>) -> Result<Stream, Self>
    where
        'a: 'scope,
    {
        if self.filter.include.is_some() {
            return Err(self);
        }
        let Begun { root, filter, skip, known, frontier } = self;
        // Each subtree sorts where its directory's path and a `/` would.
        let mut runs: Vec<(Vec<u8>, Item)> =
            known.into_values().map(|f| (f.rel.as_str().as_bytes().to_vec(), Item::Known(f))).collect();
        for (rel, abs) in frontier {
            runs.push((format!("{}/", rel.as_str()).into_bytes(), Item::Below(abs)));
        }
        runs.sort_by(|a, b| a.0.cmp(&b.0));
        // Paths known side by side go out as one run; the subtrees, in the
        // order the packer takes them, go to the walking thread.
        let (mut grouped, mut dirs) = (Vec::new(), Vec::new());
        for (_, item) in runs {
            match (item, grouped.last_mut()) {
                (Item::Known(f), Some(Run::Known(run))) => run.push(f),
                (Item::Known(f), _) => grouped.push(Run::Known(vec![f])),
                (Item::Below(dir), _) => {
                    dirs.push(dir);
                    grouped.push(Run::Below);
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        // One thread, in the packer's order: it stats what the packer then
        // opens, reads, hashes and compresses, so it keeps ahead of it. On 2
        // cores a second walking thread took a core from the packer while
        // zstd's workers waited for their first job.
        scope.spawn(move || {
            for dir in dirs {
                let part = walk_below(root, &dir, filter, skip).map(|mut part| {
                    part.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
                    part
                });
                if tx.send(part).is_err() {
                    break; // the packer stopped
                }
            }
        });
        Ok(Stream { runs: grouped.into_iter(), rx })
    }
}

/// A walk going on: see [`Begun::stream`].
#[derive(Debug)]
pub struct Stream {
    runs: std::vec::IntoIter<Run>,
    /// Each subtree's paths, in the order of the runs.
    rx: mpsc::Receiver<Result<Vec<Found>, BuildError>>,
}

/// A path known from the start, or a frontier directory's subtree.
#[allow(clippy::large_enum_variant)] // a few hundred, while they are sorted
enum Item {
    Known(Found),
    Below(PathBuf),
}

/// Paths known from the start, side by side in path order, or a frontier
/// directory's subtree.
#[derive(Debug)]
enum Run {
    Known(Vec<Found>),
    /// The next subtree the walking thread sends.
    Below,
}

impl Iterator for Stream {
    type Item = Result<Vec<Found>, BuildError>;

    /// The next run of paths, in path order.
    fn next(&mut self) -> Option<Self::Item> {
        match self.runs.next()? {
            Run::Known(run) => Some(Ok(run)),
            Run::Below => match self.rx.recv() {
                Ok(part) => Some(part),
                Err(_) => Some(Err(BuildError::Fs(io::Error::other("a walking thread died")))),
            },
        }
    }
}

/// One path, unless the patterns or `skip` leave it out.
fn keep(
    root: &Path,
    abs: PathBuf,
    meta: Metadata,
    filter: &Filter,
    skip: &[PathBuf],
) -> Result<Option<Found>, BuildError> {
    // Skipped paths are the store's directories: a regular file is never one
    // (and comparing paths component by component was most of the walk's
    // own time).
    if !meta.is_file() && skip.contains(&abs) {
        return Ok(None);
    }
    let rel = rel_of(root, &abs)?;
    if filter.excluded(&rel, meta.is_dir()) {
        return Ok(None);
    }
    let kind = classify(&abs, meta.file_type())?;
    Ok(Some(Found { rel, abs, meta, kind }))
}

/// Everything below `dir` (not `dir` itself). Each entry is stat'ed by its
/// name in the directory being read (`fstatat` on the directory's descriptor,
/// as `std::fs::DirEntry::metadata` does), not by its whole path, which the
/// kernel would resolve from the root again for each of the tree's entries.
fn walk_below(root: &Path, dir: &Path, filter: &Filter, skip: &[PathBuf]) -> Result<Vec<Found>, BuildError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).map_err(BuildError::Fs)? {
            let entry = entry.map_err(BuildError::Fs)?;
            let meta = entry.metadata().map_err(BuildError::Fs)?;
            // An excluded directory is not entered.
            if let Some(f) = keep(root, entry.path(), meta, filter, skip)? {
                if f.kind == FoundKind::Dir {
                    todo.push(f.abs.clone());
                }
                out.push(f);
            }
        }
    }
    Ok(out)
}

fn rel_of(root: &Path, abs: &Path) -> Result<RelPath, BuildError> {
    // Every walked path is `root` joined with names: its bytes start with
    // root's, which spares comparing them component by component.
    let rest = abs.as_os_str().as_bytes().strip_prefix(root.as_os_str().as_bytes());
    let rest = rest.expect("walked paths are the root joined with names");
    let bytes = rest.strip_prefix(b"/").unwrap_or(rest);
    RelPath::from_bytes(bytes).map_err(|e| match e {
        ferry_formats::path::PathError::NotUtf8 => BuildError::NotUtf8(abs.to_path_buf()),
        e => BuildError::BadPath { path: abs.to_path_buf(), reason: e.to_string() },
    })
}

fn classify(abs: &Path, t: FileType) -> Result<FoundKind, BuildError> {
    let special = |what| Err(BuildError::Special { path: abs.to_path_buf(), what });
    if t.is_dir() {
        Ok(FoundKind::Dir)
    } else if t.is_file() {
        Ok(FoundKind::File)
    } else if t.is_symlink() {
        let target = fs::read_link(abs).map_err(BuildError::io(abs))?;
        let target = target.into_os_string().into_string().map_err(|_| BuildError::BadPath {
            path: abs.to_path_buf(),
            reason: "the symlink's target is not UTF-8".into(),
        })?;
        Ok(FoundKind::Symlink(target))
    } else if t.is_fifo() {
        special("fifo")
    } else if t.is_socket() {
        special("socket")
    } else if t.is_block_device() {
        special("block device")
    } else if t.is_char_device() {
        special("character device")
    } else {
        special("file of unknown type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.rel.as_str()).collect()
    }

    #[test]
    fn patterns_follow_gitignore_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for d in [".git/objects", "app/__pycache__", "app/logs", "media/cache", ".ferry/store"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            ".git/HEAD",
            "app/a.py",
            "app/x.log",
            "app/logs/keep.txt",
            "media/cache/c.jpg",
            "media/a.jpg",
            "app/__pycache__/a.pyc",
            ".ferry/store/b",
        ] {
            fs::write(r.join(f), b"x").unwrap();
        }
        let filter = Filter::new(&[], &[".git/".into(), "*.log".into(), "/media/cache/".into()]).unwrap();
        let found = walk(r, &[], &filter, &[]).unwrap();
        assert_eq!(
            rels(&found),
            [
                "app",
                "app/__pycache__",
                "app/__pycache__/a.pyc",
                "app/a.py",
                "app/logs",
                "app/logs/keep.txt",
                "media",
                "media/a.jpg"
            ]
        );
        let only_py = Filter::new(&["*.py".into()], &[]).unwrap();
        assert_eq!(rels(&walk(r, &[], &only_py, &[]).unwrap()), ["app", "app/a.py"]);
    }

    #[test]
    fn components_bring_their_parents() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("build/libs")).unwrap();
        fs::write(tmp.path().join("build/libs/app.jar"), b"PK").unwrap();
        fs::write(tmp.path().join("build/other"), b"").unwrap();
        let filter = Filter::new(&[], &[]).unwrap();
        let found = walk(tmp.path(), &[RelPath::new("build/libs/app.jar").unwrap()], &filter, &[]).unwrap();
        assert_eq!(rels(&found), ["build", "build/libs", "build/libs/app.jar"]);
    }

    #[test]
    fn a_streamed_walk_hands_out_the_paths_of_a_whole_walk_in_the_same_order() {
        // Names that sort before `/` (`p00-1.0.dist-info`, `p00.py`, `a.txt`)
        // put a directory's subtree after its siblings; 40 packages make the
        // walk go parallel below `lib/`, each package and its dist-info a
        // subtree of its own.
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for i in 0..40 {
            let pkg = r.join(format!("venv/lib/p{i:02}"));
            fs::create_dir_all(pkg.join("__pycache__")).unwrap();
            fs::create_dir_all(pkg.join("a/b")).unwrap();
            fs::create_dir_all(pkg.join("a-b")).unwrap();
            for f in ["a.txt", "a/b/c", "a-b/x", "m.py", "__pycache__/m.cpython-311.pyc", "Z"] {
                fs::write(pkg.join(f), f).unwrap();
            }
            fs::write(r.join(format!("venv/lib/p{i:02}.py")), b"").unwrap();
            fs::create_dir_all(r.join(format!("venv/lib/p{i:02}-1.0.dist-info"))).unwrap();
            fs::write(r.join(format!("venv/lib/p{i:02}-1.0.dist-info/RECORD")), b"").unwrap();
        }
        fs::write(r.join("venv/lib.txt"), b"").unwrap();
        let filter = Filter::new(&[], &[]).unwrap();
        let starts = [RelPath::new("venv").unwrap()];
        let whole = walk(r, &starts, &filter, &[]).unwrap();
        assert_eq!(whole.len(), 3 + 40 * 14);
        let begun = begin(r, &starts, &filter, &[]).unwrap();
        assert!(!begun.frontier.is_empty(), "the walk did not go parallel");
        let streamed: Vec<Found> = std::thread::scope(|s| {
            let stream = begun.stream(s).expect("no include patterns");
            stream.flat_map(Result::unwrap).collect()
        });
        assert_eq!(rels(&streamed), rels(&whole));
        // Include patterns need the whole walk.
        let only_py = Filter::new(&["*.py".into()], &[]).unwrap();
        std::thread::scope(|s| assert!(begin(r, &starts, &only_py, &[]).unwrap().stream(s).is_err()));
    }

    #[test]
    fn bad_glob_is_quoted() {
        let err = Filter::new(&[], &["a[".into()]).unwrap_err();
        assert!(err.to_string().contains("pattern \"a[\""), "{err}");
    }
}
