//! Reaching a stage's hosts: every host connected in parallel (bounded),
//! each with its report; the phases after it take the connected hosts.

use std::time::Instant;

use ferry_formats::ReleaseId;
use rayon::prelude::*;

use super::report::{HostReport, HostStep, Observer, Report};
use super::{HostSpec, Session, Stage, Transport};
use crate::host::{error_chain, HostError};

/// A host of the stage and how it is faring, connected or not.
pub(super) struct Slot {
    pub spec: HostSpec,
    pub report: HostReport,
    pub started: Instant,
}

impl Slot {
    /// It failed at `step` with `e`.
    pub fn fail(&mut self, step: HostStep, e: &dyn std::error::Error) {
        self.report.fail(step, error_chain(e));
    }
}

/// A host that could not be reached, and why.
pub(super) struct Unreached {
    pub slot: Slot,
    pub error: HostError,
}

/// A host with its session (holding the host's lock when asked for one).
pub(super) struct Connected {
    pub slot: Slot,
    pub session: Box<dyn Session>,
    /// What `current` was when it connected: the delta's base, and where a
    /// revert goes back to.
    pub current: Option<ReleaseId>,
    /// `current` names a release that is not on disk (removed by hand): no
    /// delta or rsync delta has a base there, so it gets the bundle.
    pub current_gone: bool,
    /// This push flipped it (a revert flips it back).
    pub flipped: bool,
}

impl Connected {
    pub fn fail(&mut self, step: HostStep, e: &dyn std::error::Error) {
        self.slot.fail(step, e);
    }

    pub fn name(&self) -> &str {
        &self.slot.spec.name
    }

    pub fn failed(&self) -> bool {
        self.slot.report.result == super::Outcome::Failed
    }
}

/// Runs `each` on every item, at most `parallel` at once, each on a thread
/// of its own (for steps that wait on each other; see `push::stage`).
pub(super) fn each_host<T: Send>(parallel: usize, items: &mut [T], each: impl Fn(&mut T) + Sync) {
    let threads = parallel.max(1).min(items.len());
    let queue = std::sync::Mutex::new(items.iter_mut());
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(item) = next() {
                    each(item);
                }
            });
        }
    });
}

pub(super) fn pool(max_parallel: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(max_parallel.max(1)).build().expect("a thread pool")
}

/// Connects to every host of the stage in parallel (with its lock when
/// `lock` names the command), running `then` on each as soon as it is
/// connected (so one slow host holds up no one else's first step). Each
/// host, in the stage's order: connected, or not (its slot failed at
/// [`HostStep::Connect`]).
pub(super) fn connect_each(
    stage: &Stage,
    transport: &dyn Transport,
    lock: Option<&str>,
    observer: &dyn Observer,
    then: impl Fn(&mut Connected) + Sync,
) -> Vec<Result<Connected, Box<Unreached>>> {
    pool(stage.max_parallel).install(|| {
        stage
            .hosts
            .par_iter()
            .map(|spec| {
                let mut slot =
                    Slot { spec: spec.clone(), report: HostReport::new(&spec.name), started: Instant::now() };
                match transport.connect(spec, lock) {
                    Ok(mut session) => {
                        for note in session.take_notes() {
                            observer.note(&spec.name, "connect", &note);
                            slot.report.notes.push(note);
                        }
                        let mut host = Connected { slot, session, current: None, current_gone: false, flipped: false };
                        then(&mut host);
                        Ok(host)
                    }
                    Err(e) => {
                        observer.failed(&spec.name, "connect", &error_chain(&e));
                        slot.fail(HostStep::Connect, &e);
                        Err(Box::new(Unreached { slot, error: e }))
                    }
                }
            })
            .collect()
    })
}

/// [`connect_each`], all or nothing: every host connected and none failed
/// by `then`; else every host's slot, the sessions closed (nothing has
/// changed anywhere yet).
pub(super) fn connect_all(
    stage: &Stage,
    transport: &dyn Transport,
    lock: Option<&str>,
    observer: &dyn Observer,
    then: impl Fn(&mut Connected) + Sync,
) -> Result<Vec<Connected>, Vec<Slot>> {
    let each = connect_each(stage, transport, lock, observer, then);
    if each.iter().all(|h| h.as_ref().is_ok_and(|h| !h.failed())) {
        return Ok(each.into_iter().flatten().collect());
    }
    // In the stage's order: each host's slot, its session closed.
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(each.len());
    let mut connected = Vec::new();
    for (i, host) in each.into_iter().enumerate() {
        match host {
            Ok(host) => {
                connected.push((i, host));
                slots.push(None);
            }
            Err(unreached) => slots.push(Some(unreached.slot)),
        }
    }
    let (at, hosts): (Vec<usize>, Vec<Connected>) = connected.into_iter().unzip();
    for (i, slot) in at.into_iter().zip(close(hosts)) {
        slots[i] = Some(slot);
    }
    Err(slots.into_iter().flatten().collect())
}

/// Closes every session at once, each on a thread of its own (closing is
/// waiting, not work): a host gone quiet takes its close timeout, not
/// everyone's in turn, and the others' locks go now. The hosts' slots stay.
pub(super) fn close(hosts: Vec<Connected>) -> Vec<Slot> {
    std::thread::scope(|scope| {
        hosts
            .into_iter()
            .map(|h| {
                let session = h.session;
                scope.spawn(move || drop(session));
                h.slot
            })
            .collect()
    })
}

/// The report of a push or rollback from its hosts' slots.
pub(super) fn finish(
    stage: &Stage,
    release: Option<ReleaseId>,
    slots: Vec<Slot>,
    batches: Vec<Vec<String>>,
    start: Instant,
) -> Report {
    let hosts: Vec<HostReport> = slots
        .into_iter()
        .map(|mut s| {
            s.report.seconds = s.started.elapsed().as_secs_f64();
            s.report
        })
        .collect();
    let ok = hosts.iter().all(|h| h.result == super::Outcome::Ok);
    Report {
        stage: stage.name.clone(),
        release,
        ok,
        batches,
        hosts,
        seconds: start.elapsed().as_secs_f64(),
        phases: Default::default(),
        gate: None,
        notes: Vec::new(),
        error: None,
        load_balancer: None,
    }
}

/// [`finish`] for connected hosts: their sessions are closed first.
pub(super) fn finish_connected(
    stage: &Stage,
    release: Option<ReleaseId>,
    hosts: Vec<Connected>,
    batches: Vec<Vec<String>>,
    start: Instant,
) -> Report {
    finish(stage, release, close(hosts), batches, start)
}
