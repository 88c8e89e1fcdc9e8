//! `ferry deploy STAGE [REF]`: from a git ref to a running stage in one
//! command — the ref resolved (`stable`: the newest release tag), the work
//! tree checked, the ref exported and built (with the build cache), pushed,
//! and with `tag = true` the deployed commit tagged with the date.

use anyhow::{bail, Result};
use ferry_builder::tags::{self, DatedTag};
use serde_json::json;

use super::fleet::push_release;
use super::report::Verb;
use crate::exit;
use crate::output;
use crate::settings::{BuildSettings, ConfigSource, DeploySettings, Settings, StageSettings};

pub fn run(settings: &Settings, s: &StageSettings, d: &DeploySettings) -> Result<u8> {
    let stage = &s.stage.name;
    let asked = match (&d.reference, &s.git.reference) {
        (Some(r), _) | (None, Some(r)) => r.clone(),
        (None, None) => bail!(
            "which ref? `ferry deploy {stage} <ref>` (a branch, tag, commit or `stable`), or set ref = \"main\" in \
             [stages.{stage}]"
        ),
    };
    let reference = if asked == "stable" {
        let Some(pattern) = &s.git.stable_tags else {
            bail!("stable is the newest tag matching the stage's stable_tags, and stage {stage} has none: set stable_tags = \"v*\" in [stages.{stage}]");
        };
        tags::stable(&d.workdir, pattern)?
    } else {
        asked.clone()
    };
    let commit = ferry_builder::git::commit_of(&d.workdir, &reference)?;
    let dirty = tags::dirty(&d.workdir)?;
    if !dirty.is_empty() && !d.allow_dirty {
        bail!(
            "the work tree has uncommitted changes to {} tracked file(s) ({}), which the deploy of {reference} would \
             leave out; commit them, or deploy anyway with --allow-dirty (the report and the tag say so)",
            dirty.len(),
            dirty.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let quiet = settings.output.json || settings.output.quiet;
    if !quiet {
        let via = if reference == asked { String::new() } else { format!(" ({asked})") };
        eprintln!("deploying {reference}{via}, commit {}, to {stage}", &commit[..12.min(commit.len())]);
    }

    // A tag's name is the release's version, when it is one.
    let version = (reference != commit
        && ferry_formats::release::valid_version(&reference)
        && tags::tags(&d.workdir)?.contains(&reference))
    .then(|| reference.clone());
    let build = BuildSettings {
        config: ConfigSource::Git {
            reference: commit.clone(),
            workdir: d.workdir.clone(),
            file_name: d.file_name.clone(),
        },
        version,
        strict: false,
        publish: false,
        sign: None,
    };
    let (built, steps) = super::build::build(settings, &build)?;
    if !quiet {
        super::build::say_steps(&steps);
        let what = if built.reused { "unchanged, reused" } else { "built" };
        eprintln!("{what} {} in {:.2}s", built.id.short(12), built.timings.total.as_secs_f64());
    }
    if let Some(sign) = &d.sign {
        super::sign::sign_release(settings, &built.id, sign)?;
    }

    if s.dry_run {
        // The store keeps the build; no host is touched and no tag is made.
        let deploy = json!({
            "ref": asked, "resolved": reference, "commit": commit, "dirty": dirty,
            "release": built.id, "reused": built.reused, "steps": steps, "tag": null,
        });
        return super::preview::run(settings, s, &built.id, "", Some(deploy));
    }
    let (code, report) = push_release(settings, s, &built.id, "", Verb::Deploy)?;
    let dated = (code == exit::OK && report.ok && s.git.tag)
        .then(|| {
            let hosts: Vec<&str> = report.hosts.iter().map(|h| h.host.as_str()).collect();
            let mut message = format!(
                "ferry deploy {stage}: release {} ({}) of {} to {} host(s): {}",
                built.id,
                built.info.version.as_deref().unwrap_or("no version"),
                reference,
                hosts.len(),
                hosts.join(", ")
            );
            if !dirty.is_empty() {
                message.push_str(&format!(
                    "\n\ndeployed with --allow-dirty: the work tree had uncommitted changes to {}",
                    dirty.join(", ")
                ));
            }
            tags::tag_deploy(&d.workdir, &s.git.tag_format, stage, &commit, &message, &s.git.tag_remote)
        })
        .transpose();
    // The deploy happened whatever became of its tag: a tag that could not be
    // made is said, not a failure.
    let dated: Option<DatedTag> = match dated {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warning: the deploy went through, but its tag could not be made: {e}");
            None
        }
    };
    let short = &commit[..12.min(commit.len())];
    if let Some(t) = &dated {
        match &t.warning {
            None if !quiet => eprintln!("tagged {short} as {} (pushed to {})", t.name, s.git.tag_remote),
            None => {}
            Some(w) => eprintln!("warning: tagged {short} as {}, not pushed: {w}", t.name),
        }
    }
    if settings.output.json {
        let mut doc = serde_json::to_value(&report)?;
        doc["deploy"] = json!({
            "ref": asked,
            "resolved": reference,
            "commit": commit,
            "dirty": dirty,
            "release": built.id,
            "reused": built.reused,
            "steps": steps,
            "tag": dated,
        });
        output::json(&doc)?;
    }
    Ok(code)
}
