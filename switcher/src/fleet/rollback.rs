//! `ferry rollback`: every host of a stage back to one release that every
//! host still has.

use std::collections::BTreeMap;
use std::time::Instant;

use ferry_formats::ReleaseId;
use rayon::prelude::*;

use super::connect::{close, connect_all, finish, finish_connected, pool};
use super::report::{HostStep, Observer, Outcome, Phases, Report};
use super::{Stage, Transport};
use crate::host::error_chain;

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
    let connected = connect_all(stage, transport, Some(&command), observer, |host| {
        host.slot.report.step = HostStep::Status;
        match host.session.status() {
            Ok(st) => {
                host.current = st.current;
                let report = &mut host.slot.report;
                report.from = st.current;
                // Going back past a release that ran migrations leaves the
                // database where they took it: say so.
                if let (Some(current), Some(when)) = (st.current, &st.current_migrated) {
                    report.warn(format!(
                        "release {} ran migrations here ({when}): rolling back the code does not roll back the database",
                        current.short(12)
                    ));
                }
                let target = to.copied().or(st.previous);
                let has = target.is_some_and(|t| st.releases.iter().any(|r| r.id == t));
                let mut candidates = candidates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                candidates.insert(host.slot.spec.name.clone(), target.filter(|_| has));
            }
            Err(e) => host.fail(HostStep::Status, &e),
        }
    });
    phases.done("connect");
    let mut hosts = match connected {
        Ok(hosts) => hosts,
        Err(slots) => {
            let mut report = finish(stage, to.copied(), slots, Vec::new(), start);
            report.phases = phases.seconds;
            return Ok(report);
        }
    };
    let mut targets: BTreeMap<Option<ReleaseId>, Vec<String>> = BTreeMap::new();
    for (host, target) in candidates.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        targets.entry(target).or_default().push(host);
    }
    let target = match (targets.len(), targets.keys().next()) {
        (1, Some(Some(t))) => *t,
        _ => {
            close(hosts);
            return Err(RollbackError::NoCommonRelease {
                stage: stage.name.clone(),
                asked: to.copied(),
                by_host: targets,
            });
        }
    };
    pool(stage.max_parallel).install(|| {
        hosts.par_iter_mut().for_each(|host| {
            host.slot.report.step = HostStep::Rollback;
            host.slot.report.to = Some(target);
            match host.session.rollback(Some(&target)) {
                Ok(_) => {
                    host.slot.report.result = Outcome::Ok;
                    observer.done(&host.slot.spec.name, "rolled back", &target.short(12));
                }
                Err(e) => {
                    observer.failed(&host.slot.spec.name, "rollback", &error_chain(&e));
                    host.fail(HostStep::Rollback, &e);
                }
            }
        });
    });
    phases.done("rollback");
    let names = vec![hosts.iter().map(|h| h.name().to_owned()).collect()];
    let mut report = finish_connected(stage, Some(target), hosts, names, start);
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
