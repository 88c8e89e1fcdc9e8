//! HAProxy's runtime API, as text: the commands ferry sends to an admin
//! socket and what it reads back. The API is line-based: a `set` answered
//! with nothing (or an empty line) succeeded; any other answer is an error
//! in HAProxy's own words. `show stat` answers CSV whose first line names
//! the columns, so columns are found by name, not position.

use std::collections::HashMap;

use serde::Serialize;

/// A server's administrative state, as `set server B/S state …` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation.
    Ready,
    /// No new connections, except persistent ones; those open go on.
    Drain,
    /// Out of rotation; health checks stop.
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `set server B/S state S`.
pub fn set_state(backend: &str, server: &str, state: AdminState) -> String {
    format!("set server {backend}/{server} state {state}")
}

/// `shutdown sessions server B/S`: ends the sessions a drain left open.
pub fn shutdown_sessions(backend: &str, server: &str) -> String {
    format!("shutdown sessions server {backend}/{server}")
}

/// The command that says the socket's level (`admin`, `operator`, `user`).
pub const CLI_LEVEL: &str = "show cli level";

/// Servers' statistics: type 4 is servers, of every proxy.
pub const SHOW_STAT: &str = "show stat -1 4 -1";

/// The reply to a `set`: `Ok` when HAProxy said nothing, else its words.
pub fn set_reply(reply: &str) -> Result<(), String> {
    match reply.trim() {
        "" => Ok(()),
        words => Err(words.to_owned()),
    }
}

/// A server's status as `show stat` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    Up,
    Down,
    /// Administratively draining.
    Drain,
    /// In maintenance: set by hand (or by ferry), or through a tracked
    /// server (`MAINT (via …)`), or by DNS resolution.
    Maint(String),
    /// Up, but its agent asked for no new traffic.
    NoLb,
    /// Ready, without a health check: HAProxy cannot tell whether it answers.
    NoCheck,
    /// Up and failing checks (`UP 1/3`): still in rotation.
    GoingDown(String),
    /// Down and passing checks (`DOWN 1/2`): not in rotation yet.
    GoingUp(String),
    Other(String),
}

impl ServerStatus {
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        match s {
            "UP" => ServerStatus::Up,
            "DOWN" => ServerStatus::Down,
            "DRAIN" => ServerStatus::Drain,
            "NOLB" => ServerStatus::NoLb,
            "no check" => ServerStatus::NoCheck,
            _ if s.starts_with("MAINT") => ServerStatus::Maint(s.to_owned()),
            _ if s.starts_with("UP ") => ServerStatus::GoingDown(s.to_owned()),
            _ if s.starts_with("DOWN ") => ServerStatus::GoingUp(s.to_owned()),
            _ => ServerStatus::Other(s.to_owned()),
        }
    }

    /// HAProxy sends it new requests.
    pub fn in_service(&self) -> bool {
        matches!(self, ServerStatus::Up | ServerStatus::NoCheck | ServerStatus::GoingDown(_))
    }

    /// Out of rotation by an administrator's hand (ferry's or a person's).
    pub fn is_maint(&self) -> bool {
        matches!(self, ServerStatus::Maint(_))
    }
}

impl std::fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ServerStatus::Up => "UP",
            ServerStatus::Down => "DOWN",
            ServerStatus::Drain => "DRAIN",
            ServerStatus::NoLb => "NOLB",
            ServerStatus::NoCheck => "no check",
            ServerStatus::Maint(s) | ServerStatus::GoingDown(s) | ServerStatus::GoingUp(s) | ServerStatus::Other(s) => {
                s
            }
        };
        f.pad(s)
    }
}

impl Serialize for ServerStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One server's line of `show stat`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    pub status: ServerStatus,
    /// Sessions now.
    pub scur: u64,
    /// Requests queued for it now.
    pub qcur: u64,
    /// Responses by class, as counted since HAProxy started.
    pub hrsp_2xx: u64,
    pub hrsp_5xx: u64,
    /// Every response counted (1xx to 5xx and other).
    pub responses: u64,
    /// Its last health check: status and code (`L7OK/200`), or empty.
    pub check: String,
    /// Seconds since its last status change.
    pub lastchg: Option<u64>,
}

