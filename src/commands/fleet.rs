//! The commands on a stage's hosts: `push`, `rollback`, `status`,
//! `history`, `setup`, `logs`, through the stage's transport, with the
//! store as the release source. How a push's report shows is `report.rs`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ferry_builder::store::{short_commit, utc_minutes};
use ferry_builder::{delta, git, BundleInfo, Store, StoreError};
use ferry_formats::journal::{Outcome as JournalOutcome, Record};
use ferry_formats::signature::Signature;
use ferry_formats::{ComponentKind, ReleaseId};
use ferry_switcher::fleet::{self, Local, ReleaseSource, SourceError, Transport};
use ferry_switcher::host::runtime::{Installed, SetUp};
use ferry_switcher::host::{error_chain, HostError};

use super::report::{observer, show, Verb};
use crate::exit;
use crate::output;
use crate::settings::{Settings, StageSettings};

impl StageSettings {
    /// How this stage's hosts are reached.
    pub(super) fn transport(&self) -> &dyn Transport {
        match &self.ssh {
            Some(ssh) => ssh,
            None => &Local,
        }
    }
}

/// The store, as the fleet sees it, and where the stage's hosts get
/// their payload.
pub(super) struct StoreSource<'a>(pub(super) &'a Store, pub(super) crate::config::FetchFrom);

impl ReleaseSource for StoreSource<'_> {
    fn bundle(&self, id: &ReleaseId) -> Result<PathBuf, SourceError> {
        if !self.0.has_intact(id) {
            return Err(format!("the store {} has no intact bundle of it", self.0.root().display()).into());
        }
        Ok(self.0.bundle_path(id))
    }

    fn delta(&self, base: &ReleaseId, target: &ReleaseId) -> Result<Option<PathBuf>, SourceError> {
        if !self.0.has_intact(base) {
            return Ok(None);
        }
        Ok(Some(delta::encode(self.0, base, target)?.path))
    }

    fn rsync_delta(&self, signature: &Signature, target: &ReleaseId) -> Result<PathBuf, SourceError> {
        Ok(delta::encode_rsync(self.0, signature, target)?.path)
    }

    fn fetchable(
        &self,
        base: Option<&ReleaseId>,
        target: &ReleaseId,
        kind: fleet::Shipped,
        path: &std::path::Path,
    ) -> Result<Option<fleet::Fetch>, SourceError> {
        let crate::config::FetchFrom::Store { ttl } = self.1 else { return Ok(None) };
        let key = match (kind, base) {
            (fleet::Shipped::Delta, Some(base)) => ferry_builder::remote::sync::delta_key(base, target),
            (fleet::Shipped::Bundle, _) => ferry_builder::remote::sync::bundle_key(target),
            // An rsync delta is for one host's files: not worth a store object.
            _ => return Ok(None),
        };
        let put = ferry_builder::remote::sync::put_for_fetch(self.0, &key, path, ttl)?;
        Ok(Some(fleet::Fetch { url: put.url, blake3: put.blake3, len: put.len }))
    }

    fn release_signature(&self, id: &ReleaseId) -> Result<Option<String>, SourceError> {
        Ok(self.0.signature(id)?)
    }
}

pub fn push(settings: &Settings, s: &StageSettings, id: Option<&str>) -> Result<u8> {
    let store = &settings.store;
    let (release, picked) = match id {
        Some(name) => (store.find(Some(&s.service), name)?, String::new()),
        None => picked(store, s)?,
    };
    if s.dry_run {
        return super::preview::run(settings, s, &release, &picked, None);
    }
    Ok(push_release(settings, s, &release, &picked, Verb::Push)?.0)
}

