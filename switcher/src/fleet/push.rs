//! `ferry push`, `ferry rollback` and `ferry status` over a stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use ferry_formats::journal::Record;
use ferry_formats::ReleaseId;
use fs_err as fs;
use rayon::prelude::*;
use serde::Serialize;

use super::gates::{self, AnsweredBy, Gate};
use super::{batches, HostSpec, Observer, OnFailure, ReleaseSource, Session, Stage, Transport};
use crate::host::runtime::HookRun;
use crate::host::{error_chain, HostError, Status};

/// How one host fared.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub from: Option<ReleaseId>,
    pub to: Option<ReleaseId>,
    /// The last step reached: connect, stage, activate, revert, prune, rollback.
    pub step: String,
    pub result: Outcome,
    /// What was shipped: "delta", "bundle", or "none" (already staged).
    pub shipped: String,
    pub bytes: u64,
    pub seconds: f64,
    /// The batch it was flipped in (1-based), if any.
    pub batch: Option<usize>,
    /// It has the release staged (shipped now, or already there).
    pub staged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hooks run on it, with their output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRun>,
    /// The programs' processes that were not running when the push found
    /// the host, before anything flipped: a revert takes such a host back
    /// to a release that was down, not to one that worked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub down_before: Vec<Down>,
}

/// A program's process found not running.
#[derive(Debug, Clone, Serialize)]
pub struct Down {
    /// `program` or `group:process`.
    pub process: String,
    /// supervisord's state: STOPPED, EXITED, FATAL, BACKOFF…
    pub state: String,
    pub description: String,
    /// Its last lines of output (stderr, then stdout).
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// Flipped in this push and flipped back after another host failed.
    Reverted,
    /// Never reached: the push stopped first.
    Skipped,
}

/// The end of a push or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stage: String,
    pub release: Option<ReleaseId>,
    pub ok: bool,
    /// The hosts of each batch, in order.
    pub batches: Vec<Vec<String>>,
    pub hosts: Vec<HostReport>,
    pub seconds: f64,
    /// Wall time of each phase, in seconds: connect (with locks), stage,
    /// setup, migrate, activate (every batch, with its gates), revert,
    /// cleanup; a phase not reached is absent.
    pub phases: BTreeMap<String, f64>,
    /// The health gate that failed, and its evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// What ferry could not check, said once for the whole push.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Wall time per phase of a push.
struct Phases {
    mark: Instant,
    seconds: BTreeMap<String, f64>,
}

impl Phases {
    fn new() -> Self {
        Self { mark: Instant::now(), seconds: BTreeMap::new() }
    }

    fn done(&mut self, phase: &str) {
        self.seconds.insert(phase.to_owned(), self.mark.elapsed().as_secs_f64());
        self.mark = Instant::now();
    }
}

impl Report {
    fn with(mut self, phases: Phases) -> Self {
        self.phases = phases.seconds;
        self
    }
}

/// Closes every session at once, each on a thread of its own (closing is
/// waiting, not work): a host gone quiet takes its close timeout, not
/// everyone's in turn, and the others' locks go now.
fn close(slots: &mut [Slot]) {
    std::thread::scope(|scope| {
        for session in slots.iter_mut().filter_map(|s| s.session.take()) {
            scope.spawn(move || drop(session));
        }
    });
}

struct Slot {
    spec: HostSpec,
    session: Option<Box<dyn Session>>,
    report: HostReport,
    started: Instant,
    /// This push flipped it (a revert flips it back).
    flipped: bool,
}

impl Slot {
    /// Adds a warning to the host's line (after any it has).
    fn warn(&mut self, warning: impl Into<String>) {
        let warning = warning.into();
        self.report.warning = Some(match self.report.warning.take() {
            Some(before) => format!("{before}; {warning}"),
            None => warning,
        });
    }

    /// It runs the release already, and the push leaves it as it is.
    fn already(&self, release: &ReleaseId, stage: &Stage) -> bool {
        !stage.force && self.report.from == Some(*release)
    }

    fn fail(&mut self, step: &str, e: &dyn std::error::Error) {
        self.report.step = step.into();
        self.report.result = Outcome::Failed;
        self.report.error = Some(error_chain(e));
    }
}

fn pool(max_parallel: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(max_parallel.max(1)).build().expect("a thread pool")
}

/// Connects to every host of the stage in parallel, with its lock when
/// `lock` names the command.
fn connect(stage: &Stage, transport: &dyn Transport, lock: Option<&str>, observer: &dyn Observer) -> Vec<Slot> {
    connect_then(stage, transport, lock, observer, |_| {})
}

