//! The commands on a stage's hosts: `push`, `rollback`, `status`,
//! `history`, `setup`, `logs`, through the stage's transport, with the
//! store as the release source. How a push's report shows is `report.rs`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ferry_builder::store::MIN_PREFIX;
use ferry_builder::{delta, BundleInfo, Store};
use ferry_formats::journal::{Outcome as JournalOutcome, Record};
use ferry_formats::signature::Signature;
use ferry_formats::{ComponentKind, ReleaseId};
use ferry_switcher::fleet::{self, Local, ReleaseSource, SourceError, Transport};
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

/// The store, as the fleet sees it.
struct StoreSource<'a>(&'a Store);

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
}

pub fn push(settings: &Settings, s: &StageSettings, id: Option<&str>) -> Result<u8> {
    let release = match id {
        Some(prefix) => settings.store.resolve(prefix)?,
        None => match settings.store.list()?.into_iter().find(|b| b.service == s.service) {
            Some(newest) => newest.id,
            None => bail!(
                "the store {} has no build of {}; run `ferry build` first",
                settings.store.root().display(),
                s.service
            ),
        },
    };
    Ok(push_release(settings, s, &release, Verb::Push)?.0)
}

/// Pushes `release` (in the store) to the stage; the exit code and the
/// report (`ferry push` and `ferry deploy`).
pub(super) fn push_release(
    settings: &Settings,
    s: &StageSettings,
    release: &ReleaseId,
    verb: Verb,
) -> Result<(u8, fleet::Report)> {
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
    if !settings.output.json && !settings.output.quiet {
        eprintln!(
            "pushing {} ({}) to {} of {}",
            release.short(12),
            head.meta.version.as_deref().unwrap_or("no version"),
            crate::config::plural(s.stage.hosts.len(), "host"),
            s.stage.name
        );
    }
    let out_only;
    let stage = match &s.stage.load_balancer {
        Some(lb) if s.stage.out_of_rotation => {
            out_only = out_of_rotation(s, lb)?;
            &out_only
        }
        _ => &s.stage,
    };
    let hosts = stage.hosts.len() as u64;
    let observer = observer(settings, 2 * hosts);
    let report = fleet::push(stage, s.transport(), &StoreSource(&settings.store), &release, observer.as_ref());
    drop(observer);
    if let Some(lb) = report.load_balancer.as_ref().filter(|lb| !lb.left_out.is_empty()) {
        super::lb::left_out(s, &lb.left_out)?;
    }
    Ok((show(settings, &report, verb)?, report))
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

/// The release of `service` that `name` names: a unique id prefix or an
/// exact version label among the store's bundles of it, else a whole id
/// (the hosts may keep a release the store no longer has).
fn named_release(store: &Store, service: &str, name: &str) -> Result<ReleaseId> {
    let bundles: Vec<BundleInfo> = store.list()?.into_iter().filter(|b| b.service == service).collect();
    let hex = name.len() >= MIN_PREFIX && name.bytes().all(|b| b.is_ascii_hexdigit());
    let prefix = name.to_ascii_lowercase();
    let matches: Vec<&BundleInfo> = bundles
        .iter()
        .filter(|b| (hex && b.id.to_hex().starts_with(&prefix)) || b.version.as_deref() == Some(name))
        .collect();
    let shown = |b: &&BundleInfo| format!("{} ({})", b.id.short(12), b.version.as_deref().unwrap_or("no version"));
    match matches[..] {
        [one] => Ok(one.id),
        [] => match name.parse::<ReleaseId>() {
            Ok(id) => Ok(id),
            Err(_) => {
                let known: Vec<String> = bundles.iter().take(10).map(|b| shown(&b)).collect();
                bail!(
                    "no release of {service} in the store {} has the id prefix or version {name:?} ({}); \
                     name one of them, or a whole 64-digit id",
                    store.root().display(),
                    if known.is_empty() { "it has none".to_owned() } else { format!("it has: {}", known.join(", ")) }
                )
            }
        },
        _ => {
            let which: Vec<String> = matches.iter().map(shown).collect();
            bail!(
                "{name:?} names {} releases of {service}: {}; give more digits of the id",
                which.len(),
                which.join(", ")
            )
        }
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
    if settings.output.json {
        let hosts: Vec<_> = statuses
            .iter()
            .map(|(host, st)| match st {
                Ok(st) => serde_json::json!({"host": host, "ok": true, "drifted": drifted(st), "status": st}),
                Err(e) => serde_json::json!({"host": host, "ok": false, "error": error_chain(e)}),
            })
            .collect();
        output::json(&serde_json::json!({"stage": s.stage.name, "hosts": hosts}))?;
    } else {
        let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
        let w = statuses.iter().map(|(h, _)| h.len()).max().unwrap_or(4).max(4);
        output::line(&format!("{:<w$}  {:<12}  {:<12}  {:>4}  LOCK", "HOST", "CURRENT", "PREVIOUS", "KEPT"))?;
        for (host, st) in &statuses {
            match st {
                Ok(st) => {
                    output::line(&format!(
                        "{host:<w$}  {:<12}  {:<12}  {:>4}  {}{}",
                        id(&st.current),
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
    for (host, record) in &all {
        if settings.output.json {
            let mut v = serde_json::to_value(record)?;
            v["host"] = serde_json::Value::String(host.clone());
            output::line(&v.to_string())?;
        } else {
            output::line(&history_line(Some(host), record))?;
        }
    }
    Ok(if failed { exit::HOSTS_FAILED } else { exit::OK })
}

pub fn setup(settings: &Settings, s: &StageSettings) -> Result<u8> {
    if s.stage.runtime.programs.is_empty() {
        bail!("ferry.toml has no [programs.<name>]: there is nothing to set up");
    }
    let results = fleet::setup(&s.stage, s.transport());
    let failed = results.iter().any(|(_, r)| r.is_err());
    if settings.output.json {
        let hosts: Vec<_> = results
            .iter()
            .map(|(host, r)| match r {
                Ok(set_up) => serde_json::json!({"host": host, "ok": true, "did": set_up.did}),
                Err(e) => serde_json::json!({"host": host, "ok": false, "error": error_chain(e)}),
            })
            .collect();
        output::json(&serde_json::json!({"stage": s.stage.name, "ok": !failed, "hosts": hosts}))?;
    } else {
        for (host, r) in &results {
            match r {
                Ok(set_up) if set_up.did.is_empty() => output::line(&format!("{host}: already set up"))?,
                Ok(set_up) => {
                    for line in &set_up.did {
                        output::line(&format!("{host}: {line}"))?;
                    }
                }
                Err(e) => output::line(&format!("{host}: FAILED: {}", error_chain(e)))?,
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

/// One journal record as a line of text.
pub fn history_line(host: Option<&str>, r: &Record) -> String {
    let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
    let mut line = format!("{}  ", r.time);
    if let Some(host) = host {
        line.push_str(&format!("{host:<12}  "));
    }
    let result = if r.result == JournalOutcome::Ok { "ok" } else { "FAILED" };
    line.push_str(&format!(
        "{:<8}  {:<12} -> {:<12}  {result:<6}  {}",
        format!("{:?}", r.action).to_lowercase(),
        id(&r.from),
        id(&r.to),
        r.user
    ));
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  ({reason})"));
    }
    line
}