/// Pushes `release` (in the store) to the stage; the exit code and the
/// report (`ferry push` and `ferry deploy`). `picked` says how it was
/// picked, for the line that names it.
pub(super) fn push_release(
    settings: &Settings,
    s: &StageSettings,
    release: &ReleaseId,
    picked: &str,
    verb: Verb,
) -> Result<(u8, fleet::Report)> {
    let release = *release;
    let store = &settings.store;
    check_release(settings, s, &release)?;
    let stage = &pushed_stage(s)?;
    if !settings.output.json && !settings.output.quiet {
        let info = store.info(&release).ok();
        eprintln!(
            "pushing {} ({}){picked} to {} of {}",
            release.short(12),
            describe(info.as_ref()),
            crate::config::plural(stage.hosts.len(), "host"),
            s.stage.name
        );
    }
    // Hosts decide (their pinned keys, not ferry.toml's): this only says
    // early what they will say.
    if !settings.output.json && !s.stage.trusted_keys.is_empty() && store.signature(&release)?.is_none() {
        eprintln!(
            "warning: release {} is not signed, and stage {}'s hosts take only signed releases: sign it (`ferry sign {}`)",
            release.short(12),
            s.stage.name,
            release.short(12)
        );
    }
    let hosts = stage.hosts.len() as u64;
    let observer = observer(settings, 2 * hosts);
    let report = fleet::push(stage, s.transport(), &StoreSource(&settings.store, s.fetch), &release, observer.as_ref());
    drop(observer);
    if let Some(lb) = report.load_balancer.as_ref().filter(|lb| !lb.left_out.is_empty()) {
        super::lb::left_out(s, &lb.left_out)?;
    }
    Ok((show(settings, &report, verb)?, report))
}

/// What a push checks of a release before any host is contacted (`push`
/// and `push --dry-run`): the stage's service, and a config for its
/// environment.
pub(super) fn check_release(settings: &Settings, s: &StageSettings, release: &ReleaseId) -> Result<()> {
    let release = *release;
    let head = settings.store.read_head(&release)?;
    if head.meta.service != s.service {
        bail!("release {} is of service {}, not {}", release.short(12), head.meta.service, s.service);
    }
    // Each host would refuse it at stage time, one by one; say it once,
    // before anything is contacted.
    if let Some(env) = &s.stage.options.env {
        for config in head.meta.components_of(ComponentKind::Config) {
            if !config.environments.contains(env) {
                bail!(
                    "release {} has no config for environment {env:?} (it has: {}); nothing was pushed: \
                     add {}/{env}/ to the release and build it again, or set stage {}'s env to one it has",
                    release.short(12),
                    config.environments.join(", "),
                    config.path,
                    s.stage.name
                );
            }
        }
    }
    Ok(())
}

/// The hosts a push goes to: the stage's, or with `--out` those out of
/// the load balancer's rotation, in one batch.
pub(super) fn pushed_stage(s: &StageSettings) -> Result<std::borrow::Cow<'_, fleet::Stage>> {
    Ok(match &s.stage.load_balancer {
        Some(lb) if s.stage.out_of_rotation => std::borrow::Cow::Owned(out_of_rotation(s, lb)?),
        _ => std::borrow::Cow::Borrowed(&s.stage),
    })
}

/// The release a push with none named picks, and how it was picked (for
/// the line that says so): with the stage's `ref`, the newest build of the
/// commit the ref names now; without, the service's newest build.
fn picked(store: &Store, s: &StageSettings) -> Result<(ReleaseId, String)> {
    let mut builds = store.list()?.into_iter().filter(|b| b.service == s.service);
    let Some(reference) = &s.git.reference else {
        return match builds.next() {
            Some(newest) => Ok((newest.id, format!(", the newest build of {},", s.service))),
            None => {
                bail!("the store {} has no build of {}; run `ferry build` first", store.root().display(), s.service)
            }
        };
    };
    let commit = git::commit_of(&s.repo_dir, reference)
        .map_err(|e| anyhow::anyhow!("stage {} deploys ref {reference:?} (its `ref`): {e}", s.stage.name))?;
    match builds.find(|b| b.git_commit.as_deref() == Some(commit.as_str())) {
        Some(newest) => {
            Ok((newest.id, format!(", the newest build of {reference} (commit {}),", short_commit(&commit))))
        }
        None => bail!(
            "stage {} deploys ref {reference:?}, which names commit {} now, and the store {} has no build of that \
             commit; build it (`ferry build --git-ref {reference}`) or deploy it (`ferry deploy {0}`), or name a \
             release to push",
            s.stage.name,
            short_commit(&commit),
            store.root().display()
        ),
    }
}