/// Reads `show stat` CSV: its servers (type 2), columns found by name.
pub fn parse_stat(csv: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("`show stat` answered nothing")?;
    let Some(header) = header.strip_prefix("# ") else {
        return Err(format!("`show stat` answered {:?}, not its CSV", header.chars().take(200).collect::<String>()));
    };
    let columns: HashMap<&str, usize> = header.split(',').enumerate().map(|(i, c)| (c, i)).collect();
    let col = |name: &str| columns.get(name).copied().ok_or_else(|| format!("`show stat` has no column {name}"));
    let (px, sv, ty, st) = (col("pxname")?, col("svname")?, col("type")?, col("status")?);
    let (scur, qcur, lastchg) = (col("scur")?, col("qcur")?, col("lastchg")?);
    let (check_status, check_code) = (col("check_status")?, col("check_code")?);
    let classes: Vec<usize> = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"]
        .iter()
        .filter_map(|c| columns.get(c).copied())
        .collect();
    let (h2, h5) = (col("hrsp_2xx")?, col("hrsp_5xx")?);
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let num = |i: usize| get(i).parse::<u64>().unwrap_or(0);
        if get(ty) != "2" {
            continue;
        }
        let check = match (get(check_status), get(check_code)) {
            ("", _) => String::new(),
            (s, "") => s.to_owned(),
            (s, c) => format!("{s}/{c}"),
        };
        out.push(ServerStat {
            backend: get(px).to_owned(),
            server: get(sv).to_owned(),
            status: ServerStatus::parse(get(st)),
            scur: num(scur),
            qcur: num(qcur),
            hrsp_2xx: num(h2),
            hrsp_5xx: num(h5),
            responses: classes.iter().map(|i| num(*i)).sum(),
            check,
            lastchg: get(lastchg).parse().ok(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As HAProxy 2.6 writes it (columns cut after check_code's neighbours).
    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,\n\
web,host1,0,0,3,5,,100,1,2,,0,,0,0,0,0,UP,1,1,0,0,0,12,0,,1,3,1,,100,,2,0,,5,L7OK,200,1,0,97,0,0,3,0,\n\
web,host2,1,1,0,2,,50,1,2,,0,,0,0,0,0,MAINT,1,1,0,0,0,4,0,,1,3,2,,50,,2,0,,5,,,,0,50,0,0,0,0,\n\
web,host3,0,0,0,2,,50,1,2,,0,,0,0,0,0,DOWN 1/2,1,1,0,0,0,4,0,,1,3,3,,50,,2,0,,5,L7STS,500,1,0,50,0,0,0,0,\n\
web,BACKEND,0,0,3,5,,200,1,2,,0,,0,0,0,0,UP,1,1,0,,0,12,0,,1,3,0,,200,,1,0,,5,,,,0,197,0,0,3,0,\n";

    #[test]
    fn show_stat_is_read_by_column_name_servers_only() {
        let stats = parse_stat(STAT).unwrap();
        assert_eq!(stats.len(), 3);
        let h1 = &stats[0];
        assert_eq!((h1.backend.as_str(), h1.server.as_str()), ("web", "host1"));
        assert_eq!((h1.status.clone(), h1.scur, h1.qcur), (ServerStatus::Up, 3, 0));
        assert_eq!((h1.hrsp_2xx, h1.hrsp_5xx, h1.responses), (97, 3, 100));
        assert_eq!((h1.check.as_str(), h1.lastchg), ("L7OK/200", Some(12)));
        assert!(stats[1].status.is_maint() && !stats[1].status.in_service());
        assert_eq!(stats[2].status, ServerStatus::GoingUp("DOWN 1/2".into()));
        assert_eq!(stats[2].status.to_string(), "DOWN 1/2");
        assert!(!stats[2].status.in_service());
    }

    #[test]
    fn what_is_not_show_stat_is_refused_with_its_words() {
        let e = parse_stat("Permission denied\n").unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
        assert!(parse_stat("").is_err());
        assert!(parse_stat("# pxname,svname\n").unwrap_err().contains("no column"));
    }

    #[test]
    fn a_set_succeeds_on_an_empty_answer_only() {
        assert_eq!(set_reply(""), Ok(()));
        assert_eq!(set_reply("\n"), Ok(()));
        assert_eq!(set_reply("No such server.\n"), Err("No such server.".to_owned()));
        assert_eq!(set_state("web", "host1", AdminState::Drain), "set server web/host1 state drain");
    }

    #[test]
    fn statuses_in_and_out_of_service() {
        for (s, in_service) in [
            ("UP", true),
            ("UP 1/3", true),
            ("no check", true),
            ("DOWN", false),
            ("DOWN 1/2", false),
            ("MAINT", false),
            ("MAINT (via web/host9)", false),
            ("DRAIN", false),
            ("NOLB", false),
        ] {
            assert_eq!(ServerStatus::parse(s).in_service(), in_service, "{s}");
            assert_eq!(ServerStatus::parse(s).to_string(), s);
        }
    }
}
