//! The health gates after each batch of a push, and what they ask the
//! hosts: the programs' last words when a gate fails, who listens on a
//! gate's port, which programs were down before the push.

use std::collections::BTreeMap;

use ferry_formats::ReleaseId;

use super::super::connect::Connected;
use super::super::gates::{self, AnsweredBy, Gate};
use super::super::report::{Down, HostStep, Observer, Outcome};
use super::super::{Session, Stage};
use crate::host::error_chain;
use crate::host::supervisor::ProcessState;

/// The stage's gates on the batch `range`, just flipped. A failed gate's
/// evidence goes on the hosts it names and is returned.
pub(super) fn check_gates(
    stage: &Stage,
    hosts: &mut [Connected],
    range: std::ops::Range<usize>,
    release: &ReleaseId,
    observer: &dyn Observer,
) -> Result<(), String> {
    let rt = &stage.runtime;
    let batch: Vec<String> = hosts[range.clone()].iter().map(|h| h.name().to_owned()).collect();
    for gate in &rt.gates {
        let verdict: Result<String, String> = match gate {
            Gate::Http(probe) => {
                let results: Vec<(usize, Result<String, gates::HttpGateError>)> =
                    range.clone().zip(probe.check_all(&batch)).collect();
                let mut bad = Vec::new();
                for (i, result) in results {
                    let result = result.map_err(|e| e.to_string()).and_then(|ok| {
                        if rt.programs.is_empty() || probe.answered_by == AnsweredBy::Any {
                            return Ok(ok);
                        }
                        let url = probe.url_for(hosts[i].name());
                        if let Some(note) = answered_by_programs(hosts[i].session.as_mut(), &url, &stage.name)? {
                            hosts[i].slot.report.warn(note);
                        }
                        Ok(ok)
                    });
                    if let Err(e) = result {
                        // What the programs said is often why.
                        let words =
                            if rt.programs.is_empty() { String::new() } else { last_words(hosts[i].session.as_mut()) };
                        let report = &mut hosts[i].slot.report;
                        report.step = HostStep::Gate;
                        report.error = Some(format!("gate http: {e}{words}"));
                        bad.push(format!("{}: {e}", hosts[i].name()));
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
                let others: Vec<String> = hosts[range.end..].iter().map(|h| h.name().to_owned()).collect();
                observer.note(&batch.join(","), "gate errors", &format!("watching for {} s", window.as_secs_f64()));
                let (a, b) = gates::sample_errors(probe, &flipped, &others, *window, *interval);
                gates::judge_errors(a, b, *max_rate, *max_excess, *min_requests).map_err(|e| e.to_string())
            }
            // Judged from HAProxy's counts once the batch is back in rotation.
            Gate::LbErrors { .. } => continue,
            Gate::Command { run, timeout } => {
                gates::run_command(run, *timeout, &batch, &release.to_string()).map_err(|e| e.to_string())
            }
        };
        match verdict {
            Ok(evidence) => observer.note(&batch.join(","), &format!("gate {}", gate.name()), &evidence),
            Err(evidence) => {
                let evidence = format!("gate {} failed after batch {}: {evidence}", gate.name(), batch.join(", "));
                observer.failed(&batch.join(","), &format!("gate {}", gate.name()), &evidence);
                for host in &mut hosts[range.clone()] {
                    // Failed, whatever the policy: a revert makes it Reverted.
                    let report = &mut host.slot.report;
                    report.result = Outcome::Failed;
                    if report.error.is_none() {
                        report.step = HostStep::Gate;
                        report.error = Some(evidence.clone());
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
pub(super) fn recheck(stage: &Stage, hosts: &mut [Connected]) {
    let rt = &stage.runtime;
    let Some(probe) = rt.gates.iter().find_map(|g| if let Gate::Http(p) = g { Some(p) } else { None }) else {
        return;
    };
    let reverted: Vec<usize> = (0..hosts.len()).filter(|i| hosts[*i].slot.report.result == Outcome::Reverted).collect();
    let names: Vec<String> = reverted.iter().map(|i| hosts[*i].name().to_owned()).collect();
    let programs = !rt.programs.is_empty();
    for (i, result) in reverted.into_iter().zip(probe.check_all(&names)) {
        let host = &mut hosts[i];
        let url = probe.url_for(host.name());
        let result = result.map_err(|e| e.to_string()).and_then(|ok| {
            if programs && probe.answered_by == AnsweredBy::Programs {
                answered_by_programs(host.session.as_mut(), &url, &stage.name)?;
            }
            Ok(ok)
        });
        if let Err(e) = result {
            let words = if programs { last_words(host.session.as_mut()) } else { String::new() };
            let report = &mut host.slot.report;
            report.result = Outcome::Failed;
            let before = report.error.take().unwrap_or_default();
            report.error =
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
pub(super) fn down(session: &mut dyn Session, processes: &[crate::host::supervisor::ProcessInfo]) -> Vec<Down> {
    processes
        .iter()
        .filter(|p| p.state != ProcessState::Running)
        .map(|p| Down {
            process: p.name.clone(),
            state: p.state.to_string(),
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
