//! `ferry push`, `ferry rollback`, `ferry status`, `ferry history`: a stage's
//! hosts, through the local transport.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ferry_builder::store::MIN_PREFIX;
use ferry_builder::{delta, BundleInfo, Store};
use ferry_formats::journal::{Outcome as JournalOutcome, Record};
use ferry_formats::signature::Signature;
use ferry_formats::{ComponentKind, ReleaseId};
use ferry_switcher::fleet::{
    self, Event, EventKind, HostStep, Local, Observer, Outcome, ReleaseSource, Report, SourceError, Transport,
};
use ferry_switcher::host::{error_chain, HostError};

use crate::exit;
use crate::output;
use crate::settings::{Settings, StageSettings};

impl StageSettings {
    /// How this stage's hosts are reached.
    fn transport(&self) -> &dyn Transport {
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

/// One host step as a line: what happened, not why it failed: the why is
/// printed once, after the report (see [`show`]).
fn step_line(e: &Event<'_>) -> String {
    let detail = if e.kind == EventKind::Failed { "failed" } else { e.detail };
    format!("  {:<12} {:<11} {detail}", e.host, e.label)
}

/// Progress lines on stderr, one per step of each host.
struct Lines;

impl Observer for Lines {
    fn event(&self, e: &Event<'_>) {
        eprintln!("{}", step_line(e));
    }
}

/// On a terminal: each step's line above one bar over every host step
/// (staged, flipped, rolled back). The lines are printed whole, wrapping
/// if need be; only the bar's own message is cut to the terminal's width.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(steps: u64) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(Some(steps), indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} host steps  {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Self(bar)
    }
}

