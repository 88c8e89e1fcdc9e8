//! Preparing each file of a release for its bundle: read once, bytecode
//! timestamps normalized, venv scripts made relocatable, hashed and
//! compressed by the files frame.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ferry_formats::bundle::FilesWriter;
use ferry_formats::{ComponentKind, RelPath};
use fs_err as fs;
use rustix::fs::{Mode, OFlags};

use crate::build::BuildSpec;
use crate::cache::{Cache, Note, Prepared, Stamp, Treatment};
use crate::pyc::{self, Pyc};
use crate::venv::{self, Venv};
use crate::walk::{Found, FoundKind};
use crate::BuildError;

/// A file's mode in the release: 755 if anyone may run it, else 644, as git
/// does. Setuid and setgid files are refused.
pub(crate) fn file_mode(f: &Found) -> Result<u32, BuildError> {
    let mode = f.meta.mode();
    if mode & 0o6000 != 0 {
        let bit = if mode & 0o4000 != 0 { "setuid" } else { "setgid" };
        return Err(BuildError::SetId { path: f.abs.clone(), bit });
    }
    Ok(if mode & 0o111 != 0 { 0o755 } else { 0o644 })
}

/// What preparing a file needs to know about the whole tree.
pub(crate) struct Context {
    venvs: Vec<Venv>,
    /// Each `.py` file's stat, for pycs to check themselves against.
    sources: HashMap<RelPath, Stamp>,
}

impl Context {
    /// The context of `spec`'s tree, knowing no sources yet: see [`Context::add_sources`].
    pub(crate) fn new(spec: &BuildSpec) -> Self {
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
        Self { venvs, sources: HashMap::new() }
    }

    /// Learns the `.py` files among `found`. A pyc's source is in the
    /// directory above its `__pycache__`: the sources of the pycs of a run
    /// of paths are among the run's own paths or those found before a walk
    /// went parallel, which the walk knows from its start.
    pub(crate) fn add_sources<'a>(&mut self, found: impl IntoIterator<Item = &'a Found>) {
        let sources = found
            .into_iter()
            .filter(|f| f.kind == FoundKind::File && f.rel.as_str().ends_with(".py"))
            .map(|f| (f.rel.clone(), Stamp::of(&f.meta)));
        self.sources.extend(sources);
    }

    fn venv_of(&self, rel: &RelPath) -> Option<&Venv> {
        self.venvs.iter().find(|v| rel.starts_with(&v.rel))
    }

    pub(crate) fn treatment(&self, rel: &RelPath) -> (Treatment, Option<Stamp>) {
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

    /// Reads one file, makes its bundled content, and adds it to the files
    /// frame, which hashes it.
    pub(crate) fn pack<W: io::Write>(
        &self,
        f: &Found,
        files: &mut FilesWriter<W>,
        reader: &mut Reader,
        cache: &Cache,
        bundles: &Path,
    ) -> Result<Prepared, BuildError> {
        let mode = file_mode(f)?;
        let stamp = Stamp::of(&f.meta);
        let (treatment, dep) = self.treatment(&f.rel);
        let mut file = reader.open(&f.abs).map_err(BuildError::io(&f.abs))?;
        let writing = |source| BuildError::Write { path: bundles.to_path_buf(), source };
        let changed = || BuildError::Io {
            path: f.abs.clone(),
            source: io::Error::other("the file changed size while it was read; build again"),
        };
        let buf = &mut reader.buf;
        let prepared = if treatment == Treatment::Plain && stamp.size > PIECE as u64 {
            // Big and bundled as it is: a piece at a time.
            let mut scan = self.venv_of(&f.rel).filter(|_| !is_informational(&f.rel)).map(Venv::scan);
            let mut out = files.file_in_pieces(&f.rel, mode, stamp.size).map_err(writing)?;
            let mut left = stamp.size;
            while left > 0 {
                let len =
                    read_up_to(&mut file, left.min(PIECE as u64) as usize, buf).map_err(BuildError::io(&f.abs))?;
                if len == 0 {
                    return Err(changed());
                }
                if let Some(scan) = &mut scan {
                    scan.feed(&buf[..len]);
                }
                out.piece(&buf[..len]).map_err(writing)?;
                left -= len as u64;
            }
            // One byte more: it grew.
            if read_up_to(&mut file, 1, buf).map_err(BuildError::io(&f.abs))? != 0 {
                return Err(changed());
            }
            let hash = out.end().map_err(writing)?;
            let note = scan.is_some_and(|s| s.found()).then_some(Note::Unrelocated);
            Prepared { hash, size: stamp.size, treatment, note }
        } else {
            // The size is known from the walk; a bounded read spares a stat per file.
            let len = read_up_to(&mut file, stamp.size as usize + 1, buf).map_err(BuildError::io(&f.abs))?;
            if len as u64 != stamp.size {
                return Err(changed());
            }
            let (content, note) = self.transform(f, treatment, dep.as_ref(), &mut buf[..len]);
            let hash = files.file(&f.rel, mode, &content).map_err(writing)?;
            Prepared { hash, size: content.len() as u64, treatment, note }
        };
        cache.put(f.rel.as_str(), stamp, dep, prepared.clone());
        Ok(prepared)
    }

    /// The bundled content of a file, and anything to tell about it. A pyc
    /// is normalized where it was read.
    fn transform<'a>(
        &self,
        f: &Found,
        treatment: Treatment,
        dep: Option<&Stamp>,
        data: &'a mut [u8],
    ) -> (std::borrow::Cow<'a, [u8]>, Option<Note>) {
        use std::borrow::Cow;
        match treatment {
            Treatment::Pyc => {
                let source = dep.expect("a pyc's treatment comes with its source's stamp");
                let note = match pyc::normalize(data, source.mtime.0, source.size) {
                    Pyc::Stale => Some(Note::StalePyc),
                    Pyc::Normalized | Pyc::HashBased | Pyc::Unknown => None,
                };
                (Cow::Borrowed(data), note)
            }
            Treatment::Venv(r) => {
                let v = self.venv_of(&f.rel).expect("venv treatment is only given inside a venv");
                let out = v.apply(r, data);
                let note = v.names_build_path(&out).then_some(Note::Unrelocated);
                (out, note)
            }
            Treatment::Plain => {
                let unrelocated =
                    self.venv_of(&f.rel).is_some_and(|v| !is_informational(&f.rel) && v.names_build_path(data));
                (Cow::Borrowed(data), unrelocated.then_some(Note::Unrelocated))
            }
        }
    }
}

