//! What the benchmarks share: medians, and how figures are printed.

use std::time::Duration;

pub const MIB: f64 = 1024.0 * 1024.0;

/// The element whose key is the median (the upper middle one for an even count).
pub fn median_by<T>(items: &[T], key: impl Fn(&T) -> Duration) -> &T {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|t| key(t));
    sorted[sorted.len() / 2]
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// Every run's wall time, in seconds with `decimals` places.
pub fn list(walls: impl Iterator<Item = Duration>, decimals: usize) -> String {
    walls.map(|d| format!("{:.decimals$}", secs(d))).collect::<Vec<_>>().join(" ")
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
