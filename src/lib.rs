//! The library half of the `ferry` command: ferry.toml's reader, shared with
//! the fuzz targets in `fuzz/` (the command itself is `src/main.rs`).

pub mod config;

/// What the ferry.toml fuzz target does with its input (here, so `cargo test`
/// replays the committed corpus through the same code).
#[doc(hidden)]
pub mod fuzz {
    use std::path::Path;

    /// Reads the bytes as a ferry.toml: never a panic, and an error always
    /// says where: `ferry.toml:LINE:COL: …`, or TOML's own `… at line L, column C`.
    pub fn ferry_toml(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if let Err(e) = crate::config::Config::parse(Path::new("ferry.toml"), text) {
            let message = format!("{e:#}");
            assert!(says_where(&message), "a config error says where in the file: {message}");
        }
    }

    /// `ferry.toml:LINE:COL: …`, or `ferry.toml: TOML parse error at line …`.
    fn says_where(message: &str) -> bool {
        let Some(rest) = message.strip_prefix("ferry.toml") else { return false };
        if rest.starts_with(": TOML parse error at line ") {
            return true;
        }
        let mut parts = rest.splitn(4, ':');
        let number = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        parts.next() == Some("") && number(parts.next()) && number(parts.next())
    }
}
