//! Preparing each file of a release for its bundle: read once, bytecode
//! timestamps normalized, venv scripts made relocatable, hashed and
//! compressed by the files frame.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_formats::bundle::FilesWriter;
use ferry_formats::{ComponentKind, RelPath};
use fs_err as fs;

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

    /// Reads one file into `buf`, makes its bundled content, and adds it to
    /// the files frame, which hashes it.
    pub(crate) fn pack<W: io::Write>(
        &self,
        f: &Found,
        files: &mut FilesWriter<W>,
        buf: &mut Vec<u8>,
        cache: &Cache,
        bundles: &Path,
    ) -> Result<Prepared, BuildError> {
        let mode = file_mode(f)?;
        let stamp = Stamp::of(&f.meta);
        let (treatment, dep) = self.treatment(&f.rel);
        let file = fs::File::open(&f.abs).map_err(BuildError::Fs)?;
        // The size is known from the walk; a bounded read spares a stat per file.
        let len = read_up_to(file, stamp.size as usize + 1, buf).map_err(BuildError::Fs)?;
        if len as u64 != stamp.size {
            return Err(BuildError::Io {
                path: f.abs.clone(),
                source: io::Error::other("the file changed size while it was read; build again"),
            });
        }
        let (content, note) = self.transform(f, treatment, dep.as_ref(), &buf[..len]);
        let hash = files
            .file(&f.rel, mode, &content)
            .map_err(|source| BuildError::Write { path: bundles.to_path_buf(), source })?;
        let prepared = Prepared { hash, size: content.len() as u64, treatment, note };
        cache.put(f.rel.as_str(), stamp, dep, prepared.clone());
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
                    self.venv_of(&f.rel).is_some_and(|v| !is_informational(&f.rel) && v.names_build_path(data));
                (Cow::Borrowed(data), unrelocated.then_some(Note::Unrelocated))
            }
        }
    }
}

/// Reads `file` into the start of `buf`, up to `limit` bytes or its end, and
/// returns how many bytes it read. `buf` only grows (zeroed once, as it
/// grows), and what lies beyond the bytes read is left over from earlier
/// files: `read_to_end` would zero the spare room on every call, which was 2%
/// of a cold build's instructions.
fn read_up_to(mut file: impl io::Read, limit: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() < limit {
        buf.resize(limit, 0);
    }
    let mut filled = 0;
    while filled < limit {
        match file.read(&mut buf[filled..limit]) {
            Ok(0) => break,
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