impl Observer for Bar {
    fn event(&self, e: &Event<'_>) {
        self.0.println(step_line(e));
        if e.kind == EventKind::Done {
            self.0.inc(1);
        }
        self.0.set_message(format!("{}: {}", e.host, e.label));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// How a fleet command shows progress: nothing with --json or --quiet, a
/// bar under the step lines on a terminal, else the step lines.
fn observer(settings: &Settings, steps: u64) -> Box<dyn Observer> {
    if settings.output.json || settings.output.quiet {
        Box::new(fleet::Quiet)
    } else if settings.output.progress {
        Box::new(Bar::new(steps))
    } else {
        Box::new(Lines)
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
            plural(s.stage.hosts.len(), "host"),
            s.stage.name
        );
    }
    let hosts = s.stage.hosts.len() as u64;
    let observer = observer(settings, 2 * hosts);
    let report = fleet::push(&s.stage, s.transport(), &StoreSource(&settings.store), &release, observer.as_ref());
    drop(observer);
    show(settings, &report, Verb::Push)
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

/// Which command a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Push,
    Rollback,
}

/// Prints the report and returns the exit code: 0 all ok, 1 some hosts
/// failed, 2 nothing could start (no host staged or flipped anything).
///
/// Each error is said once: the one that stopped the command (the failed
/// gate's evidence, else the first failed host's) in the last line, every
/// other host's own above it. Step lines and the table only say "failed".
/// With --quiet, only those lines, the warnings and the last line.
fn show(settings: &Settings, report: &Report, verb: Verb) -> Result<u8> {
    let started = report.started();
    let code = if report.ok {
        exit::OK
    } else if started {
        exit::HOSTS_FAILED
    } else {
        exit::FATAL
    };
    if settings.output.json {
        output::json(&serde_json::to_value(report)?)?;
        return Ok(code);
    }
    let quiet = settings.output.quiet;
    let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
    if !quiet {
        table(report)?;
    }
    let cause = (!report.ok).then(|| cause(report));
    for line in host_lines(report, cause.as_ref().and_then(|c| c.1), quiet) {
        eprintln!("{line}");
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let hosts = plural(report.hosts.len(), "host");
    let last = match (cause, verb) {
        (Some((why, _)), _) => {
            let back = report.hosts.iter().filter(|h| h.result == Outcome::Reverted).count();
            let back = match back {
                0 => String::new(),
                1 => "; the 1 host this push flipped went back".to_owned(),
                n => format!("; the {n} hosts this push flipped went back"),
            };
            let what = if verb == Verb::Push { "push" } else { "rollback" };
            format!("{what} failed: {why}{back}")
        }
        (None, Verb::Push) => {
            let batches: Vec<String> = report.batches.iter().map(|b| b.join(", ")).collect();
            let shipped: u64 = report.hosts.iter().map(|h| h.bytes).sum();
            let current = report.hosts.iter().filter(|h| h.step == HostStep::Current).count();
            format!(
                "pushed {} to {hosts} of {} in {:.2}s{}{}; shipped {}",
                id(&report.release),
                report.stage,
                report.seconds,
                if batches.is_empty() { String::new() } else { format!(" (batches: {})", batches.join(" | ")) },
                if current == 0 { String::new() } else { format!(", {current} already current") },
                output::bytes(shipped)
            )
        }
        (None, Verb::Rollback) => {
            format!("rolled {hosts} of {} back to {} in {:.2}s", report.stage, id(&report.release), report.seconds)
        }
    };
    eprintln!("{last}");
    Ok(code)
}

/// The table of hosts, on stdout.
fn table(report: &Report) -> Result<()> {
    let id = |i: &Option<ReleaseId>| i.map_or_else(|| "-".to_owned(), |i| i.short(12));
    let w = report.hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(12);
    output::line(&format!(
        "{:<w$}  {:<12}  {:<12}  {:<9}  {:<8}  {:>7}  {:<7}  {:>10}",
        "HOST", "FROM", "TO", "STEP", "RESULT", "SECONDS", "SHIPPED", "BYTES"
    ))?;
    for h in &report.hosts {
        let result = serde_json::to_value(h.result)?.as_str().unwrap_or("?").to_owned();
        output::line(&format!(
            "{:<w$}  {:<12}  {:<12}  {:<9}  {:<8}  {:>7.2}  {:<7}  {:>10}",
            h.host,
            id(&h.from),
            id(&h.to),
            h.step,
            result,
            h.seconds,
            h.shipped,
            output::bytes(h.bytes)
        ))?;
    }
    Ok(())
}

/// Why a command failed, and the host whose error that is (its own line
/// would say it again): the failed gate's evidence, else the first failed
/// host's step and error.
fn cause(report: &Report) -> (String, Option<usize>) {
    if let Some(gate) = &report.gate {
        return (gate.clone(), None);
    }
    let failed = report.hosts.iter().position(|h| h.result == Outcome::Failed && h.error.is_some());
    match failed.or_else(|| report.hosts.iter().position(|h| h.error.is_some())) {
        Some(i) => {
            let h = &report.hosts[i];
            // As every other host's error line reads.
            (format!("{}: {} failed: {}", h.host, h.step, h.error.as_deref().unwrap_or_default()), Some(i))
        }
        None => {
            let bad = report.hosts.iter().filter(|h| h.result != Outcome::Ok).count();
            (
                format!(
                    "{} of {} did not end ok; `ferry status {}` shows where they are",
                    plural(bad, "host"),
                    report.stage,
                    report.stage
                ),
                None,
            )
        }
    }
}

/// The lines after the table, host by host: errors (but the cause's, and
/// a gate's evidence, which the last line says), warnings, programs that
/// were down before the push, and (not with `quiet`) the hooks' output.
fn host_lines(report: &Report, cause: Option<usize>, quiet: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, h) in report.hosts.iter().enumerate() {
        let Some(error) = h.error.as_deref().filter(|_| Some(i) != cause) else { continue };
        // A host of the failed batch carries the gate's evidence: only what
        // it adds is its own.
        let own = match &report.gate {
            Some(gate) => error.strip_prefix(gate.as_str()).map_or(error, |rest| rest.trim_start_matches("; ")),
            None => error,
        };
        if own.is_empty() {
            continue;
        }
        if h.result == Outcome::Reverted {
            lines.push(format!("{}: flipped back: {own}", h.host));
        } else if own.starts_with("flipped back") {
            lines.push(format!("{}: {own}", h.host));
        } else {
            lines.push(format!("{}: {} failed: {own}", h.host, h.step));
        }
    }
    lines.extend(report.hosts.iter().filter_map(|h| h.warning.as_ref().map(|w| format!("{}: warning: {w}", h.host))));
    lines.extend(report.hosts.iter().filter(|h| !h.down_before.is_empty()).map(down_before));
    for h in report.hosts.iter().filter(|_| !quiet) {
        for run in &h.hooks {
            let how = run.exit.map_or_else(|| "killed".to_owned(), |c| format!("exit {c}"));
            lines.push(format!("{}: hook {} ({how}, {:.2}s)", h.host, run.name, run.seconds));
            lines.extend(run.output.lines().map(|l| format!("{}:   | {l}", h.host)));
        }
    }
    lines
}

/// `web2: was down before the push: web FATAL (Exited too quickly); its
/// last output: …`: a revert takes such a host back to a release that did
/// not run either.
fn down_before(h: &fleet::HostReport) -> String {
    let each: Vec<String> = h
        .down_before
        .iter()
        .map(|d| {
            let mut s = format!("{} {}", d.process, d.state);
            if !d.description.trim().is_empty() {
                s.push_str(&format!(" ({})", d.description.trim()));
            }
            let output: Vec<&str> = d.output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if !output.is_empty() {
                s.push_str(&format!("; its last output: {}", output.join(" / ")));
            }
            s
        })
        .collect();
    format!("{}: was down before the push: {}", h.host, each.join("; "))
}

/// `1 host`, `2 hosts`.
fn plural(n: usize, what: &str) -> String {
    crate::config::plural(n, what)
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

#[cfg(test)]
mod tests {
    use ferry_switcher::fleet::{Down, HostReport, HostStep, Outcome, Shipped};

    /// The switcher fills `down_before`; the controller's local fleet has no
    /// programs to find down, so its line is checked here.
    #[test]
    fn a_program_down_before_the_push_gets_one_line_for_its_host() {
        let down = |process: &str, state: &str, description: &str, output: &str| Down {
            process: process.into(),
            state: state.into(),
            description: description.into(),
            output: output.into(),
        };
        let host = HostReport {
            host: "web2".into(),
            from: None,
            to: None,
            step: HostStep::Current,
            result: Outcome::Ok,
            shipped: Shipped::None,
            bytes: 0,
            seconds: 0.0,
            batch: None,
            staged: true,
            warning: None,
            error: None,
            hooks: Vec::new(),
            down_before: vec![
                down("web", "FATAL", "Exited too quickly (process log may have details)", "boot\nImportError: x\n"),
                down("worker:worker_00", "STOPPED", "", ""),
            ],
        };
        assert_eq!(
            super::down_before(&host),
            "web2: was down before the push: web FATAL (Exited too quickly (process log may have details)); \
             its last output: boot / ImportError: x; worker:worker_00 STOPPED"
        );
    }
}
