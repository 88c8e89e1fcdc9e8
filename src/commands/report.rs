//! How a push or rollback shows itself: a line per host step as it goes
//! (above a bar on a terminal), then the table, each error once, and a
//! last line that says how it ended; and the exit code that goes with it.

use anyhow::Result;
use ferry_formats::ReleaseId;
use ferry_switcher::fleet::{self, Event, EventKind, HostStep, Observer, Outcome, Report};

use crate::exit;
use crate::output;
use crate::settings::Settings;

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
pub(super) fn observer(settings: &Settings, steps: u64) -> Box<dyn Observer> {
    if settings.output.json || settings.output.quiet {
        Box::new(fleet::Quiet)
    } else if settings.output.progress {
        Box::new(Bar::new(steps))
    } else {
        Box::new(Lines)
    }
}

/// 0 all ok, 1 some hosts failed, 2 nothing could start.
pub(super) fn exit_code(report: &Report) -> u8 {
    if report.ok {
        exit::OK
    } else if report.started() {
        exit::HOSTS_FAILED
    } else {
        exit::FATAL
    }
}

/// Which command a report is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Push,
    /// A push as part of `ferry deploy`.
    Deploy,
    Rollback,
}

/// Prints the report and returns the exit code: 0 all ok, 1 some hosts
/// failed, 2 nothing could start (no host staged or flipped anything).
///
/// Each error is said once: the one that stopped the command (the failed
/// gate's evidence, else the first failed host's) in the last line, every
/// other host's own above it. Step lines and the table only say "failed".
/// With --quiet, only those lines, the warnings and the last line.
pub(super) fn show(settings: &Settings, report: &Report, verb: Verb) -> Result<u8> {
    let code = exit_code(report);
    if settings.output.json && verb == Verb::Deploy {
        // `ferry deploy` prints one document, with the push's report in it.
        return Ok(code);
    }
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
    if let Some(lb) = &report.load_balancer {
        if !quiet {
            for b in &lb.batches {
                eprintln!(
                    "load balancer: {} out of rotation {:.2} s (drain {:.2} s, flip and gates {:.2} s, UP after {:.2} s)",
                    b.hosts.join(", "),
                    b.seconds,
                    b.drain_seconds,
                    b.flip_seconds,
                    b.up_seconds
                );
            }
        }
        for (host, sessions) in lb.batches.iter().flat_map(|b| &b.forced) {
            eprintln!("warning: {host}: {sessions} sessions outlived the drain timeout and were shut down");
        }
        for host in &lb.left_out {
            let stage = &report.stage;
            match &lb.error {
                // What HAProxy last got is unknown: say so.
                Some(_) => eprintln!(
                    "warning: {host} is left out of rotation as far as ferry knows: the load balancer stopped \
                     answering before ferry could put it back; `ferry lb {stage} status` shows what it has, and \
                     `ferry lb {stage} in {host}` puts it back"
                ),
                None => eprintln!(
                    "warning: {host} is left out of rotation: its release did not pass; `ferry lb {stage} in {host}` \
                     puts it back"
                ),
            }
        }
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
            let what = if verb == Verb::Rollback { "rollback" } else { "push" };
            format!("{what} failed: {why}{back}")
        }
        (None, Verb::Push | Verb::Deploy) => {
            let batches: Vec<String> = report.batches.iter().map(|b| b.join(", ")).collect();
            let shipped: u64 = report.hosts.iter().map(|h| h.bytes).sum();
            let fetched: u64 = report.hosts.iter().map(|h| h.fetched).sum();
            let fetched = if fetched == 0 {
                String::new()
            } else {
                format!(" from here, and the hosts fetched {} from the store", output::bytes(fetched))
            };
            let current = report.hosts.iter().filter(|h| h.step == HostStep::Current).count();
            format!(
                "pushed {} to {hosts} of {} in {:.2}s{}{}; shipped {}{fetched}",
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
    if let Some(e) = report.load_balancer.as_ref().and_then(|lb| lb.error.as_ref()) {
        return (e.clone(), None);
    }
    let failed = report.hosts.iter().position(|h| h.result == Outcome::Failed && h.error.is_some());
    match failed.or_else(|| report.hosts.iter().position(|h| h.error.is_some())) {
        Some(i) => {
            let h = &report.hosts[i];
            // As every other host's error line reads.
            (format!("{}: {} failed: {}", h.host, h.step, h.error.as_deref().unwrap_or_default()), Some(i))
        }
        None if report.error.is_some() => (report.error.clone().unwrap_or_default(), None),
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
/// were down before the push, and (not with `quiet`) notes and the hooks'
/// output.
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
        lines.extend(h.notes.iter().map(|n| format!("{}: {n}", h.host)));
    }
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
            fetched: 0,
            seconds: 0.0,
            batch: None,
            staged: true,
            warning: None,
            notes: Vec::new(),
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
