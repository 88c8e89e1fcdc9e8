//! `ferry push STAGE [REL] --dry-run` (and `ferry deploy --dry-run`): per
//! host, from → to, the bytes the push would ship (its own deltas, made in
//! the store), the files added, changed and removed, the config files of
//! the stage's environment that change, and the packages that change.
//! Nothing changes on any host. Hosts on the same release share one diff.

use std::collections::BTreeMap;

use anyhow::Result;
use ferry_builder::packages::{self, PackageChange, Packages};
use ferry_builder::Store;
use ferry_formats::bundle::Head;
use ferry_formats::manifest::{self, Entry, EntryKind};
use ferry_formats::{ComponentKind, ReleaseId};
use ferry_switcher::fleet::{self, Planned, Ship};
use ferry_switcher::host::error_chain;
use serde::Serialize;
use serde_json::{json, Value};

use super::fleet::{check_release, describe, pushed_stage, StoreSource};
use crate::exit;
use crate::output;
use crate::settings::{Settings, StageSettings};

/// One path that differs between two releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Added,
    Changed,
    Removed,
}

impl Change {
    fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Changed => '~',
            Change::Removed => '-',
        }
    }
}

/// How the packages of two releases differ, as far as their files say.
#[derive(Debug, Serialize)]
struct PackageDiff {
    /// Neither release has a venv or a jar.
    none: bool,
    /// What could not be read, in either release: the changes are then
    /// not the whole story.
    unknown: Vec<String>,
    changes: Vec<PackageChange>,
}

/// What changes from one release to the target: shared by every host on it.
#[derive(Debug)]
struct Diff {
    /// Each path that differs (directories left out), in path order.
    paths: Vec<(Change, String, u64)>,
    /// The config files of the stage's environment among them.
    config: Vec<(Change, String)>,
    packages: Result<PackageDiff, String>,
}

impl Diff {
    fn count(&self, c: Change) -> (usize, u64) {
        self.paths.iter().filter(|p| p.0 == c).fold((0, 0), |(n, b), p| (n + 1, b + p.2))
    }

    fn files_json(&self) -> Value {
        let (added, added_bytes) = self.count(Change::Added);
        let (changed, changed_bytes) = self.count(Change::Changed);
        let (removed, removed_bytes) = self.count(Change::Removed);
        json!({
            "added": added, "changed": changed, "removed": removed,
            "added_bytes": added_bytes, "changed_bytes": changed_bytes, "removed_bytes": removed_bytes,
        })
    }
}

/// The packages of each release, read once each.
struct PackageLists<'a> {
    store: &'a Store,
    read: BTreeMap<ReleaseId, Result<Packages, String>>,
}

impl PackageLists<'_> {
    fn of(&mut self, id: &ReleaseId) -> Result<&Packages, String> {
        let store = self.store;
        let read = self.read.entry(*id).or_insert_with(|| {
            packages::packages(store, id)
                .map_err(|e| format!("cannot read the packages of {}: {}", id.short(12), error_chain(&e)))
        });
        read.as_ref().map_err(Clone::clone)
    }

    fn diff(&mut self, from: &ReleaseId, to: &ReleaseId) -> Result<PackageDiff, String> {
        let old = self.of(from)?.clone();
        let new = self.of(to)?;
        let mut unknown: Vec<String> =
            old.unknown.iter().map(|u| format!("{u} (in {}, the host's)", from.short(12))).collect();
        unknown.extend(new.unknown.iter().map(|u| format!("{u} (in {}, the new)", to.short(12))));
        Ok(PackageDiff { none: !old.any_source && !new.any_source, unknown, changes: packages::compare(&old, new) })
    }
}

/// The paths that differ from `a` to `b`, and those under the config of
/// `env` (each config component's `<path>/<env>/`).
fn diff(a: &Head, b: &Head, env: Option<&str>, packages: Result<PackageDiff, String>) -> Diff {
    let d = manifest::diff(&a.manifest, &b.manifest);
    let not_dir = |e: &Entry| !matches!(e.kind, EntryKind::Dir { .. });
    let mut paths: Vec<(Change, String, u64)> = Vec::new();
    paths.extend(d.added.iter().filter(|e| not_dir(e)).map(|e| (Change::Added, e.path.to_string(), e.size())));
    paths.extend(d.removed.iter().filter(|e| not_dir(e)).map(|e| (Change::Removed, e.path.to_string(), e.size())));
    paths.extend(
        d.changed.iter().filter(|(_, y)| not_dir(y)).map(|(_, y)| (Change::Changed, y.path.to_string(), y.size())),
    );
    paths.sort_by(|x, y| x.1.cmp(&y.1));
    let prefixes: Vec<String> = env
        .map(|env| {
            a.meta
                .components_of(ComponentKind::Config)
                .chain(b.meta.components_of(ComponentKind::Config))
                .map(|c| format!("{}/{env}/", c.path))
                .collect()
        })
        .unwrap_or_default();
    let config =
        paths.iter().filter(|p| prefixes.iter().any(|pre| p.1.starts_with(pre))).map(|p| (p.0, p.1.clone())).collect();
    Diff { paths, config, packages }
}

