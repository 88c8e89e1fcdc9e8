//! `[stages.*]` and `[deploy]`: hosts, batches, ssh, where releases live.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use ferry_formats::release::valid_env_name;
use ferry_formats::RelPath;
use ferry_switcher::fleet::{Gate, OnFailure, Step};
use toml::Spanned;

use super::defaults;
use super::raw::{FerryToml, StageHooksSection, StageSection};
use super::runtime::gates;
use super::{host_path, normalize, plural};

/// The batches of a stage: counts and shares, or named groups in order.
#[derive(Debug, Clone)]
pub enum Strategy {
    Steps(Vec<Step>),
    Groups(Vec<String>),
}

/// How an ssh stage reaches its hosts.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The stage's `user`, if it says one.
    pub user: Option<String>,
    pub known_hosts: PathBuf,
    pub identity: Option<PathBuf>,
    pub accept_new: bool,
    /// The agent on the hosts; `None`: upload this binary.
    pub agent: Option<String>,
    pub ssh_config: PathBuf,
    pub connect_timeout: std::time::Duration,
    pub step_timeout: std::time::Duration,
}

/// A stage's git settings: what `ferry deploy` builds and how a push is
/// tagged.
#[derive(Debug, Clone, Default)]
pub struct StageGit {
    /// The ref deployed when none is given (and whose builds a push picks).
    pub reference: Option<String>,
    /// The glob `stable` picks the newest matching tag of.
    pub stable_tags: Option<String>,
    /// Tag the deployed commit after a successful push.
    pub tag: bool,
    /// The dated tag's name, `{stage}` and `{date}` replaced.
    pub tag_format: String,
    /// The remote the tag is pushed to.
    pub tag_remote: String,
}

/// A checked stage. `hosts` of a local stage are absolute directories.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Name, and for a local stage the host's directory.
    pub hosts: Vec<(String, PathBuf)>,
    /// For an ssh stage: how to reach its hosts.
    pub ssh: Option<SshSettings>,
    pub env: String,
    pub strategy: Strategy,
    pub groups: BTreeMap<String, Vec<String>>,
    pub deploy_to: PathBuf,
    pub keep_releases: usize,
    pub max_parallel: usize,
    pub on_failure: OnFailure,
    pub linked_dirs: Vec<RelPath>,
    pub linked_files: Vec<RelPath>,
    /// The stage's, else `[deploy]`'s.
    pub bridge_assets: Vec<RelPath>,
    pub gates: Vec<Gate>,
    /// By host name as the stage lists it.
    pub host_env: BTreeMap<String, BTreeMap<String, String>>,
    /// The stage's own hooks, over `[hooks]`.
    pub hooks: StageHooksSection,
    pub load_balancer: Option<super::balancer::LoadBalancer>,
    pub git: StageGit,
    /// Where the hosts get the payload.
    pub fetch: FetchFrom,
    /// `fetch = "store"`: the most hosts downloading at once.
    pub fetch_parallel: usize,
    /// Minisign public keys the hosts pin (see `ferry_switcher::host::trust`).
    pub trusted_keys: Vec<String>,
}

/// `fetch`: where a stage's hosts get their payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchFrom {
    /// The controller sends the bytes over each host's session.
    #[default]
    Push,
    /// The hosts download it from the remote store, with a URL good for `ttl`.
    Store { ttl: std::time::Duration },
}

