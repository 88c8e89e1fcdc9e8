//! `ferry lb STAGE …`: OpenSky's group flow by hand — a group out of the
//! load balancer's rotation, deploy to it (`ferry push --out`), flip the
//! groups, deploy to the other, all back in.
//!
//! HAProxy keeps the states ferry sets in its running process only: a
//! reload starts every server as haproxy.cfg says. ferry keeps what it set
//! in `.ferry/lb/<stage>.json` beside the store, so `status` shows where
//! HAProxy no longer has it, and the same `out` sets it again.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use ferry_switcher::fleet::lb::{Lb, ServerView};
use ferry_switcher::fleet::{LoadBalancer, Observer};

use crate::cli::LbVerb;
use crate::exit;
use crate::output;
use crate::settings::{Settings, StageSettings};

pub fn run(settings: &Settings, s: &StageSettings, verb: &LbVerb) -> Result<u8> {
    let config = s.stage.load_balancer.as_ref().context("the stage has a load balancer (checked in settings)")?;
    let mut lb = Lb::connect(config, s.transport())?;
    let mut set = Intent::load(s)?;
    let observer = super::report::observer(settings, 0);
    let draining = |hosts: &[String], observer: &dyn Observer| {
        let within = format!("waiting for their sessions, up to {} s", config.drain_timeout.as_secs());
        observer.note(&hosts.join(","), "lb", &format!("draining: {within}"));
    };
    match verb {
        LbVerb::Status => return status(settings, s, &mut lb, &set),
        LbVerb::Out { group } => {
            let hosts = members(s, config, group)?;
            lb.guard(&hosts)?;
            draining(&hosts, observer.as_ref());
            let drained = lb.take_out(&hosts, observer.as_ref())?;
            set.out(&hosts);
            set.save()?;
            let forced =
                drained.forced.iter().map(|(h, n)| format!("; {h}: {n} sessions shut down at the drain timeout"));
            say(
                settings,
                &format!(
                    "{} out of rotation (drained in {:.2} s{})",
                    hosts.join(", "),
                    drained.seconds,
                    forced.collect::<String>()
                ),
            )?;
        }
        LbVerb::In { group } => {
            let hosts = members(s, config, group)?;
            let up = lb.put_in(&hosts)?;
            set.back(&hosts);
            set.save()?;
            say(settings, &format!("{} in rotation (UP after {:.2} s)", hosts.join(", "), up.as_secs_f64()))?;
        }
        LbVerb::Flip => {
            let out = lb.out_of_rotation()?;
            let (outs, ins): (Vec<_>, Vec<_>) =
                s.groups.iter().filter(|(_, m)| !m.is_empty()).partition(|(_, m)| m.iter().all(|h| out.contains(h)));
            if s.groups.is_empty() {
                bail!(
                    "stage {} has no groups to flip: add groups = {{ group1 = [...], group2 = [...] }}",
                    s.stage.name
                );
            }
            if outs.is_empty() {
                bail!(
                    "no group of stage {} is out of rotation, so there is nothing to bring in; take one out first: \
                     `ferry lb {0} out <group>`",
                    s.stage.name
                );
            }
            if ins.is_empty() {
                bail!("every group of stage {} is out of rotation; `ferry lb {0} all` brings them in", s.stage.name);
            }
            let coming: Vec<String> = outs.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
            let going: Vec<String> = ins.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
            // In first, and UP, so the backend never runs short.
            let up = lb.put_in(&coming)?;
            set.back(&coming);
            set.save()?;
            lb.guard(&going)?;
            draining(&going, observer.as_ref());
            let drained = lb.take_out(&going, observer.as_ref())?;
            set.out(&going);
            set.save()?;
            let names =
                |g: &[(&String, &Vec<String>)]| g.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
            say(
                settings,
                &format!(
                    "{} in rotation (UP after {:.2} s); {} out (drained in {:.2} s)",
                    names(&outs),
                    up.as_secs_f64(),
                    names(&ins),
                    drained.seconds
                ),
            )?;
        }
        LbVerb::All => {
            let hosts: Vec<String> = config.servers.keys().cloned().collect();
            let up = lb.put_in(&hosts)?;
            set.back(&hosts);
            set.save()?;
            say(settings, &format!("all {} hosts in rotation (UP after {:.2} s)", hosts.len(), up.as_secs_f64()))?;
        }
    }
    Ok(exit::OK)
}