/// [`connect`], with `then` run on each host as soon as it is connected
/// (so one slow host holds up no one else's first step).
fn connect_then(
    stage: &Stage,
    transport: &dyn Transport,
    lock: Option<&str>,
    observer: &dyn Observer,
    then: impl Fn(&mut Slot) + Sync,
) -> Vec<Slot> {
    let mut slots: Vec<Slot> = stage
        .hosts
        .iter()
        .map(|spec| Slot {
            spec: spec.clone(),
            session: None,
            report: HostReport {
                host: spec.name.clone(),
                from: None,
                to: None,
                step: "connect".into(),
                result: Outcome::Skipped,
                shipped: "none".into(),
                bytes: 0,
                seconds: 0.0,
                batch: None,
                staged: false,
                warning: None,
                error: None,
                hooks: Vec::new(),
                down_before: Vec::new(),
            },
            started: Instant::now(),
            flipped: false,
        })
        .collect();
    pool(stage.max_parallel).install(|| {
        slots.par_iter_mut().for_each(|slot| match transport.connect(&slot.spec, lock) {
            Ok(session) => {
                slot.session = Some(session);
                then(slot);
            }
            Err(e) => {
                observer.event(&slot.spec.name, "connect", &format!("failed: {}", error_chain(&e)));
                slot.fail("connect", &e);
            }
        });
    });
    slots
}

fn finish(
    stage: &Stage,
    release: Option<ReleaseId>,
    slots: Vec<Slot>,
    batches: Vec<Vec<String>>,
    start: Instant,
) -> Report {
    let mut slots = slots;
    close(&mut slots);
    let hosts: Vec<HostReport> = slots
        .into_iter()
        .map(|mut s| {
            s.report.seconds = s.started.elapsed().as_secs_f64();
            s.report
        })
        .collect();
    let ok = hosts.iter().all(|h| h.result == Outcome::Ok);
    Report {
        stage: stage.name.clone(),
        release,
        ok,
        batches,
        hosts,
        seconds: start.elapsed().as_secs_f64(),
        phases: BTreeMap::new(),
        gate: None,
        notes: Vec::new(),
    }
}

