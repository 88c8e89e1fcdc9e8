//! `ferry build`.

use anyhow::{Context as _, Result};
use ferry_builder::build::BuildSpec;
use ferry_formats::bundle::WriteOptions;
use serde_json::json;

use crate::config::Config;
use crate::exit;
use crate::output::{self, Bar};
use crate::settings::{BuildSettings, ConfigSource, Settings};

pub fn run(settings: &Settings, b: &BuildSettings) -> Result<u8> {
    let (built, steps) = build(settings, b)?;
    if let Some(s) = &b.sign {
        super::sign::sign_release(settings, &built.id, s)?;
    }
    // A store without a remote is said before the build's report, not after.
    if b.publish && settings.store.remote_spec().is_none() {
        return Err(ferry_builder::StoreError::NoRemote { store: settings.store.root().to_owned() }.into());
    }
    let published = if b.publish { Some(settings.store.publish(&built.id)?) } else { None };
    show(settings, &built, &steps, published.as_ref())?;
    if let Some(p) = published.as_ref().filter(|_| !settings.output.json) {
        super::publish::say(p);
    }
    Ok(exit::OK)
}

/// What a build made, and what its steps did.
pub(super) type Built = (ferry_builder::build::Built, Vec<ferry_builder::steps::StepReport>);

/// Builds what `b` says into the store, its `[build]` steps first
/// (`ferry build` and `ferry deploy`).
pub(super) fn build(settings: &Settings, b: &BuildSettings) -> Result<Built> {
    // Keeps a --git-ref export alive until the build is done.
    let mut _export = None;
    let (config, git, git_tag) = match &b.config {
        ConfigSource::Loaded(c) => ((**c).clone(), None, None),
        ConfigSource::Git { reference, workdir, file_name } => {
            // The same directory for every build of this config, so that
            // what a build step makes there (a venv names its path) is the
            // same each time, and restored from the step cache as it is.
            let dir = settings.store.export_dir(&workdir.join(file_name));
            let export = ferry_builder::git::export_at(workdir, reference, &dir)?;
            let path = export.workdir.join(file_name);
            let config = Config::load(&path).with_context(|| format!("in the export of {reference}"))?;
            let (info, tag) = (export.info.clone(), export.tag.clone());
            _export = Some(export);
            (config, Some(info), tag)
        }
    };
    // An export is written anew every time: a stat cache of it would never hit.
    let use_cache = git.is_none();
    let steps = run_steps(settings, &config, git.as_ref())?;
    if let Some(export) = &_export {
        // What the steps made stays for the next export of this config: a
        // step whose inputs did not change then finds it in place.
        let outputs: Vec<std::path::PathBuf> =
            config.build_steps.iter().flat_map(|s| s.outputs.iter().map(|o| config.root.join(o.as_str()))).collect();
        export.keep(&outputs).context("cannot record the build steps' outputs for the next export")?;
    }
    let spec = BuildSpec {
        service: config.service.clone(),
        root: config.root.clone(),
        components: config.components.clone(),
        include: config.include.clone(),
        exclude: config.exclude.clone(),
        version: b.version.clone(),
        git,
        git_tag,
        use_cache,
        strict: b.strict,
        compression: WriteOptions { level: config.compression_level, ..WriteOptions::default() },
    };
    Ok((ferry_builder::build(&spec, &settings.store, &Bar::new(settings.output))?, steps))
}

