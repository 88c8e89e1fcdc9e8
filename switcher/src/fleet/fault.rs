//! A transport that wraps another and injects faults at chosen steps of
//! chosen hosts: a refused step (as from a full disk), or something done
//! to the host around a step (a link cut before or after staging). For
//! tests of the orchestration, against the local transport or real test
//! hosts alike: every call a fault does not touch goes through unchanged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;

use super::{HostSpec, Session, Transport};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use crate::host::{Flipped, HostError, Pruned, StageOptions, Staged, Status};

/// Where in a session a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    BeforeStage,
    AfterStage,
    BeforeActivate,
}

/// What a fault does there.
pub enum Then {
    /// The step is refused (`injected fault: <step> on <host>`), as the
    /// host would refuse it.
    Refuse,
    /// The link breaks there (`injected fault: the link to <host> broke at
    /// <step>`), as a transport error, not the host's answer.
    Break,
    /// This runs (cut the host's link, kill its agent…), then the step.
    Run(Box<dyn Fn() + Send + Sync>),
}

impl std::fmt::Debug for Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Then::Refuse => "Refuse",
            Then::Break => "Break",
            Then::Run(_) => "Run(…)",
        })
    }
}

/// One fault: on `host`, at `at`, `then`.
#[derive(Debug)]
pub struct Fault {
    pub host: String,
    pub at: At,
    pub then: Then,
}

/// `inner` with `faults`.
#[derive(Debug)]
pub struct Faults<T> {
    inner: T,
    faults: Vec<Arc<Fault>>,
}

impl<T> Faults<T> {
    pub fn new(inner: T, faults: Vec<Fault>) -> Self {
        Self { inner, faults: faults.into_iter().map(Arc::new).collect() }
    }
}

impl<T: Transport> Transport for Faults<T> {
    fn connect(&self, host: &HostSpec, lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        let inner = self.inner.connect(host, lock)?;
        let faults = self.faults.iter().filter(|f| f.host == host.name).cloned().collect();
        Ok(Box::new(FaultySession { name: host.name.clone(), inner, faults }))
    }
}

struct FaultySession {
    name: String,
    inner: Box<dyn Session>,
    faults: Vec<Arc<Fault>>,
}

impl FaultySession {
    /// Runs the faults at `at`; an error for a refusal.
    fn strike(&self, at: At, step: &str) -> Result<(), HostError> {
        for fault in self.faults.iter().filter(|f| f.at == at) {
            match &fault.then {
                Then::Refuse => return Err(HostError::Input(format!("injected fault: {step} on {}", self.name))),
                Then::Break => {
                    return Err(HostError::Link(format!("injected fault: the link to {} broke at {step}", self.name)))
                }
                Then::Run(run) => run(),
            }
        }
        Ok(())
    }
}

impl Session for FaultySession {
    fn status(&mut self) -> Result<Status, HostError> {
        self.inner.status()
    }
    fn stage(&mut self, payload: &Path, opts: &StageOptions, signature: Option<&str>) -> Result<Staged, HostError> {
        self.strike(At::BeforeStage, "stage")?;
        let staged = self.inner.stage(payload, opts, signature);
        self.strike(At::AfterStage, "stage")?;
        staged
    }
    fn stage_fetched(
        &mut self,
        fetch: &super::Fetch,
        opts: &StageOptions,
        sig: Option<&str>,
    ) -> Result<Staged, HostError> {
        self.strike(At::BeforeStage, "stage")?;
        let staged = self.inner.stage_fetched(fetch, opts, sig);
        self.strike(At::AfterStage, "stage")?;
        staged
    }
    fn activate(&mut self, id: &ReleaseId, opts: &StageOptions) -> Result<Flipped, HostError> {
        self.strike(At::BeforeActivate, "activate")?;
        self.inner.activate(id, opts)
    }
    fn rollback(&mut self, to: Option<&ReleaseId>) -> Result<Flipped, HostError> {
        self.inner.rollback(to)
    }
    fn prune(&mut self, keep: usize) -> Result<Pruned, HostError> {
        self.inner.prune(keep)
    }
    fn pin_keys(&mut self, keys: &[String], replace: bool) -> Result<crate::host::Pinned, HostError> {
        self.inner.pin_keys(keys, replace)
    }
    fn signature(&mut self) -> Result<Signature, HostError> {
        self.inner.signature()
    }
    fn journal(&mut self) -> Result<Vec<Record>, HostError> {
        self.inner.journal()
    }
    fn revert(&mut self, to: &ReleaseId, reason: &str) -> Result<Flipped, HostError> {
        self.inner.revert(to, reason)
    }
    fn restart(&mut self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.inner.restart(id)
    }
    fn listeners(&mut self, port: u16) -> Result<Vec<PortHolder>, HostError> {
        self.inner.listeners(port)
    }
    fn setup(&mut self, service: &str, programs: &[Program]) -> Result<SetUp, HostError> {
        self.inner.setup(service, programs)
    }
    fn install(&mut self, service: &str) -> Result<Installed, HostError> {
        self.inner.install(service)
    }
    fn hook(&mut self, id: &ReleaseId, kind: HookKind, command: &str, timeout: Duration) -> Result<HookRun, HostError> {
        self.inner.hook(id, kind, command, timeout)
    }
    fn logs(
        &mut self,
        program: Option<&str>,
        offsets: &BTreeMap<String, i64>,
        bytes: i32,
    ) -> Result<Vec<LogChunk>, HostError> {
        self.inner.logs(program, offsets, bytes)
    }
    fn admin_socket(&mut self, socket: &Path, command: &str) -> Result<String, HostError> {
        self.inner.admin_socket(socket, command)
    }
}
