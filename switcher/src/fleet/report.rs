//! What a push or rollback says: per host, the step it reached and how it
//! ended, as enums whose JSON reads as the words users see; and the events
//! a progress display gets as it goes.

use std::collections::BTreeMap;
use std::time::Instant;

use ferry_formats::ReleaseId;
use serde::Serialize;

use crate::host::runtime::HookRun;

/// A step of a push or rollback on one host: the last one reached is the
/// report's `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStep {
    Connect,
    Status,
    Stage,
    Setup,
    Migrate,
    BeforeFlip,
    Activate,
    /// Left alone: it runs the release already.
    Current,
    /// Restarted on the release it runs (`--force`).
    Restart,
    AfterFlip,
    Gate,
    Revert,
    Rollback,
}

impl HostStep {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStep::Connect => "connect",
            HostStep::Status => "status",
            HostStep::Stage => "stage",
            HostStep::Setup => "setup",
            HostStep::Migrate => "migrate",
            HostStep::BeforeFlip => "before_flip",
            HostStep::Activate => "activate",
            HostStep::Current => "current",
            HostStep::Restart => "restart",
            HostStep::AfterFlip => "after_flip",
            HostStep::Gate => "gate",
            HostStep::Revert => "revert",
            HostStep::Rollback => "rollback",
        }
    }
}

impl From<crate::host::runtime::HookKind> for HostStep {
    /// The step a hook runs at.
    fn from(kind: crate::host::runtime::HookKind) -> Self {
        use crate::host::runtime::HookKind;
        match kind {
            HookKind::Migrate => HostStep::Migrate,
            HookKind::BeforeFlip => HostStep::BeforeFlip,
            HookKind::AfterFlip => HostStep::AfterFlip,
            // Run by hand, outside a push: the step it was is no push's.
            HookKind::Exec => HostStep::Status,
        }
    }
}

impl std::fmt::Display for HostStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: the report table aligns it by width.
        f.pad(self.as_str())
    }
}

/// What a host was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shipped {
    /// Nothing: it had the release already.
    None,
    /// The delta from the release it runs.
    Delta,
    /// An rsync delta against its files (the store does not know what it runs).
    Rsync,
    /// The whole bundle.
    Bundle,
}

impl Shipped {
    pub fn as_str(self) -> &'static str {
        match self {
            Shipped::None => "none",
            Shipped::Delta => "delta",
            Shipped::Rsync => "rsync",
            Shipped::Bundle => "bundle",
        }
    }

    /// A delta of either kind, which a host may refuse (a base file it
    /// changed) and the whole bundle can replace.
    pub fn is_delta(self) -> bool {
        matches!(self, Shipped::Delta | Shipped::Rsync)
    }
}

impl std::fmt::Display for Shipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: the report table aligns it by width.
        f.pad(self.as_str())
    }
}

/// How one host fared.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub from: Option<ReleaseId>,
    pub to: Option<ReleaseId>,
    /// The last step reached.
    pub step: HostStep,
    pub result: Outcome,
    pub shipped: Shipped,
    /// Payload bytes the controller sent it.
    pub bytes: u64,
    /// Payload bytes it downloaded from the object store itself
    /// (`fetch = "store"`), not through the controller.
    #[serde(skip_serializing_if = "is_zero")]
    pub fetched: u64,
    pub seconds: f64,
    /// The batch it was flipped in (1-based), if any.
    pub batch: Option<usize>,
    /// It has the release staged (shipped now, or already there).
    pub staged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// What is worth saying but went right: asset files bridged from the
    /// release it ran (`bridged 3 asset files from <id>`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hooks run on it, with their output.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRun>,
    /// The programs' processes that were not running when the push found
    /// the host, before anything flipped: a revert takes such a host back
    /// to a release that was down, not to one that worked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub down_before: Vec<Down>,
}

