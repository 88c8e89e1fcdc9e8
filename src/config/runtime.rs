//! `[programs.*]`, `[hooks]` and a stage's `[health]`: what runs on the
//! hosts around a flip and what checks it, as the switcher takes them.

use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Result};
use ferry_formats::release::valid_env_name;
use ferry_formats::RelPath;
use ferry_switcher::fleet::{Gate, Hooks, HttpProbe};
use ferry_switcher::host::runtime::{Program, Restart};
use toml::Spanned;

use super::defaults;
use super::raw::{FerryToml, HealthSection};

/// A stage's `[health]` as gates, in the order they run: http, errors, command.
pub(super) fn gates(stage: &str, health: &HealthSection, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<Gate>> {
    let secs = |v: Option<f64>, default: f64| Duration::from_secs_f64(v.unwrap_or(default).max(0.001));
    let url = |u: &Spanned<String>, what: &str| -> Result<String> {
        let s = u.get_ref();
        if s.starts_with("https://") {
            bail!(
                "{}: stage {stage}: health.{what}.url {s:?}: the probes speak plain http only (no TLS yet); \
                 probe the app's own port",
                at(u.span())
            );
        }
        if !s.starts_with("http://") {
            bail!("{}: stage {stage}: health.{what}.url {s:?} must be an http:// URL", at(u.span()));
        }
        Ok(s.clone())
    };
    let positive = |v: Option<f64>, key: &str, span: Range<usize>| -> Result<()> {
        match v {
            Some(v) if v.is_nan() || v <= 0.0 => {
                bail!("{}: stage {stage}: health {key} = {v} must be more than 0", at(span))
            }
            _ => Ok(()),
        }
    };
    let mut gates = Vec::new();
    if let Some(h) = &health.http {
        positive(h.timeout, "http.timeout", h.url.span())?;
        gates.push(Gate::Http(HttpProbe {
            url: url(&h.url, "http")?,
            urls: h.urls.clone(),
            status: h.status.unwrap_or(defaults::HTTP_STATUS),
            timeout: secs(h.timeout, defaults::PROBE_TIMEOUT),
            retries: h.retries.unwrap_or(defaults::HTTP_RETRIES).max(1),
            answered_by: h.answered_by,
        }));
    }
    if let Some(spanned) = &health.errors {
        let (e, span) = (spanned.get_ref(), spanned.span());
        positive(e.timeout, "errors.timeout", span.clone())?;
        positive(e.window, "errors.window", span.clone())?;
        positive(e.interval, "errors.interval", span.clone())?;
        if e.min_requests == Some(0) {
            bail!("{}: stage {stage}: health.errors.min_requests must be at least 1", at(span));
        }
        let rate = |v: Option<f64>, default: f64, key: &str| -> Result<f64> {
            let v = v.unwrap_or(default);
            if !(0.0..=1.0).contains(&v) {
                bail!("{}: stage {stage}: health.errors.{key} = {v} must be a share from 0 to 1", at(span.clone()));
            }
            Ok(v)
        };
        let from_lb = match &e.source {
            None => false,
            Some(s) if s.get_ref() == "probes" => false,
            Some(s) if s.get_ref() == "load_balancer" => true,
            Some(s) => bail!(
                "{}: stage {stage}: health.errors.source {:?} must be \"probes\" or \"load_balancer\"",
                at(s.span()),
                s.get_ref()
            ),
        };
        let probe_url = match (&e.url, from_lb) {
            (Some(u), false) => url(u, "errors")?,
            (None, false) => bail!(
                "{}: stage {stage}: health.errors needs a url to probe, or source = \"load_balancer\" to read \
                 HAProxy's counts",
                at(span)
            ),
            (Some(u), true) => bail!(
                "{}: stage {stage}: health.errors reads HAProxy's counts (source = \"load_balancer\"): leave url out",
                at(u.span())
            ),
            (None, true) => String::new(),
        };
        if from_lb {
            gates.push(Gate::LbErrors {
                window: secs(e.window, defaults::ERRORS_WINDOW),
                max_rate: rate(e.max_rate, defaults::ERRORS_MAX_RATE, "max_rate")?,
                max_excess: rate(e.max_excess, defaults::ERRORS_MAX_EXCESS, "max_excess")?,
                min_requests: e.min_requests.unwrap_or(defaults::ERRORS_MIN_REQUESTS),
            });
            return gates_then_command(gates, health, stage, at);
        }
        gates.push(Gate::Errors {
            probe: HttpProbe {
                url: probe_url,
                urls: e.urls.clone(),
                status: 200,
                timeout: secs(e.timeout, defaults::PROBE_TIMEOUT),
                retries: 1,
                answered_by: ferry_switcher::fleet::gates::AnsweredBy::Any,
            },
            window: secs(e.window, defaults::ERRORS_WINDOW),
            interval: secs(e.interval, defaults::ERRORS_INTERVAL),
            max_rate: rate(e.max_rate, defaults::ERRORS_MAX_RATE, "max_rate")?,
            max_excess: rate(e.max_excess, defaults::ERRORS_MAX_EXCESS, "max_excess")?,
            min_requests: e.min_requests.unwrap_or(defaults::ERRORS_MIN_REQUESTS),
        });
    }
    gates_then_command(gates, health, stage, at)
}

/// `gates` and then the stage's command gate, if any.
fn gates_then_command(
    mut gates: Vec<Gate>,
    health: &HealthSection,
    stage: &str,
    at: &dyn Fn(Range<usize>) -> String,
) -> Result<Vec<Gate>> {
    if let Some(c) = &health.command {
        if let Some(t) = c.timeout.as_ref().filter(|t| *t.get_ref() == 0) {
            bail!("{}: stage {stage}: health.command.timeout must be at least 1 second", at(t.span()));
        }
        gates.push(Gate::Command {
            run: c.run.clone(),
            timeout: Duration::from_secs(c.timeout.as_ref().map_or(defaults::COMMAND_TIMEOUT, |t| *t.get_ref())),
        });
    }
    Ok(gates)
}

/// `[programs.*]`, checked.
pub(super) fn programs(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<Program>> {
    const SIGNALS: &[&str] = &["TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"];
    let mut out = Vec::new();
    for (name, p) in &raw.programs {
        let span = p.span();
        let p = p.get_ref();
        if !valid_env_name(name) {
            bail!("{}: program {name:?}: a program name is letters, digits, '_' or '-'", at(span));
        }
        if p.command.get_ref().trim().is_empty() {
            bail!("{}: program {name}: command is empty", at(p.command.span()));
        }
        ferry_switcher::host::runtime::config_safe(p.command.get_ref(), false)
            .map_err(|e| anyhow::anyhow!("{}: program {name}: command: {e}", at(p.command.span())))?;
        for (k, v) in &p.environment {
            ferry_switcher::host::runtime::config_safe(v, true)
                .map_err(|e| anyhow::anyhow!("{}: program {name}: environment {k}: {e}", at(span.clone())))?;
        }
        let signal = |s: &Option<Spanned<String>>, key: &str, default: Option<&str>| -> Result<Option<String>> {
            match s {
                Some(v) => {
                    let sig = v.get_ref().trim_start_matches("SIG").to_ascii_uppercase();
                    if !SIGNALS.contains(&sig.as_str()) {
                        bail!(
                            "{}: program {name}: {key} {:?} must be one of {}",
                            at(v.span()),
                            v.get_ref(),
                            SIGNALS.join(", ")
                        );
                    }
                    Ok(Some(sig))
                }
                None => Ok(default.map(str::to_owned)),
            }
        };
        let numprocs = match &p.numprocs {
            Some(n) if *n.get_ref() < 1 => bail!("{}: program {name}: numprocs must be at least 1", at(n.span())),
            Some(n) => *n.get_ref(),
            None => defaults::NUMPROCS,
        };
        let directory = match &p.directory {
            Some(d) => {
                let s = d.get_ref().trim_end_matches('/');
                if s == "." || s.is_empty() {
                    ".".to_owned()
                } else {
                    RelPath::new(s)
                        .map_err(|e| anyhow::anyhow!("{}: program {name}: directory {s:?}: {e}", at(d.span())))?
                        .to_string()
                }
            }
            None => defaults::DIRECTORY.to_owned(),
        };
        out.push(Program {
            name: name.clone(),
            command: p.command.get_ref().clone(),
            numprocs,
            directory,
            environment: p.environment.clone(),
            stopsignal: signal(&p.stopsignal, "stopsignal", Some(defaults::STOPSIGNAL))?.unwrap_or_default(),
            stopwaitsecs: p.stopwaitsecs.unwrap_or(defaults::STOPWAITSECS),
            startsecs: p.startsecs.unwrap_or(defaults::STARTSECS),
            restart: match signal(&p.reload_signal, "reload_signal", None)? {
                Some(sig) if ["HUP", "USR1", "USR2"].contains(&sig.as_str()) => Restart::Signal(sig),
                Some(sig) => bail!(
                    "{}: program {name}: reload_signal {sig} would stop it, not reload it: use HUP, USR1 or USR2, \
                     or leave reload_signal out to restart it by stop and start",
                    at(p.reload_signal.as_ref().map_or(span.clone(), toml::Spanned::span))
                ),
                None => Restart::Restart,
            },
        });
    }
    Ok(out)
}

/// `[hooks]`, checked.
pub(super) fn hooks(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Hooks> {
    let h = &raw.hooks;
    let timeout = match &h.timeout {
        Some(t) if *t.get_ref() == 0 => bail!("{}: hooks.timeout must be at least 1 second", at(t.span())),
        Some(t) => Duration::from_secs(*t.get_ref()),
        None => Duration::from_secs(defaults::HOOK_TIMEOUT),
    };
    Ok(Hooks {
        migrate: h.migrate.clone(),
        migrate_on: h.migrate_on.clone(),
        before_flip: h.before_flip.clone(),
        after_flip: h.after_flip.clone(),
        before_batch: h.before_batch.clone(),
        after_batch: h.after_batch.clone(),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Result;
    use ferry_switcher::fleet::Gate;
    use ferry_switcher::host::runtime::Restart;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/srv/svc/ferry.toml"), text)
    }

    #[test]
    fn programs_hooks_and_gates_parse_with_their_defaults() {
        let c = parse(
            "service = \"s\"\n[programs.web]\ncommand = \"gunicorn -w %(process_num)d app:app\"\nnumprocs = 2\n\
             directory = \"app\"\nreload_signal = \"HUP\"\nenvironment = { A = 'say \"hi\"' }\n\
             [hooks]\nmigrate = \"./manage.py migrate\"\nmigrate_on = \"web2\"\n\
             [stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\", \"web2\"]\n\
             [stages.prod.health.http]\nurl = \"http://{host}:8000/health\"\n\
             [stages.prod.health.errors]\nurl = \"http://{host}:8000/\"\n\
             [stages.prod.health.command]\nrun = \"true\"\n",
        )
        .unwrap();
        let web = &c.programs[0];
        assert_eq!((web.name.as_str(), web.numprocs, web.directory.as_str()), ("web", 2, "app"));
        assert_eq!(web.restart, Restart::Signal("HUP".into()));
        assert_eq!((web.stopsignal.as_str(), web.startsecs, web.stopwaitsecs), ("TERM", 1, 10));
        assert_eq!(c.hooks.timeout, Duration::from_secs(300));
        let gates: Vec<&str> = c.stages["prod"].gates.iter().map(Gate::name).collect();
        assert_eq!(gates, ["http", "errors", "command"]);
        match &c.stages["prod"].gates[1] {
            Gate::Errors { window, interval, max_rate, max_excess, min_requests, .. } => {
                assert_eq!((window.as_secs_f64(), interval.as_secs_f64()), (10.0, 0.2));
                assert_eq!((*max_rate, *max_excess, *min_requests), (0.05, 0.02, 20));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_programs_hooks_and_gates_are_refused_where_they_are_written() {
        let base = "service = \"s\"\n[stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\", \"web2\"]\n";
        let err = |extra: &str| parse(&format!("{base}{extra}")).unwrap_err().to_string();
        let e = err("[programs.web]\ncommand = \"sh -c 'a ; b'\"\n");
        assert!(e.contains("program web: command: \";\" would start a comment"), "{e}");
        let e = err("[programs.web]\ncommand = \"app\"\nreload_signal = \"TERM\"\n");
        assert!(e.contains("reload_signal TERM would stop it, not reload it"), "{e}");
        let e = err("[programs.web]\ncommand = \"app\"\nenvironment = { A = \"it's \\\"x\\\"\" }\n");
        assert!(e.contains("cannot hold both kinds of quote"), "{e}");
        let e = err("[stages.prod.health.http]\nurl = \"https://{host}/health\"\n");
        assert!(e.contains("plain http only"), "{e}");
        let e = err("[stages.prod.health.errors]\nurl = \"http://lb.example/\"\n");
        assert!(e.contains("has no {host}: 2 hosts would all be probed at the same address"), "{e}");
        let e = err("[stages.prod.health.errors]\nurl = \"http://{host}/\"\nmin_requests = 0\n");
        assert!(e.contains("min_requests must be at least 1"), "{e}");
        let e = err("[hooks]\nmigrate = \"m\"\nmigrate_on = \"web3\"\n");
        assert!(e.contains("migrate_on \"web3\" is not a host of any stage"), "{e}");
        let e = err("step_timeout = 60\n[hooks]\nmigrate = \"m\"\ntimeout = 120\n");
        assert!(e.contains("[hooks] timeout (120 s) must be under stage prod's step_timeout (60 s)"), "{e}");
    }
}
