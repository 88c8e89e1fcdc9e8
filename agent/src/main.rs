//! `ferry-agent`: what ferry uploads to a host and runs there over SSH —
//! the host side of a session (`ferry host serve`) and `agent-hash`, and
//! nothing else. It is built without the SSH client (the host side never
//! speaks SSH), so it links nothing beyond libc; the controller checks the
//! host's glibc against what this binary needs before uploading it.
//!
//! The command line is the subset of ferry's that the controller sends:
//!
//! ```text
//! ferry-agent host --deploy-to DIR serve [--lock TEXT]
//! ferry-agent agent-hash
//! ferry-agent --version
//! ```
//!
//! For `ferry host status` and the other verbs by hand, use a full `ferry`.

use std::process::ExitCode;

use ferry_switcher::host::{serve::serve, Host};

const USAGE: &str = "usage: ferry-agent host --deploy-to DIR serve [--lock TEXT]
       ferry-agent agent-hash
       ferry-agent --version

The agent ferry uploads to hosts: one session of `ferry host serve` on
stdin and stdout, as the controller drives it. For the other `ferry host`
verbs by hand, use a full ferry binary.";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve { deploy_to: String, lock: Option<String> },
    AgentHash,
    Version,
    Help,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["agent-hash"] => Ok(Command::AgentHash),
        ["--version" | "-V"] => Ok(Command::Version),
        ["--help" | "-h"] | [] => Ok(Command::Help),
        ["host", "--deploy-to", dir, "serve"] => Ok(Command::Serve { deploy_to: (*dir).into(), lock: None }),
        ["host", "--deploy-to", dir, "serve", "--lock", lock] => {
            Ok(Command::Serve { deploy_to: (*dir).into(), lock: Some((*lock).into()) })
        }
        ["host", ..] => Err(format!(
            "this agent only serves sessions (`host --deploy-to DIR serve [--lock TEXT]`), not `{}`: \
             use a full ferry for the other host verbs",
            words.join(" ")
        )),
        _ => Err(format!("unknown command `{}`", words.join(" "))),
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { deploy_to, lock } => {
            let dir = std::path::absolute(&deploy_to).map_err(|e| format!("--deploy-to {deploy_to}: {e}"))?;
            let host = Host::new(dir);
            let mut input = std::io::stdin().lock();
            let mut output = std::io::stdout().lock();
            serve(&host, lock.as_deref(), &mut input, &mut output).map_err(|e| format!("the session failed: {e}"))
        }
        Command::AgentHash => {
            let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
            let bytes = fs_err::read(exe).map_err(|e| e.to_string())?;
            println!("{}", blake3::hash(&bytes).to_hex());
            Ok(())
        }
        Command::Version => {
            println!("ferry-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Err(e) => {
            eprintln!("ferry-agent: error: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Ok(command) => match run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-agent: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_controllers_command_lines_are_understood_and_others_refused() {
        assert_eq!(
            parse(&args("host --deploy-to /srv/shop serve")),
            Ok(Command::Serve { deploy_to: "/srv/shop".into(), lock: None })
        );
        assert_eq!(
            parse(&args("host --deploy-to /srv/shop serve --lock push")),
            Ok(Command::Serve { deploy_to: "/srv/shop".into(), lock: Some("push".into()) })
        );
        assert_eq!(parse(&args("agent-hash")), Ok(Command::AgentHash));
        let err = parse(&args("host --deploy-to /srv/shop status")).unwrap_err();
        assert!(err.contains("use a full ferry for the other host verbs"), "{err}");
        assert!(parse(&args("push prod")).unwrap_err().contains("unknown command `push prod`"));
    }
}
