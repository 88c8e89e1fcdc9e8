//! The pull path of the stage phase (`fetch = "store"`): each distinct
//! payload is put in the object store once, and every host that needs it
//! gets a short-lived URL and the payload's hash and length instead of its
//! bytes. A host that cannot fetch it (the store unreachable from it, down,
//! an object that is not what its key says, an expired URL, a truncated
//! download) is pushed the bytes by the controller, and its report says why.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// Has `host` fetch its payload. `true`: the host is done with this phase
/// (staged from the store, or its link broke); `false`: the controller is
/// to push the bytes, and a note says why.
pub(super) fn stage_fetched(
    host: &mut Connected,
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
    observer.note(&name, "fetch", &format!("{kind} from the store"));
    match host.session.stage_fetched(fetch, &stage.options, signature) {
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
