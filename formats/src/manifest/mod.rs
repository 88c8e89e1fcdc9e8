//! The manifest: one entry per path of a release.
//!
//! Stored in a bundle as `.ferry/manifest`. Canonical UTF-8 text, one entry a
//! line, fields separated by one TAB (shown here as `→`), each line ended by `\n`:
//!
//! | line | fields | example |
//! |---|---|---|
//! | header | `ferry-manifest <version>` | `ferry-manifest 1` |
//! | directory | `d`, mode, path | `d→755→app` |
//! | file | `f`, mode, size, blake3, path | `f→644→1234→af13…(64 hex)→app/main.py` |
//! | symlink | `l`, path, target | `l→venv/bin/python→/usr/bin/python3.11` |
//!
//! - mode: permission bits as exactly three octal digits; setuid, setgid and
//!   sticky bits are refused.
//! - size: decimal bytes, no leading zeros; blake3: 64 lowercase hex digits.
//! - path: a [`RelPath`]; entries are sorted by the bytes of their path, with
//!   no duplicates; every entry's parent directory is itself an entry (so no
//!   path ever goes through a symlink); no path starts with `.ferry`, which a
//!   bundle keeps for its own metadata.
//! - at most [`MAX_ENTRIES`] entries, and at most
//!   [`MAX_MANIFEST`](crate::bundle::MAX_MANIFEST) bytes of text.
//! - no two paths are one name on a case-insensitive or Unicode-normalizing
//!   file system (`App.py` and `app.py`; the NFC and NFD forms of `é`): equal
//!   once Unicode-decomposed (NFD) and lower-cased, they would overwrite each
//!   other on macOS, Windows or an ext4 `casefold` directory.
//! - a content has one size: two file entries with the same blake3 have the
//!   same size (a host places a content it has by its hash alone).
//! - target: 1 to 4096 bytes, no control characters. A symlink must resolve
//!   inside the release ([`Manifest::check_links`]), except where the caller's
//!   policy allows (a virtualenv's interpreter link). Resolving is bounded:
//!   a chain of more than [`MAX_LINK_DEPTH`] links, or links that take more
//!   than [`LINK_WORK_PER_BYTE`] bytes of path walked per byte of their
//!   paths and targets, are refused.
//!
//! Anything that does not render back to the same bytes is refused, so a
//! manifest has exactly one text and one id.

mod links;

use std::collections::{HashMap, HashSet};

use crate::path::MAX_PATH;
use crate::{BlobHash, RelPath};

pub use links::{LINK_WORK_PER_BYTE, MAX_LINK_DEPTH};

/// The manifest format version.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: &str = "ferry-manifest 1";
/// The most entries a manifest may have. A release of a quarter of a million
/// paths is far past any real service (the benchmark release, a large venv,
/// has 10,000); the cap bounds what a hostile manifest costs a reader — about
/// 60 MiB and a fraction of a second to parse — and is counted before a line
/// is parsed.
pub const MAX_ENTRIES: usize = 250_000;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("manifest entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
}

/// One path of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir { mode: u32 },
    File { mode: u32, size: u64, hash: BlobHash },
    Symlink { target: String },
}

impl Entry {
    /// The file's size, 0 for anything else.
    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// The permission bits (0o777 for a symlink, which has none of its own).
    pub fn mode(&self) -> u32 {
        match self.kind {
            EntryKind::Dir { mode } | EntryKind::File { mode, .. } => mode,
            EntryKind::Symlink { .. } => 0o777,
        }
    }

    /// Appends the entry's line. Written out by hand, not with `write!`:
    /// a build renders each of its 10,000s of lines twice (for the id and
    /// for the bundle) between its last file and its bundle.
    fn render(&self, out: &mut String) {
        let octal = |out: &mut String, mode: u32| {
            // `{mode:03o}`: at least three digits.
            let digits = (32 - mode.leading_zeros()).div_ceil(3).max(3);
            for i in (0..digits).rev() {
                out.push(char::from(b'0' + ((mode >> (3 * i)) & 7) as u8));
            }
        };
        match &self.kind {
            EntryKind::Dir { mode } => {
                out.push_str("d\t");
                octal(out, *mode);
            }
            EntryKind::File { mode, size, hash } => {
                out.push_str("f\t");
                octal(out, *mode);
                out.push('\t');
                out.push_str(itoa::Buffer::new().format(*size));
                out.push('\t');
                out.push_str(blake3::Hash::from_bytes(*hash.as_bytes()).to_hex().as_str());
            }
            EntryKind::Symlink { .. } => out.push('l'),
        }
        out.push('\t');
        out.push_str(self.path.as_str());
        if let EntryKind::Symlink { target } = &self.kind {
            out.push('\t');
            out.push_str(target);
        }
        out.push('\n');
    }
}

