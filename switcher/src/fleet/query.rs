//! Questions to every host of a stage at once: status, journals, setup,
//! logs. Each host answers, or says why it cannot; one host's trouble is
//! not another's.

use std::collections::BTreeMap;

use ferry_formats::journal::Record;
use rayon::prelude::*;

use super::connect::{close, connect_each, pool, Connected};
use super::report::Quiet;
use super::{Stage, Transport};
use crate::host::runtime::{HookKind, HookRun, Installed, LogChunk, SetUp};
use crate::host::{HostError, Status};

/// Why a host gave no answer: it could not be reached, or its answer was
/// an error.
pub type Answer<T> = Result<T, HostError>;

/// Asks every host one thing, in parallel (under its lock for `lock`):
/// each host's answer, or why there is none.
fn ask_each<T: Send>(
    stage: &Stage,
    transport: &dyn Transport,
    lock: Option<&str>,
    ask: impl Fn(&mut Connected) -> Answer<T> + Sync,
) -> Vec<(String, Answer<T>)> {
    let each = connect_each(stage, transport, lock, &Quiet, |_| {});
    let answered: Vec<(String, Answer<T>, Option<Connected>)> = pool(stage.max_parallel).install(|| {
        each.into_par_iter()
            .map(|host| match host {
                Ok(mut host) => {
                    let answer = ask(&mut host);
                    (host.name().to_owned(), answer, Some(host))
                }
                Err(unreached) => (unreached.slot.spec.name, Err(unreached.error), None),
            })
            .collect()
    });
    let mut answers = Vec::with_capacity(answered.len());
    let mut connected = Vec::new();
    for (name, answer, host) in answered {
        answers.push((name, answer));
        connected.extend(host);
    }
    close(connected);
    answers
}

/// Every host's status, without taking locks.
pub fn status(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Answer<Status>)> {
    ask_each(stage, transport, None, |h| h.session.status())
}

/// Every host's journal, without taking locks.
pub fn journals(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Answer<Vec<Record>>)> {
    ask_each(stage, transport, None, |h| h.session.journal())
}

/// Sets every host up for the stage's programs (see [`Host::setup`]),
/// each under its lock: what each did, or why it could not.
///
/// [`Host::setup`]: crate::host::Host::setup
pub fn setup(stage: &Stage, transport: &dyn Transport) -> Vec<(String, Answer<SetUp>)> {
    let rt = &stage.runtime;
    ask_each(stage, transport, Some(&format!("ferry setup {}", stage.name)), |h| {
        // The pinned keys follow ferry.toml's trusted_keys: new ones listed
        // beside the old are taken at once; keys dropped are no longer.
        let pinned = h.session.pin_keys(&stage.trusted_keys, true)?;
        let programs = rt.programs_for(h.name());
        let mut set_up = match rt.programs.is_empty() {
            // Keys only: no supervisord to configure.
            true => SetUp { did: Vec::new(), started_supervisord: false },
            false => h.session.setup(&rt.service, &programs)?,
        };
        if pinned.changed {
            set_up.did.insert(
                0,
                match pinned.keys.is_empty() {
                    true => "removed the pinned keys: the host takes unsigned releases".to_owned(),
                    false => format!("pinned keys {}", pinned.keys.join(", ")),
                },
            );
        }
        Ok(set_up)
    })
}

/// [`setup`], then on each host set up, the install of what starts its
/// supervisord at boot (see [`Host::install`]), under the same lock: what
/// each did, and its install's answer (`None` when setup failed there).
///
/// [`Host::install`]: crate::host::Host::install
pub fn setup_install(
    stage: &Stage,
    transport: &dyn Transport,
) -> Vec<(String, Answer<SetUp>, Option<Answer<Installed>>)> {
    let rt = &stage.runtime;
    let answers = ask_each(stage, transport, Some(&format!("ferry setup {} --install", stage.name)), |h| {
        let programs = rt.programs_for(h.name());
        let set_up = h.session.setup(&rt.service, &programs)?;
        Ok((set_up, h.session.install(&rt.service)))
    });
    answers
        .into_iter()
        .map(|(host, answer)| match answer {
            Ok((set_up, installed)) => (host, Ok(set_up), Some(installed)),
            Err(e) => (host, Err(e), None),
        })
        .collect()
}

/// `ferry exec`: `command` on every host, in its current release's
/// directory with the release's environment (as a hook runs), under the
/// host's lock (no push flips or prunes that release meanwhile): what each
/// run did, or why it could not run.
pub fn exec(
    stage: &Stage,
    transport: &dyn Transport,
    command: &str,
    timeout: std::time::Duration,
) -> Vec<(String, Answer<HookRun>)> {
    ask_each(stage, transport, Some(&format!("ferry exec {}", stage.name)), |h| {
        let current = h
            .session
            .status()?
            .current
            .ok_or_else(|| HostError::Input("it has no current release to run in (push one first)".to_owned()))?;
        h.session.hook(&current, HookKind::Exec, command, timeout)
    })
}

/// The programs' logs on every host: `each` gets every piece, with its
/// host, as it comes; with `follow`, until `each` returns false.
pub fn logs(
    stage: &Stage,
    transport: &dyn Transport,
    program: Option<&str>,
    bytes: i32,
    follow: bool,
    each: &(dyn Fn(&str, Result<&LogChunk, HostError>) -> bool + Sync),
) {
    let hosts = connect_each(stage, transport, None, &Quiet, |_| {});
    let mut connected = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for host in hosts {
            handles.push(scope.spawn(move || {
                let mut host = match host {
                    Ok(host) => host,
                    Err(unreached) => {
                        each(&unreached.slot.spec.name, Err(unreached.error));
                        return None;
                    }
                };
                let name = host.name().to_owned();
                let mut offsets = BTreeMap::new();
                loop {
                    match host.session.logs(program, &offsets, bytes) {
                        Ok(chunks) => {
                            for chunk in &chunks {
                                offsets.insert(chunk.process.clone(), chunk.offset);
                                if !chunk.text.is_empty() && !each(&name, Ok(chunk)) {
                                    return Some(host);
                                }
                            }
                        }
                        Err(e) => {
                            each(&name, Err(e));
                            return Some(host);
                        }
                    }
                    if !follow {
                        return Some(host);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }));
        }
        connected.extend(handles.into_iter().filter_map(|h| h.join().ok().flatten()));
    });
    close(connected);
}
