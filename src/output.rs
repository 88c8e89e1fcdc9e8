//! How results reach the user: progress bars on a terminal, sizes and times
//! in words, JSON for CI.

use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::settings::Output;

/// A byte-count progress bar on stderr, or nothing.
#[derive(Debug)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(output: Output) -> Self {
        Self(output.progress.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>11} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        }))
    }
}

impl ferry_builder::Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        if let Some(b) = &self.0 {
            // Length first: setting the prefix redraws the bar.
            b.set_length(total);
            b.set_position(0);
            b.set_prefix(name.to_owned());
        }
    }

    fn total(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// `1.5 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Unix seconds as `2026-11-22T11:42:00Z`, or `-` for unknown.
pub fn time(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Milliseconds, for JSON.
pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Prints a JSON value on stdout.
pub fn json(value: &serde_json::Value) -> std::io::Result<()> {
    line(&serde_json::to_string_pretty(value).expect("JSON values serialize"))
}

/// Prints a line on stdout. A closed stdout is an error to return, not a
/// panic (`println!` panics): `ferry bundles | head -1` must exit quietly.
pub fn line(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(200 << 20), "200.0 MiB");
    }
}
