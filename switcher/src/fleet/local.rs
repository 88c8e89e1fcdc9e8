//! The `local` transport: hosts are directories on this machine (each one
//! stands for a host's root file system, and the service lives at
//! `<dir>/<deploy_to>`). The embedded default: the quickstart and the fast
//! orchestration tests use it. It calls the host side in-process.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ferry_formats::journal::Record;
use ferry_formats::signature::Signature;
use ferry_formats::ReleaseId;
use fs_err as fs;

use super::{HostSpec, Session, Transport};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, PortHolder, Program, SetUp};
use crate::host::{Flipped, Host, HostError, Lock, Pinned, Pruned, StageOptions, Staged, Status};

/// Reaches hosts that are directories.
#[derive(Debug, Default)]
pub struct Local;

struct LocalSession {
    host: Host,
    lock: Option<Lock>,
}

impl Transport for Local {
    fn connect(&self, spec: &HostSpec, lock: Option<&str>) -> Result<Box<dyn Session>, HostError> {
        let host = Host::new(&spec.deploy_to);
        let lock = lock.map(|command| host.lock(command)).transpose()?;
        Ok(Box::new(LocalSession { host, lock }))
    }
}

impl LocalSession {
    fn lock(&self) -> &Lock {
        self.lock.as_ref().expect("a session that changes things is connected with a lock")
    }
}

impl Session for LocalSession {
    fn status(&mut self) -> Result<Status, HostError> {
        self.host.status()
    }

    fn stage(&mut self, payload: &Path, opts: &StageOptions, signature: Option<&str>) -> Result<Staged, HostError> {
        let mut file = fs::File::open(payload).map_err(HostError::Fs)?;
        self.host.stage(self.lock(), &mut file, opts, signature)
    }

    fn pin_keys(&mut self, keys: &[String], replace: bool) -> Result<Pinned, HostError> {
        self.lock();
        self.host.pin_keys(keys, replace)
    }

    fn stage_fetched(
        &mut self,
        fetch: &crate::host::fetch::Fetch,
        opts: &StageOptions,
        signature: Option<&str>,
    ) -> Result<Staged, HostError> {
        self.host.stage_fetched(self.lock(), fetch, opts, signature)
    }

    fn activate(&mut self, id: &ReleaseId, opts: &StageOptions) -> Result<Flipped, HostError> {
        self.host.activate(self.lock(), id, opts)
    }

    fn rollback(&mut self, to: Option<&ReleaseId>) -> Result<Flipped, HostError> {
        self.host.rollback(self.lock(), to)
    }

    fn prune(&mut self, keep: usize) -> Result<Pruned, HostError> {
        self.host.prune(self.lock(), keep)
    }

    fn signature(&mut self) -> Result<Signature, HostError> {
        self.host.signature(self.lock())
    }

    fn journal(&mut self) -> Result<Vec<Record>, HostError> {
        self.host.journal()
    }

    fn revert(&mut self, to: &ReleaseId, reason: &str) -> Result<Flipped, HostError> {
        self.host.rollback_because(self.lock(), Some(to), Some(reason.to_owned()))
    }

    fn restart(&mut self, id: &ReleaseId) -> Result<Vec<String>, HostError> {
        self.host.restart(self.lock(), id)
    }

    fn listeners(&mut self, port: u16) -> Result<Vec<PortHolder>, HostError> {
        self.host.listeners(port)
    }

    fn setup(&mut self, service: &str, programs: &[Program]) -> Result<SetUp, HostError> {
        self.lock();
        self.host.setup(service, programs)
    }

    fn install(&mut self, service: &str) -> Result<Installed, HostError> {
        self.lock();
        self.host.install(service)
    }

    fn hook(&mut self, id: &ReleaseId, kind: HookKind, command: &str, timeout: Duration) -> Result<HookRun, HostError> {
        self.lock();
        self.host.run_hook(id, kind, command, timeout)
    }

    fn logs(
        &mut self,
        program: Option<&str>,
        offsets: &BTreeMap<String, i64>,
        bytes: i32,
    ) -> Result<Vec<LogChunk>, HostError> {
        self.host.logs(program, offsets, bytes)
    }

    fn admin_socket(&mut self, socket: &Path, command: &str) -> Result<String, HostError> {
        crate::host::admin_socket::command(socket, command, crate::host::admin_socket::TIMEOUT)
    }
}