pub(super) fn check_stage(
    name: &str,
    stage: &StageSection,
    span: Range<usize>,
    raw: &FerryToml,
    linked: &Linked,
    dir: &Path,
    at: &dyn Fn(Range<usize>) -> String,
) -> Result<Stage> {
    if !valid_env_name(name) {
        bail!("{}: stage {name:?}: a stage name is letters, digits, '_' or '-'", at(span));
    }
    let home = || std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(defaults::HOME));
    let expand = |p: &str| match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => normalize(&dir.join(p)),
    };
    let seconds = |key: &str, value: &Option<Spanned<u64>>, default: u64| match value {
        Some(v) if *v.get_ref() == 0 => bail!("{}: stage {name}: {key} must be at least 1 second", at(v.span())),
        Some(v) => Ok(std::time::Duration::from_secs(*v.get_ref())),
        None => Ok(std::time::Duration::from_secs(default)),
    };
    let connect_timeout = seconds("connect_timeout", &stage.connect_timeout, defaults::CONNECT_TIMEOUT)?;
    let step_timeout = seconds("step_timeout", &stage.step_timeout, defaults::STEP_TIMEOUT)?;
    let ssh = match stage.transport.get_ref().as_str() {
        "local" => None,
        "ssh" => Some(SshSettings {
            user: stage.user.clone(),
            known_hosts: stage.known_hosts.as_deref().map_or_else(|| home().join(defaults::KNOWN_HOSTS), expand),
            identity: stage.identity.as_deref().map(expand),
            accept_new: stage.accept_new_host_keys,
            agent: stage.agent.clone(),
            ssh_config: stage.ssh_config.as_deref().map_or_else(|| home().join(defaults::SSH_CONFIG), expand),
            connect_timeout,
            step_timeout,
        }),
        other => {
            bail!("{}: stage {name}: transport {other:?} must be \"local\" or \"ssh\"", at(stage.transport.span()))
        }
    };
    if stage.hosts.get_ref().is_empty() {
        bail!("{}: stage {name} has no hosts", at(stage.hosts.span()));
    }
    // A local host's name is a path: `fleet/a`, `./fleet/a` and `fleet/a/`
    // are one host, named the first way everywhere (groups, host_env, urls).
    let key = |h: &str| if ssh.is_none() { host_path(h) } else { h.to_owned() };
    let mut hosts: Vec<(String, PathBuf)> = Vec::new();
    for h in stage.hosts.get_ref() {
        let (written, host) = (h.get_ref(), key(h.get_ref()));
        let local = if ssh.is_none() { normalize(&dir.join(&host)) } else { PathBuf::new() };
        if let Some((other, _)) = hosts.iter().find(|(n, d)| *n == host || (ssh.is_none() && *d == local)) {
            let same = if other == written { String::new() } else { format!(" (as {other:?}: the same directory)") };
            bail!("{}: stage {name} lists host {written:?} twice{same}; list each host once", at(h.span()));
        }
        hosts.push((host, local));
    }
    let env = match &stage.env {
        Some(e) if !valid_env_name(e.get_ref()) => {
            bail!("{}: env {:?} must be letters, digits, '_' or '-'", at(e.span()), e.get_ref())
        }
        Some(e) => e.get_ref().clone(),
        None => name.to_owned(),
    };
    let groups: BTreeMap<String, Vec<String>> = stage
        .groups
        .get_ref()
        .iter()
        .map(|(g, members)| (g.clone(), members.iter().map(|m| key(m)).collect()))
        .collect();
    let mut grouped: BTreeMap<&str, &str> = BTreeMap::new();
    for (group, members) in &groups {
        if !valid_env_name(group) || group.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "{}: group {group:?}: a group name is letters, digits, '_' or '-', and not a number (that would be a batch size)",
                at(stage.groups.span())
            );
        }
        for m in members {
            if !hosts.iter().any(|(h, _)| h == m) {
                bail!("{}: group {group} lists {m:?}, which is not one of the stage's hosts", at(stage.groups.span()));
            }
            if let Some(other) = grouped.insert(m, group) {
                bail!(
                    "{}: host {m:?} is in groups {other} and {group}; a host is in one group",
                    at(stage.groups.span())
                );
            }
        }
    }
    let strategy = match &stage.strategy {
        Some(s) if !s.get_ref().is_empty() && s.get_ref().iter().all(|g| groups.contains_key(g.get_ref())) => {
            Strategy::Groups(s.get_ref().iter().map(|g| g.get_ref().clone()).collect())
        }
        Some(s) if s.get_ref().iter().any(|g| groups.contains_key(g.get_ref())) => {
            let unknown: Vec<&String> =
                s.get_ref().iter().map(Spanned::get_ref).filter(|g| !groups.contains_key(*g)).collect();
            bail!("{}: strategy names groups, and also {unknown:?}, which is no group of stage {name}", at(s.span()));
        }
        Some(s) => {
            let steps = s
                .get_ref()
                .iter()
                .map(|step| step.get_ref().parse::<Step>().map_err(|e| (e, step.span())))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|(e, span)| anyhow::anyhow!("{}: strategy: {e} (or the names of groups)", at(span)))?;
            if steps.is_empty() {
                bail!("{}: strategy is empty; leave it out for [\"1\", \"50%\", \"100%\"]", at(s.span()));
            }
            let n = hosts.len();
            if let Some((i, j)) = shrinking(n, &steps) {
                let (earlier, later) = (steps[i], steps[j]);
                let reach = |step: Step| match step {
                    Step::Hosts(k) => plural(k, "host"),
                    Step::Percent(_) => format!("{} of the stage's {n}", step.reach(n)),
                };
                bail!(
                    "{}: stage {name}: strategy \"{later}\" ({}) after \"{earlier}\" ({}) shrinks: each step counts \
                     the hosts flipped from the start, so it would flip none; batches grow: a canary first, \
                     e.g. [\"1\", \"50%\", \"100%\"]",
                    at(s.get_ref()[j].span()),
                    reach(later),
                    reach(earlier)
                );
            }
            Strategy::Steps(steps)
        }
        None => Strategy::Steps(defaults::STRATEGY.iter().map(|s| s.parse().expect("the default parses")).collect()),
    };
    let deploy_to = stage.deploy_to.as_ref().or(raw.deploy.deploy_to.as_ref());
    let deploy_to = match deploy_to {
        Some(d) if !d.get_ref().starts_with('/') => {
            bail!("{}: deploy_to {:?} must be an absolute path on the host", at(d.span()), d.get_ref())
        }
        Some(d) => PathBuf::from(d.get_ref()),
        None => Path::new(defaults::DEPLOY_ROOT).join(raw.service.get_ref()),
    };
    let keep = stage.keep_releases.as_ref().or(raw.deploy.keep_releases.as_ref());
    let keep_releases = match keep {
        Some(k) if *k.get_ref() < 1 => bail!("{}: keep_releases must be at least 1", at(k.span())),
        Some(k) => *k.get_ref(),
        None => defaults::KEEP_RELEASES,
    };
    let bridge_assets = match &stage.bridge_assets {
        Some(list) => bridge_paths(list, at)?,
        None => linked.bridge_assets.clone(),
    };
    let max_parallel = match &stage.max_parallel {
        Some(m) if *m.get_ref() < 1 => bail!("{}: max_parallel must be at least 1", at(m.span())),
        Some(m) => *m.get_ref(),
        None => defaults::MAX_PARALLEL,
    };
    let on_failure = match stage.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None => defaults::ON_FAILURE,
        Some((_, "revert")) => OnFailure::Revert,
        Some((_, "stop")) => OnFailure::Stop,
        Some((o, other)) => bail!("{}: on_failure {other:?} must be \"revert\" or \"stop\"", at(o.span())),
    };
    let ttl = match &stage.fetch_url_ttl {
        Some(t) if !(1..=7 * 24 * 3600).contains(t.get_ref()) => {
            bail!("{}: fetch_url_ttl must be from 1 to 604800 seconds (S3's limit is 7 days)", at(t.span()))
        }
        Some(t) => std::time::Duration::from_secs(*t.get_ref()),
        None => std::time::Duration::from_secs(900),
    };
    let fetch = match stage.fetch.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "push")) => FetchFrom::Push,
        Some((f, "store")) if raw.store.url.is_none() => {
            bail!("{}: fetch = \"store\" needs a remote store: set [store] url = \"s3://BUCKET/PREFIX\"", at(f.span()))
        }
        Some((_, "store")) => FetchFrom::Store { ttl },
        Some((f, other)) => bail!("{}: fetch {other:?} must be \"push\" or \"store\"", at(f.span())),
    };
    let fetch_parallel = match &stage.fetch_parallel {
        Some(n) if *n.get_ref() < 1 => {
            bail!("{}: stage {name}: fetch_parallel must be at least 1 (hosts downloading at once)", at(n.span()))
        }
        Some(n) => *n.get_ref(),
        None => defaults::FETCH_PARALLEL,
    };
    let mut gates = gates(name, &stage.health, at)?;
    for gate in &mut gates {
        if let Gate::Http(probe) | Gate::Errors { probe, .. } = gate {
            probe.urls = std::mem::take(&mut probe.urls).into_iter().map(|(h, u)| (key(&h), u)).collect();
        }
    }
    let host_env: BTreeMap<String, BTreeMap<String, String>> =
        stage.host_env.get_ref().iter().map(|(h, env)| (key(h), env.clone())).collect();
    for h in host_env.keys() {
        if !hosts.iter().any(|(n, _)| n == h) {
            bail!(
                "{}: stage {name}: host_env names {h:?}, which is not one of the stage's hosts",
                at(stage.host_env.span())
            );
        }
    }
    for (h, env) in &host_env {
        for (k, v) in env {
            ferry_switcher::host::runtime::config_safe(v, true).map_err(|e| {
                anyhow::anyhow!("{}: stage {name}: host_env of {h}: {k}: {e}", at(stage.host_env.span()))
            })?;
        }
    }
    for gate in &gates {
        // Where in ferry.toml: the gate's own table (its url), else the stage.
        let here = match gate {
            Gate::Http(_) => stage.health.http.as_ref().map(|h| h.url.span()),
            Gate::Errors { .. } => stage.health.errors.as_ref().map(toml::Spanned::span),
            _ => None,
        }
        .unwrap_or_else(|| span.clone());
        if let Gate::Http(probe) | Gate::Errors { probe, .. } = gate {
            if let Some(h) = probe.urls.keys().find(|h| !hosts.iter().any(|(n, _)| n == *h)) {
                bail!("{}: stage {name}: health urls name {h:?}, which is not one of the stage's hosts", at(here));
            }
            let unnamed = hosts.iter().filter(|(n, _)| !probe.urls.contains_key(n)).count();
            if !probe.url.contains("{host}") && unnamed > 1 {
                bail!(
                    "{}: stage {name}: health.{}.url {:?} has no {{host}}: {unnamed} hosts would all be probed at the \
                     same address; put {{host}} in it, or give each host its URL in urls",
                    at(here),
                    gate.name(),
                    probe.url
                );
            }
        }
    }
    let local_dir = |h: &str| normalize(&dir.join(h));
    let load_balancer = stage
        .load_balancer
        .as_ref()
        .map(|lb| {
            super::balancer::check(
                name,
                lb,
                &hosts,
                &key,
                if ssh.is_none() { Some(&local_dir as &dyn Fn(&str) -> PathBuf) } else { None },
                at,
            )
        })
        .transpose()?;
    if load_balancer.is_none() && gates.iter().any(|g| matches!(g, Gate::LbErrors { .. })) {
        let here = stage.health.errors.as_ref().map_or_else(|| span.clone(), toml::Spanned::span);
        bail!(
            "{}: stage {name}: health.errors has source = \"load_balancer\", and the stage has no \
             [stages.{name}.load_balancer] to read",
            at(here)
        );
    }
    let tag_format = stage.tag_format.as_ref().map_or(defaults::TAG_FORMAT, |f| f.get_ref().as_str());
    if let Some(f) = stage.tag_format.as_ref().filter(|f| !f.get_ref().contains("{date}")) {
        bail!(
            "{}: stage {name}: tag_format {:?} has no {{date}}: every push would make the same tag",
            at(f.span()),
            f.get_ref()
        );
    }
    let git = StageGit {
        reference: stage.reference.as_ref().map(|r| r.get_ref().clone()),
        stable_tags: stage.stable_tags.as_ref().map(|r| r.get_ref().clone()),
        tag: stage.tag,
        tag_format: tag_format.to_owned(),
        tag_remote: stage.tag_remote.as_ref().map_or(defaults::TAG_REMOTE, |r| r.get_ref().as_str()).to_owned(),
    };
    let trusted_keys = trusted_keys(name, stage, at)?;
    Ok(Stage {
        trusted_keys,
        git,
        hooks: stage.hooks.clone(),
        load_balancer,
        hosts,
        ssh,
        env,
        strategy,
        groups,
        deploy_to,
        keep_releases,
        max_parallel,
        on_failure,
        linked_dirs: linked.dirs.clone(),
        linked_files: linked.files.clone(),
        bridge_assets,
        gates,
        host_env,
        fetch,
        fetch_parallel,
    })
}