/// A release as the push line shows it: `v1.1.0, commit 9c1e2d3, tag
/// v1.1.0, built 2026-12-06 04:10 UTC`, with what the store knows.
pub(super) fn describe(info: Option<&BundleInfo>) -> String {
    let Some(info) = info else { return "not in the store's records".into() };
    let mut parts = vec![info.version.clone().unwrap_or_else(|| "no version".into())];
    parts.extend(info.git_commit.as_deref().map(|c| format!("commit {}", short_commit(c))));
    parts.extend(info.git_tag.as_ref().map(|t| format!("tag {t}")));
    if info.built_at > 0 {
        parts.push(format!("built {}", utc_minutes(info.built_at)));
    }
    parts.join(", ")
}

/// The stage narrowed to the hosts out of the load balancer's rotation
/// (`push --out`), flipped in one batch: they take no traffic, and the
/// gates still run before the push ends.
fn out_of_rotation(s: &StageSettings, lb: &fleet::LoadBalancer) -> Result<fleet::Stage> {
    let out = fleet::lb::Lb::connect(lb, s.transport())?.out_of_rotation()?;
    let hosts: Vec<fleet::HostSpec> = s.stage.hosts.iter().filter(|h| out.contains(&h.name)).cloned().collect();
    if hosts.is_empty() {
        bail!(
            "no host of stage {} is out of the load balancer's rotation, so --out has nothing to push to; take a \
             group out first: `ferry lb {0} out <group>`",
            s.stage.name
        );
    }
    Ok(fleet::Stage { hosts, strategy: vec![fleet::Step::Percent(100)], ..s.stage.clone() })
}

pub fn rollback(settings: &Settings, s: &StageSettings, to: Option<&str>) -> Result<u8> {
    let to = to.map(|t| named_release(&settings.store, &s.service, t)).transpose()?;
    let observer = observer(settings, s.stage.hosts.len() as u64);
    let report = fleet::rollback(&s.stage, s.transport(), to.as_ref(), observer.as_ref());
    drop(observer);
    show(settings, &report?, Verb::Rollback)
}

/// The release of `service` that `name` names among the store's bundles
/// (`Store::find`), else a whole id: the hosts may keep a release the store
/// no longer has.
fn named_release(store: &Store, service: &str, name: &str) -> Result<ReleaseId> {
    match store.find(Some(service), name) {
        Err(StoreError::NoSuchRelease(_)) if name.parse::<ReleaseId>().is_ok() => Ok(name.parse()?),
        found => Ok(found?),
    }
}

