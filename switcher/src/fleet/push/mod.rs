//! `ferry push`: connect and look, stage everywhere, set up and migrate,
//! then activate batch by batch behind the gates; on a failure, revert the
//! hosts this push flipped. Each phase is a function over the connected
//! hosts; the first that stops the push returns its report.

mod activate;
mod balance;
mod fetch;
mod health;
mod stage;

pub use balance::{LbBatch, LbReport};
// The preview decides what each host gets as the push does.
pub(super) use stage::{payload, Payload};

use std::time::Instant;

use ferry_formats::ReleaseId;
use rayon::prelude::*;

use super::connect::{connect_all, finish, finish_connected, pool, Connected, Slot};
use super::gates::{AnsweredBy, Gate};
use super::report::{Down, HostStep, Observer, Phases, Report, Shipped};
use super::{batches, OnFailure, ReleaseSource, Stage, Transport};
use crate::host::error_chain;
use crate::host::runtime::HookKind;

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
    let stop = |slots: Vec<Slot>, phases: Phases| {
        let mut report = finish(stage, Some(*release), slots, Vec::new(), start);
        report.phases = phases.seconds;
        report
    };
    // What each host has, and so what it needs: asked as each connects.
    let connected = connect_all(stage, transport, Some(&command), observer, |host| look(host, release, observer));
    phases.done("connect");
    let mut hosts = match connected {
        Ok(hosts) => hosts,
        // Nothing has changed anywhere yet: stop before staging.
        Err(slots) => return stop(slots, phases),
    };
    let pool = pool(stage.max_parallel);
    let plan = batches(hosts.len(), &stage.strategy);
    let names: Vec<Vec<String>> =
        plan.iter().map(|r| hosts[r.clone()].iter().map(|h| h.name().to_owned()).collect()).collect();

    // The load balancer, checked before anything changes: its sockets, its
    // servers, and that no batch would leave a backend short.
    let mut balancer = match balancer(stage, transport, &names) {
        Ok(b) => b,
        Err(e) => {
            let mut report = stop(super::connect::close(hosts), phases);
            report.load_balancer = Some(LbReport { error: Some(e.to_string()), ..LbReport::default() });
            return report;
        }
    };
    if balancer.is_some() {
        phases.done("load_balancer");
    }

    stage::stage_all(&mut hosts, stage, source, release, observer);
    if hosts.iter().any(Connected::failed) {
        return stop(super::connect::close(hosts), phases);
    }
    phases.done("stage");

    let rt = &stage.runtime;
    let end = |hosts: Vec<Connected>, phases: Phases| {
        let mut report = finish_connected(stage, Some(*release), hosts, names.clone(), start);
        report.phases = phases.seconds;
        report
    };

    if !rt.programs.is_empty() {
        set_up(&pool, &mut hosts, stage, observer);
        if hosts.iter().any(Connected::failed) {
            return end(hosts, phases);
        }
        phases.done("setup");
    }

    // Migrations: once, on one host, from the new release, before any flip
    // (none when every host runs it already: nothing is new).
    let anything_new = hosts.iter().any(|h| !activate::left_alone(h, release, stage));
    if let Some(command) = rt.hooks.migrate.as_ref().filter(|_| anything_new) {
        let on = rt.hooks.migrate_on.as_ref().and_then(|name| hosts.iter().position(|h| h.name() == name));
        let host = &mut hosts[on.unwrap_or(plan.first().map_or(0, |r| r.start))];
        observer.note(&host.slot.spec.name, "migrate", command);
        if !activate::run_hook(host, release, HookKind::Migrate, command, rt.hooks.timeout) {
            observer.failed(&host.slot.spec.name, "migrate", host.slot.report.error.as_deref().unwrap_or_default());
            return end(hosts, phases);
        }
        phases.done("migrate");
    }

    // Activate batch by batch; each batch's gates before the next.
    let mut failed: Option<String> = None;
    let mut gate_failed = None;
    let mut failed_batch = 0;
    for (n, range) in plan.iter().enumerate() {
        failed_batch = n;
        let batch = &names[n];
        if let Err(e) =
            balance::batch_hook(stage, "before_batch", rt.hooks.before_batch.as_ref(), batch, n, release, observer)
        {
            failed = Some(e);
            break;
        }
        if let Some(b) = balancer.as_mut() {
            if let Err(e) = b.take_out(batch, observer) {
                failed = Some(e);
                break;
            }
        }
        pool.install(|| {
            hosts[range.clone()].par_iter_mut().for_each(|host| {
                host.slot.report.batch = Some(n + 1);
                activate::activate_one(host, release, stage, observer, n);
            });
        });
        if let Some(bad) = hosts[range.clone()].iter().find(|h| h.failed()) {
            let report = &bad.slot.report;
            failed = Some(format!(
                "{} failed at {}: {}",
                bad.name(),
                report.step,
                report.error.as_deref().unwrap_or("unknown")
            ));
            break;
        }
        if let Err(evidence) = health::check_gates(stage, &mut hosts, range.clone(), release, observer) {
            gate_failed = Some(evidence.clone());
            failed = Some(evidence);
            break;
        }
        // Back in rotation only once ferry's own gates passed.
        if let Some(b) = balancer.as_mut() {
            if let Err(e) = b.put_in(batch, observer) {
                failed = Some(e);
                break;
            }
            if let Some(gate) = rt.gates.iter().find(|g| matches!(g, Gate::LbErrors { .. })) {
                let others: Vec<String> = names[n + 1..].iter().flatten().cloned().collect();
                match b.errors_gate(gate, batch, &others, observer) {
                    Ok(evidence) => observer.note(&batch.join(","), "gate errors", &evidence),
                    Err(evidence) => {
                        let evidence = format!("gate errors failed after batch {}: {evidence}", batch.join(", "));
                        observer.failed(&batch.join(","), "gate errors", &evidence);
                        for host in &mut hosts[range.clone()] {
                            host.slot.report.fail(HostStep::Gate, evidence.clone());
                        }
                        gate_failed = Some(evidence.clone());
                        failed = Some(evidence);
                        break;
                    }
                }
            }
        }
        if let Err(e) =
            balance::batch_hook(stage, "after_batch", rt.hooks.after_batch.as_ref(), batch, n, release, observer)
        {
            failed = Some(e);
            break;
        }
    }
    phases.done("activate");
    if let Some(why) = failed {
        if stage.on_failure == OnFailure::Revert {
            match balancer.as_mut() {
                Some(b) => balance::revert(&pool, &mut hosts, &plan[..=failed_batch], stage, b, observer, &why),
                None => {
                    activate::revert(&pool, &mut hosts, observer, &why);
                    health::recheck(stage, &mut hosts);
                }
            }
            phases.done("revert");
        }
        let mut report = end(hosts, phases);
        if gate_failed.is_none() {
            report.error = Some(why);
        }
        report.gate = gate_failed;
        report.load_balancer = balancer.map(balance::Balancer::finish);
        report.ok = false;
        return report;
    }

    clean_up(&pool, &mut hosts, stage);
    phases.done("cleanup");
    let mut report = end(hosts, phases);
    report.notes = notes(stage);
    report.load_balancer = balancer.map(balance::Balancer::finish);
    report.ok &= report.load_balancer.as_ref().is_none_or(|lb| lb.error.is_none() && lb.left_out.is_empty());
    report
}

