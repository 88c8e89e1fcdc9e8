//! The stage phase of a push: what each host needs (a delta from what it
//! runs, an rsync delta, or the whole bundle), made once per base, shipped
//! and staged on every host in parallel. Nothing changes for users here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_formats::ReleaseId;
use fs_err as fs;

use super::super::connect::Connected;
use super::super::report::{HostStep, Observer, Shipped};
use super::super::{ReleaseSource, Stage};
use crate::host::{error_chain, ErrorKind, HostError};

/// What a host gets.
pub(in crate::fleet) enum Payload {
    /// A delta or the whole bundle, and which.
    File(PathBuf, Shipped),
    /// The host runs a release the source does not have.
    Unknown,
}

/// The payload a host on `base` needs: a delta when the source has `base`,
/// the whole bundle when the host has nothing.
pub(in crate::fleet) fn payload(
    source: &dyn ReleaseSource,
    base: Option<ReleaseId>,
    target: &ReleaseId,
) -> Result<Payload, String> {
    if let Some(base) = base {
        return match source.delta(&base, target) {
            Ok(Some(path)) => Ok(Payload::File(path, Shipped::Delta)),
            Ok(None) => Ok(Payload::Unknown),
            Err(e) => Err(format!("cannot make the delta from {base}: {e}")),
        };
    }
    source
        .bundle(target)
        .map(|p| Payload::File(p, Shipped::Bundle))
        .map_err(|e| format!("cannot find the bundle of {target}: {e}"))
}

/// Stages `release` on every host. A host that fails is marked failed at
/// [`HostStep::Stage`] with why.
pub(super) fn stage_all(
    hosts: &mut [Connected],
    stage: &Stage,
    source: &dyn ReleaseSource,
    release: &ReleaseId,
    observer: &dyn Observer,
) {
    // The release's signature, sent with every payload: a host with pinned
    // keys checks it before it writes anything.
    let signature = match source.release_signature(release) {
        Ok(s) => s,
        Err(e) => {
            for host in hosts.iter_mut() {
                host.slot.report.fail(HostStep::Stage, format!("cannot read the release's signature: {e}"));
            }
            return;
        }
    };
    let signature = signature.as_deref();
    // The delta's base: what the host runs, unless that is the release or
    // is gone from its disk (then the bundle: there is nothing to sign).
    let base = |host: &Connected| host.current.filter(|b| b != release && !host.current_gone);
    // One delta per distinct base, made once, before any host is staged.
    let mut payloads: BTreeMap<Option<ReleaseId>, Result<Payload, String>> = BTreeMap::new();
    for host in hosts.iter() {
        payloads.entry(base(host)).or_insert_with(|| payload(source, base(host), release));
    }
    // Hosts on the same unknown release sign it the same: one at a time
    // asks for the rsync delta, so it is encoded once and the others find
    // it made.
    let one_rsync = std::sync::Mutex::new(());
    // With the source's object store: the payloads put there once, each.
    let files: BTreeMap<Option<ReleaseId>, (PathBuf, Shipped)> = payloads
        .iter()
        .filter_map(|(b, p)| match p {
            Ok(Payload::File(path, kind)) => Some((*b, (path.clone(), *kind))),
            _ => None,
        })
        .collect();
    let fetches = super::fetch::fetches(source, &files, release);
    let downloads = super::fetch::Downloads::new(stage.fetch_parallel);
    // On threads of their own, not the push's rayon pool: a host may wait
    // here (a download slot, its payload's warm-up, the one rsync encoder)
    // while host-side work of the local transport runs on rayon, and a pool
    // worker that waits can be handed another host's job that waits on it.
    super::super::connect::each_host(stage.max_parallel, hosts, |host| {
        host.slot.report.step = HostStep::Stage;
        if !pin(host, stage, observer) {
            return;
        }
        let payload = match &payloads[&base(host)] {
            Ok(Payload::File(path, kind)) => Ok((path.clone(), *kind)),
            // The store does not know what this host runs: it signs its
            // files and gets an rsync delta against them.
            Ok(Payload::Unknown) => host
                .session
                .signature()
                .map_err(|e| format!("cannot sign the host's files: {}", error_chain(&e)))
                .and_then(|sig| {
                    let _one = one_rsync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    source.rsync_delta(&sig, release).map_err(|e| format!("cannot make the rsync delta: {e}"))
                })
                .map(|path| (path, Shipped::Rsync)),
            Err(e) => Err(e.clone()),
        };
        if let (Ok((_, kind)), Some(fetch)) = (&payload, fetches.get(&base(host))) {
            if super::fetch::stage_fetched(host, &downloads, base(host), fetch, *kind, stage, signature, observer) {
                return;
            }
        }
        match payload {
            Ok((path, kind)) => stage_one(host, &path, kind, stage, source, release, signature, observer),
            Err(e) => host.slot.report.fail(HostStep::Stage, e),
        }
    });
}