/// Pushes `release` to every host of `stage`: stage everywhere, then flip
/// batch by batch; on a failure, stop and (by the stage's policy) flip back
/// the hosts this push flipped.
pub fn push(
    stage: &Stage,
    transport: &dyn Transport,
    source: &dyn ReleaseSource,
    release: &ReleaseId,
    observer: &dyn Observer,
) -> Report {
    let start = Instant::now();
    let command = format!("ferry push {} {}", stage.name, release.short(12));
    let mut phases = Phases::new();
    // What each host has, and so what it needs: asked as each connects.
    let mut slots = connect_then(stage, transport, Some(&command), observer, |slot| {
        slot.report.step = "status".into();
        slot.report.to = Some(*release);
        let session = slot.session.as_mut().expect("connected");
        let status = match session.status() {
            Ok(status) => status,
            Err(e) => return slot.fail("status", &e),
        };
        // Look before leaping: programs already down are the host's news
        // before anything flips, not after.
        let mut down = down(session.as_mut(), &status.programs);
        if let Some(why) = &status.supervisord_down {
            down.push(Down {
                process: "supervisord".into(),
                state: "NOT RUNNING".into(),
                description: why.clone(),
                output: String::new(),
            });
        }
        slot.report.from = status.current;
        if status.releases.iter().any(|r| r.id == *release) {
            slot.report.shipped = "none".into();
        }
        if let Some(gone) = status.current.filter(|c| !status.releases.iter().any(|r| r.id == *c)) {
            let said = format!(
                "its current release {} is not on disk (removed by hand?): it gets the whole bundle, and cannot \
                 go back to {0} if the push fails",
                gone.short(12)
            );
            observer.event(&slot.spec.name, "status", &said);
            slot.warn(said);
        }
        if !down.is_empty() {
            let said: Vec<String> =
                down.iter().map(|d| format!("{} {} ({})", d.process, d.state, d.description)).collect();
            // Said now, as it is found; the report carries it as `down_before`.
            observer.event(&slot.spec.name, "programs", &format!("was down before the push: {}", said.join(", ")));
            slot.report.down_before = down;
        }
    });
    phases.done("connect");
    if slots.iter().any(|s| s.session.is_none() || s.report.result == Outcome::Failed) {
        // Nothing has changed anywhere yet: stop before staging.
        return finish(stage, Some(*release), slots, Vec::new(), start).with(phases);
    }
    let pool = pool(stage.max_parallel);

    // One delta per distinct base, made once, before any host is staged.
    let mut payloads: BTreeMap<Option<ReleaseId>, Result<Payload, String>> = BTreeMap::new();
    for slot in &slots {
        let base = slot.report.from.filter(|b| b != release);
        payloads.entry(base).or_insert_with(|| payload(source, base, release));
    }

    // Stage everywhere. Hosts on the same unknown release sign it the same:
    // one at a time asks for the rsync delta, so it is encoded once and the
    // others find it made.
    let one_rsync = std::sync::Mutex::new(());
    pool.install(|| {
        slots.par_iter_mut().for_each(|slot| {
            slot.report.step = "stage".into();
            let base = slot.report.from.filter(|b| b != release);
            let session = slot.session.as_mut().expect("connected");
            let payload = match &payloads[&base] {
                Ok(Payload::File(path, kind)) => Ok((path.clone(), *kind)),
                // The store does not know what this host runs: it signs its
                // files and gets an rsync delta against them.
                Ok(Payload::Unknown) => session
                    .signature()
                    .map_err(|e| format!("cannot sign the host's files: {}", error_chain(&e)))
                    .and_then(|sig| {
                        let _one = one_rsync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        source.rsync_delta(&sig, release).map_err(|e| format!("cannot make the rsync delta: {e}"))
                    })
                    .map(|path| (path, "rsync")),
                Err(e) => Err(e.clone()),
            };
            let (path, kind) = match payload {
                Ok(p) => p,
                Err(e) => {
                    slot.report.result = Outcome::Failed;
                    slot.report.error = Some(e);
                    return;
                }
            };
            observer.event(&slot.spec.name, "stage", kind);
            let size = |p: &PathBuf| fs::metadata(p).map_or(0, |m| m.len());
            let mut staged = session.stage(&path, &stage.options);
            if let (Err(e), "delta" | "rsync") = (&staged, kind) {
                // A host that cannot apply its delta (a base file it changed,
                // one given over to shared/) can still take the whole bundle.
                observer.event(
                    &slot.spec.name,
                    "stage",
                    &format!("{kind} refused ({}); sending the bundle", error_chain(e)),
                );
                slot.report.bytes += size(&path);
                match source.bundle(release) {
                    Ok(bundle) => {
                        staged = session.stage(&bundle, &stage.options);
                        if staged.is_ok() {
                            slot.report.shipped = "bundle".into();
                            slot.report.bytes += size(&bundle);
                        }
                    }
                    Err(b) => {
                        staged =
                            Err(HostError::Input(format!("{}; and no bundle to send instead: {b}", error_chain(e))));
                    }
                }
            } else if let Ok(s) = &staged {
                if !s.already {
                    slot.report.shipped = kind.into();
                    slot.report.bytes = size(&path);
                }
            }
            match staged {
                Ok(staged) => {
                    slot.report.staged = true;
                    observer.event(&slot.spec.name, "staged", &format!("{:.2}s", staged.elapsed.as_secs_f64()));
                }
                Err(e) => {
                    observer.event(&slot.spec.name, "stage", &format!("failed: {}", error_chain(&e)));
                    slot.fail("stage", &e);
                }
            }
        });
    });
    if slots.iter().any(|s| s.report.result == Outcome::Failed) {
        return finish(stage, Some(*release), slots, Vec::new(), start).with(phases);
    }

    phases.done("stage");
    let rt = &stage.runtime;
    let plan = batches(slots.len(), &stage.strategy);
    let names: Vec<Vec<String>> =
        plan.iter().map(|r| slots[r.clone()].iter().map(|s| s.spec.name.clone()).collect()).collect();

    // The programs' supervisord on every host, before any flip.
    if !rt.programs.is_empty() {
        pool.install(|| {
            slots.par_iter_mut().for_each(|slot| {
                slot.report.step = "setup".into();
                let programs = rt.programs_for(&slot.spec.name);
                match slot.session.as_mut().expect("connected").setup(&rt.service, &programs) {
                    Ok(did) if did.is_empty() => {}
                    Ok(did) => {
                        observer.event(&slot.spec.name, "setup", &did.join("; "));
                        if did.iter().any(|d| d == crate::host::runtime::NOT_RUNNING) {
                            slot.warn(crate::host::runtime::NOT_RUNNING);
                        }
                    }
                    Err(e) => {
                        observer.event(&slot.spec.name, "setup", &format!("failed: {}", error_chain(&e)));
                        slot.fail("setup", &e);
                    }
                }
            });
        });
        if slots.iter().any(|s| s.report.result == Outcome::Failed) {
            return finish(stage, Some(*release), slots, Vec::new(), start).with(phases);
        }
        phases.done("setup");
    }

    // Migrations: once, on one host, from the new release, before any flip
    // (none when every host runs it already: nothing is new).
    let anything_new = slots.iter().any(|s| !s.already(release, stage));
    if let Some(command) = rt.hooks.migrate.as_ref().filter(|_| anything_new) {
        let on = rt.hooks.migrate_on.as_ref().and_then(|h| slots.iter().position(|s| &s.spec.name == h));
        let slot = &mut slots[on.unwrap_or(plan.first().map_or(0, |r| r.start))];
        observer.event(&slot.spec.name, "migrate", command);
        if !run_hook(slot, release, "migrate", command, rt.hooks.timeout) {
            observer.event(&slot.spec.name, "migrate", "failed");
            return finish(stage, Some(*release), slots, Vec::new(), start).with(phases);
        }
        phases.done("migrate");
    }

    // Activate batch by batch; each batch's gates before the next.
    let mut failed: Option<String> = None;
    let mut gate_failed = None;
    for (n, range) in plan.iter().enumerate() {
        pool.install(|| {
            slots[range.clone()].par_iter_mut().for_each(|slot| {
                slot.report.batch = Some(n + 1);
                activate_one(slot, release, stage, observer, n);
            });
        });
        if let Some(bad) = slots[range.clone()].iter().find(|s| s.report.result == Outcome::Failed) {
            failed = Some(format!(
                "{} failed at {}: {}",
                bad.spec.name,
                bad.report.step,
                bad.report.error.as_deref().unwrap_or("unknown")
            ));
            break;
        }
        if let Err(evidence) = check_gates(stage, &mut slots, range.clone(), release, observer) {
            gate_failed = Some(evidence.clone());
            failed = Some(evidence);
            break;
        }
    }
    phases.done("activate");
    if let Some(why) = failed {
        if stage.on_failure == OnFailure::Revert {
            revert(&pool, &mut slots, observer, &why);
            phases.done("revert");
            recheck(stage, &mut slots);
        }
        let mut report = finish(stage, Some(*release), slots, names, start).with(phases);
        report.gate = gate_failed;
        return report;
    }

    // Capistrano's deploy:cleanup: old releases go once the push succeeded.
    pool.install(|| {
        slots.par_iter_mut().for_each(|slot| {
            match slot.session.as_mut().expect("connected").prune(stage.keep_releases) {
                Ok(pruned) => {
                    for (id, hold) in &pruned.held {
                        slot.warn(format!(
                            "kept release {}: pid {} still uses it ({} {})",
                            id.short(12),
                            hold.pid,
                            hold.via,
                            hold.path.display()
                        ));
                    }
                }
                // The push succeeded; a failed cleanup is reported, not undone.
                Err(e) => slot.warn(format!("prune failed: {}", error_chain(&e))),
            }
        });
    });
    phases.done("cleanup");
    let mut report = finish(stage, Some(*release), slots, names, start).with(phases);
    let answers = rt.gates.iter().any(|g| matches!(g, Gate::Http(_) | Gate::Errors { .. }));
    if !rt.programs.is_empty() && !answers {
        report.notes.push(format!(
            "no http or errors gate: ferry checked that the programs run the new release, not that they answer; \
             add [stages.{}.health.http] to know",
            stage.name
        ));
    }
    if rt.gates.iter().any(|g| matches!(g, Gate::Http(p) if p.answered_by == AnsweredBy::Any)) {
        report.notes.push(
            "health.http.answered_by = \"any\": the gate's answers were not checked to come from the new \
             release's processes"
                .into(),
        );
    }
    report
}

