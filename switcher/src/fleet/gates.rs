//! What a push does around each flip besides flipping: the service's
//! programs (set up on every host before the first flip), its hooks, and the
//! health gates each batch must pass before the next one starts.
//!
//! Detection time each gate implies, after a batch's flips (the `process`
//! gate is the activation itself: a host's flip is done only when every
//! program is RUNNING past its `startsecs` and runs the new release):
//!
//! | gate | a broken release is seen after | a slow one (no answer) after |
//! |---|---|---|
//! | `process` | startsecs (+ ≤ 0.1 s polling) | startsecs + stopwaitsecs + 30 s |
//! | `http` | one request | timeout × retries (+ 0.5 s between tries) |
//! | `errors` | the whole window (it decides on the window's counts) | the window |
//! | `command` | the command's run time | its timeout |

use std::time::{Duration, Instant};

use crate::host::runtime::Program;

/// The service's programs and hooks, and a stage's gates.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// The service's name (for supervisord's unit and init script).
    pub service: String,
    pub programs: Vec<Program>,
    pub hooks: Hooks,
    pub gates: Vec<Gate>,
    /// Environment for the programs on one host (by its name in reports),
    /// over the programs' own: a port per host when hosts share a machine.
    pub host_env: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl Runtime {
    /// The programs as host `name` runs them.
    pub fn programs_for(&self, name: &str) -> Vec<Program> {
        let mut programs = self.programs.clone();
        if let Some(env) = self.host_env.get(name) {
            for p in &mut programs {
                p.environment.extend(env.clone());
            }
        }
        programs
    }
}

/// Commands run on hosts around a push.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Once per push, on one host, from the new release, before any flip.
    pub migrate: Option<String>,
    /// The host it runs on: this one, else the first of the first batch.
    pub migrate_on: Option<String>,
    /// On each host, in the new release, before its flip.
    pub before_flip: Option<String>,
    /// On each host, in the new release, after its flip (and restart).
    pub after_flip: Option<String>,
    /// On the controller, before each batch goes out of rotation and flips
    /// (for a load balancer ferry does not drive), with FERRY_STAGE,
    /// FERRY_BATCH, FERRY_HOSTS and FERRY_RELEASE set.
    pub before_batch: Option<String>,
    /// On the controller, after each batch passed its gates (and is back in
    /// rotation), with the same variables.
    pub after_batch: Option<String>,
    pub timeout: Duration,
}

/// A health gate, checked after each batch's flips.
#[derive(Debug, Clone)]
pub enum Gate {
    /// Each flipped host answers `url` with `status`.
    Http(HttpProbe),
    /// Over `window`, the flipped hosts' share of failed requests (5xx, no
    /// answer) stays under `max_rate`, and under the not-yet-flipped
    /// hosts' share plus `max_excess`; with fewer than `min_requests`
    /// requests the sample is inconclusive, which fails the gate (a gate
    /// that cannot see is not a pass).
    Errors {
        probe: HttpProbe,
        window: Duration,
        interval: Duration,
        max_rate: f64,
        max_excess: f64,
        min_requests: usize,
    },
    /// [`Gate::Errors`] judged from the load balancer's own counts: each
    /// server's responses and 5xx in HAProxy's stats over `window`, once
    /// the batch is back in rotation (the stage must have a load
    /// balancer), against the servers not flipped yet.
    LbErrors { window: Duration, max_rate: f64, max_excess: f64, min_requests: usize },
    /// A command on the controller; exit 0 is healthy. It gets the batch's
    /// hosts in `FERRY_HOSTS` (space-separated) and the release in
    /// `FERRY_RELEASE`.
    Command { run: String, timeout: Duration },
}

/// An HTTP request to each host.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// `{host}` is replaced by the host's address (IPv6 in brackets).
    pub url: String,
    /// URLs for named hosts, over `url` (hosts on one machine, each on its port).
    pub urls: std::collections::BTreeMap<String, String>,
    pub status: u16,
    pub timeout: Duration,
    pub retries: u32,
    /// Who may give the answer on a host (the http gate's).
    pub answered_by: AnsweredBy,
}

