//! The local bundle store.
//!
//! ```text
//! <store>/
//!   bundles/<id>.tar.zst     the bundle, written atomically, never changed
//!   bundles/<id>.json        what `ferry bundles` shows: service, version, sizes,
//!                            when and where it was first built (not part of the id)
//!   cache/<service>.json     the build cache (see `cache`)
//!   steps/<service>/<step>/  the `[build]` steps' cached outputs (see `steps`)
//!   exports/<hash>/          a `--git-ref` build's export, while it builds
//!                            (one directory per config path; see `git`)
//! ```
//!
//! The `bundles/` directory listing is the index.
//!
//! # Naming a release
//!
//! [`Store::find`] takes what a person calls a release, among the bundles of
//! one service, and these rules, first rule that matches anything wins:
//!
//! 1. a whole id (64 hex digits) of a bundle in the store;
//! 2. an exact name: the version label (`--version`), the git tag recorded
//!    when it was built (`--git-ref`), or the whole 40-digit git commit;
//! 3. a prefix: of the id (at least [`MIN_PREFIX`] hex digits) or of the
//!    git commit it was built from (at least [`MIN_COMMIT`]).
//!
//! A rule that matches more than one release is an error listing them (id,
//! version, commit, tag, when built) with the id prefix that picks each; it
//! does not fall through to the next rule. An exact name beats a prefix
//! because a person chose it whole: a tag `cafe1234` or a version `2026`
//! means that release, whatever ids happen to start with those digits (git
//! reads a ref the same way before an abbreviated hash). A prefix match
//! depends on what else the store holds, and may change as it grows.

use std::path::{Path, PathBuf};

use ferry_formats::bundle::{self, Head};
use ferry_formats::{atomic, ReleaseId};
use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::error::{AmbiguousName, NoSuchRelease};
use crate::StoreError;

/// The fewest hex digits a release id prefix may have.
pub const MIN_PREFIX: usize = 4;

/// The fewest hex digits a git commit may be abbreviated to (as `git log
/// --oneline` does).
pub const MIN_COMMIT: usize = 7;

/// How many of the store's releases an error for an unknown name lists.
const SHOWN: usize = 8;

/// A bundle and its record, for [`Store::find`].
struct Entry {
    id: ReleaseId,
    info: Option<BundleInfo>,
}

/// A release a name could mean (or one of those the store has), as an
/// error lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: ReleaseId,
    /// The shortest id prefix that names it alone in the store.
    pub unique_prefix: String,
    pub info: Option<BundleInfo>,
}

impl Candidate {
    fn of(e: &Entry, all: &[Entry]) -> Self {
        let hex = e.id.to_hex();
        let taken = |p: &str| {
            all.iter().any(|o| {
                (o.id != e.id && o.id.to_hex().starts_with(p))
                    || o.info
                        .as_ref()
                        .is_some_and(|i| i.version.as_deref() == Some(p) || i.git_tag.as_deref() == Some(p))
            })
        };
        let n = (MIN_PREFIX..hex.len()).find(|n| !taken(&hex[..*n])).unwrap_or(hex.len());
        Candidate { id: e.id, unique_prefix: hex[..n].to_owned(), info: e.info.clone() }
    }
}

/// `candidates` as a table, each line indented by two spaces: id, service
/// (with `service`), version, commit, tag, when built.
pub fn candidate_table(candidates: &[Candidate], service: bool) -> String {
    let field = |c: &Candidate, f: &dyn Fn(&BundleInfo) -> Option<String>| {
        c.info.as_ref().and_then(f).unwrap_or_else(|| "-".into())
    };
    let rows: Vec<[String; 6]> = candidates
        .iter()
        .map(|c| {
            [
                c.id.short(12),
                field(c, &|i| Some(i.service.clone())),
                field(c, &|i| i.version.clone()),
                field(c, &|i| i.git_commit.as_deref().map(short_commit)),
                field(c, &|i| i.git_tag.clone()),
                field(c, &|i| (i.built_at > 0).then(|| utc_minutes(i.built_at))),
            ]
        })
        .collect();
    let head = ["ID", "SERVICE", "VERSION", "COMMIT", "TAG", "BUILT"].map(str::to_owned);
    let shown: Vec<usize> = (0..6).filter(|c| *c != 1 || service).collect();
    let width = |c: usize| rows.iter().chain([&head]).map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..6).map(width).collect();
    let line = |r: &[String; 6]| {
        let cells: Vec<String> = shown
            .iter()
            .map(|c| if *c == 5 { r[*c].clone() } else { format!("{:<w$}", r[*c], w = widths[*c]) })
            .collect();
        format!("  {}", cells.join("  "))
    };
    std::iter::once(&head).chain(&rows).map(line).collect::<Vec<_>>().join("\n")
}

/// A git commit as people read it: its first 7 hex digits.
pub fn short_commit(commit: &str) -> String {
    commit.chars().take(MIN_COMMIT).collect()
}