/// One host's flip: its before-flip hook, the flip (with the programs'
/// restart and the process check), its after-flip hook.
fn activate_one(slot: &mut Slot, release: &ReleaseId, stage: &Stage, observer: &dyn Observer, n: usize) {
    let hooks = &stage.runtime.hooks;
    if slot.already(release, stage) {
        // It runs the release: its programs are checked (and restarted only
        // if they do not run it), no hook runs, nothing flips.
        slot.report.step = "current".into();
        match slot.session.as_mut().expect("connected").activate(release, &stage.options) {
            Ok(flipped) => {
                slot.report.result = Outcome::Ok;
                for note in flipped.notes {
                    slot.warn(note);
                }
                observer.event(&slot.spec.name, "current", "already current");
            }
            Err(e) => {
                observer.event(&slot.spec.name, "current", &format!("failed: {}", error_chain(&e)));
                slot.fail("current", &e);
            }
        }
        return;
    }
    if let Some(command) = &hooks.before_flip {
        if !run_hook(slot, release, "before_flip", command, hooks.timeout) {
            return;
        }
    }
    // Reached for a host that runs the release only with --force: its
    // programs restart on it, as after a flip.
    let forced = slot.report.from == Some(*release);
    let session = slot.session.as_mut().expect("connected");
    let (step, done) = if forced {
        ("restart", session.restart(release).map(|notes| (false, notes)))
    } else {
        ("activate", session.activate(release, &stage.options).map(|f| (!f.already, f.notes)))
    };
    slot.report.step = step.into();
    match done {
        Ok((flipped, notes)) => {
            slot.report.result = Outcome::Ok;
            slot.flipped = flipped;
            for note in notes {
                slot.warn(note);
            }
            observer.event(&slot.spec.name, "activated", &format!("batch {}", n + 1));
        }
        Err(e) => {
            observer.event(&slot.spec.name, step, &format!("failed: {}", error_chain(&e)));
            return slot.fail(step, &e);
        }
    }
    if let Some(command) = &hooks.after_flip {
        // On failure the host is flipped: the revert takes it back with the others.
        let step = std::mem::take(&mut slot.report.step);
        if run_hook(slot, release, "after_flip", command, hooks.timeout) {
            slot.report.step = step;
        }
    }
}