/// The stage's trusted_keys, each a minisign public key, none twice.
fn trusted_keys(name: &str, stage: &StageSection, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<String>> {
    let Some(keys) = &stage.trusted_keys else { return Ok(Vec::new()) };
    if keys.get_ref().is_empty() {
        bail!(
            "{}: stage {name}: trusted_keys is empty; list at least one minisign public key (`ferry keygen` prints one), or leave it out",
            at(keys.span())
        );
    }
    let mut seen = Vec::new();
    for key in keys.get_ref() {
        let parsed = ferry_formats::signed::TrustedKey::parse(key.get_ref())
            .map_err(|e| anyhow::anyhow!("{}: stage {name}: trusted_keys: {e}", at(key.span())))?;
        if seen.contains(&parsed.id) {
            bail!("{}: stage {name}: trusted_keys lists key {} twice", at(key.span()), parsed.id);
        }
        seen.push(parsed.id);
    }
    Ok(keys.get_ref().iter().map(|k| k.get_ref().trim().to_owned()).collect())
}

/// `[deploy]`'s linked_dirs and linked_files, the same for every stage,
/// and its bridge_assets, which a stage may replace.
pub(super) struct Linked {
    pub dirs: Vec<RelPath>,
    pub files: Vec<RelPath>,
    pub bridge_assets: Vec<RelPath>,
}

/// `[deploy]`'s linked_dirs and linked_files, as paths: read once, for the
/// check against the config component and for every stage.
pub(super) fn linked_paths(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Linked> {
    let linked = |list: &[Spanned<String>], what: &str| -> Result<Vec<RelPath>> {
        list.iter()
            .map(|p| {
                let s = p.get_ref().trim_end_matches('/');
                RelPath::new(s).map_err(|e| anyhow::anyhow!("{}: {what} {s:?}: {e}", at(p.span())))
            })
            .collect()
    };
    Ok(Linked {
        dirs: linked(&raw.deploy.linked_dirs, "linked_dirs")?,
        files: linked(&raw.deploy.linked_files, "linked_files")?,
        bridge_assets: bridge_paths(raw.deploy.bridge_assets.as_deref().unwrap_or_default(), at)?,
    })
}

/// bridge_assets, as paths: release paths as linked_dirs are, and not in
/// ferry's own `.ferry/`.
fn bridge_paths(list: &[Spanned<String>], at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<RelPath>> {
    list.iter()
        .map(|p| {
            let s = p.get_ref().trim_end_matches('/');
            let rel = RelPath::new(s).map_err(|e| anyhow::anyhow!("{}: bridge_assets {s:?}: {e}", at(p.span())))?;
            if rel.components().next() == Some(".ferry") {
                bail!("{}: bridge_assets {s:?}: .ferry is reserved for ferry's own files", at(p.span()));
            }
            Ok(rel)
        })
        .collect()
}

/// The first step of `strategy` that reaches fewer hosts than a step before
/// it, as (earlier, later) indices: steps are cumulative, so such a step
/// adds no host (the batches drop it), which is never what was meant.
/// Counts are compared with counts and shares with shares whatever the
/// fleet (`["5", "3"]`, `["50%", "10%"]`); a count with a share on the
/// stage's `n` hosts, where `["50%", "1"]` is 2 then 1 for 4 hosts and
/// `["10%", "20"]` shrinks only past 200 hosts.
fn shrinking(n: usize, strategy: &[Step]) -> Option<(usize, usize)> {
    strategy.iter().enumerate().find_map(|(j, later)| {
        let shrinks = |earlier: &Step| match (*earlier, *later) {
            (Step::Hosts(a), Step::Hosts(b)) => b < a,
            (Step::Percent(a), Step::Percent(b)) => b < a,
            (a, b) => b.reach(n) < a.reach(n),
        };
        strategy[..j].iter().position(shrinks).map(|i| (i, j))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use anyhow::Result;
    use ferry_switcher::fleet::Step;

    use super::shrinking;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/srv/svc/ferry.toml"), text)
    }

    #[test]
    fn ssh_timeouts_are_seconds_and_zero_is_refused_where_it_is_said() {
        let base = "service = \"s\"\n[stages.prod]\ntransport = \"ssh\"\nhosts = [\"web1\"]\n";
        let c = parse(&format!("{base}connect_timeout = 3\nstep_timeout = 90\n")).unwrap();
        let ssh = c.stages["prod"].ssh.clone().unwrap();
        assert_eq!((ssh.connect_timeout.as_secs(), ssh.step_timeout.as_secs()), (3, 90));
        let ssh = parse(base).unwrap().stages["prod"].ssh.clone().unwrap();
        assert_eq!((ssh.connect_timeout.as_secs(), ssh.step_timeout.as_secs()), (10, 600));
        let err = parse(&format!("{base}step_timeout = 0\n")).unwrap_err().to_string();
        assert!(err.contains("ferry.toml:5:16: stage prod: step_timeout must be at least 1 second"), "{err}");
    }

    #[test]
    fn bridge_assets_are_release_paths_from_deploy_that_a_stage_may_replace_and_bad_ones_say_where() {
        let c = parse(
            "service = \"s\"\n[deploy]\nbridge_assets = [\"media/static/\", \"media/js\"]\n\
             [stages.a]\nhosts = [\"h\"]\n[stages.b]\nhosts = [\"h\"]\nbridge_assets = [\"public/assets\"]\n\
             [stages.c]\nhosts = [\"h\"]\nbridge_assets = []\n",
        )
        .unwrap();
        let paths = |stage: &str| -> Vec<String> {
            c.stages[stage].bridge_assets.iter().map(|p| p.as_str().to_owned()).collect()
        };
        assert_eq!(paths("a"), ["media/static", "media/js"]);
        assert_eq!(paths("b"), ["public/assets"]);
        assert!(paths("c").is_empty(), "an empty list turns the deploy's off");
        assert!(parse("service = \"s\"\n[stages.a]\nhosts = [\"h\"]\n").unwrap().stages["a"].bridge_assets.is_empty());
        let err = parse("service = \"s\"\n[deploy]\nbridge_assets = [\"media\", \"../up\"]\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:3:27: bridge_assets \"../up\""), "{err}");
        let err = parse("service = \"s\"\n[stages.a]\nhosts = [\"h\"]\nbridge_assets = [\"/abs\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:4:18: bridge_assets \"/abs\""), "{err}");
        let err = parse("service = \"s\"\n[deploy]\nbridge_assets = [\".ferry/x\"]\n").unwrap_err().to_string();
        assert!(err.contains("ferry.toml:3:18: bridge_assets \".ferry/x\": .ferry is reserved"), "{err}");
    }

    #[test]
    fn fetch_parallel_defaults_to_32_and_zero_is_refused_where_it_is_said() {
        let base = "service = \"s\"\n[stages.prod]\nhosts = [\"web1\"]\n";
        assert_eq!(parse(base).unwrap().stages["prod"].fetch_parallel, 32);
        assert_eq!(parse(&format!("{base}fetch_parallel = 5\n")).unwrap().stages["prod"].fetch_parallel, 5);
        let err = parse(&format!("{base}fetch_parallel = 0\n")).unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:4:18: stage prod: fetch_parallel must be at least 1"), "{err}");
        let err = parse(&format!("{base}fetch_parallel = -1\n")).unwrap_err().to_string();
        assert!(err.contains("at line 4, column 18") && err.contains("expected usize"), "{err}");
    }

    #[test]
    fn a_strategy_whose_steps_shrink_is_refused_at_the_step() {
        let stage = |strategy: &str| {
            parse(&format!(
                "service = \"s\"\n[stages.web]\nhosts = [\"a\", \"b\", \"c\", \"d\"]\nstrategy = {strategy}\n"
            ))
        };
        let err = stage(r#"["50%", "1"]"#).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/srv/svc/ferry.toml:4:20: stage web: strategy \"1\" (1 host) after \"50%\" (2 of the stage's 4) shrinks"
            ),
            "{err}"
        );
        assert!(err.ends_with(r#"batches grow: a canary first, e.g. ["1", "50%", "100%"]"#), "{err}");
        assert!(stage(r#"["3", "2"]"#).is_err());
        assert!(stage(r#"["60%", "50%"]"#).is_err());
        assert!(stage(r#"["1", "50%", "100%"]"#).is_ok());
        assert!(stage(r#"["10%", "2", "100%"]"#).is_ok());
        assert!(stage(r#"["2", "50%"]"#).is_ok(), "the same reach twice shrinks nothing");
        assert_eq!(shrinking(1000, &[Step::Percent(10), Step::Hosts(20)]), Some((0, 1)));
        assert_eq!(shrinking(1, &[Step::Hosts(5), Step::Hosts(3)]), Some((0, 1)));
    }
}
