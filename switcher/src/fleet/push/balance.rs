//! A push behind a load balancer: each batch out of rotation before its
//! flip, back in only after ferry's own gates pass; on a failure, the
//! failed batch flipped back while it is out, and each batch before it
//! taken out, flipped back and put in again; the stage's batch hooks
//! around each batch.

use std::ops::Range;
use std::time::Instant;

use ferry_formats::ReleaseId;
use serde::Serialize;

use super::super::connect::Connected;
use super::super::gates::{self, Gate};
use super::super::lb::{Lb, LbError};
use super::super::report::{Observer, Outcome};
use super::super::Stage;
use super::activate;

/// What the load balancer did during a push.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LbReport {
    /// Each batch's time out of rotation.
    pub batches: Vec<LbBatch>,
    /// Hosts the push took out of rotation and did not put back: their
    /// release did not pass, or the load balancer stopped answering.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// What the load balancer answered that stopped the push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One batch's time out of rotation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LbBatch {
    pub hosts: Vec<String>,
    /// From `drain` to back in (or to the end, when it stayed out).
    pub seconds: f64,
    /// Waiting for its sessions to end.
    pub drain_seconds: f64,
    /// Out of rotation for the flip, restart and ferry's own gates: from
    /// `maint` to `ready`.
    pub flip_seconds: f64,
    /// Waiting for HAProxy to see it UP after `ready`.
    pub up_seconds: f64,
    /// Hosts whose sessions outlived the drain timeout, and how many.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forced: Vec<(String, u64)>,
}

/// The load balancer during one push: connected, and what it did.
pub(super) struct Balancer<'a> {
    pub lb: Lb<'a>,
    pub report: LbReport,
    /// Hosts ferry took out and has not put back.
    out: Vec<String>,
    /// When the batch out now went out, and when it was in maint.
    since: Instant,
    maint: Instant,
}

impl<'a> Balancer<'a> {
    pub fn new(lb: Lb<'a>) -> Self {
        Self { lb, report: LbReport::default(), out: Vec::new(), since: Instant::now(), maint: Instant::now() }
    }

    /// Checks every batch against the capacity guard before anything
    /// changes (the state can move during the push: each batch is checked
    /// again before it goes out).
    pub fn guard_all(&mut self, batches: &[Vec<String>]) -> Result<(), LbError> {
        batches.iter().try_for_each(|b| self.lb.guard(b))
    }

    /// Takes `batch` out of rotation (after the capacity guard).
    pub fn take_out(&mut self, batch: &[String], observer: &dyn Observer) -> Result<(), String> {
        self.since = Instant::now();
        let label = batch.join(",");
        observer.note(&label, "lb", "draining");
        self.lb.guard(batch).map_err(|e| self.stop(e))?;
        let drained = self.lb.take_out(batch, observer).map_err(|e| self.stop(e))?;
        self.out.extend(batch.iter().cloned());
        self.maint = Instant::now();
        observer.note(&label, "lb", &format!("out of rotation (drained in {:.2} s)", drained.seconds));
        self.report.batches.push(LbBatch {
            hosts: batch.to_vec(),
            seconds: self.since.elapsed().as_secs_f64(),
            drain_seconds: drained.seconds,
            flip_seconds: 0.0,
            up_seconds: 0.0,
            forced: drained.forced,
        });
        Ok(())
    }

    /// Puts `batch` back in rotation and waits for HAProxy to see it UP.
    pub fn put_in(&mut self, batch: &[String], observer: &dyn Observer) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let label = batch.join(",");
        let flip = self.maint.elapsed().as_secs_f64();
        let up = self.lb.put_in(batch).map_err(|e| self.stop(e))?;
        self.out.retain(|h| !batch.contains(h));
        if let Some(b) = self.report.batches.iter_mut().rev().find(|b| b.hosts == batch) {
            b.up_seconds = up.as_secs_f64();
            b.flip_seconds = flip;
            b.seconds = self.since.elapsed().as_secs_f64();
        }
        observer.note(&label, "lb", &format!("back in rotation (UP after {:.2} s)", up.as_secs_f64()));
        Ok(())
    }

    /// The errors gate from HAProxy's counts: over `window`, the batch's
    /// servers' share of 5xx against the ceiling and against `others` (the
    /// hosts not flipped yet).
    pub fn errors_gate(
        &mut self,
        gate: &Gate,
        batch: &[String],
        others: &[String],
        observer: &dyn Observer,
    ) -> Result<String, String> {
        let Gate::LbErrors { window, max_rate, max_excess, min_requests } = gate else { return Ok(String::new()) };
        observer.note(
            &batch.join(","),
            "gate errors",
            &format!("reading HAProxy's counts for {} s", window.as_secs_f64()),
        );
        let before =
            (self.lb.responses(batch).map_err(|e| self.stop(e))?, self.lb.responses(others).map_err(|e| self.stop(e))?);
        std::thread::sleep(*window);
        let after =
            (self.lb.responses(batch).map_err(|e| self.stop(e))?, self.lb.responses(others).map_err(|e| self.stop(e))?);
        let sample = |a: (u64, u64), b: (u64, u64)| gates::Sample {
            requests: b.0.saturating_sub(a.0) as usize,
            failures: b.1.saturating_sub(a.1) as usize,
        };
        gates::judge_errors(sample(before.0, after.0), sample(before.1, after.1), *max_rate, *max_excess, *min_requests)
            .map(|ok| format!("{ok} (HAProxy's counts)"))
            .map_err(|e| format!("{e} (HAProxy's counts)"))
    }

    /// Whether every host of `batch` is out of rotation by ferry's hand.
    pub fn has_out(&self, batch: &[String]) -> bool {
        batch.iter().all(|h| self.out.contains(h))
    }

    /// Records the load balancer's error that stops the push; its words.
    fn stop(&mut self, e: LbError) -> String {
        let words = e.to_string();
        self.report.error.get_or_insert_with(|| words.clone());
        words
    }

    /// Ends the push: every host still out of rotation is reported.
    pub fn finish(mut self) -> LbReport {
        self.report.left_out = std::mem::take(&mut self.out);
        // A batch still out: out of rotation until now, flipped and gated
        // since its maint.
        if let Some(b) =
            self.report.batches.last_mut().filter(|b| b.hosts.iter().all(|h| self.report.left_out.contains(h)))
        {
            b.seconds = self.since.elapsed().as_secs_f64();
            b.flip_seconds = self.maint.elapsed().as_secs_f64();
        }
        self.report
    }
}