/// Runs hook `name` on the slot's host: its run goes into the report; a
/// failure fails the host at step `name`. Whether it succeeded.
fn run_hook(slot: &mut Slot, release: &ReleaseId, name: &str, command: &str, timeout: std::time::Duration) -> bool {
    slot.report.step = name.into();
    match slot.session.as_mut().expect("connected").hook(release, name, command, timeout) {
        Ok(run) if run.ok() => {
            slot.report.hooks.push(run);
            true
        }
        Ok(run) => {
            slot.report.result = Outcome::Failed;
            slot.report.error = Some(hook_failure(&run));
            slot.report.hooks.push(run);
            false
        }
        Err(e) => {
            slot.fail(name, &e);
            false
        }
    }
}

fn hook_failure(run: &HookRun) -> String {
    let how = match (run.exit, run.timed_out) {
        (_, true) => format!("did not finish in its timeout ({:.0} s) and was killed", run.seconds),
        (Some(code), _) => format!("exited with {code}"),
        (None, _) => "was killed by a signal".to_owned(),
    };
    let last: Vec<&str> = run.output.lines().collect();
    format!("hook {} {how}; its last output: {}", run.name, last[last.len().saturating_sub(5)..].join(" / "))
}

/// The stage's gates on the batch `range`, just flipped. A failed gate's
/// evidence goes on the hosts it names and is returned.
fn check_gates(
    stage: &Stage,
    slots: &mut [Slot],
    range: std::ops::Range<usize>,
    release: &ReleaseId,
    observer: &dyn Observer,
) -> Result<(), String> {
    let rt = &stage.runtime;
    let batch: Vec<String> = slots[range.clone()].iter().map(|s| s.spec.name.clone()).collect();
    for gate in &rt.gates {
        let verdict: Result<String, String> = match gate {
            Gate::Http(probe) => {
                let results: Vec<(usize, Result<String, String>)> =
                    range.clone().zip(probe.check_all(&batch)).collect();
                let mut bad = Vec::new();
                for (i, result) in results {
                    let result = result.and_then(|ok| {
                        if rt.programs.is_empty() || probe.answered_by == AnsweredBy::Any {
                            return Ok(ok);
                        }
                        let url = probe.url_for(&slots[i].spec.name);
                        let Some(session) = slots[i].session.as_mut() else { return Ok(ok) };
                        match answered_by_programs(session.as_mut(), &url, &stage.name)? {
                            Some(note) => {
                                slots[i].warn(note);
                                Ok(ok)
                            }
                            None => Ok(ok),
                        }
                    });
                    if let Err(e) = result {
                        // What the programs said is often why.
                        let words = match (rt.programs.is_empty(), slots[i].session.as_mut()) {
                            (false, Some(session)) => last_words(session.as_mut()),
                            _ => String::new(),
                        };
                        slots[i].report.step = "gate".into();
                        slots[i].report.error = Some(format!("gate http: {e}{words}"));
                        bad.push(format!("{}: {e}", slots[i].spec.name));
                    }
                }
                if bad.is_empty() {
                    let hosts = if batch.len() == 1 { "1 host".to_owned() } else { format!("{} hosts", batch.len()) };
                    Ok(format!("{hosts} answered {}", probe.status))
                } else {
                    Err(bad.join("; "))
                }
            }
            Gate::Errors { probe, window, interval, max_rate, max_excess, min_requests } => {
                // The batch just flipped (the batches before it passed
                // already, and would only dilute a bad host's rate).
                let flipped = batch.clone();
                let others: Vec<String> = slots[range.end..].iter().map(|s| s.spec.name.clone()).collect();
                observer.event(&batch.join(","), "gate errors", &format!("watching for {} s", window.as_secs_f64()));
                let (a, b) = gates::sample_errors(probe, &flipped, &others, *window, *interval);
                gates::judge_errors(a, b, *max_rate, *max_excess, *min_requests)
            }
            Gate::Command { run, timeout } => gates::run_command(run, *timeout, &batch, &release.to_string()),
        };
        match verdict {
            Ok(evidence) => observer.event(&batch.join(","), &format!("gate {}", gate.name()), &evidence),
            Err(evidence) => {
                let evidence = format!("gate {} failed after batch {}: {evidence}", gate.name(), batch.join(", "));
                observer.event(&batch.join(","), &format!("gate {}", gate.name()), &evidence);
                for slot in &mut slots[range.clone()] {
                    // Failed, whatever the policy: a revert makes it Reverted.
                    slot.report.result = Outcome::Failed;
                    if slot.report.error.is_none() {
                        slot.report.step = "gate".into();
                        slot.report.error = Some(evidence.clone());
                    }
                }
                return Err(evidence);
            }
        }
    }
    Ok(())
}

