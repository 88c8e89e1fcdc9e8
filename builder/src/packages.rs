//! The packages a release carries, read from its files in the store: each
//! Python distribution's `*.dist-info/METADATA` (`Name`, `Version`), and
//! each jar's `META-INF/maven/**/pom.properties` (`groupId:artifactId`,
//! `version`) or, for a jar without one, its `META-INF/MANIFEST.MF`
//! (`Implementation-Title`, `Implementation-Version`). `ferry push
//! --dry-run` compares two releases' lists.
//!
//! A venv with no dist-info at all, or a jar with no version in its
//! metadata, makes the list incomplete: [`Packages::unknown`] says what
//! could not be read, so a preview says "packages unknown", never "no
//! changes".

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use ferry_formats::bundle::{self, Head, Visitor};
use ferry_formats::manifest::{Entry, EntryKind};
use ferry_formats::{ComponentKind, ReleaseId};
use fs_err as fs;

use crate::{Store, StoreError};

/// Where a package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    /// A Python distribution in a venv (dist-info).
    Python,
    /// A jar, or a Maven artifact inside one.
    Java,
}

impl std::fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Python => "python",
            Self::Java => "java",
        })
    }
}

/// A package's key: its ecosystem and name (Python names as PEP 503
/// normalizes them, so `Django` and `django` are one).
pub type PackageKey = (Ecosystem, String);

/// One package found in a release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Package {
    /// As its metadata spells it (`Django`, `org.example:hello`).
    pub name: String,
    pub version: String,
}

/// What a release's files say of its packages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packages {
    /// Every package found, by key.
    pub found: BTreeMap<PackageKey, Package>,
    /// What could not be read, each said in a line (a venv without
    /// dist-info, a jar without a version): the list is incomplete.
    pub unknown: Vec<String>,
    /// The release has a venv or a jar at all.
    pub any_source: bool,
}

/// How one package differs between two releases.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum PackageChange {
    /// In both, at another version.
    Changed { ecosystem: Ecosystem, name: String, from: String, to: String },
    /// Only in the new release.
    Added { ecosystem: Ecosystem, name: String, version: String },
    /// Only in the old release.
    Removed { ecosystem: Ecosystem, name: String, version: String },
}

impl std::fmt::Display for PackageChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Changed { name, from, to, .. } => write!(f, "{name} {from} → {to}"),
            Self::Added { name, version, .. } => write!(f, "+ {name} {version}"),
            Self::Removed { name, version, .. } => write!(f, "- {name} {version}"),
        }
    }
}

/// The package changes from `old` to `new`: changed first, then added,
/// then removed, each by name.
pub fn compare(old: &Packages, new: &Packages) -> Vec<PackageChange> {
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (key, p) in &new.found {
        match old.found.get(key) {
            Some(o) if o.version != p.version => changed.push(PackageChange::Changed {
                ecosystem: key.0,
                name: p.name.clone(),
                from: o.version.clone(),
                to: p.version.clone(),
            }),
            Some(_) => {}
            None => {
                added.push(PackageChange::Added { ecosystem: key.0, name: p.name.clone(), version: p.version.clone() });
            }
        }
    }
    for (key, o) in &old.found {
        if !new.found.contains_key(key) {
            removed.push(PackageChange::Removed { ecosystem: key.0, name: o.name.clone(), version: o.version.clone() });
        }
    }
    changed.extend(added);
    changed.extend(removed);
    changed
}

/// The files of a release that name its packages.
fn wanted(head: &Head) -> BTreeSet<String> {
    head.manifest
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .filter(|e| is_metadata(e) || is_jar(e))
        .map(|e| e.path.as_str().to_owned())
        .collect()
}

fn is_metadata(e: &Entry) -> bool {
    let mut parts = e.path.components().rev();
    parts.next() == Some("METADATA") && parts.next().is_some_and(|d| d.ends_with(".dist-info"))
}

fn is_jar(e: &Entry) -> bool {
    e.path.file_name().ends_with(".jar")
}