/// The stage's load balancer, connected and checked, unless the push
/// leaves it alone; with `--out`, every host must be out of rotation.
fn balancer<'a>(
    stage: &'a Stage,
    transport: &dyn Transport,
    batches: &[Vec<String>],
) -> Result<Option<balance::Balancer<'a>>, String> {
    let Some(config) = &stage.load_balancer else { return Ok(None) };
    let mut lb = super::lb::Lb::connect(config, transport).map_err(|e| e.to_string())?;
    if stage.out_of_rotation {
        let out = lb.out_of_rotation().map_err(|e| e.to_string())?;
        let in_rotation: Vec<&String> = batches.iter().flatten().filter(|h| !out.contains(h)).collect();
        if !in_rotation.is_empty() {
            let names: Vec<&str> = in_rotation.iter().map(|h| h.as_str()).collect();
            return Err(format!(
                "--out pushes only to hosts out of rotation, and {} in rotation on the load balancer; nothing was \
                 changed: take them out first (`ferry lb {} out …`)",
                if names.len() == 1 { format!("{} is", names[0]) } else { format!("{} are", names.join(", ")) },
                stage.name
            ));
        }
        return Ok(None);
    }
    let mut balancer = balance::Balancer::new(lb);
    balancer.guard_all(batches).map_err(|e| e.to_string())?;
    Ok(Some(balancer))
}