/// After a revert, the hosts flipped back must pass the http gate again:
/// the old release may not come back (something else took its port).
fn recheck(stage: &Stage, slots: &mut [Slot]) {
    let rt = &stage.runtime;
    let Some(probe) = rt.gates.iter().find_map(|g| if let Gate::Http(p) = g { Some(p) } else { None }) else {
        return;
    };
    let reverted: Vec<usize> = (0..slots.len()).filter(|i| slots[*i].report.result == Outcome::Reverted).collect();
    let names: Vec<String> = reverted.iter().map(|i| slots[*i].spec.name.clone()).collect();
    for (i, result) in reverted.into_iter().zip(probe.check_all(&names)) {
        let url = probe.url_for(&slots[i].spec.name);
        let result = result.and_then(|ok| match slots[i].session.as_mut() {
            Some(session) if !rt.programs.is_empty() && probe.answered_by == AnsweredBy::Programs => {
                answered_by_programs(session.as_mut(), &url, &stage.name).map(|_| ok)
            }
            _ => Ok(ok),
        });
        if let Err(e) = result {
            let words = match slots[i].session.as_mut() {
                Some(session) if !rt.programs.is_empty() => last_words(session.as_mut()),
                _ => String::new(),
            };
            let slot = &mut slots[i];
            slot.report.result = Outcome::Failed;
            let before = slot.report.error.take().unwrap_or_default();
            slot.report.error =
                Some(format!("{before}; flipped back, but the old release fails the http gate too: {e}{words}"));
        }
    }
}

/// The programs' last lines of output on a host, as "; its programs' last
/// output: …" (empty when there are none to be had).
fn last_words(session: &mut dyn Session) -> String {
    let lines = tail(session, None);
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its programs' last output: {}", lines.join(" / "))
    }
}

/// The last 3 lines of each log (stderr and stdout) of `program`, or of
/// every program, each as "process: line".
fn tail(session: &mut dyn Session, program: Option<&str>) -> Vec<String> {
    let Ok(chunks) = session.logs(program, &BTreeMap::new(), 2048) else { return Vec::new() };
    let mut lines: Vec<String> = Vec::new();
    for chunk in &chunks {
        let mut own: Vec<&str> = chunk.text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let own = own.split_off(own.len().saturating_sub(3));
        lines.extend(own.into_iter().map(|l| format!("{}: {l}", chunk.process)));
    }
    lines
}

/// The programs' processes that are not running, with their last output.
fn down(session: &mut dyn Session, processes: &[crate::host::supervisor::ProcessInfo]) -> Vec<Down> {
    processes
        .iter()
        .filter(|p| p.state != "RUNNING")
        .map(|p| Down {
            process: p.name.clone(),
            state: p.state.clone(),
            description: if p.spawnerr.is_empty() { p.description.clone() } else { p.spawnerr.clone() },
            output: tail(session, Some(&p.name)).join(" / "),
        })
        .collect()
}

/// Whether the answer on `url` for a host came from its programs: every
/// process that listens on the URL's port there must be one of the
/// programs' processes (which the restart checked to run the release).
/// `Err` when another process holds the port (an old process, an orphaned
/// worker, someone else's server), naming it; `Ok(Some(note))` when ferry
/// cannot tell: nothing on the host listens on the port (the URL reaches
/// another machine), the listener is another user's process, or the host
/// cannot say.
fn answered_by_programs(session: &mut dyn Session, url: &str, stage: &str) -> Result<Option<String>, String> {
    let Some(port) = port_of(url) else { return Ok(None) };
    let holders = match session.listeners(port) {
        Ok(holders) => holders,
        Err(e) => {
            return Ok(Some(format!(
                "cannot tell which process answered on port {port} ({}): the answer was not checked to come from \
                 the new release",
                error_chain(&e)
            )))
        }
    };
    if holders.is_empty() {
        return Ok(Some(format!(
            "nothing on the host listens on port {port}: the gate's answer came from elsewhere, and ferry cannot \
             tell it came from the new release"
        )));
    }
    if let Some(other) = holders.iter().find(|h| h.pid.is_some() && h.process.is_none()) {
        let pid = other.pid.unwrap_or_default();
        let runs = other.release.as_ref().map_or_else(String::new, |r| format!(", running release {r}"));
        return Err(format!(
            "port {port} is held by pid {pid} ({}{runs}), which is not one of the programs' processes: the answer \
             may have come from it, not from the new release; if it should not be there, stop it (kill {pid}) and \
             push again; if it is a proxy in front of the programs, set answered_by = \"any\" in \
             [stages.{stage}.health.http]",
            other.command
        ));
    }
    if holders.iter().all(|h| h.pid.is_none()) {
        return Ok(Some(format!(
            "port {port} is held by a process this user cannot see: ferry cannot tell the answer came from the new \
             release"
        )));
    }
    Ok(None)
}