/// Collects the contents of the wanted files as the bundle is read.
struct Collect<'a> {
    wanted: &'a BTreeSet<String>,
    got: BTreeMap<String, Vec<u8>>,
}

impl Visitor for Collect<'_> {
    fn entry(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<()> {
        if self.wanted.contains(entry.path.as_str()) {
            let mut bytes = Vec::new();
            content.read_to_end(&mut bytes)?;
            self.got.insert(entry.path.as_str().to_owned(), bytes);
        }
        Ok(())
    }
}

/// The packages of release `id`, read from its bundle in the store (every
/// byte checked as it is read; a release with no venv or jar is not read
/// past its head).
pub fn packages(store: &Store, id: &ReleaseId) -> Result<Packages, StoreError> {
    let head = store.read_head(id)?;
    let wanted = wanted(&head);
    let mut files = Collect { wanted: &wanted, got: BTreeMap::new() };
    if !wanted.is_empty() {
        let path = store.bundle_path(id);
        let file = fs::File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        bundle::read(io::BufReader::with_capacity(1 << 20, file), Some(id), &mut files)
            .map_err(|source| StoreError::Bundle { path, source })?;
    }
    Ok(from_files(&head, &files.got))
}

/// The packages that `files` (path → content, as [`wanted`] picks them)
/// of the release `head` name.
fn from_files(head: &Head, files: &BTreeMap<String, Vec<u8>>) -> Packages {
    let mut out = Packages::default();
    let venvs: Vec<_> = head.meta.components_of(ComponentKind::Venv).collect();
    out.any_source = !venvs.is_empty() || head.meta.components_of(ComponentKind::Jar).next().is_some();
    for venv in &venvs {
        let has_dist_info = files.keys().any(|p| p.starts_with(&format!("{}/", venv.path)) && p.ends_with("/METADATA"));
        if !has_dist_info {
            out.unknown.push(format!("the venv {} has no *.dist-info/METADATA", venv.path));
        }
    }
    for (path, content) in files {
        if path.ends_with("/METADATA") {
            match python_package(content) {
                Some(p) => {
                    out.found.insert((Ecosystem::Python, normalize(&p.name)), p);
                }
                None => out.unknown.push(format!("{path} names no Name and Version")),
            }
        } else {
            out.any_source = true;
            match jar_packages(content) {
                Ok(found) if found.is_empty() => {
                    out.unknown.push(format!("{path} has no pom.properties and no version in its manifest"));
                }
                Ok(found) => {
                    for p in found {
                        out.found.insert((Ecosystem::Java, p.name.clone()), p);
                    }
                }
                Err(e) => out.unknown.push(format!("{path} cannot be read as a jar: {e}")),
            }
        }
    }
    out
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` as one `-`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `Name` and `Version` from a core metadata file (an email-style header
/// block; the body after the first blank line is the description).
fn python_package(metadata: &[u8]) -> Option<Package> {
    let text = String::from_utf8_lossy(metadata);
    let (mut name, mut version) = (None, None);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':') {
            match key.trim() {
                "Name" if name.is_none() => name = Some(value.trim().to_owned()),
                "Version" if version.is_none() => version = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Some(Package { name: name.filter(|n| !n.is_empty())?, version: version.filter(|v| !v.is_empty())? })
}

/// Why a jar could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JarError(#[from] zip::result::ZipError);

/// The Maven artifacts a jar carries (`META-INF/maven/<g>/<a>/pom.properties`,
/// a fat jar has many); for a jar with none, the one its manifest names.
pub fn jar_packages(jar: &[u8]) -> Result<Vec<Package>, JarError> {
    let mut zip = zip::ZipArchive::new(io::Cursor::new(jar))?;
    let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    let mut found = Vec::new();
    for name in names.iter().filter(|n| n.starts_with("META-INF/maven/") && n.ends_with("/pom.properties")) {
        let text = read_entry(&mut zip, name)?;
        let props = properties(&text);
        if let (Some(g), Some(a), Some(v)) = (props.get("groupId"), props.get("artifactId"), props.get("version")) {
            found.push(Package { name: format!("{g}:{a}"), version: v.clone() });
        }
    }
    if found.is_empty() && names.iter().any(|n| n == "META-INF/MANIFEST.MF") {
        let text = read_entry(&mut zip, "META-INF/MANIFEST.MF")?;
        let attrs = manifest_attributes(&text);
        let title = attrs.get("Implementation-Title").or_else(|| attrs.get("Bundle-SymbolicName"));
        let version = attrs.get("Implementation-Version").or_else(|| attrs.get("Bundle-Version"));
        if let (Some(t), Some(v)) = (title, version) {
            found.push(Package { name: t.clone(), version: v.clone() });
        }
    }
    Ok(found)
}

fn read_entry(zip: &mut zip::ZipArchive<io::Cursor<&[u8]>>, name: &str) -> Result<String, JarError> {
    let mut entry = zip.by_name(name)?;
    let mut text = String::new();
    // Metadata files are small; a bigger one is not what it says it is.
    (&mut entry).take(1 << 20).read_to_string(&mut text).map_err(zip::result::ZipError::Io)?;
    Ok(text)
}

/// A Java properties file's `key=value` (or `key: value`) lines.
fn properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The main section of a jar manifest: `Key: value` lines, a line that
/// starts with a space continuing the one before.
fn manifest_attributes(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(more) = line.strip_prefix(' ') {
            if let Some(value) = last.as_ref().and_then(|k| out.get_mut(k)) {
                value.push_str(more);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
            last = Some(k.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn metadata_headers_only() {
        let p = python_package(b"Metadata-Version: 2.1\nName: Django\nVersion: 4.2.11\n\nVersion: 9\n").unwrap();
        assert_eq!((p.name.as_str(), p.version.as_str()), ("Django", "4.2.11"));
        assert!(python_package(b"Metadata-Version: 2.1\n\nName: x\n").is_none());
        assert_eq!(normalize("Zope.Interface__x"), "zope-interface-x");
    }

    fn jar(files: &[(&str, &str)]) -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, text) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn jars_by_pom_properties_then_manifest() {
        let fat = jar(&[
            ("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nImplementation-Title: app\nImplementation-Version: 1\n"),
            (
                "META-INF/maven/org.example/hello/pom.properties",
                "#c\ngroupId=org.example\nartifactId=hello\nversion=1.2.3\n",
            ),
            ("META-INF/maven/com.x/lib/pom.properties", "version=0.9\ngroupId=com.x\nartifactId=lib\n"),
        ]);
        let names: Vec<String> =
            jar_packages(&fat).unwrap().into_iter().map(|p| format!("{} {}", p.name, p.version)).collect();
        assert_eq!(names, ["org.example:hello 1.2.3", "com.x:lib 0.9"]);
        let plain = jar(&[(
            "META-INF/MANIFEST.MF",
            "Manifest-Version: 1.0\nImplementation-Title: plain-se\n rvice\nImplementation-Version: 2.0\n",
        )]);
        assert_eq!(jar_packages(&plain).unwrap(), [Package { name: "plain-service".into(), version: "2.0".into() }]);
        assert!(jar_packages(&jar(&[("a.class", "x")])).unwrap().is_empty());
        assert!(jar_packages(b"not a zip").is_err());
    }

    #[test]
    fn compare_says_changed_added_removed() {
        let list = |v: &[(&str, &str)]| Packages {
            found: v
                .iter()
                .map(|(n, ver)| {
                    ((Ecosystem::Python, normalize(n)), Package { name: (*n).into(), version: (*ver).into() })
                })
                .collect(),
            ..Packages::default()
        };
        let old = list(&[("Django", "4.2.10"), ("sqlparse", "0.4.4"), ("gone", "1")]);
        let new = list(&[("Django", "4.2.11"), ("sqlparse", "0.4.4"), ("new", "2")]);
        let said: Vec<String> = compare(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(said, ["Django 4.2.10 → 4.2.11", "+ new 2", "- gone 1"]);
    }
}