/// Ships `path` (of `kind`) to one host and stages it there; a delta the
/// host refuses (a base file it changed, one given over to shared/) is
/// replaced by the whole bundle.
#[allow(clippy::too_many_arguments)]
fn stage_one(
    host: &mut Connected,
    path: &Path,
    kind: Shipped,
    stage: &Stage,
    source: &dyn ReleaseSource,
    release: &ReleaseId,
    signature: Option<&str>,
    observer: &dyn Observer,
) {
    let name = host.slot.spec.name.clone();
    observer.note(&name, "stage", kind.as_str());
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let report = &mut host.slot.report;
    let mut staged = host.session.stage(path, &stage.options, signature);
    match &staged {
        // A host that refused the delta gets the bundle; one whose link
        // broke, or that does not trust the release, does not (it would
        // fail the same way).
        Err(e) if kind.is_delta() && !matches!(e.kind(), ErrorKind::Link | ErrorKind::Untrusted) => {
            observer.note(&name, "stage", &format!("{kind} refused ({}); sending the bundle", error_chain(e)));
            report.bytes += size(path);
            match source.bundle(release) {
                Ok(bundle) => {
                    staged = host.session.stage(&bundle, &stage.options, signature);
                    if staged.is_ok() {
                        report.shipped = Shipped::Bundle;
                        report.bytes += size(&bundle);
                    }
                }
                Err(b) => {
                    staged = Err(HostError::Input(format!("{}; and no bundle to send instead: {b}", error_chain(e))));
                }
            }
        }
        Ok(s) if !s.already => {
            report.shipped = kind;
            report.bytes = size(path);
        }
        _ => {}
    }
    match staged {
        Ok(staged) => {
            report.staged = true;
            observer.done(&name, "staged", &format!("{:.2}s", staged.elapsed.as_secs_f64()));
            if let Some(from) = staged.bridged_from {
                let files = if staged.bridged == 1 { "file" } else { "files" };
                let note = format!("bridged {} asset {files} from {}", staged.bridged, from.short(12));
                observer.note(&name, "bridge", &note);
                report.notes.push(note);
            }
        }
        Err(e) => {
            observer.failed(&name, "stage", &error_chain(&e));
            host.fail(HostStep::Stage, &e);
        }
    }
}

/// Pins the stage's trusted keys on a host that has none (a host's own
/// pins are changed by `ferry setup` only); false when the host failed.
fn pin(host: &mut Connected, stage: &Stage, observer: &dyn Observer) -> bool {
    if stage.trusted_keys.is_empty() {
        return true;
    }
    let name = host.slot.spec.name.clone();
    match host.session.pin_keys(&stage.trusted_keys, false) {
        Ok(pinned) => {
            if pinned.changed {
                observer.note(&name, "trust", &format!("pinned keys {}", pinned.keys.join(", ")));
            } else if pinned.kept_other {
                host.slot.report.warn(format!(
                    "the host trusts keys {}, not ferry.toml's trusted_keys; `ferry setup {}` pins those",
                    pinned.keys.join(", "),
                    stage.name
                ));
            }
            true
        }
        Err(e) => {
            observer.failed(&name, "trust", &error_chain(&e));
            host.fail(HostStep::Stage, &e);
            false
        }
    }
}