/// Runs the stage's before_batch or after_batch hook on the controller.
pub(super) fn batch_hook(
    stage: &Stage,
    which: &str,
    command: Option<&String>,
    batch: &[String],
    n: usize,
    release: &ReleaseId,
    observer: &dyn Observer,
) -> Result<(), String> {
    let Some(command) = command else { return Ok(()) };
    let label = batch.join(",");
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(command)
        .env("FERRY_STAGE", &stage.name)
        .env("FERRY_BATCH", (n + 1).to_string())
        .env("FERRY_HOSTS", batch.join(" "))
        .env("FERRY_RELEASE", release.to_string());
    match gates::run_in(sh, command, stage.runtime.hooks.timeout) {
        Ok(said) => {
            observer.note(&label, which, &said);
            Ok(())
        }
        Err(e) => {
            let e = format!("{which} hook of batch {}: {e}", n + 1);
            observer.failed(&label, which, &e);
            Err(e)
        }
    }
}

/// Flips back, after a failure, the hosts this push flipped, with the
/// load balancer: first the failed batch (out of rotation already), put
/// back in only where the old release passes the http gate; then each
/// batch before it, taken out, flipped back, checked, put back in. `plan`
/// ends with the failed batch.
pub(super) fn revert(
    pool: &rayon::ThreadPool,
    hosts: &mut [Connected],
    plan: &[Range<usize>],
    stage: &Stage,
    balancer: &mut Balancer<'_>,
    observer: &dyn Observer,
    why: &str,
) {
    let names = |hosts: &[Connected], r: &Range<usize>| -> Vec<String> {
        hosts[r.clone()].iter().map(|h| h.name().to_owned()).collect()
    };
    let Some((failed, before)) = plan.split_last() else { return };
    let failed = failed.clone();
    // Back in rotation already when HAProxy's counts failed it.
    let batch = names(hosts, &failed);
    if !balancer.has_out(&batch) && balancer.take_out(&batch, observer).is_err() {
        for host in hosts[failed.clone()].iter_mut().filter(|h| h.flipped) {
            host.slot.report.warn("flipped back without draining: the load balancer did not answer");
        }
    }
    activate::revert(pool, &mut hosts[failed.clone()], observer, why);
    super::health::recheck(stage, &mut hosts[failed.clone()]);
    let back = passing(stage, &hosts[failed.clone()]);
    let back: Vec<String> = batch.iter().zip(back).filter(|(_, ok)| *ok).map(|(h, _)| h.clone()).collect();
    // Once the load balancer stops answering, the rest still go back (a
    // half-pushed fleet is worse), without draining: the report says so.
    let mut answers = balancer.put_in(&back, observer).is_ok();
    for range in before.iter().rev() {
        let batch = names(hosts, range);
        answers = answers && balancer.take_out(&batch, observer).is_ok();
        activate::revert(pool, &mut hosts[range.clone()], observer, why);
        super::health::recheck(stage, &mut hosts[range.clone()]);
        if answers {
            let ok = passing(stage, &hosts[range.clone()]);
            let back: Vec<String> = batch.iter().zip(ok).filter(|(_, ok)| *ok).map(|(h, _)| h.clone()).collect();
            answers = balancer.put_in(&back, observer).is_ok();
        } else {
            for host in hosts[range.clone()].iter_mut().filter(|h| h.flipped) {
                host.slot.report.warn("flipped back without draining: the load balancer did not answer");
            }
        }
    }
}

/// Which of `hosts` may go back in rotation: with an http gate, those that
/// pass it now; without one, those whose revert (or failed flip) left them
/// on the old release with its programs running.
fn passing(stage: &Stage, hosts: &[Connected]) -> Vec<bool> {
    let probe = stage.runtime.gates.iter().find_map(|g| if let Gate::Http(p) = g { Some(p) } else { None });
    match probe {
        Some(probe) => {
            let names: Vec<String> = hosts.iter().map(|h| h.name().to_owned()).collect();
            probe.check_all(&names).into_iter().map(|r| r.is_ok()).collect()
        }
        None => hosts.iter().map(|h| h.slot.report.result == Outcome::Reverted || !h.flipped).collect(),
    }
}
