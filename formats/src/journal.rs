//! The journal: what happened to a service on one host, one JSON object per
//! line, appended and never rewritten — Capistrano's `revisions.log`, with
//! structure.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `time` | string | RFC 3339, UTC, milliseconds |
//! | `user` | string | who ran it (`user@host` of the controller, or the local user) |
//! | `action` | string | `stage`, `deploy`, `rollback`, `prune`, `pin`, `unpin` |
//! | `from` | release id or absent | `current` before (deploy, rollback); the pruned release (prune) |
//! | `to` | release id or absent | `current` after (deploy, rollback); the staged or pinned release |
//! | `result` | string | `ok` or `failed` |
//! | `reason` | string or absent | why, when it failed or was asked for |
//! | `key` | string or absent | the minisign key id that signed `to` (stage, deploy, rollback on a host with trusted keys) |
//! | `serial` | number or absent | the serial `to` was signed with |
//!
//! A line cut short by a crash is skipped by readers (and reported); the
//! next append starts on a new line.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::ReleaseId;

/// What a journal record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Stage,
    Deploy,
    Rollback,
    Prune,
    Pin,
    Unpin,
    /// The `migrate` hook ran from release `to` (on the one host of a push
    /// that runs it): a rollback past `to` does not undo what it did.
    Migrate,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub time: String,
    pub user: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ReleaseId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ReleaseId>,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key id that signed `to` (see [`crate::signed`]), where it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The serial `to` was signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

impl Record {
    /// A record stamped now.
    pub fn now(user: impl Into<String>, action: Action, from: Option<ReleaseId>, to: Option<ReleaseId>) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            user: user.into(),
            action,
            from,
            to,
            result: Outcome::Ok,
            reason: None,
            key: None,
            serial: None,
        }
    }

    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.result = Outcome::Failed;
        self.reason = Some(reason.into());
        self
    }

    /// The record as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a record always serializes");
        line.push('\n');
        line
    }
}

/// Every whole record in `text`, and the 1-based numbers of lines that are not
/// one (a torn last line after a crash, or damage).
pub fn parse(text: &str) -> (Vec<Record>, Vec<usize>) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(_) => bad.push(i + 1),
        }
    }
    (records, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_a_torn_line() {
        let id = ReleaseId::from_bytes([7; 32]);
        let a = Record::now("ci@box", Action::Deploy, None, Some(id));
        let b = Record::now("ci@box", Action::Rollback, Some(id), None).failed("asked");
        let text = format!("{}{}{{\"time\":\"20", a.to_line(), b.to_line());
        let (records, bad) = parse(&text);
        assert_eq!(records, vec![a, b]);
        assert_eq!(bad, vec![3]);
    }
}
