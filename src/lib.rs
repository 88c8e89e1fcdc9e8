//! The library half of the `ferry` command: ferry.toml's reader, shared with
//! the fuzz targets in `fuzz/` (the command itself is `src/main.rs`).

pub mod config;

/// What the ferry.toml fuzz target does with its input (here, so `cargo test`
/// replays the committed corpus through the same code).
#[doc(hidden)]
pub mod fuzz {
    use std::path::Path;

    /// Reads the bytes as a ferry.toml: never a panic, and an error always
    /// says which file (and, from the file's own text, where in it).
    pub fn ferry_toml(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if let Err(e) = crate::config::Config::parse(Path::new("ferry.toml"), text) {
            let message = format!("{e:#}");
            assert!(message.starts_with("ferry.toml"), "a config error says which file: {message}");
        }
    }
}