/// Who may answer a host's http gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsweredBy {
    /// One of the programs' processes listening on the URL's port on that
    /// host: an answer from any other process (an old one, an orphaned
    /// worker, someone else's server) fails the gate.
    #[default]
    Programs,
    /// Anything (a proxy or load balancer in front of the programs):
    /// ferry does not check who answered, and says so.
    Any,
}

impl Gate {
    pub fn name(&self) -> &'static str {
        match self {
            Gate::Http(_) => "http",
            Gate::Errors { .. } | Gate::LbErrors { .. } => "errors",
            Gate::Command { .. } => "command",
        }
    }
}

impl HttpProbe {
    /// The URL for host `name`.
    pub fn url_for(&self, name: &str) -> String {
        if let Some(url) = self.urls.get(name) {
            return url.clone();
        }
        self.url.replace("{host}", &address_of(name))
    }

    /// One request: `Ok(status)` or why there was none.
    pub fn get(&self, url: &str) -> Result<u16, NoAnswer> {
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        match agent.get(url).call() {
            Ok(response) => Ok(response.status()),
            Err(ureq::Error::Status(code, _)) => Ok(code),
            Err(e) => Err(NoAnswer { url: url.to_owned(), reason: e.to_string() }),
        }
    }

    /// Whether host `name` answers with the expected status within the
    /// retries: the evidence when it does, the last try's failure when not.
    pub fn check(&self, name: &str) -> Result<String, HttpGateError> {
        let url = self.url_for(name);
        let tries = self.retries.max(1);
        let mut last = None;
        for attempt in 1..=tries {
            match self.get(&url) {
                Ok(code) if code == self.status => return Ok(format!("{url} answered {code}")),
                Ok(code) => last = Some(HttpFailure::Status { url: url.clone(), got: code, want: self.status }),
                Err(e) => last = Some(HttpFailure::NoAnswer(e)),
            }
            if attempt < self.retries {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let last = last.expect("at least one try");
        Err(HttpGateError::Failed { last, tries })
    }
}

/// No answer to an HTTP request (a refused connection, a timeout, a bad
/// URL): the message is the HTTP client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NoAnswer {
    /// The URL asked.
    pub url: String,
    /// The HTTP client's words.
    pub reason: String,
}

/// How one try of an http gate on a host failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpFailure {
    /// An answer, with another status than the gate wants.
    #[error("{url} answered {got}, not {want}")]
    Status { url: String, got: u16, want: u16 },
    /// No answer.
    #[error("{url}: {reason}", url = .0.url, reason = .0.reason)]
    NoAnswer(NoAnswer),
}

/// Why a host fails an http gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpGateError {
    /// Every try failed; the last one's failure.
    #[error("{last} (after {tries} tries)")]
    Failed { last: HttpFailure, tries: u32 },
    /// The thread probing the host panicked.
    #[error("the probe panicked")]
    Panicked,
}

/// The address part of a host's name: `user@host:port` → `host`, with an
/// IPv6 address in brackets (for a URL).
pub fn address_of(name: &str) -> String {
    // The same reading of a host's name as the ssh transport's.
    let host = super::host_name::address(name).map_or_else(|_| name.to_owned(), |(_, host, _)| host);
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    }
}

impl HttpProbe {
    /// [`HttpProbe::check`] on every host of `names` at once, in order.
    pub fn check_all(&self, names: &[String]) -> Vec<Result<String, HttpGateError>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = names.iter().map(|n| scope.spawn(move || self.check(n))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(HttpGateError::Panicked))).collect()
        })
    }
}

/// Counts of an error-rate sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub requests: usize,
    pub failures: usize,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} failed ({:.1}%)", self.failures, self.requests, self.rate() * 100.0)
    }
}