pub fn status(settings: &Settings, s: &StageSettings) -> Result<u8> {
    let statuses = fleet::status(&s.stage, s.transport());
    let failed = statuses.iter().any(|(_, st)| st.is_err());
    // Hosts that drifted apart: on another release than most of the stage.
    let mut counts: std::collections::BTreeMap<Option<ReleaseId>, usize> = std::collections::BTreeMap::new();
    for (_, st) in &statuses {
        if let Ok(st) = st {
            *counts.entry(st.current).or_default() += 1;
        }
    }
    // The release more hosts run than any other, if one does (no mark on a tie).
    let top = counts.values().max().copied().unwrap_or(0);
    let usual = match counts.iter().filter(|(_, n)| **n == top).collect::<Vec<_>>()[..] {
        [(id, _)] => Some(*id),
        _ => None,
    };
    let drifted = |st: &ferry_switcher::host::Status| usual.is_some_and(|u| counts.len() > 1 && st.current != u);
    let known = Known::new(&settings.store);
    if settings.output.json {
        let hosts: Vec<_> = statuses
            .iter()
            .map(|(host, st)| match st {
                Ok(st) => serde_json::json!({
                    "host": host, "ok": true, "drifted": drifted(st), "status": st,
                    "current_release": known.json(st.current.as_ref()),
                    "previous_release": known.json(st.previous.as_ref()),
                }),
                Err(e) => serde_json::json!({"host": host, "ok": false, "error": error_chain(e)}),
            })
            .collect();
        output::json(&serde_json::json!({"stage": s.stage.name, "hosts": hosts}))?;
    } else {
        let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
        let w = statuses.iter().map(|(h, _)| h.len()).max().unwrap_or(4).max(4);
        let currents: Vec<ReleaseId> = statuses.iter().filter_map(|(_, st)| st.as_ref().ok()?.current).collect();
        let cols = known.widths(currents.iter().copied());
        output::line(&format!(
            "{:<w$}  {:<12}  {}  {:<12}  {:>4}  LOCK",
            "HOST",
            "CURRENT",
            Known::columns(["VERSION", "COMMIT", "TAG"].map(str::to_owned), cols),
            "PREVIOUS",
            "KEPT"
        ))?;
        for (host, st) in &statuses {
            match st {
                Ok(st) => {
                    output::line(&format!(
                        "{host:<w$}  {:<12}  {}  {:<12}  {:>4}  {}{}",
                        id(&st.current),
                        Known::columns(known.fields(st.current), cols),
                        id(&st.previous),
                        st.releases.len(),
                        st.lock.as_ref().map_or_else(|| "free".to_owned(), ToString::to_string),
                        if drifted(st) { "  (drifted: not on the release most hosts run)" } else { "" }
                    ))?;
                    for p in &st.programs {
                        output::line(&format!(
                            "{:<w$}    {:<20}  {:<9}  pid {:<7}  {}",
                            "", p.name, p.state, p.pid, p.description
                        ))?;
                    }
                    if !st.trusted_keys.is_empty() {
                        let current = st.releases.iter().find(|r| Some(r.id) == st.current);
                        let signed = match current.map(|r| r.signed_by.as_deref()) {
                            Some(Some(key)) => format!("; current signed by {key}"),
                            Some(None) => "; current unsigned (staged before the keys were pinned)".to_owned(),
                            None => String::new(),
                        };
                        output::line(&format!("{:<w$}    trusts keys {}{signed}", "", st.trusted_keys.join(", ")))?;
                    }
                }
                Err(e) => output::line(&format!("{host:<w$}  error: {}", error_chain(e)))?,
            }
        }
        if counts.len() > 1 {
            let most = match usual {
                Some(u) => format!("most run {}", id(&u)),
                None => "no one release runs on more hosts than the others".to_owned(),
            };
            eprintln!("the hosts of {} run {} different releases; {most}", s.stage.name, counts.len());
        }
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

pub fn history(settings: &Settings, s: &StageSettings) -> Result<u8> {
    let mut all: Vec<(String, Record)> = Vec::new();
    let mut failed = false;
    for (host, journal) in fleet::journals(&s.stage, s.transport()) {
        match journal {
            Ok(records) => all.extend(records.into_iter().map(|r| (host.clone(), r))),
            Err(e) => {
                eprintln!("{host}: cannot read its journal: {}", error_chain(&e));
                failed = true;
            }
        }
    }
    // RFC 3339 UTC with fixed precision sorts as text.
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    let known = Known::new(&settings.store);
    let cols = known.widths(all.iter().filter_map(|(_, r)| r.to));
    for (host, record) in &all {
        if settings.output.json {
            let mut v = serde_json::to_value(record)?;
            v["host"] = serde_json::Value::String(host.clone());
            v["to_release"] = known.json(record.to.as_ref());
            output::line(&v.to_string())?;
        } else {
            let to = Known::columns(known.fields(record.to), cols);
            output::line(&history_line(Some(host), record, Some(&to)))?;
        }
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

/// `ferry setup [--install]`: what each host did, a line each; with
/// `--install`, then what its init system got. Exit 1 when a host failed
/// either.
pub fn setup(settings: &Settings, s: &StageSettings, install: bool) -> Result<u8> {
    if s.stage.runtime.programs.is_empty() && s.stage.trusted_keys.is_empty() {
        bail!("ferry.toml has no [programs.<name>]: there is nothing to set up");
    }
    let results: Vec<(String, fleet::Answer<SetUp>, Option<fleet::Answer<Installed>>)> = if install {
        fleet::setup_install(&s.stage, s.transport())
    } else {
        fleet::setup(&s.stage, s.transport()).into_iter().map(|(host, r)| (host, r, None)).collect()
    };
    let failed = results.iter().any(|(_, r, i)| r.is_err() || i.as_ref().is_some_and(Result::is_err));
    let service = &s.stage.runtime.service;
    if settings.output.json {
        let hosts: Vec<_> = results
            .iter()
            .map(|(host, r, installed)| {
                let mut v = match r {
                    Ok(set_up) => serde_json::json!({"host": host, "ok": true, "did": set_up.did}),
                    Err(e) => serde_json::json!({"host": host, "ok": false, "error": error_chain(e)}),
                };
                match installed {
                    Some(Ok(i)) => {
                        v["install"] = serde_json::json!({
                            "ok": true, "init": i.init, "enabled_with": i.enabled_with, "path": i.path,
                            "already": i.did.is_empty(), "did": i.did, "now": i.now, "said": i.now_line(service),
                        });
                    }
                    Some(Err(e)) => {
                        v["ok"] = false.into();
                        v["install"] = serde_json::json!({"ok": false, "error": error_chain(e)});
                    }
                    None => {}
                }
                v
            })
            .collect();
        output::json(&serde_json::json!({"stage": s.stage.name, "ok": !failed, "hosts": hosts}))?;
    } else {
        for (host, r, installed) in &results {
            match r {
                Ok(set_up) if set_up.did.is_empty() => output::line(&format!("{host}: already set up"))?,
                Ok(set_up) => {
                    for line in &set_up.did {
                        output::line(&format!("{host}: {line}"))?;
                    }
                }
                Err(e) => output::line(&format!("{host}: FAILED: {}", error_chain(e)))?,
            }
            match installed {
                Some(Ok(i)) => {
                    if i.did.is_empty() {
                        output::line(&format!(
                            "{host}: already installed: {} ({}, enabled with {})",
                            i.path.display(),
                            i.init,
                            i.enabled_with
                        ))?;
                    }
                    for line in &i.did {
                        output::line(&format!("{host}: {line}"))?;
                    }
                    output::line(&format!("{host}: {}", i.now_line(service)))?;
                }
                Some(Err(e)) => output::line(&format!("{host}: FAILED to install: {}", error_chain(e)))?,
                None => {}
            }
        }
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

/// `ferry exec`: each host's output, its lines prefixed by the host, then
/// each host's exit code; 1 when it failed or could not run anywhere.
pub fn exec(settings: &Settings, s: &StageSettings, command: &str, timeout: std::time::Duration) -> Result<u8> {
    let runs = fleet::exec(&s.stage, s.transport(), command, timeout);
    let failed = runs.iter().any(|(_, r)| !r.as_ref().is_ok_and(ferry_switcher::host::runtime::HookRun::ok));
    if settings.output.json {
        let hosts: Vec<serde_json::Value> = runs
            .iter()
            .map(|(host, r)| match r {
                Ok(run) => serde_json::json!({
                    "host": host, "exit": run.exit, "timed_out": run.timed_out,
                    "seconds": run.seconds, "output": run.output,
                }),
                Err(e) => serde_json::json!({ "host": host, "error": error_chain(e) }),
            })
            .collect();
        output::json(&serde_json::json!({ "command": command, "ok": !failed, "hosts": hosts }))?;
    } else {
        for (host, r) in &runs {
            match r {
                Ok(run) => {
                    for line in run.output.lines() {
                        output::line(&format!("{host}: {line}"))?;
                    }
                    let how = match (run.exit, run.timed_out) {
                        (_, true) => format!("killed after its timeout ({} s)", timeout.as_secs()),
                        (Some(code), _) => format!("exit {code}"),
                        (None, _) => "killed by a signal".to_owned(),
                    };
                    eprintln!("{host}: {how} in {:.2}s", run.seconds);
                }
                Err(e) => eprintln!("{host}: could not run: {}", error_chain(e)),
            }
        }
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

pub fn logs(settings: &Settings, s: &StageSettings, args: &crate::settings::LogsSettings) -> Result<u8> {
    let failed = std::sync::atomic::AtomicBool::new(false);
    let json = settings.output.json;
    let print = |host: &str, chunk: Result<&ferry_switcher::host::runtime::LogChunk, HostError>| -> bool {
        let written = match chunk {
            Ok(c) if json => {
                output::line(&serde_json::json!({"host": host, "process": c.process, "text": c.text}).to_string())
            }
            Ok(c) => c.text.lines().try_for_each(|l| output::line(&format!("{host} {}: {l}", c.process))),
            Err(e) => {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                eprintln!("{host}: cannot read the logs: {}", error_chain(&e));
                Ok(())
            }
        };
        // A closed pipe (`ferry logs … | head`) ends the follow.
        written.is_ok()
    };
    fleet::logs(&s.stage, s.transport(), args.program.as_deref(), args.bytes, args.follow, &print);
    Ok(if failed.into_inner() { exit::HOSTS_FAILED } else { exit::OK })
}

/// What the store knows of the releases a stage's hosts name: version,
/// commit and tag, looked up once each.
struct Known<'a> {
    store: &'a Store,
    seen: std::cell::RefCell<std::collections::HashMap<ReleaseId, Option<BundleInfo>>>,
}

impl<'a> Known<'a> {
    fn new(store: &'a Store) -> Self {
        Self { store, seen: Default::default() }
    }

    fn info(&self, id: &ReleaseId) -> Option<BundleInfo> {
        self.seen.borrow_mut().entry(*id).or_insert_with(|| self.store.info(id).ok()).clone()
    }

    /// Version, short commit and tag, "-" for what the store does not know.
    fn fields(&self, id: Option<ReleaseId>) -> [String; 3] {
        let info = id.and_then(|id| self.info(&id));
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        [
            dash(info.as_ref().and_then(|i| i.version.clone())),
            dash(info.as_ref().and_then(|i| i.git_commit.as_deref().map(short_commit))),
            dash(info.as_ref().and_then(|i| i.git_tag.clone())),
        ]
    }

    /// The widths of the three columns over `ids`, at least their headers'.
    fn widths(&self, ids: impl Iterator<Item = ReleaseId>) -> [usize; 3] {
        let mut w = [7, 7, 3];
        for id in ids {
            for (w, f) in w.iter_mut().zip(self.fields(Some(id))) {
                *w = (*w).max(f.chars().count());
            }
        }
        w
    }

    fn columns(fields: [String; 3], w: [usize; 3]) -> String {
        format!("{:<a$}  {:<b$}  {:<c$}", fields[0], fields[1], fields[2], a = w[0], b = w[1], c = w[2])
    }

    /// For --json: version, git_commit (whole), git_tag, built_at, or null
    /// when the store does not know the release.
    fn json(&self, id: Option<&ReleaseId>) -> serde_json::Value {
        match id.and_then(|id| self.info(id)) {
            Some(i) => serde_json::json!({
                "version": i.version, "git_commit": i.git_commit, "git_tag": i.git_tag, "built_at": i.built_at,
            }),
            None => serde_json::Value::Null,
        }
    }
}

/// One journal record as a line of text; `to`: what the store says of the
/// release it went to, beside its id.
pub fn history_line(host: Option<&str>, r: &Record, to: Option<&str>) -> String {
    let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
    let mut line = format!("{}  ", r.time);
    if let Some(host) = host {
        line.push_str(&format!("{host:<12}  "));
    }
    let result = if r.result == JournalOutcome::Ok { "ok" } else { "FAILED" };
    line.push_str(&format!(
        "{:<8}  {:<12} -> {:<12}  {}{result:<6}  {}",
        format!("{:?}", r.action).to_lowercase(),
        id(&r.from),
        id(&r.to),
        to.map(|t| format!("{t}  ")).unwrap_or_default(),
        r.user
    ));
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  ({reason})"));
    }
    line
}