/// Records hosts a push left out of rotation, so `ferry lb status` knows
/// ferry set them so.
pub(super) fn left_out(s: &StageSettings, hosts: &[String]) -> Result<()> {
    let mut set = Intent::load(s)?;
    set.out(hosts);
    set.save()
}

fn say(settings: &Settings, line: &str) -> Result<()> {
    if settings.output.json {
        output::json(&serde_json::json!({ "ok": true, "done": line }))?;
    } else {
        output::line(line)?;
    }
    Ok(())
}

/// The hosts `group` names: a group of the stage, or hosts (comma-separated).
fn members(s: &StageSettings, config: &LoadBalancer, group: &str) -> Result<Vec<String>> {
    if let Some(m) = s.groups.get(group) {
        return Ok(m.clone());
    }
    group
        .split(',')
        .map(|h| {
            if config.servers.contains_key(h) {
                Ok(h.to_owned())
            } else {
                let groups: Vec<&str> = s.groups.keys().map(String::as_str).collect();
                let hosts: Vec<&str> = config.servers.keys().map(String::as_str).collect();
                bail!(
                    "stage {} has no group or host {h:?} (groups: {}; hosts: {})",
                    s.stage.name,
                    if groups.is_empty() { "none".to_owned() } else { groups.join(", ") },
                    hosts.join(", ")
                )
            }
        })
        .collect()
}

fn status(settings: &Settings, s: &StageSettings, lb: &mut Lb<'_>, set: &Intent) -> Result<u8> {
    let views = lb.status()?;
    let mismatch = |v: &ServerView| -> Option<String> {
        let host = v.host.as_deref()?;
        (set.hosts.get(host).is_some_and(|st| st == "maint") && !v.stat.status.is_maint()).then(|| {
            format!(
                "ferry set maint, HAProxy shows {} (reloaded?): `ferry lb {} out {host}` sets it again",
                v.stat.status, s.stage.name
            )
        })
    };
    let mismatches: Vec<String> =
        views.iter().filter_map(|v| mismatch(v).map(|m| format!("{} on {}: {m}", v.stat.server, v.node))).collect();
    if settings.output.json {
        output::json(&serde_json::json!({ "servers": views, "mismatches": mismatches }))?;
    } else {
        let w = views.iter().map(|v| v.node.len()).max().unwrap_or(4).max(4);
        output::line(&format!(
            "{:<w$}  {:<10}  {:<12}  {:<14}  {:>8}  {:>5}  {:<12}  {:>7}",
            "NODE", "BACKEND", "SERVER", "STATUS", "SESSIONS", "QUEUE", "LAST CHECK", "CHANGED"
        ))?;
        for v in &views {
            output::line(&format!(
                "{:<w$}  {:<10}  {:<12}  {:<14}  {:>8}  {:>5}  {:<12}  {:>7}",
                v.node,
                v.stat.backend,
                v.stat.server,
                v.stat.status,
                v.stat.scur,
                v.stat.qcur,
                if v.stat.check.is_empty() { "-" } else { &v.stat.check },
                v.stat.lastchg.map_or_else(|| "-".to_owned(), |s| format!("{s} s")),
            ))?;
        }
        for m in &mismatches {
            eprintln!("mismatch: {m}");
        }
    }
    Ok(if mismatches.is_empty() { exit::OK } else { exit::HOSTS_FAILED })
}

/// What ferry set on the stage's load balancer, kept between commands.
struct Intent {
    path: std::path::PathBuf,
    hosts: BTreeMap<String, String>,
}

impl Intent {
    fn load(s: &StageSettings) -> Result<Self> {
        let hosts = match fs_err::read_to_string(&s.lb_state) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not what ferry wrote; remove it", s.lb_state.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self { path: s.lb_state.clone(), hosts })
    }

    fn out(&mut self, hosts: &[String]) {
        for h in hosts {
            self.hosts.insert(h.clone(), "maint".into());
        }
    }

    fn back(&mut self, hosts: &[String]) {
        for h in hosts {
            self.hosts.remove(h);
        }
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            fs_err::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        fs_err::write(&tmp, serde_json::to_string_pretty(&self.hosts)?)?;
        fs_err::rename(&tmp, &self.path)?;
        Ok(())
    }
}
