//! CPU time of a process, from `/proc/PID/stat`: what the benchmarks print
//! beside wall times, as it depends much less on what else the machine runs.
//! Each benchmark that includes it reads the part it needs.
#![allow(dead_code)]

/// A process's CPU seconds (user + system).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// Its own, all its threads.
    pub own: f64,
    /// Of the children it has reaped (and theirs, as they reaped).
    pub children: f64,
}

impl Cpu {
    /// Its own and its reaped children's.
    pub fn total(&self) -> f64 {
        self.own + self.children
    }
}

/// The CPU of `pid` ("self" for this process); zero if it cannot be read.
pub fn of(pid: &str) -> Cpu {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces and parentheses), from
    // field 3 on: utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) / TICKS_PER_SECOND;
    Cpu { own: field(14) + field(15), children: field(16) + field(17) }
}

/// The kernel's USER_HZ, in which `/proc` gives CPU times: 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;
