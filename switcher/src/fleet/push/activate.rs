//! The activate phase of a push, one host at a time within a batch: its
//! hooks and its flip (the host restarts the programs and checks them);
//! and the revert of every host the push flipped.

use ferry_formats::ReleaseId;
use rayon::prelude::*;

use super::super::connect::Connected;
use super::super::report::{HostStep, Observer, Outcome};
use super::super::Stage;
use crate::host::error_chain;
use crate::host::runtime::{HookKind, HookRun};

/// The host runs the release already, and the push leaves it as it is
/// (unless `--force`).
pub(super) fn left_alone(host: &Connected, release: &ReleaseId, stage: &Stage) -> bool {
    !stage.force && host.current == Some(*release)
}

/// One host's flip: its before-flip hook, the flip (with the programs'
/// restart and the process check), its after-flip hook.
pub(super) fn activate_one(
    host: &mut Connected,
    release: &ReleaseId,
    stage: &Stage,
    observer: &dyn Observer,
    n: usize,
) {
    let hooks = &stage.runtime.hooks;
    let name = host.slot.spec.name.clone();
    if left_alone(host, release, stage) {
        // It runs the release: its programs are checked (and restarted only
        // if they do not run it), no hook runs, nothing flips.
        host.slot.report.step = HostStep::Current;
        match host.session.activate(release, &stage.options) {
            Ok(flipped) => {
                host.slot.report.result = Outcome::Ok;
                for note in flipped.notes {
                    host.slot.report.warn(note);
                }
                observer.done(&name, "current", "already current");
            }
            Err(e) => {
                observer.failed(&name, "current", &error_chain(&e));
                host.fail(HostStep::Current, &e);
            }
        }
        return;
    }
    if let Some(command) = &hooks.before_flip {
        if !run_hook(host, release, HookKind::BeforeFlip, command, hooks.timeout) {
            return;
        }
    }
    // Reached for a host that runs the release only with --force: its
    // programs restart on it, as after a flip.
    let (step, done) = if host.current == Some(*release) {
        (HostStep::Restart, host.session.restart(release).map(|notes| (false, notes)))
    } else {
        (HostStep::Activate, host.session.activate(release, &stage.options).map(|f| (!f.already, f.notes)))
    };
    host.slot.report.step = step;
    match done {
        Ok((flipped, notes)) => {
            host.slot.report.result = Outcome::Ok;
            host.flipped = flipped;
            for note in notes {
                host.slot.report.warn(note);
            }
            observer.done(&name, "activated", &format!("batch {}", n + 1));
        }
        Err(e) => {
            observer.failed(&name, step.as_str(), &error_chain(&e));
            return host.fail(step, &e);
        }
    }
    if let Some(command) = &hooks.after_flip {
        // On failure the host is flipped: the revert takes it back with the others.
        let step = host.slot.report.step;
        if run_hook(host, release, HookKind::AfterFlip, command, hooks.timeout) {
            host.slot.report.step = step;
        }
    }
}

/// Runs hook `kind` on the host: its run goes into the report; a failure
/// fails the host at the hook's step. Whether it succeeded.
pub(super) fn run_hook(
    host: &mut Connected,
    release: &ReleaseId,
    kind: HookKind,
    command: &str,
    timeout: std::time::Duration,
) -> bool {
    let step = HostStep::from(kind);
    host.slot.report.step = step;
    match host.session.hook(release, kind, command, timeout) {
        Ok(run) if run.ok() => {
            host.slot.report.hooks.push(run);
            true
        }
        Ok(run) => {
            host.slot.report.fail(step, hook_failure(&run));
            host.slot.report.hooks.push(run);
            false
        }
        Err(e) => {
            host.fail(step, &e);
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

/// Flips every host this push flipped back to where it was (restarting its
/// programs there), recording `why` in its journal.
pub(super) fn revert(pool: &rayon::ThreadPool, hosts: &mut [Connected], observer: &dyn Observer, why: &str) {
    pool.install(|| {
        hosts.par_iter_mut().filter(|h| h.flipped).for_each(|host| {
            let report = &mut host.slot.report;
            let Some(from) = host.current else {
                report.result = Outcome::Failed;
                let before = report.error.take().map_or_else(String::new, |e| format!("{e}; "));
                report.error = Some(format!(
                    "{before}it was this host's first release: there is no earlier one to go back to, so it stays \
                     on {}",
                    report.to.map_or_else(|| "it".to_owned(), |t| t.short(12))
                ));
                return;
            };
            report.step = HostStep::Revert;
            match host.session.revert(&from, why) {
                Ok(_) => {
                    let report = &mut host.slot.report;
                    report.result = Outcome::Reverted;
                    if !report.down_before.is_empty() {
                        // Back, but not to something that worked.
                        report.warn(format!(
                            "flipped back to {}, whose programs were down before this push",
                            from.short(12)
                        ));
                    }
                    observer.done(&host.slot.spec.name, "reverted", &from.short(12));
                }
                Err(e) => {
                    // Say where the host is left: the release it could not leave.
                    let to = host.slot.report.to.map_or_else(|| "the new release".to_owned(), |t| t.short(12));
                    let cause = format!(
                        "could not go back to {}: {}; `current` stays on {to}",
                        from.short(12),
                        crate::host::error_chain(&e)
                    );
                    host.slot.report.fail(HostStep::Revert, cause);
                }
            }
        });
    });
}
