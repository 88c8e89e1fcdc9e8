//! `ferry host <verb>`: the agent's side, on the host itself.

use std::io::Read;

use anyhow::{bail, Context as _, Result};
use ferry_formats::ReleaseId;
use ferry_switcher::host::{Host, Lock};

use crate::exit;
use crate::output;
use crate::settings::{HostAction, Settings};

pub fn run(settings: &Settings, host: &Host, action: &HostAction) -> Result<u8> {
    let json = settings.output.json;
    let lock = |verb: &str| -> Result<Lock> { Ok(host.lock(&format!("ferry host {verb}"))?) };
    match action {
        HostAction::Stage(input, options, signature) => {
            // Opened before the lock is taken: a path that is no regular
            // file is refused without holding the host.
            let mut file = input.as_deref().map(super::open_input).transpose()?;
            let signature = signature.as_deref().map(fs_err::read_to_string).transpose()?;
            let signature = signature.as_deref();
            let lock = lock("stage")?;
            let staged = match &mut file {
                Some(file) => host.stage(&lock, file, options, signature),
                None => host.stage(&lock, &mut std::io::stdin().lock() as &mut dyn Read, options, signature),
            }
            .with_context(|| format!("cannot stage into {}", host.root().display()))?;
            let id = staged.id.expect("a staged release has an id");
            if json {
                output::json(&serde_json::to_value(&staged)?)?;
            } else {
                output::line(&id.to_hex())?;
                if staged.already {
                    // Said plainly: a damaged input naming a release the host has passes here.
                    eprintln!(
                        "release {} is already staged here, with these options; the input was not read past its head \
                         (it is neither checked nor used: `ferry verify` checks a bundle)",
                        id.short(12)
                    );
                } else {
                    eprintln!(
                        "staged {}: {} files written ({}), {} hardlinked, {} copied, in {:.2}s",
                        id.short(12),
                        staged.written,
                        output::bytes(staged.written_bytes),
                        staged.linked,
                        staged.copied,
                        staged.elapsed.as_secs_f64()
                    );
                    if let Some(from) = staged.bridged_from {
                        eprintln!("bridged {} asset files from {}", staged.bridged, from.short(12));
                    }
                }
            }
        }
        HostAction::Activate(id, options) => {
            let lock = lock("activate")?;
            let id = resolve(host, id)?;
            let flipped = host.activate(&lock, &id, options)?;
            flip_output(json, &flipped)?;
        }
        HostAction::Rollback(to) => {
            let lock = lock("rollback")?;
            let to = to.as_deref().map(|t| resolve(host, t)).transpose()?;
            let flipped = host.rollback(&lock, to.as_ref())?;
            flip_output(json, &flipped)?;
        }
        HostAction::Prune(keep) => {
            let lock = lock("prune")?;
            let pruned = host.prune(&lock, *keep)?;
            if json {
                output::json(&serde_json::to_value(&pruned)?)?;
            } else {
                for id in &pruned.removed {
                    output::line(&format!("removed {id}"))?;
                }
                eprintln!("kept {} releases, removed {}", pruned.kept.len(), pruned.removed.len());
            }
        }
        HostAction::Pin(id, pin) => {
            let lock = lock(if *pin { "pin" } else { "unpin" })?;
            let id = resolve(host, id)?;
            host.pin(&lock, &id, *pin)?;
        }
        HostAction::Status => {
            let status = host.status()?;
            if json {
                output::json(&serde_json::to_value(&status)?)?;
            } else {
                let show = |id: &Option<ReleaseId>| id.map_or_else(|| "-".to_owned(), |i| i.to_hex());
                output::line(&format!("deploy_to  {}", status.deploy_to))?;
                output::line(&format!("current    {}", show(&status.current)))?;
                output::line(&format!("previous   {}", show(&status.previous)))?;
                output::line(&format!(
                    "lock       {}",
                    status.lock.as_ref().map_or_else(|| "free".to_owned(), ToString::to_string)
                ))?;
                for r in &status.releases {
                    let mark = if Some(r.id) == status.current { "*" } else { " " };
                    output::line(&format!(
                        "{mark} {}  {:<16} {}{}{}",
                        r.id.short(12),
                        r.version.as_deref().unwrap_or("-"),
                        r.last_used.as_deref().unwrap_or("-"),
                        if r.pinned { "  pinned" } else { "" },
                        match r.bridged {
                            0 => String::new(),
                            n => format!("  {n} bridged"),
                        }
                    ))?;
                }
            }
        }
        HostAction::History => {
            for record in host.journal()? {
                if json {
                    output::line(record.to_line().trim_end())?;
                } else {
                    output::line(&super::fleet::history_line(None, &record, None))?;
                }
            }
        }
        HostAction::Serve(lock) => {
            let mut input = std::io::stdin().lock();
            let mut output = std::io::stdout().lock();
            ferry_switcher::host::serve::serve(host, lock.as_deref(), &mut input, &mut output)?;
        }
        HostAction::Verify(id) => {
            let id = match id {
                Some(id) => resolve(host, id)?,
                None => match host.current()? {
                    Some(id) => id,
                    None => bail!("{} has no current release; name one", host.root().display()),
                },
            };
            let v = host.verify(&id)?;
            if json {
                output::json(&serde_json::to_value(&v)?)?;
            } else {
                output::line(&format!("release {} ok: {} files, {}", id, v.files, output::bytes(v.bytes)))?;
            }
        }
    }
    Ok(exit::OK)
}

fn flip_output(json: bool, flipped: &ferry_switcher::host::Flipped) -> Result<()> {
    if json {
        output::json(&serde_json::to_value(flipped)?)?;
    } else if flipped.already {
        eprintln!("current is already {}", flipped.to.short(12));
    } else {
        output::line(&flipped.to.to_hex())?;
        let from = flipped.from.map_or_else(|| "nothing".to_owned(), |f| f.short(12));
        eprintln!("current: {from} -> {}", flipped.to.short(12));
    }
    Ok(())
}

/// A release on this host by id or unique prefix.
fn resolve(host: &Host, prefix: &str) -> Result<ReleaseId> {
    let prefix = prefix.to_ascii_lowercase();
    let matches: Vec<ReleaseId> = host.releases()?.into_iter().filter(|id| id.to_hex().starts_with(&prefix)).collect();
    match matches.as_slice() {
        [one] if prefix.len() >= 4 => Ok(*one),
        [] => bail!("no release on {} starts with {prefix:?}", host.root().display()),
        [_] => bail!("{prefix:?} is too short: give at least 4 hex digits"),
        many => bail!("{prefix:?} matches {} releases on {}; give more digits", many.len(), host.root().display()),
    }
}