/// A validated, sorted list of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

impl Manifest {
    /// Sorts `entries` by path and validates them.
    pub fn from_entries(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        validate(&entries)?;
        Ok(Self { entries })
    }

    /// Parses canonical manifest text.
    pub fn parse(text: &[u8]) -> Result<Self, ManifestError> {
        let line_err = |line: usize, reason: String| ManifestError::Line { line, reason };
        let text = std::str::from_utf8(text).map_err(|e| {
            let line = text[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            line_err(line, "not UTF-8".into())
        })?;
        let Some(body) = text.strip_prefix(HEADER).and_then(|t| t.strip_prefix('\n')) else {
            let first = text.lines().next().unwrap_or("");
            return Err(line_err(1, format!("expected header {HEADER:?}, found {first:?}")));
        };
        if !body.is_empty() && !body.ends_with('\n') {
            let line = text.lines().count();
            return Err(line_err(line, "the last line has no newline (truncated?)".into()));
        }
        let count = body.bytes().filter(|&b| b == b'\n').count();
        if count > MAX_ENTRIES {
            return Err(line_err(MAX_ENTRIES + 2, format!("{count} entries; at most {MAX_ENTRIES} are accepted")));
        }
        let mut entries = Vec::with_capacity(count);
        // Split on '\n' only: a '\r' stays in the line and is refused with its line number.
        for (i, line) in body.split_terminator('\n').enumerate() {
            let n = i + 2;
            let entry = parse_line(line).map_err(|reason| line_err(n, reason))?;
            if let Some(prev) = entries.last().map(|e: &Entry| &e.path) {
                if *prev >= entry.path {
                    let why = if *prev == entry.path { "duplicate path" } else { "not sorted: comes after" };
                    return Err(line_err(n, format!("{:?}: {why} {prev:?}", entry.path.as_str())));
                }
            }
            entries.push(entry);
        }
        validate(&entries)?;
        // Every field parser is strict, so this is a belt-and-braces check;
        // line by line, so it never holds a second copy of the text.
        let mut at = HEADER.len() + 1;
        let mut line = String::new();
        for (i, e) in entries.iter().enumerate() {
            line.clear();
            e.render(&mut line);
            if text.as_bytes().get(at..at + line.len()) != Some(line.as_bytes()) {
                return Err(line_err(i + 2, "not in canonical form".into()));
            }
            at += line.len();
        }
        if at != text.len() {
            return Err(line_err(1, "not in canonical form".into()));
        }
        Ok(Self { entries })
    }

    /// The canonical text.
    pub fn to_text(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.entries.len() * 100);
        out.push_str(HEADER);
        out.push('\n');
        for e in &self.entries {
            e.render(&mut out);
        }
        out.into_bytes()
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// How many regular files, and their total size.
    pub fn file_totals(&self) -> (usize, u64) {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .fold((0, 0), |(n, b), e| (n + 1, b + e.size()))
    }
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let path = |s: &str| RelPath::new(s).map_err(|e| format!("path {s:?}: {e}"));
    let kind_and_path = match fields.as_slice() {
        ["d", mode, p] => (EntryKind::Dir { mode: parse_mode(mode)? }, path(p)?),
        ["f", mode, size, hash, p] => {
            let size = parse_size(size)?;
            let hash = hash.parse::<BlobHash>().map_err(|e| e.to_string())?;
            (EntryKind::File { mode: parse_mode(mode)?, size, hash }, path(p)?)
        }
        ["l", p, target] => (EntryKind::Symlink { target: (*target).to_owned() }, path(p)?),
        [kind, ..] if !matches!(*kind, "d" | "f" | "l") => {
            return Err(format!("unknown entry kind {kind:?} (expected d, f or l)"));
        }
        _ => return Err(format!("wrong number of fields ({}) for its kind", fields.len())),
    };
    Ok(Entry { path: kind_and_path.1, kind: kind_and_path.0 })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not octal"))?;
    if mode & 0o7000 != 0 {
        return Err(format!("mode {s} has setuid, setgid or sticky bits"));
    }
    if s.len() != 3 || mode > 0o777 {
        return Err(format!("mode {s:?} must be exactly three octal digits"));
    }
    Ok(mode)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(format!("size {s:?} is not a decimal number without leading zeros"));
    }
    s.parse().map_err(|_| format!("size {s:?} is too large"))
}