/// Unix seconds as `2026-12-06 04:10 UTC`.
pub fn utc_minutes(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = (secs % 86_400 / 3600, secs % 3600 / 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// What the store records beside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub id: ReleaseId,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The tag that named the commit when it was built, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_tag: Option<String>,
    /// The bundle's size on disk.
    pub size: u64,
    /// Regular files in the release, and their total size.
    pub files: usize,
    pub bytes: u64,
    /// Unix seconds of the first build that wrote this bundle.
    pub built_at: u64,
    pub built_on: String,
    pub ferry_version: String,
}

impl BundleInfo {
    /// The record of the release `head`, whose bundle is `size` bytes.
    pub fn new(head: &Head, size: u64, git_tag: Option<String>, built_at: u64, built_on: String) -> Self {
        let (files, bytes) = head.manifest.file_totals();
        Self {
            id: head.id,
            service: head.meta.service.clone(),
            version: head.meta.version.clone(),
            git_commit: head.meta.git.as_ref().map(|g| g.commit.clone()),
            git_tag,
            size,
            files,
            bytes,
            built_at,
            built_on,
            ferry_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// `[store] url`: an S3-compatible store behind this one (see [`crate::remote`]).
    pub(crate) remote: Option<std::sync::Arc<crate::remote::sync::RemoteHandle>>,
}

impl Store {
    /// Opens the store at `root`; it need not exist yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), remote: None }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    pub fn bundle_path(&self, id: &ReleaseId) -> PathBuf {
        self.bundles_dir().join(format!("{id}.tar.zst"))
    }

    fn info_path(&self, id: &ReleaseId) -> PathBuf {
        self.bundles_dir().join(format!("{id}.json"))
    }

    pub fn cache_path(&self, service: &str) -> PathBuf {
        self.root.join("cache").join(format!("{service}.json"))
    }

    /// Where the `[build]` steps of `service` cache their outputs.
    pub fn steps_dir(&self, service: &str) -> PathBuf {
        self.root.join("steps").join(service)
    }

    /// Where `--git-ref` builds of the config at `config` export the commit:
    /// the same directory every time (see `git::export_at`).
    pub fn export_dir(&self, config: &Path) -> PathBuf {
        let id = blake3::hash(config.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("exports").join(&id[..16])
    }

    /// Whether the store has this bundle whole: its size is the one recorded
    /// when it was stored, or with no record, its head reads back as this
    /// release. A truncated or half-replaced bundle is not "had", so the next
    /// build writes it again; a flipped bit is `ferry verify`'s to find (and
    /// every host verifies every byte before it activates a release).
    pub fn has_intact(&self, id: &ReleaseId) -> bool {
        let Ok(meta) = fs::metadata(self.bundle_path(id)) else { return false };
        match self.recorded(id) {
            Some(info) => info.size == meta.len(),
            None => self.read_head(id).is_ok(),
        }
    }

    /// What the store recorded when it first got this bundle, if anything.
    pub fn recorded(&self, id: &ReleaseId) -> Option<BundleInfo> {
        fs::read(self.info_path(id)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Creates `bundles/` and clears temporary files of builds that died.
    pub fn prepare(&self) -> Result<(), StoreError> {
        let dir = self.bundles_dir();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        for dir in [dir, self.root.join("cache")] {
            atomic::remove_stale_temps(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// Records what `ferry bundles` shows about a bundle.
    pub fn record(&self, info: &BundleInfo) -> Result<(), StoreError> {
        let path = self.info_path(&info.id);
        let json = serde_json::to_vec_pretty(info).expect("bundle info serializes");
        atomic::write_atomic(&path, |f| std::io::Write::write_all(f, &json))
            .map_err(|source| StoreError::Io { path, source })
    }

    /// Every bundle's id, in no particular order.
    pub fn ids(&self) -> Result<Vec<ReleaseId>, StoreError> {
        let dir = self.bundles_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io { path: dir.clone(), source })?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar.zst")).and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The release `name` names among the store's bundles (of `service`,
    /// if given): see [`mod@self`] for the names and which wins. Every
    /// command that takes a release from the store resolves it here.
    pub fn find(&self, service: Option<&str>, name: &str) -> Result<ReleaseId, StoreError> {
        // A whole id the local store has is rule 1 whatever the remote
        // holds: no need to ask it (nor for it to answer).
        if let Ok(id) = name.parse::<ReleaseId>() {
            let of_service = || service.is_none_or(|s| self.info(&id).is_ok_and(|i| i.service == s));
            if self.has_intact(&id) && of_service() {
                return Ok(id);
            }
        }
        let id = self.resolve(service, name)?;
        // Found only in the remote: into the local cache before anyone reads it.
        self.fetch(&id)?;
        Ok(id)
    }

    fn resolve(&self, service: Option<&str>, name: &str) -> Result<ReleaseId, StoreError> {
        let all = self.catalog()?;
        let mine: Vec<&Entry> =
            all.iter().filter(|e| service.is_none_or(|s| e.info.as_ref().is_none_or(|i| i.service == s))).collect();
        let lc = name.to_ascii_lowercase();
        let hex = !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit());
        if let Ok(id) = name.parse::<ReleaseId>() {
            if mine.iter().any(|e| e.id == id) {
                return Ok(id);
            }
        }
        let exact = |e: &Entry| {
            e.info.as_ref().is_some_and(|i| {
                i.version.as_deref() == Some(name)
                    || i.git_tag.as_deref() == Some(name)
                    || (hex && name.len() == 40 && i.git_commit.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(&lc)))
            })
        };
        let prefix = |e: &Entry| {
            (hex && name.len() >= MIN_PREFIX && e.id.to_hex().starts_with(&lc))
                || (hex
                    && name.len() >= MIN_COMMIT
                    && e.info.as_ref().and_then(|i| i.git_commit.as_deref()).is_some_and(|c| c.starts_with(&lc)))
        };
        for rule in [&exact as &dyn Fn(&Entry) -> bool, &prefix] {
            let matched: Vec<&Entry> = mine.iter().copied().filter(|e| rule(e)).collect();
            match matched[..] {
                [] => continue,
                [one] => return Ok(one.id),
                _ => {
                    return Err(StoreError::AmbiguousName(Box::new(AmbiguousName {
                        name: name.into(),
                        service: service.map(str::to_owned),
                        candidates: matched.iter().map(|e| Candidate::of(e, &all)).collect(),
                    })))
                }
            }
        }
        let mut tried = Vec::new();
        if name.len() == 64 && hex {
            tried.push("id");
        } else if hex && name.len() >= MIN_PREFIX {
            tried.push("id prefix");
        }
        tried.extend(["version label", "git tag"]);
        if hex && name.len() >= MIN_COMMIT {
            tried.push("git commit");
        }
        let hint = if !hex {
            "not hex digits, so no id prefix or commit"
        } else if name.len() < MIN_PREFIX {
            "an id prefix needs 4+ hex digits, a commit 7+"
        } else if name.len() < MIN_COMMIT {
            "a commit needs 7+ hex digits"
        } else {
            ""
        };
        Err(StoreError::NoSuchRelease(Box::new(NoSuchRelease {
            name: name.into(),
            service: service.map(str::to_owned),
            store: self.root.clone(),
            tried: tried.join(", "),
            hint: hint.into(),
            count: mine.len(),
            newest: mine.iter().take(SHOWN).map(|e| Candidate::of(e, &all)).collect(),
        })))
    }

    /// Every bundle with what the store knows of it (`None`: nothing, its
    /// head does not read), newest first.
    fn catalog(&self) -> Result<Vec<Entry>, StoreError> {
        let mut all: Vec<Entry> = self.ids()?.into_iter().map(|id| Entry { id, info: self.info(&id).ok() }).collect();
        for (id, info) in self.remote_entries()? {
            if !all.iter().any(|e| e.id == id) {
                all.push(Entry { id, info });
            }
        }
        let modified = |id: &ReleaseId| fs::metadata(self.bundle_path(id)).and_then(|m| m.modified()).ok();
        all.sort_by_cached_key(|e| {
            (std::cmp::Reverse(e.info.as_ref().map_or(0, |i| i.built_at)), std::cmp::Reverse(modified(&e.id)), e.id)
        });
        Ok(all)
    }

    /// What the store knows of a bundle: its record, or failing that (a
    /// bundle copied in by hand) what its head says.
    pub fn info(&self, id: &ReleaseId) -> Result<BundleInfo, StoreError> {
        if let Some(info) = self.recorded(id) {
            return Ok(info);
        }
        let path = self.bundle_path(id);
        let head = self.read_head(id)?;
        let size = fs::metadata(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?.len();
        Ok(BundleInfo { ferry_version: String::new(), ..BundleInfo::new(&head, size, None, 0, String::new()) })
    }

    /// Reads and checks a stored bundle's head (not its files).
    pub fn read_head(&self, id: &ReleaseId) -> Result<Head, StoreError> {
        let path = self.bundle_path(id);
        let file = fs::File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        bundle::read_head(std::io::BufReader::new(file), Some(id)).map_err(|source| StoreError::Bundle { path, source })
    }

    /// Every bundle's record, newest first.
    pub fn list(&self) -> Result<Vec<BundleInfo>, StoreError> {
        let mut all = self.ids()?.iter().map(|id| self.info(id)).collect::<Result<Vec<_>, _>>()?;
        // The remote's, with a record; a bundle without one is listed once fetched.
        for (_, info) in self.remote_entries()? {
            if let Some(info) = info.filter(|i| !all.iter().any(|a| a.id == i.id)) {
                all.push(info);
            }
        }
        // Builds in the same second are told apart by their bundle files' mtimes.
        let modified = |id: &ReleaseId| fs::metadata(self.bundle_path(id)).and_then(|m| m.modified()).ok();
        all.sort_by_cached_key(|b| (std::cmp::Reverse(b.built_at), std::cmp::Reverse(modified(&b.id)), b.id));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::utc_minutes;

    #[test]
    fn unix_seconds_read_as_utc_dates() {
        assert_eq!(utc_minutes(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minutes(1_796_530_200), "2026-12-06 04:10 UTC");
        assert_eq!(utc_minutes(1_709_251_199), "2024-02-29 23:59 UTC");
        assert_eq!(utc_minutes(4_107_542_400), "2100-03-01 00:00 UTC");
    }
}
