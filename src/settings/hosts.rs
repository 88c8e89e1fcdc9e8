//! Which of a stage's hosts a command acts on: every name `--hosts` takes
//! for each host, and what `--hosts` and `--group` leave, in batch order.

use std::path::Path;

use anyhow::Result;
use ferry_switcher::fleet::{Ssh, Step};

use crate::cli::Narrow;
use crate::config::Strategy;

/// Every name `--hosts` takes for each host of the stage, the one reports
/// print first: a local host by its directory's last component when that
/// tells the hosts apart, else its path, and by its path; an ssh host as
/// ferry.toml writes it, and as `host`, `user@host` (`:port`) with the
/// user, HostName and Port the connection resolves (from the name, the
/// stage's `user`, the ssh config).
pub(super) fn host_names(stage: &crate::config::Stage, ssh: Option<&Ssh>) -> Vec<Vec<String>> {
    let short = |dir: &Path| dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let shorts: std::collections::BTreeSet<_> = stage.hosts.iter().filter_map(|(_, d)| short(d)).collect();
    let unique = shorts.len() == stage.hosts.len();
    stage
        .hosts
        .iter()
        .map(|(written, dir)| {
            let Some(ssh) = ssh else {
                let shown = if unique { short(dir).unwrap_or_else(|| written.clone()) } else { written.clone() };
                return vec![shown, written.clone()];
            };
            let mut names = vec![written.clone()];
            let Some((user, alias, port)) = ssh_address(written) else { return names };
            let params = ssh.ssh_config.as_ref().map(|c| c.query(&alias));
            let user = user
                .or_else(|| ssh.user.clone())
                .or_else(|| params.as_ref().and_then(|p| p.user.clone()))
                .or_else(|| std::env::var("USER").ok());
            let port = port.or_else(|| params.as_ref().and_then(|p| p.port));
            let host_name = params.as_ref().and_then(|p| p.host_name.clone());
            for host in std::iter::once(alias).chain(host_name) {
                let bare = if host.contains(':') && port.is_some() { format!("[{host}]") } else { host.clone() };
                let mut forms = vec![host.clone()];
                forms.extend(port.map(|p| format!("{bare}:{p}")));
                for form in forms {
                    names.extend(user.iter().map(|u| format!("{u}@{form}")));
                    names.push(form);
                }
            }
            names.dedup();
            names
        })
        .collect()
}

/// `[user@]host[:port]`, read as the ssh transport reads it (its parser is
/// private to the switcher): an IPv6 address bare, or in brackets with a port.
fn ssh_address(name: &str) -> Option<(Option<String>, String, Option<u16>)> {
    let (user, rest) = match name.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, name),
    };
    if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some((user, host.to_owned(), port));
    }
    match rest.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Some((user, rest.to_owned(), None)),
        Some((h, p)) => Some((user, h.to_owned(), Some(p.parse().ok()?))),
        None => Some((user, rest.to_owned(), None)),
    }
}

/// The stage's hosts that `--hosts` and `--group` leave (all, without
/// them), as indices in batch order, and the strategy as counts: a
/// strategy of groups puts each group's hosts together, in the strategy's
/// order. `names` are each host's names (see [`host_names`]).
pub(super) fn narrowed(
    name: &str,
    stage: &crate::config::Stage,
    names: &[Vec<String>],
    narrow: &Narrow,
) -> Result<(Vec<usize>, Vec<Step>)> {
    for g in &narrow.groups {
        if !stage.groups.contains_key(g) {
            let known: Vec<&str> = stage.groups.keys().map(String::as_str).collect();
            anyhow::bail!(
                "stage {name} has no group {g:?} (it has: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
        }
    }
    let mut asked = std::collections::BTreeSet::new();
    for h in &narrow.hosts {
        asked.insert(pick(name, stage, names, h)?);
    }
    let written = |i: usize| stage.hosts[i].0.as_str();
    let wanted = |i: usize| {
        (narrow.hosts.is_empty() && narrow.groups.is_empty())
            || asked.contains(&i)
            || narrow.groups.iter().any(|g| stage.groups[g].iter().any(|m| m == written(i)))
    };
    let mut hosts: Vec<usize> = (0..stage.hosts.len()).filter(|i| wanted(*i)).collect();
    let strategy = match &stage.strategy {
        Strategy::Steps(steps) => steps.clone(),
        Strategy::Groups(order) => {
            let rank = |i: usize| {
                order.iter().position(|g| stage.groups[g].iter().any(|m| m == written(i))).unwrap_or(order.len())
            };
            hosts.sort_by_key(|i| rank(*i));
            let mut steps = Vec::new();
            let mut upto = 0;
            for g in 0..order.len() {
                upto += hosts.iter().filter(|i| rank(**i) == g).count();
                if upto > 0 {
                    steps.push(Step::Hosts(upto));
                }
            }
            steps
        }
    };
    Ok((hosts, strategy))
}

/// The host `--hosts` names with `asked`: by the name reports print or
/// ferry.toml writes, else by any other of its names when only one host
/// has it.
fn pick(name: &str, stage: &crate::config::Stage, names: &[Vec<String>], asked: &str) -> Result<usize> {
    let asked_as = if stage.ssh.is_none() { crate::config::host_path(asked) } else { asked.to_owned() };
    let exact: Vec<usize> = (0..names.len())
        .filter(|i| names[*i][0] == asked_as || stage.hosts[*i].0 == asked_as || names[*i][0] == asked)
        .collect();
    if let [i] = exact[..] {
        return Ok(i);
    }
    let loose: Vec<usize> = (0..names.len()).filter(|i| names[*i].contains(&asked_as)).collect();
    let shown = |i: &usize| {
        let (shown, written) = (&names[*i][0], &stage.hosts[*i].0);
        if shown == written {
            shown.clone()
        } else {
            format!("{shown} ({written})")
        }
    };
    match loose[..] {
        [i] => Ok(i),
        [] => {
            let known: Vec<String> = (0..names.len()).map(|i| shown(&i)).collect();
            anyhow::bail!("stage {name} has no host {asked:?} (it has: {})", known.join(", "))
        }
        _ => {
            let which: Vec<String> = loose.iter().map(shown).collect();
            anyhow::bail!(
                "stage {name}: --hosts {asked:?} could be any of {}; name one as written there",
                which.join(", ")
            )
        }
    }
}