/// The TCP port of a URL (80 for `http://` when it names none).
fn port_of(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port_or_known_default()
}

/// What a host gets.
enum Payload {
    /// A delta or the whole bundle, and which.
    File(PathBuf, &'static str),
    /// The host runs a release the source does not have.
    Unknown,
}

/// The payload a host on `base` needs: a delta when the source has `base`,
/// the whole bundle when the host has nothing.
fn payload(source: &dyn ReleaseSource, base: Option<ReleaseId>, target: &ReleaseId) -> Result<Payload, String> {
    if let Some(base) = base {
        return match source.delta(&base, target) {
            Ok(Some(path)) => Ok(Payload::File(path, "delta")),
            Ok(None) => Ok(Payload::Unknown),
            Err(e) => Err(format!("cannot make the delta from {base}: {e}")),
        };
    }
    source
        .bundle(target)
        .map(|p| Payload::File(p, "bundle"))
        .map_err(|e| format!("cannot find the bundle of {target}: {e}"))
}

/// Flips every host this push flipped back to where it was (restarting its
/// programs there), recording `why` in its journal.
fn revert(pool: &rayon::ThreadPool, slots: &mut [Slot], observer: &dyn Observer, why: &str) {
    pool.install(|| {
        slots.par_iter_mut().for_each(|slot| {
            if !slot.flipped {
                return;
            }
            let Some(from) = slot.report.from else {
                slot.report.result = Outcome::Failed;
                let before = slot.report.error.take().map_or_else(String::new, |e| format!("{e}; "));
                slot.report.error = Some(format!(
                    "{before}it was this host's first release: there is no earlier one to go back to, so it stays \
                     on {}",
                    slot.report.to.map_or_else(|| "it".to_owned(), |t| t.short(12))
                ));
                return;
            };
            slot.report.step = "revert".into();
            match slot.session.as_mut().expect("connected").revert(&from, why) {
                Ok(_) => {
                    slot.report.result = Outcome::Reverted;
                    if !slot.report.down_before.is_empty() {
                        // Back, but not to something that worked.
                        slot.warn(format!(
                            "flipped back to {}, whose programs were down before this push",
                            from.short(12)
                        ));
                    }
                    observer.event(&slot.spec.name, "reverted", &from.short(12));
                }
                Err(e) => slot.fail("revert", &e),
            }
        });
    });
}

/// Flips every host of `stage` back: to `to`, or to the previous release,
/// which must be the same on every host and still on every host.
pub fn rollback(
    stage: &Stage,
    transport: &dyn Transport,
    to: Option<&ReleaseId>,
    observer: &dyn Observer,
) -> Result<Report, RollbackError> {
    let start = Instant::now();
    let command = format!("ferry rollback {}", stage.name);
    let mut phases = Phases::new();
    // What each host could go back to, asked as soon as it is connected.
    let candidates = std::sync::Mutex::new(BTreeMap::new());
    let mut slots = connect_then(stage, transport, Some(&command), observer, |slot| {
        slot.report.step = "status".into();
        match slot.session.as_mut().expect("connected").status() {
            Ok(st) => {
                slot.report.from = st.current;
                // Going back past a release that ran migrations leaves the
                // database where they took it: say so.
                if let (Some(current), Some(when)) = (st.current, &st.current_migrated) {
                    slot.report.warning = Some(format!(
                        "release {} ran migrations here ({when}): rolling back the code does not roll back the database",
                        current.short(12)
                    ));
                }
                let target = to.copied().or(st.previous);
                let has = target.is_some_and(|t| st.releases.iter().any(|r| r.id == t));
                let mut candidates = candidates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                candidates.insert(slot.spec.name.clone(), target.filter(|_| has));
            }
            Err(e) => slot.fail("status", &e),
        }
    });
    phases.done("connect");
    if slots.iter().any(|s| s.session.is_none() || s.report.result == Outcome::Failed) {
        return Ok(finish(stage, to.copied(), slots, Vec::new(), start).with(phases));
    }
    let mut targets: BTreeMap<Option<ReleaseId>, Vec<String>> = BTreeMap::new();
    for (host, target) in candidates.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        targets.entry(target).or_default().push(host);
    }
    let target = match (targets.len(), targets.keys().next()) {
        (1, Some(Some(t))) => *t,
        _ => {
            close(&mut slots);
            return Err(RollbackError::NoCommonRelease {
                stage: stage.name.clone(),
                asked: to.copied(),
                by_host: targets,
            });
        }
    };
    pool(stage.max_parallel).install(|| {
        slots.par_iter_mut().for_each(|slot| {
            slot.report.step = "rollback".into();
            slot.report.to = Some(target);
            match slot.session.as_mut().expect("connected").rollback(Some(&target)) {
                Ok(_) => {
                    slot.report.result = Outcome::Ok;
                    observer.event(&slot.spec.name, "rolled back", &target.short(12));
                }
                Err(e) => slot.fail("rollback", &e),
            }
        });
    });
    phases.done("rollback");
    let names = vec![slots.iter().map(|s| s.spec.name.clone()).collect()];
    let mut report = finish(stage, Some(target), slots, names, start);
    phases.done("cleanup");
    report.phases = phases.seconds;
    Ok(report)
}