/// As a host connects: what it runs (the delta's base), whether it has the
/// release, and its programs that are down before anything flips.
fn look(host: &mut Connected, release: &ReleaseId, observer: &dyn Observer) {
    host.slot.report.step = HostStep::Status;
    host.slot.report.to = Some(*release);
    let status = match host.session.status() {
        Ok(status) => status,
        Err(e) => return host.fail(HostStep::Status, &e),
    };
    // Look before leaping: programs already down are the host's news
    // before anything flips, not after.
    let mut down = health::down(host.session.as_mut(), &status.programs);
    if let Some(why) = &status.supervisord_down {
        down.push(Down {
            process: "supervisord".into(),
            state: "NOT RUNNING".into(),
            description: why.clone(),
            output: String::new(),
        });
    }
    host.current = status.current;
    let report = &mut host.slot.report;
    report.from = status.current;
    if status.releases.iter().any(|r| r.id == *release) {
        report.shipped = Shipped::None;
    }
    let name = &host.slot.spec.name;
    if let Some(gone) = status.current.filter(|c| !status.releases.iter().any(|r| r.id == *c)) {
        host.current_gone = true;
        let said = format!(
            "its current release {} is not on disk (removed by hand?): it gets the whole bundle, and cannot go \
             back to {0} if the push fails",
            gone.short(12)
        );
        observer.note(name, "status", &said);
        report.warn(said);
    }
    if !down.is_empty() {
        let said: Vec<String> = down.iter().map(|d| format!("{} {} ({})", d.process, d.state, d.description)).collect();
        // Said now, as it is found; the report carries it as `down_before`.
        observer.note(name, "programs", &format!("was down before the push: {}", said.join(", ")));
        report.down_before = down;
    }
}

/// The programs' supervisord on every host, before any flip.
fn set_up(pool: &rayon::ThreadPool, hosts: &mut [Connected], stage: &Stage, observer: &dyn Observer) {
    let rt = &stage.runtime;
    pool.install(|| {
        hosts.par_iter_mut().for_each(|host| {
            host.slot.report.step = HostStep::Setup;
            let programs = rt.programs_for(host.name());
            match host.session.setup(&rt.service, &programs) {
                Ok(set_up) => {
                    if !set_up.did.is_empty() {
                        observer.note(&host.slot.spec.name, "setup", &set_up.did.join("; "));
                    }
                    if set_up.started_supervisord {
                        host.slot.report.warn(crate::host::runtime::NOT_RUNNING);
                    }
                }
                Err(e) => {
                    observer.failed(&host.slot.spec.name, "setup", &error_chain(&e));
                    host.fail(HostStep::Setup, &e);
                }
            }
        });
    });
}

/// Capistrano's deploy:cleanup: old releases go once the push succeeded.
fn clean_up(pool: &rayon::ThreadPool, hosts: &mut [Connected], stage: &Stage) {
    pool.install(|| {
        hosts.par_iter_mut().for_each(|host| match host.session.prune(stage.keep_releases) {
            Ok(pruned) => {
                for (id, hold) in &pruned.held {
                    host.slot.report.warn(format!(
                        "kept release {}: pid {} still uses it ({} {})",
                        id.short(12),
                        hold.pid,
                        hold.via,
                        hold.path.display()
                    ));
                }
            }
            // The push succeeded; a failed cleanup is reported, not undone.
            Err(e) => host.slot.report.warn(format!("prune failed: {}", error_chain(&e))),
        });
    });
}

/// What a successful push could not check, said once.
fn notes(stage: &Stage) -> Vec<String> {
    let rt = &stage.runtime;
    let mut notes = Vec::new();
    let answers = rt.gates.iter().any(|g| matches!(g, Gate::Http(_) | Gate::Errors { .. } | Gate::LbErrors { .. }));
    if !rt.programs.is_empty() && !answers {
        notes.push(format!(
            "no http or errors gate: ferry checked that the programs run the new release, not that they answer; \
             add [stages.{}.health.http] to know",
            stage.name
        ));
    }
    if rt.gates.iter().any(|g| matches!(g, Gate::Http(p) if p.answered_by == AnsweredBy::Any)) {
        notes.push(
            "health.http.answered_by = \"any\": the gate's answers were not checked to come from the new \
             release's processes"
                .into(),
        );
    }
    notes
}
