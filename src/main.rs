//! `ferry`: parse, run one command, report.

mod cli;
mod commands;
use ferry::config;
mod huge_pages;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, as `ferry --help` documents them.
pub mod exit {
    pub const OK: u8 = 0;
    pub const HOSTS_FAILED: u8 = 1;
    pub const FATAL: u8 = 2;
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    huge_pages::start_again_if_useful(&cli);
    more_open_files();
    let json = cli.json;
    match settings::Settings::new(cli).and_then(|s| commands::run(&s)) {
        Ok(code) => ExitCode::from(code),
        // A reader that stops early (`ferry inspect … | head`) is not an error.
        Err(err) if is_broken_pipe(&err) => ExitCode::from(exit::OK),
        Err(err) => {
            eprintln!("ferry: error: {err:#}");
            if json {
                // CI reads stdout: it gets a document that says what failed, too.
                let _ = output::json(&serde_json::json!({"ok": false, "error": format!("{err:#}")}));
            }
            ExitCode::from(exit::FATAL)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Raises the soft limit on open files to the hard one: a push or rollback
/// holds a session (a socket) per host until it ends, and the soft limit a
/// shell gives (often 1024) is smaller than a big fleet. What Go programs and
/// many servers do at start; the hard limit stays the operator's. Failing
/// that, ferry runs with the limit it has (a host it cannot reach says
/// "Too many open files").
fn more_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}