/// Files bigger than this that are bundled as they are (no pyc or script to
/// rewrite) are read, hashed and compressed a piece of this size at a time,
/// which stays in the CPU's caches from the read to the hash and zstd's copy:
/// read whole, a 10 MB shared library went through memory three times, and
/// the buffer grew to the largest file (5,600 of a cold build's 27,700 page
/// faults). 256 KiB and 1 MiB measured the same.
const PIECE: usize = 256 << 10;

/// Opens the files of a release, in path order, and keeps the buffer they
/// are read into.
#[derive(Default)]
pub(crate) struct Reader {
    buf: Vec<u8>,
    /// The directory of the file opened last: its files are opened from it,
    /// so the kernel looks up one name, not every directory of the path again
    /// (a venv's files are 6 to 10 directories deep).
    dir: Option<(PathBuf, OwnedFd)>,
}

impl Reader {
    fn open(&mut self, abs: &Path) -> io::Result<std::fs::File> {
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Ok(fs::File::open(abs)?.into_parts().0);
        };
        if self.dir.as_ref().is_none_or(|(dir, _)| dir != parent) {
            let fd = rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            self.dir = Some((parent.to_path_buf(), fd));
        }
        let (_, dir) = self.dir.as_ref().expect("set above");
        Ok(rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?.into())
    }
}

/// Reads `file` into the start of `buf`, up to `limit` bytes or its end, and
/// returns how many bytes it read. `buf` only grows (zeroed once, as it
/// grows), and what lies beyond the bytes read is left over from earlier
/// files: `read_to_end` would zero the spare room on every call, which was 2%
/// of a cold build's instructions. A read that ends one byte short of `limit`
/// is taken as the end of the file, as Linux reads a regular file short only
/// at its end: a file read whole with a byte to spare (to see whether it
/// grew) takes one read, not a second that returns nothing.
fn read_up_to(mut file: impl io::Read, limit: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() < limit {
        buf.resize(limit, 0);
    }
    let mut filled = 0;
    while filled < limit {
        match file.read(&mut buf[filled..limit]) {
            Ok(0) => break,
            Ok(n) if filled + n + 1 == limit => return Ok(filled + n),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Venv files that name the build path but are never read by Python:
/// bytecode (Python replaces `co_filename` with the real source path when it
/// loads a pyc) and pip's `RECORD`s. (`pyvenv.cfg`'s `command` line is
/// rewritten instead; see the venv module.)
fn is_informational(rel: &RelPath) -> bool {
    let name = rel.file_name();
    name.ends_with(".pyc") || name == "RECORD"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_read_with_a_byte_to_spare_shows_whether_it_grew_or_shrank() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut buf = Vec::new();
        let mut read = |text: &str, limit: usize| {
            fs::write(&path, text).unwrap();
            let len = read_up_to(fs::File::open(&path).unwrap(), limit, &mut buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        // As the walk found it (5 bytes), bigger, smaller, empty.
        assert_eq!(read("hello", 6), "hello");
        assert_eq!(read("hello!!", 6), "hello!");
        assert_eq!(read("hel", 6), "hel");
        assert_eq!(read("", 1), "");
        assert_eq!(read("x", 1), "x");
    }

    #[test]
    fn the_reader_opens_each_file_of_its_directory_and_names_one_that_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        for (path, text) in [(a.join("1"), "one"), (a.join("2"), "two"), (b.join("3"), "three")] {
            fs::write(path, text).unwrap();
        }
        let mut reader = Reader::default();
        let mut read = |path: &Path| {
            let file = reader.open(path)?;
            let mut buf = Vec::new();
            let len = read_up_to(file, 64, &mut buf)?;
            io::Result::Ok(String::from_utf8(buf[..len].to_vec()).unwrap())
        };
        // From one directory, then another, then back: each file is its own.
        assert_eq!(read(&a.join("1")).unwrap(), "one");
        assert_eq!(read(&a.join("2")).unwrap(), "two");
        assert_eq!(read(&b.join("3")).unwrap(), "three");
        assert_eq!(read(&a.join("2")).unwrap(), "two");
        fs::remove_file(a.join("1")).unwrap();
        assert_eq!(read(&a.join("1")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let err = BuildError::io(a.join("1"))(read(&a.join("1")).unwrap_err());
        assert!(err.to_string().contains("a/1"), "{err}");
    }
}