/// Probes `flipped` and `others` every `interval` for `window`, in
/// parallel, and counts failures (5xx or no answer).
pub fn sample_errors(
    probe: &HttpProbe,
    flipped: &[String],
    others: &[String],
    window: Duration,
    interval: Duration,
) -> (Sample, Sample) {
    let end = Instant::now() + window;
    let count = |hosts: &[String]| -> Sample {
        std::thread::scope(|scope| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|h| {
                    let url = probe.url_for(h);
                    scope.spawn(move || {
                        let mut s = Sample::default();
                        while Instant::now() < end {
                            let tick = Instant::now();
                            s.requests += 1;
                            if !matches!(probe.get(&url), Ok(code) if code < 500) {
                                s.failures += 1;
                            }
                            std::thread::sleep(interval.saturating_sub(tick.elapsed()));
                        }
                        s
                    })
                })
                .collect();
            handles.into_iter().fold(Sample::default(), |acc, h| {
                let s = h.join().unwrap_or_default();
                Sample { requests: acc.requests + s.requests, failures: acc.failures + s.failures }
            })
        })
    };
    std::thread::scope(|scope| {
        let a = scope.spawn(|| count(flipped));
        let b = scope.spawn(|| count(others));
        (a.join().unwrap_or_default(), b.join().unwrap_or_default())
    })
}

/// Why the flipped hosts fail an errors gate; each message ends with the
/// evidence, both samples.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorsGateError {
    /// Too few requests to the flipped hosts to judge.
    #[error(
        "inconclusive: {} requests to the flipped hosts, fewer than min_requests = {min_requests} (flipped hosts \
         {flipped}, hosts not yet flipped {others})",
        .flipped.requests
    )]
    Inconclusive { flipped: Sample, others: Sample, min_requests: usize },
    /// The flipped hosts' rate is over the ceiling.
    #[error(
        "error rate {:.1}% over max_rate {:.1}% (flipped hosts {flipped}, hosts not yet flipped {others})",
        .flipped.rate() * 100.0,
        .max_rate * 100.0
    )]
    OverMaxRate { flipped: Sample, others: Sample, max_rate: f64 },
    /// The flipped hosts' rate is over the unflipped hosts' by more than
    /// `max_excess` and than chance explains (`z` over 1.645).
    #[error(
        "error rate {:.1}% over the unflipped hosts' {:.1}% + max_excess {:.1}% (z = {z:.2}) (flipped hosts \
         {flipped}, hosts not yet flipped {others})",
        .flipped.rate() * 100.0,
        .others.rate() * 100.0,
        .max_excess * 100.0
    )]
    OverOthers { flipped: Sample, others: Sample, max_excess: f64, z: f64 },
}

/// The verdict on an error-rate sample: `Ok(evidence)` or why it fails.
/// The flipped hosts fail when their rate is over `max_rate`, or when it is
/// over the unflipped hosts' by more than `max_excess` and by more than
/// chance explains (a one-sided two-proportion z-test at 95%, with both
/// samples of `min_requests` or more and at least 5 failures, below which
/// the test's normal approximation does not hold).
pub fn judge_errors(
    flipped: Sample,
    others: Sample,
    max_rate: f64,
    max_excess: f64,
    min_requests: usize,
) -> Result<String, ErrorsGateError> {
    if flipped.requests < min_requests {
        return Err(ErrorsGateError::Inconclusive { flipped, others, min_requests });
    }
    if flipped.rate() > max_rate {
        return Err(ErrorsGateError::OverMaxRate { flipped, others, max_rate });
    }
    if others.requests >= min_requests && flipped.failures >= 5 && flipped.rate() > others.rate() + max_excess {
        let pooled = (flipped.failures + others.failures) as f64 / (flipped.requests + others.requests) as f64;
        let se = (pooled * (1.0 - pooled) * (1.0 / flipped.requests as f64 + 1.0 / others.requests as f64)).sqrt();
        let z = if se > 0.0 { (flipped.rate() - others.rate()) / se } else { 0.0 };
        if z > 1.645 {
            return Err(ErrorsGateError::OverOthers { flipped, others, max_excess, z });
        }
    }
    Ok(format!("flipped hosts {flipped}, hosts not yet flipped {others}"))
}