/// Why a fleet rollback could not start.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("{}", no_common(stage, asked, by_host))]
    NoCommonRelease { stage: String, asked: Option<ReleaseId>, by_host: BTreeMap<Option<ReleaseId>, Vec<String>> },
}

fn no_common(stage: &str, asked: &Option<ReleaseId>, by_host: &BTreeMap<Option<ReleaseId>, Vec<String>>) -> String {
    let mut s = match asked {
        Some(id) => format!("not every host of {stage} has release {}; nothing was changed:", id.short(12)),
        None => format!("the hosts of {stage} have no previous release in common; nothing was changed:"),
    };
    for (target, hosts) in by_host {
        let what = target.map_or_else(|| "none on disk".to_owned(), |t| t.short(12));
        s.push_str(&format!(" {what} on {};", hosts.join(", ")));
    }
    s.push_str(" name a release they all have with --to");
    s
}

/// Asks every host one thing, in parallel (under its lock for `lock`):
/// each host's answer, or why there is none.
fn ask_each<T: Send>(
    stage: &Stage,
    transport: &dyn Transport,
    lock: Option<&str>,
    ask: impl Fn(&Slot, &mut dyn Session) -> Result<T, HostError> + Sync,
) -> Vec<(String, Result<T, String>)> {
    let mut slots = connect(stage, transport, lock, &super::Quiet);
    let result = pool(stage.max_parallel).install(|| {
        slots
            .par_iter_mut()
            .map(|slot| {
                let answer = match slot.session.take() {
                    Some(mut s) => {
                        let answer = ask(slot, s.as_mut()).map_err(|e| error_chain(&e));
                        slot.session = Some(s);
                        answer
                    }
                    None => Err(slot.report.error.clone().unwrap_or_default()),
                };
                (slot.spec.name.clone(), answer)
            })
            .collect()
    });
    close(&mut slots);
    result
}

/// Every host's status, without taking locks.
pub fn status(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Result<Status, String>)> {
    ask_each(stage, transport, None, |_, s| s.status())
}

/// Every host's journal, without taking locks.
pub fn journals(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Result<Vec<Record>, String>)> {
    ask_each(stage, transport, None, |_, s| s.journal())
}

/// Sets every host up for the stage's programs (see [`Host::setup`]),
/// each under its lock: what each did, or why it could not.
///
/// [`Host::setup`]: crate::host::Host::setup
pub fn setup(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Result<Vec<String>, String>)> {
    let rt = &stage.runtime;
    ask_each(stage, transport, Some(&format!("ferry setup {}", stage.name)), |slot, s| {
        s.setup(&rt.service, &rt.programs_for(&slot.spec.name))
    })
}

/// The programs' logs on every host: `each` gets every piece, with its
/// host, as it comes; with `follow`, until `each` returns false.
pub fn logs(
    stage: &Stage,
    transport: &dyn Transport,
    program: Option<&str>,
    bytes: i32,
    follow: bool,
    each: &(dyn Fn(&str, Result<&crate::host::runtime::LogChunk, String>) -> bool + Sync),
) {
    let mut slots = connect(stage, transport, None, &super::Quiet);
    std::thread::scope(|scope| {
        for slot in &mut slots {
            let name = slot.spec.name.clone();
            let error = slot.report.error.clone();
            let session = slot.session.as_mut();
            scope.spawn(move || {
                let Some(session) = session else {
                    each(&name, Err(error.unwrap_or_default()));
                    return;
                };
                let mut offsets = BTreeMap::new();
                loop {
                    match session.logs(program, &offsets, bytes) {
                        Ok(chunks) => {
                            for chunk in &chunks {
                                offsets.insert(chunk.process.clone(), chunk.offset);
                                if !chunk.text.is_empty() && !each(&name, Ok(chunk)) {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            each(&name, Err(error_chain(&e)));
                            return;
                        }
                    }
                    if !follow {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            });
        }
    });
    close(&mut slots);
}
