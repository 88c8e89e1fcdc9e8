//! One deploy at a time per service on a host.
//!
//! The lock is flock(2) on `.ferry/lock`: the kernel drops it when its holder
//! exits, however it exits, so a crash or a reboot never leaves a false
//! "locked". The holder writes who it is into the file, for the message the
//! next comer gets; that text is only believed while the flock is held.

use std::io::{Read, Seek, Write};
use std::time::SystemTime;

use ferry_formats::atomic;
use fs_err as fs;
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use super::{at, whoami, Host, HostError};

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: String,
    pub pid: u32,
    pub command: String,
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` ({}, pid {}) since {}", self.command, self.user, self.pid, self.since)
    }
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct Lock {
    file: fs::File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Clear the name before the kernel drops the flock, so nobody reads
        // a stale holder as the current one.
        let _ = self.file.set_len(0);
    }
}

impl Host {
    /// Takes the service's lock for `command` (what the holder is doing, as
    /// the next comer will read it), or says who has it. Creates the layout's
    /// directories, and clears what a killed predecessor left behind.
    pub fn lock(&self, command: &str) -> Result<Lock, HostError> {
        let ferry = self.ferry_dir();
        for dir in [&self.root, &ferry, &self.releases_dir(), &self.shared_dir()] {
            fs::create_dir_all(dir).map_err(HostError::Fs)?;
        }
        let path = ferry.join("lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(HostError::Fs)?;
        // A `status` takes the lock shared for a moment to see whether it is
        // free; do not mistake that for a deploy.
        let mut tries = 0;
        while flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            tries += 1;
            if tries == 20 {
                let holder =
                    read_holder(&mut file).map_or_else(|| "another ferry process".to_owned(), |h| h.to_string());
                return Err(HostError::Locked { path: self.root.clone(), holder });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let holder = Holder {
            user: whoami(),
            pid: std::process::id(),
            command: command.to_owned(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let text = serde_json::to_string(&holder).expect("a holder serializes");
        file.set_len(0).map_err(at(&path))?;
        file.rewind().map_err(at(&path))?;
        file.write_all(text.as_bytes()).map_err(at(&path))?;
        let lock = Lock { file };
        self.clear_leftovers();
        self.reconcile_journal()?;
        Ok(lock)
    }

    /// Who holds the lock now, if anyone.
    pub fn holder(&self) -> Result<Option<Holder>, HostError> {
        let path = self.ferry_dir().join("lock");
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::Fs(e)),
        };
        if flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
            return Ok(None);
        }
        Ok(Some(read_holder(&mut file).unwrap_or_else(|| Holder {
            user: "unknown".into(),
            pid: 0,
            command: "another ferry process".into(),
            since: "unknown".into(),
        })))
    }

    /// Staging and pruning directories and temporary links that a killed
    /// process left. Only called with the lock held, so nobody owns them.
    /// Best effort: one that cannot be removed must not stand in the way of
    /// an emergency rollback (the next stage of that release starts afresh).
    fn clear_leftovers(&self) {
        let releases = self.releases_dir();
        if let Ok(entries) = fs::read_dir(&releases) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".staging-") || name.starts_with(".pruning-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let _ = atomic::remove_stale_temps(&self.root);
    }
}

fn read_holder(file: &mut fs::File) -> Option<Holder> {
    // The holder writes its name right after taking the lock; give it a moment.
    for _ in 0..20 {
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        if let Ok(h) = serde_json::from_str(&text) {
            return Some(h);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}