/// Why a command gate fails.
#[derive(Debug, thiserror::Error)]
pub enum CommandGateError {
    /// `sh` could not be run.
    #[error("cannot run sh -c {run:?}: {error}")]
    Spawn { run: String, error: std::io::Error },
    /// The command exited other than 0; `tail` is its last lines of output.
    #[error("`{run}` exited with {status}{}", said(tail))]
    Exited { run: String, status: std::process::ExitStatus, tail: String },
    /// The command ran past its timeout and was killed.
    #[error("`{run}` did not finish in {} s{}", .timeout.as_secs(), said(tail))]
    TimedOut { run: String, timeout: Duration, tail: String },
}

/// A command's last output after a colon, or that it said nothing.
fn said(tail: &str) -> String {
    if tail.trim().is_empty() {
        " (and wrote nothing)".to_owned()
    } else {
        format!(": {tail}")
    }
}

/// Runs a controller-side command gate: the evidence when it exits 0.
pub fn run_command(run: &str, timeout: Duration, hosts: &[String], release: &str) -> Result<String, CommandGateError> {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(run).env("FERRY_HOSTS", hosts.join(" ")).env("FERRY_RELEASE", release);
    run_in(sh, run, timeout)
}

/// Runs `sh` (the command `run` as the user wrote it) for at most
/// `timeout`: what it said when it exited 0, else why not with its last
/// lines.
pub fn run_in(sh: std::process::Command, run: &str, timeout: Duration) -> Result<String, CommandGateError> {
    let (status, output) = crate::host::runtime::run_bounded(sh, timeout)
        .map_err(|error| CommandGateError::Spawn { run: run.to_owned(), error })?;
    let tail: Vec<&str> = output.lines().collect();
    let tail = tail[tail.len().saturating_sub(5)..].join(" / ");
    let run = run.to_owned();
    match status {
        Some(s) if s.success() => Ok(format!("`{run}` exited 0")),
        Some(status) => Err(CommandGateError::Exited { run, status, tail }),
        None => Err(CommandGateError::TimedOut { run, timeout, tail }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_for_urls() {
        assert_eq!(address_of("web1"), "web1");
        assert_eq!(address_of("deploy@10.0.0.2:2222"), "10.0.0.2");
        assert_eq!(address_of("root@[fd00::2]:22"), "[fd00::2]");
        assert_eq!(address_of("fd00::2"), "[fd00::2]");
    }

    #[test]
    fn error_rates_are_judged_against_the_ceiling_the_others_and_the_sample_size() {
        let s = |requests, failures| Sample { requests, failures };
        assert!(judge_errors(s(100, 1), s(100, 1), 0.05, 0.02, 20).is_ok());
        let too_high = judge_errors(s(100, 30), s(100, 0), 0.05, 0.02, 20).unwrap_err().to_string();
        assert!(too_high.starts_with("error rate 30.0% over max_rate 5.0%"), "{too_high}");
        // Under the ceiling, but well over what the old release does…
        let worse = judge_errors(s(400, 16), s(400, 0), 0.05, 0.02, 20).unwrap_err().to_string();
        assert!(worse.contains("over the unflipped hosts' 0.0% + max_excess 2.0% (z = 4."), "{worse}");
        // …unless chance explains it, or the others' sample is too small.
        assert!(judge_errors(s(50, 2), s(150, 0), 0.05, 0.02, 20).is_ok());
        assert!(judge_errors(s(400, 16), s(1, 0), 0.05, 0.02, 20).is_ok());
        let few = judge_errors(s(5, 0), s(100, 0), 0.05, 0.02, 20).unwrap_err().to_string();
        assert!(few.starts_with("inconclusive: 5 requests"), "{few}");
    }
}
