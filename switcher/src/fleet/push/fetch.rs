//! The pull path of the stage phase (`fetch = "store"`): each distinct
//! payload is put in the object store once, and every host that needs it
//! gets a short-lived URL and the payload's hash and length instead of its
//! bytes. A host that cannot fetch it (the store unreachable from it, down,
//! an object that is not what its key says, an expired URL, a truncated
//! download) is pushed the bytes by the controller, and its report says why.
//!
//! At most `fetch_parallel` hosts download at once, and the first host of
//! each payload downloads it alone: the others of that payload start once
//! it is done, whether it succeeded or not (see [`Downloads`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use ferry_formats::ReleaseId;

use super::super::connect::Connected;
use super::super::report::{HostStep, Observer, Shipped};
use super::super::{Fetch, ReleaseSource, Stage};
use crate::host::{error_chain, ErrorKind};

/// Each payload's fetch, by the base it is for: made once per distinct
/// base. `Err`: the source could not put it in the store (every host on
/// that base is pushed the bytes, and says why).
pub(super) fn fetches(
    source: &dyn ReleaseSource,
    payloads: &BTreeMap<Option<ReleaseId>, (PathBuf, Shipped)>,
    release: &ReleaseId,
) -> BTreeMap<Option<ReleaseId>, Result<Fetch, String>> {
    let mut out = BTreeMap::new();
    for (base, (path, kind)) in payloads {
        match source.fetchable(base.as_ref(), release, *kind, path) {
            Ok(Some(fetch)) => {
                out.insert(*base, Ok(fetch));
            }
            Ok(None) => {}
            Err(e) => {
                out.insert(*base, Err(format!("cannot put the {kind} in the store: {e}")));
            }
        }
    }
    out
}

/// The downloads of one stage phase: a counting semaphore of
/// `fetch_parallel` slots, and each payload's warm-up.
///
/// The first host to fetch a payload is its warmer: it downloads alone, and
/// every other host of that payload waits until it is done (ok or not) so a
/// cache in front of the store is filled by one download. A warmer that
/// failed does not hold the others back: each still tries, and falls back
/// on its own failure. Waiters hold no slot, and a warmer takes its slot
/// only once it is the warmer, so no host waits on one that waits on it.
pub(super) struct Downloads {
    free: Mutex<usize>,
    freed: Condvar,
    /// Each payload's state, by the base it is for.
    warm: Mutex<BTreeMap<Option<ReleaseId>, Warmth>>,
    warmed: Condvar,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Warmth {
    /// Its first download is under way.
    Warming,
    /// Its first download is over: the others may go.
    Warm,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Downloads {
    /// At most `parallel` (at least 1) downloads at once.
    pub(super) fn new(parallel: usize) -> Self {
        Self {
            free: Mutex::new(parallel.max(1)),
            freed: Condvar::new(),
            warm: Mutex::default(),
            warmed: Condvar::new(),
        }
    }

    /// Runs `download` of the payload for `base` in a slot, after the
    /// payload's warm-up (or as it).
    fn run<T>(&self, base: Option<ReleaseId>, download: impl FnOnce() -> T) -> T {
        let warmer = {
            let mut warm = lock(&self.warm);
            loop {
                match warm.get(&base) {
                    None => {
                        warm.insert(base, Warmth::Warming);
                        break true;
                    }
                    Some(Warmth::Warming) => warm = self.warmed.wait(warm).unwrap_or_else(PoisonError::into_inner),
                    Some(Warmth::Warm) => break false,
                }
            }
        };
        // Dropped in reverse: the slot is given back, then the payload is
        // warm (also when `download` panics, so no one waits forever).
        let _warmed = warmer.then(|| Warmed(self, base));
        let _slot = self.slot();
        download()
    }

    fn slot(&self) -> Slot<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Slot(self)
    }
}

/// A download slot, given back when dropped.
struct Slot<'a>(&'a Downloads);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

/// A payload's warm-up, over when dropped.
struct Warmed<'a>(&'a Downloads, Option<ReleaseId>);

impl Drop for Warmed<'_> {
    fn drop(&mut self) {
        lock(&self.0.warm).insert(self.1, Warmth::Warm);
        self.0.warmed.notify_all();
    }
}

/// Has `host` fetch its payload (the one for `base`), in a download slot of
/// `downloads`. `true`: the host is done with this phase (staged from the
/// store, or its link broke); `false`: the controller is to push the bytes,
/// and a note says why.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_fetched(
    host: &mut Connected,
    downloads: &Downloads,
    base: Option<ReleaseId>,
    fetch: &Result<Fetch, String>,
    kind: Shipped,
    stage: &Stage,
    signature: Option<&str>,
    observer: &dyn Observer,
) -> bool {
    let name = host.slot.spec.name.clone();
    let fetch = match fetch {
        Ok(f) => f,
        Err(why) => {
            let note = format!("{why}; pushed the {kind} instead");
            observer.note(&name, "fetch", &note);
            host.slot.report.notes.push(note);
            return false;
        }
    };
    let session = &mut host.session;
    // Said once the host has its slot (and its payload is warm): not while
    // it waits in line.
    let fetched = downloads.run(base, || {
        observer.note(&name, "fetch", &format!("{kind} from the store"));
        session.stage_fetched(fetch, &stage.options, signature)
    });
    match fetched {
        Ok(staged) => {
            let report = &mut host.slot.report;
            if !staged.already {
                report.shipped = kind;
                report.fetched = fetch.len;
            }
            report.staged = true;
            observer.done(&name, "staged", &format!("{:.2}s (fetched)", staged.elapsed.as_secs_f64()));
            if let Some(from) = staged.bridged_from {
                let files = if staged.bridged == 1 { "file" } else { "files" };
                let note = format!("bridged {} asset {files} from {}", staged.bridged, from.short(12));
                host.slot.report.notes.push(note);
            }
            true
        }
        Err(e) if e.kind() == ErrorKind::Link => {
            observer.failed(&name, "fetch", &error_chain(&e));
            host.fail(HostStep::Stage, &e);
            true
        }
        Err(e) => {
            let note = format!("fetch from the store failed ({}); pushed the {kind} instead", error_chain(&e));
            observer.note(&name, "fetch", &note);
            host.slot.report.notes.push(note);
            false
        }
    }
}