/// The rules every list of entries must keep, whether parsed or built.
fn validate(entries: &[Entry]) -> Result<(), ManifestError> {
    let mut dirs: HashSet<&str> = HashSet::new();
    // One content has one size: a host that has the content by its hash
    // places it without reading the input, so two sizes would be a lie.
    let mut sizes: HashMap<&BlobHash, (u64, &RelPath)> = HashMap::new();
    let err = |e: &Entry, reason: String| ManifestError::Entry { path: e.path.to_string(), reason };
    for (i, e) in entries.iter().enumerate() {
        if i > 0 && entries[i - 1].path == e.path {
            return Err(err(e, "duplicate path".into()));
        }
        if e.path.components().next() == Some(".ferry") {
            return Err(err(e, "paths under .ferry are reserved for bundle metadata".into()));
        }
        if let Some(parent) = e.path.parent() {
            if !dirs.contains(parent.as_str()) {
                return Err(err(
                    e,
                    format!("its parent {:?} is not a directory entry of the manifest", parent.as_str()),
                ));
            }
        }
        if let EntryKind::File { size, hash, .. } = &e.kind {
            let (first, at) = *sizes.entry(hash).or_insert((*size, &e.path));
            if first != *size {
                return Err(err(e, format!("content {hash} is {size} bytes here, but {first} bytes at {at:?}")));
            }
        }
        match &e.kind {
            EntryKind::Dir { mode } | EntryKind::File { mode, .. } if *mode > 0o777 => {
                return Err(err(e, format!("mode {mode:o} has setuid, setgid or sticky bits")));
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.len() > MAX_PATH {
                    return Err(err(e, format!("symlink target must be 1 to {MAX_PATH} bytes")));
                }
                if target.bytes().any(|b| b.is_ascii_control()) {
                    return Err(err(e, "symlink target has a control character".into()));
                }
            }
            _ => {}
        }
        if matches!(e.kind, EntryKind::Dir { .. }) {
            dirs.insert(e.path.as_str());
        }
    }
    check_collisions(entries)?;
    Ok(())
}

/// Refuses two paths that one file system would take for one name: equal
/// once Unicode-decomposed and lower-cased. Only paths with an upper-case
/// or non-ASCII character can collide with another, so only they are folded
/// and kept (a lower-case ASCII path is its own folded form, found among the
/// sorted entries by binary search): the check costs nothing for most
/// releases.
fn check_collisions(entries: &[Entry]) -> Result<(), ManifestError> {
    use unicode_normalization::UnicodeNormalization;
    let mut folded: HashMap<String, &RelPath> = HashMap::new();
    for e in entries {
        let p = e.path.as_str();
        if p.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
            continue;
        }
        // ASCII is its own decomposition: lower-casing is all its folding
        // (and skipping Unicode's tables for it took the check from 8.5 ms
        // to 1.9 ms on the benchmark release's 4,000 such paths).
        let key: String = if p.is_ascii() {
            p.to_ascii_lowercase()
        } else {
            let lower: String = p.nfd().flat_map(char::to_lowercase).collect();
            lower.nfd().collect()
        };
        let other = folded.get(&key).copied().or_else(|| {
            entries
                .binary_search_by(|x| x.path.as_str().cmp(&key))
                .ok()
                .map(|i| &entries[i].path)
                .filter(|o| *o != &e.path)
        });
        if let Some(other) = other {
            return Err(ManifestError::Entry {
                path: e.path.to_string(),
                reason: format!(
                    "it and {other:?} are one name on a case-insensitive or Unicode-normalizing file system \
                     (they differ only in case or in Unicode normalization): rename one"
                ),
            });
        }
        folded.insert(key, &e.path);
    }
    Ok(())
}

/// What changed from one manifest to another.
#[derive(Debug, Default)]
pub struct Diff<'a> {
    pub added: Vec<&'a Entry>,
    pub removed: Vec<&'a Entry>,
    /// `(old, new)` pairs of the same path whose kind, mode, content or target differ.
    pub changed: Vec<(&'a Entry, &'a Entry)>,
    pub unchanged: usize,
}