/// What `ferry build` says of a build: JSON, or a summary on stderr and the
/// id on stdout.
fn show(
    settings: &Settings,
    built: &ferry_builder::build::Built,
    steps: &[ferry_builder::steps::StepReport],
    published: Option<&ferry_builder::remote::sync::Published>,
) -> Result<()> {
    let info = &built.info;
    let warnings: Vec<String> =
        steps.iter().flat_map(|s| s.warnings.iter().cloned()).chain(built.warnings.iter().cloned()).collect();
    if settings.output.json {
        let mut doc = json!({
            "id": built.id,
            "path": built.path,
            "service": info.service,
            "version": info.version,
            "git_commit": info.git_commit,
            "git_tag": info.git_tag,
            "size": info.size,
            "files": info.files,
            "bytes": info.bytes,
            "entries": built.entries,
            "reused": built.reused,
            "cache_hits": built.cache_hits,
            "pycs_normalized": built.pycs_normalized,
            "scripts_relocated": built.scripts_relocated,
            "unrelocated": built.unrelocated,
            "stale_pycs": built.stale_pycs,
            "steps": steps,
            "warnings": warnings,
            "timings_ms": {
                "walk": output::ms(built.timings.walk),
                "check": output::ms(built.timings.check),
                "pack": output::ms(built.timings.pack),
                "write": output::ms(built.timings.write),
                "total": output::ms(built.timings.total),
            },
        });
        if let Some(p) = published {
            doc["published"] = serde_json::to_value(p)?;
        }
        output::json(&doc)?;
    } else {
        if !settings.output.quiet {
            say_steps(steps);
        }
        let label = info.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
        let what = if built.reused { "unchanged, reused" } else { "built" };
        eprintln!(
            "{what} {}{label} {}: {} files, {} → {} bundle in {:.2}s",
            info.service,
            built.id.short(12),
            info.files,
            output::bytes(info.bytes),
            output::bytes(info.size),
            built.timings.total.as_secs_f64()
        );
        if built.cache_hits > 0 {
            eprintln!("  {} of {} files unchanged since the last build (hashes reused)", built.cache_hits, info.files);
        }
        if built.pycs_normalized + built.scripts_relocated > 0 {
            eprintln!(
                "  {} .pyc timestamps normalized, {} venv scripts made relocatable",
                built.pycs_normalized, built.scripts_relocated
            );
        }
        if !built.unrelocated.is_empty() {
            eprintln!(
                "warning: {} venv file(s) still name the build path and may not work from the release directory (--strict makes this an error): {}",
                built.unrelocated.len(),
                shorten(&built.unrelocated)
            );
        }
        if !built.stale_pycs.is_empty() {
            eprintln!(
                "warning: {} .pyc file(s) are older than their source and will be recompiled on every start: {}; recompile them (python -m compileall) before building",
                built.stale_pycs.len(),
                shorten(&built.stale_pycs)
            );
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        output::line(&built.id.to_string())?;
    }
    Ok(())
}

/// Runs the config's `[build]` steps in its release root, before packing.
fn run_steps(
    settings: &Settings,
    config: &Config,
    git: Option<&ferry_formats::release::GitInfo>,
) -> Result<Vec<ferry_builder::steps::StepReport>> {
    if config.build_steps.is_empty() {
        return Ok(Vec::new());
    }
    let cache = settings.store.steps_dir(&config.service);
    let mut env = vec![
        ("FERRY_SERVICE".to_owned(), config.service.clone()),
        ("FERRY_BUILD_ROOT".to_owned(), config.root.to_string_lossy().into_owned()),
    ];
    if let Some(g) = git {
        env.push(("FERRY_GIT_COMMIT".to_owned(), g.commit.clone()));
    }
    if !settings.output.json && !settings.output.quiet {
        let names: Vec<&str> = config.build_steps.iter().map(|s| s.name.as_str()).collect();
        eprintln!("running build steps in {}: {}", config.root.display(), names.join(", "));
    }
    Ok(ferry_builder::steps::run_all(&config.build_steps, &config.root, &cache, &env, git.is_some())?)
}

/// A line on stderr for each build step: run, or reused from the cache.
pub(super) fn say_steps(steps: &[ferry_builder::steps::StepReport]) {
    for s in steps {
        if s.cached {
            let how = if s.restored { "; outputs restored" } else { "" };
            eprintln!("step {}: reused from the cache (inputs unchanged{how}) in {:.2}s", s.name, s.seconds);
        } else {
            eprintln!("step {}: ran in {:.2}s", s.name, s.seconds);
        }
    }
}

fn shorten(list: &[String]) -> String {
    let mut s = list.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > 5 {
        s.push_str(&format!(", … ({} more)", list.len() - 5));
    }
    s
}