impl HostReport {
    /// A host not reached yet.
    pub(super) fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            from: None,
            to: None,
            step: HostStep::Connect,
            result: Outcome::Skipped,
            shipped: Shipped::None,
            bytes: 0,
            fetched: 0,
            seconds: 0.0,
            batch: None,
            staged: false,
            warning: None,
            notes: Vec::new(),
            error: None,
            hooks: Vec::new(),
            down_before: Vec::new(),
        }
    }

    /// Adds a warning to the host's line (after any it has).
    pub(super) fn warn(&mut self, warning: impl Into<String>) {
        let warning = warning.into();
        self.warning = Some(match self.warning.take() {
            Some(before) => format!("{before}; {warning}"),
            None => warning,
        });
    }

    /// It failed at `step`, for `why`.
    pub(super) fn fail(&mut self, step: HostStep, why: String) {
        self.step = step;
        self.result = Outcome::Failed;
        self.error = Some(why);
    }
}

/// A program's process found not running.
#[derive(Debug, Clone, Serialize)]
pub struct Down {
    /// `program` or `group:process`.
    pub process: String,
    /// supervisord's state: STOPPED, EXITED, FATAL, BACKOFF…
    pub state: String,
    pub description: String,
    /// Its last lines of output (stderr, then stdout).
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// Flipped in this push and flipped back after another host failed.
    Reverted,
    /// Never reached: the push stopped first.
    Skipped,
}

/// The end of a push or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub stage: String,
    pub release: Option<ReleaseId>,
    pub ok: bool,
    /// The hosts of each batch, in order.
    pub batches: Vec<Vec<String>>,
    pub hosts: Vec<HostReport>,
    pub seconds: f64,
    /// Wall time of each phase, in seconds: connect (with locks), stage,
    /// setup, migrate, activate (every batch, with its gates), revert,
    /// cleanup; a phase not reached is absent.
    pub phases: BTreeMap<String, f64>,
    /// The health gate that failed, and its evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// What ferry could not check, said once for the whole push.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What stopped the push when it was no one host's step (a batch hook,
    /// the load balancer) and no gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the load balancer did, when the stage has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<super::LbReport>,
}

impl Report {
    /// Whether anything was changed or sent: a report where nothing was is
    /// a fatal error (nothing could start), not some hosts failing.
    pub fn started(&self) -> bool {
        self.hosts.iter().any(|h| h.staged || h.batch.is_some() || h.step == HostStep::Rollback)
    }
}

/// Wall time per phase of a push.
pub(super) struct Phases {
    mark: Instant,
    pub(super) seconds: BTreeMap<String, f64>,
}

impl Phases {
    pub(super) fn new() -> Self {
        Self { mark: Instant::now(), seconds: BTreeMap::new() }
    }

    pub(super) fn done(&mut self, phase: &str) {
        self.seconds.insert(phase.to_owned(), self.mark.elapsed().as_secs_f64());
        self.mark = Instant::now();
    }
}

/// One thing a push or rollback did, as it happened, for progress.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The host, or a batch's hosts joined by commas.
    pub host: &'a str,
    /// What it is about, as a person reads it: a step ("stage"), what came
    /// of one ("staged", "activated"), or a gate ("gate http").
    pub label: &'a str,
    pub detail: &'a str,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// News on the way.
    Note,
    /// One of a host's counted steps is done: staged, flipped, flipped
    /// back, rolled back.
    Done,
    /// It failed; `detail` says why, and the report says it again.
    Failed,
}

/// Sees a push as it goes, for progress on a terminal.
pub trait Observer: Sync {
    fn event(&self, event: &Event<'_>);

    fn note(&self, host: &str, label: &str, detail: &str) {
        self.event(&Event { host, label, detail, kind: EventKind::Note });
    }

    fn done(&self, host: &str, label: &str, detail: &str) {
        self.event(&Event { host, label, detail, kind: EventKind::Done });
    }

    fn failed(&self, host: &str, label: &str, detail: &str) {
        self.event(&Event { host, label, detail, kind: EventKind::Failed });
    }
}

/// An observer that sees nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