/// Compares two manifests path by path.
pub fn diff<'a>(old: &'a Manifest, new: &'a Manifest) -> Diff<'a> {
    let mut d = Diff::default();
    let (mut a, mut b) = (old.entries.iter().peekable(), new.entries.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => d.removed.push(a.next().unwrap()),
            (None, Some(_)) => d.added.push(b.next().unwrap()),
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => d.removed.push(a.next().unwrap()),
                std::cmp::Ordering::Greater => d.added.push(b.next().unwrap()),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().unwrap(), b.next().unwrap());
                    if x.kind == y.kind {
                        d.unchanged += 1;
                    } else {
                        d.changed.push((x, y));
                    }
                }
            },
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The hand-written line is what `write!` made before it, for any
        /// mode and size (the canonical form is a format: ids depend on it).
        #[test]
        fn a_line_is_what_the_format_string_makes(mode in proptest::prelude::any::<u32>(), size in proptest::prelude::any::<u64>(), small in 0u64..100_000) {
            let path = RelPath::new("venv/lib/a b.py").unwrap();
            let hash = BlobHash::of(&size.to_le_bytes());
            for (kind, expected) in [
                (EntryKind::Dir { mode }, format!("d\t{mode:03o}\t{path}\n")),
                (EntryKind::File { mode, size, hash }, format!("f\t{mode:03o}\t{size}\t{hash}\t{path}\n")),
                (EntryKind::File { mode: mode & 0o777, size: small, hash }, format!("f\t{:03o}\t{small}\t{hash}\t{path}\n", mode & 0o777)),
                (EntryKind::Symlink { target: "../x".into() }, format!("l\t{path}\t../x\n")),
            ] {
                let mut line = String::new();
                Entry { path: path.clone(), kind }.render(&mut line);
                proptest::prop_assert_eq!(line, expected);
            }
        }
    }

    fn file(p: &str, content: &[u8]) -> Entry {
        Entry {
            path: RelPath::new(p).unwrap(),
            kind: EntryKind::File { mode: 0o644, size: content.len() as u64, hash: BlobHash::of(content) },
        }
    }
    fn dir(p: &str) -> Entry {
        Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Dir { mode: 0o755 } }
    }
    fn link(p: &str, t: &str) -> Entry {
        Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Symlink { target: t.into() } }
    }

    fn sample() -> Manifest {
        Manifest::from_entries(vec![
            file("app/main.py", b"print(1)\n"),
            dir("app"),
            dir("venv"),
            dir("venv/bin"),
            link("venv/bin/python", "/usr/bin/python3"),
            link("venv/lib64", "lib"),
            file("a b.txt", b""),
        ])
        .unwrap()
    }

    #[test]
    fn text_round_trip_is_sorted_by_bytes() {
        let m = sample();
        let text = m.to_text();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let s = String::from_utf8(text).unwrap();
        let paths: Vec<_> = m.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a b.txt", "app", "app/main.py", "venv", "venv/bin", "venv/bin/python", "venv/lib64"]);
        assert!(s.starts_with("ferry-manifest 1\nf\t644\t0\t"), "{s}");
    }

    fn parse_err(text: &str) -> String {
        Manifest::parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn refuses_bad_lines() {
        let h = BlobHash::of(b"");
        let cases = [
            ("nope\n".to_string(), "line 1: expected header"),
            ("ferry-manifest 1\nd\t755\tapp".to_string(), "no newline"),
            ("ferry-manifest 1\nx\t755\tapp\n".to_string(), "unknown entry kind \"x\""),
            ("ferry-manifest 1\nd\t4755\tapp\n".to_string(), "setuid, setgid or sticky"),
            ("ferry-manifest 1\nd\t0755\tapp\n".to_string(), "exactly three octal digits"),
            (format!("ferry-manifest 1\nf\t644\t01\t{h}\ta\n"), "leading zeros"),
            ("ferry-manifest 1\nd\t755\t../etc\n".to_string(), "'.' or '..' component"),
            ("ferry-manifest 1\nd\t755\t/etc\n".to_string(), "absolute"),
            ("ferry-manifest 1\nd\t755\tb\nd\t755\ta\n".to_string(), "not sorted"),
            ("ferry-manifest 1\nd\t755\ta\nd\t755\ta\n".to_string(), "duplicate path"),
            (format!("ferry-manifest 1\nf\t644\t0\t{h}\tx/y\n"), "parent \"x\" is not a directory"),
            ("ferry-manifest 1\nl\ta\tb\nf\t644\t0\tzz\ta/c\n".to_string(), "not a blob hash"),
            ("ferry-manifest 1\nd\t755\t.ferry\n".to_string(), "reserved"),
        ];
        for (text, want) in cases {
            let got = parse_err(&text);
            assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn file_under_a_symlink_is_refused() {
        let err = Manifest::from_entries(vec![link("a", "/etc"), file("a/passwd", b"x")]).unwrap_err();
        assert!(err.to_string().contains("parent \"a\" is not a directory"), "{err}");
    }

    #[test]
    fn links_must_stay_inside() {
        let ok = |m: &Manifest| m.check_links(|p| p.as_str().starts_with("venv/bin/python"));
        ok(&sample()).unwrap();
        let escapes = [
            (vec![link("a", "../x")], "resolves outside"),
            (vec![dir("d"), link("d/a", "../../x")], "resolves outside"),
            (vec![link("a", "/etc/passwd")], "points outside"),
            // Lexically inside (d/l/../.. is the root), but d/l is a link to the root, so it escapes.
            (vec![dir("d"), link("d/l", ".."), link("x", "d/l/../..")], "resolves outside"),
            // Through the interpreter link, which leaves the release.
            (
                vec![
                    dir("venv"),
                    dir("venv/bin"),
                    link("venv/bin/python", "/usr/bin/python3"),
                    link("x", "venv/bin/python/../etc"),
                ],
                "goes through \"venv/bin/python\"",
            ),
            // Ending at it: x would be a second way out.
            (
                vec![
                    dir("venv"),
                    dir("venv/bin"),
                    link("venv/bin/python", "/usr/bin/python3"),
                    link("x", "venv/bin/python"),
                ],
                "ends at a link that points outside",
            ),
            // An interpreter link must name an interpreter.
            (vec![dir("venv"), dir("venv/bin"), link("venv/bin/python", "/")], "points outside"),
            (vec![dir("venv"), dir("venv/bin"), link("venv/bin/python", "/usr/../etc/python")], "points outside"),
            (vec![link("a", "b/x"), link("b", "a/x")], "loop of links"),
        ];
        for (entries, want) in escapes {
            let m = Manifest::from_entries(entries).unwrap();
            let got = ok(&m).unwrap_err().to_string();
            assert!(got.contains(want), "got {got:?}, want {want:?}");
        }
        // Lexically outside (up/../.. climbs above the root), but "up" is two levels deep.
        let inside =
            Manifest::from_entries(vec![dir("s"), dir("s/t"), link("up", "s/t"), link("x", "up/../..")]).unwrap();
        ok(&inside).unwrap();
    }

    #[test]
    fn a_venvs_own_links_pass() {
        // As `python3 -m venv` makes them: two relative links ending at the absolute one.
        let m = Manifest::from_entries(vec![
            dir("venv"),
            dir("venv/bin"),
            link("venv/bin/python", "python3"),
            link("venv/bin/python3", "/root/.pyenv/versions/3.11.7/bin/python3"),
            link("venv/bin/python3.11", "python3"),
            dir("venv/lib"),
            link("venv/lib64", "lib"),
        ])
        .unwrap();
        m.check_links(|p| p.as_str().starts_with("venv/bin/python")).unwrap();
    }

    #[test]
    fn missing_and_non_directory_components_stop_the_walk() {
        // The kernel fails these (ENOENT, ENOTDIR) before any `..` can climb out.
        let m = Manifest::from_entries(vec![file("f", b""), link("a", "missing/../../../x"), link("b", "f/../../x")])
            .unwrap();
        m.check_links(|_| false).unwrap();
    }

    #[test]
    fn many_links_through_a_chain_resolve_once_each() {
        // A hostile shape: a chain of 40 links, and 2,000 links through its end.
        // Resolved naively (each link walked anew) this took about a minute.
        let mut entries = vec![dir("s")];
        entries.push(link("s/c00", "."));
        for i in 1..40 {
            entries.push(link(&format!("s/c{i:02}"), &format!("c{:02}", i - 1)));
        }
        for i in 0..2000 {
            entries.push(link(&format!("s/x{i:04}"), &"c39/".repeat(100)));
        }
        Manifest::from_entries(entries).unwrap().check_links(|_| false).unwrap();
    }

    #[test]
    fn too_many_entries_are_refused_before_parsing() {
        let text = format!("{HEADER}\n{}", "d\t755\ta\n".repeat(MAX_ENTRIES + 1));
        let err = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(&format!("{} entries; at most {MAX_ENTRIES}", MAX_ENTRIES + 1)), "{err}");
    }

    #[test]
    fn a_carriage_return_is_refused_with_its_line() {
        let err = parse_err("ferry-manifest 1\nd\t755\ta\r\nd\t755\tb\n");
        assert!(err.starts_with("manifest line 2: path \"a\\r\": the path has a control character"), "{err}");
    }

    #[test]
    fn diff_finds_each_kind_of_change() {
        let old = Manifest::from_entries(vec![dir("app"), file("app/a", b"1"), file("app/b", b"2"), file("gone", b"")])
            .unwrap();
        let new = Manifest::from_entries(vec![dir("app"), file("app/a", b"1"), file("app/b", b"22"), file("new", b"")])
            .unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.added.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(d.removed.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["gone"]);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].1.size(), 2);
        assert_eq!(d.unchanged, 2);
    }
}