/// Shows what a push of `release` to the stage would do, and changes
/// nothing: exit 0, or 1 when a host could not be reached or the store
/// could not make what one needs (the others are shown). `deploy` is
/// what `ferry deploy --dry-run` adds to the JSON.
pub(super) fn run(
    settings: &Settings,
    s: &StageSettings,
    release: &ReleaseId,
    picked: &str,
    deploy: Option<Value>,
) -> Result<u8> {
    let store = &settings.store;
    check_release(settings, s, release)?;
    let stage = pushed_stage(s)?;
    let quiet = settings.output.json || settings.output.quiet;
    if !quiet {
        eprintln!(
            "dry run: what pushing {} ({}){picked} to {} of {} would do; nothing is changed",
            release.short(12),
            describe(store.info(release).ok().as_ref()),
            crate::config::plural(stage.hosts.len(), "host"),
            s.stage.name
        );
    }
    let planned = fleet::preview(&stage, s.transport(), &StoreSource(store, crate::config::FetchFrom::Push), release);

    // One diff per release the hosts run (that the store has).
    let target = store.read_head(release)?;
    let env = s.stage.options.env.as_deref();
    let mut lists = PackageLists { store, read: BTreeMap::new() };
    let mut diffs: BTreeMap<ReleaseId, Diff> = BTreeMap::new();
    for (_, p) in &planned {
        let Some(from) = p.as_ref().ok().and_then(|p| p.from).filter(|f| f != release) else { continue };
        if diffs.contains_key(&from) || !store.has_intact(&from) {
            continue;
        }
        let head = store.read_head(&from)?;
        let packages = lists.diff(&from, release);
        diffs.insert(from, diff(&head, &target, env, packages));
    }

    let failed = planned.iter().any(|(_, p)| p.as_ref().map_or(true, |p| matches!(p.ship, Ship::Failed { .. })));
    let total: u64 = planned.iter().filter_map(|(_, p)| p.as_ref().ok()?.ship.bytes()).sum();
    let unreachable: Vec<&str> = planned.iter().filter(|(_, p)| p.is_err()).map(|(h, _)| h.as_str()).collect();
    let version = |id: &ReleaseId| store.info(id).ok().and_then(|i| i.version);

    if settings.output.json {
        let hosts: Vec<Value> = planned
            .iter()
            .map(|(host, p)| match p {
                Err(e) => json!({"host": host, "reachable": false, "error": error_chain(e)}),
                Ok(p) => host_json(host, p, release, env, &diffs, &version),
            })
            .collect();
        let diffs: Vec<Value> = diffs
            .iter()
            .map(|(from, d)| {
                json!({
                    "from": from, "to": release,
                    "paths": d.paths.iter().map(|(c, p, size)| json!({"change": c, "path": p, "size": size})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut doc = json!({
            "dry_run": true,
            "stage": s.stage.name,
            "release": release,
            "version": version(release),
            "ok": !failed,
            "hosts": hosts,
            "summary": {
                "hosts": planned.len(),
                "unreachable": unreachable,
                "bytes": total,
                "changed": "nothing: no host was locked, staged, journalled or restarted",
            },
            "diffs": diffs,
        });
        if let Some(d) = deploy {
            doc["deploy"] = d;
        }
        output::json(&doc)?;
    } else {
        for (host, p) in &planned {
            for line in host_lines(host, p, release, env, &diffs, &version, s.stage.force) {
                output::line(&line)?;
            }
        }
        let reached = planned.len() - unreachable.len();
        let mut summary = format!(
            "dry run of {}: nothing was changed; {} would get {} ({total} bytes) in all",
            s.stage.name,
            crate::config::plural(reached, "host"),
            output::bytes(total)
        );
        if !unreachable.is_empty() {
            summary.push_str(&format!(
                "; {} could not be reached ({}): the preview is incomplete",
                crate::config::plural(unreachable.len(), "host"),
                unreachable.join(", ")
            ));
        }
        eprintln!("{summary}");
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

fn ship_text(ship: &Ship, p: &Planned, force: bool) -> String {
    let sized = |n: u64| format!("{} ({n} bytes)", output::bytes(n));
    match ship {
        Ship::AlreadyCurrent if force => {
            "nothing: already current (--force: it is restarted and its hooks run again)".into()
        }
        Ship::AlreadyCurrent => "nothing: already current".into(),
        Ship::OnHost => "nothing: the host keeps this release already; it is only flipped".into(),
        Ship::Delta { bytes } => format!("delta, {}", sized(*bytes)),
        Ship::Bundle { bytes } if p.current_missing => format!(
            "whole bundle, {}: its current release is not on its disk (removed by hand?), so there is no base \
             for a delta, and a failed push cannot go back to it",
            sized(*bytes)
        ),
        Ship::Bundle { bytes } => format!("first release: whole bundle, {}", sized(*bytes)),
        Ship::Rsync { bundle_bytes } => format!(
            "rsync delta, size unknown: it runs a release the store does not have, so the push has it sign its \
             files first (at most about the bundle, {})",
            sized(*bundle_bytes)
        ),
        Ship::Failed { error } => format!("FAILED: {error}"),
    }
}

type Version<'a> = dyn Fn(&ReleaseId) -> Option<String> + 'a;

fn named(id: Option<&ReleaseId>, version: &Version<'_>) -> String {
    match id {
        None => "nothing".into(),
        Some(id) => match version(id) {
            Some(v) => format!("{} ({v})", id.short(12)),
            None => id.short(12),
        },
    }
}

fn host_lines(
    host: &str,
    p: &Result<Planned, ferry_switcher::host::HostError>,
    release: &ReleaseId,
    env: Option<&str>,
    diffs: &BTreeMap<ReleaseId, Diff>,
    version: &Version<'_>,
    force: bool,
) -> Vec<String> {
    let p = match p {
        Ok(p) => p,
        Err(e) => return vec![format!("{host}  UNREACHABLE: {}", error_chain(e))],
    };
    let mut lines = vec![format!("{host}  {} → {}", named(p.from.as_ref(), version), named(Some(release), version))];
    lines.push(format!("  ships     {}", ship_text(&p.ship, p, force)));
    if let Some(holder) = &p.locked_by {
        lines.push(format!("  lock      held by {holder}: a push now would be refused on it until it is free"));
    }
    let Some(from) = p.from.filter(|f| f != release) else { return lines };
    let Some(d) = diffs.get(&from) else {
        lines.push(format!("  files     unknown: the store does not have {} to compare with", from.short(12)));
        return lines;
    };
    let (a, ab) = d.count(Change::Added);
    let (c, cb) = d.count(Change::Changed);
    let (r, _) = d.count(Change::Removed);
    lines.push(format!(
        "  files     {a} added ({}), {c} changed ({}), {r} removed",
        output::bytes(ab),
        output::bytes(cb)
    ));
    let env = env.unwrap_or("-");
    if d.config.is_empty() {
        lines.push(format!("  config    {env}: no changes"));
    }
    for (change, path) in &d.config {
        lines.push(format!("  config    {env}: {} {path}", change.mark()));
    }
    match &d.packages {
        Err(e) => lines.push(format!("  packages  unknown: {e}")),
        Ok(pk) => {
            for u in &pk.unknown {
                lines.push(format!("  packages  unknown: {u}"));
            }
            if !pk.none && pk.unknown.is_empty() && pk.changes.is_empty() {
                lines.push("  packages  no changes".into());
            }
            for change in &pk.changes {
                lines.push(format!("  packages  {change}"));
            }
        }
    }
    lines
}

fn host_json(
    host: &str,
    p: &Planned,
    release: &ReleaseId,
    env: Option<&str>,
    diffs: &BTreeMap<ReleaseId, Diff>,
    version: &Version<'_>,
) -> Value {
    let mut v = json!({
        "host": host,
        "reachable": true,
        "from": p.from,
        "from_version": p.from.and_then(|f| version(&f)),
        "to": release,
        "ship": p.ship,
        "bytes": p.ship.bytes(),
        "locked_by": p.locked_by,
        "current_missing": p.current_missing,
    });
    // Null when there is nothing to compare: no release on the host, the
    // release itself, or one the store does not have.
    v["files"] = Value::Null;
    v["config"] = Value::Null;
    v["packages"] = Value::Null;
    if let Some(d) = p.from.filter(|f| f != release).and_then(|f| diffs.get(&f)) {
        v["files"] = d.files_json();
        v["config"] = json!({
            "env": env,
            "changes": d.config.iter().map(|(c, p)| json!({"change": c, "path": p})).collect::<Vec<_>>(),
        });
        v["packages"] = match &d.packages {
            Ok(pk) => {
                json!({"known": pk.unknown.is_empty(), "none": pk.none, "unknown": pk.unknown, "changes": pk.changes})
            }
            Err(e) => json!({"known": false, "none": false, "unknown": [e], "changes": []}),
        };
    }
    v
}
