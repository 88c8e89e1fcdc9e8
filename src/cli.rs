//! The command line, as clap sees it. Nothing here is validated beyond its
//! shape; `settings` turns it into what commands use.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  ferry build                         build the release tree of ./ferry.toml into the store
  ferry build --version v2 --json     label the release and print id, size and timings as JSON
  ferry build --git-ref v2.1.0        build from a clean export of a git tag
  ferry bundles                       list the store's bundles, newest first
  ferry inspect 3f2a                  show a release's metadata and entries (id by unique prefix)
  ferry verify 3f2a                   check every byte of a bundle against its manifest
  ferry diff 3f2a 9c1e                what changed between two releases

Exit codes: 0 ok, 1 some hosts failed, 2 usage error or fatal error.";

/// Build releases into content-addressed bundles and switch fleets to them atomically.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// The service's config file [default: ./ferry.toml].
    #[arg(short = 'c', long, global = true, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,

    /// The bundle store [default: `[store] path` of ferry.toml, else .ferry/store beside it].
    #[arg(long, global = true, value_name = "DIR", env = "FERRY_STORE")]
    pub store: Option<PathBuf>,

    /// Show no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the service's release tree into a bundle in the store.
    #[command(after_help = "\
Examples:
  ferry build
  ferry build --version 2026.11.22-1 --json
  ferry build --git-ref main --strict

Prints the release id on stdout (JSON with --json); a summary goes to stderr.
The same tree gives the same id and the same bytes on any machine; a rebuild
with nothing changed reuses the stored bundle.")]
    Build(BuildArgs),
    /// Show a bundle's metadata and entries.
    #[command(after_help = "Examples:\n  ferry inspect 3f2a\n  ferry inspect dist/3f2a…c9.tar.zst --json")]
    Inspect(TargetArgs),
    /// Check every byte of a bundle against its manifest.
    #[command(after_help = "Examples:\n  ferry verify 3f2a\n  ferry verify /tmp/release.tar.zst")]
    Verify(TargetArgs),
    /// Show what changed between two releases.
    #[command(after_help = "Examples:\n  ferry diff 3f2a 9c1e\n  ferry diff 3f2a 9c1e --json")]
    Diff(DiffArgs),
    /// List the bundles in the store, newest first.
    Bundles,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build from a clean export of this git ref (branch, tag or commit) and record the commit.
    #[arg(long, value_name = "REF")]
    pub git_ref: Option<String>,

    /// A version label for the release (part of its id). A --git-ref build records the commit, and
    /// its tag in the store, without one.
    #[arg(long, value_name = "LABEL")]
    pub version: Option<String>,

    /// Fail if a virtualenv file cannot be made relocatable.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A bundle file, or a release id (or unique prefix of one) in the store.
    #[arg(value_name = "BUNDLE|ID")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older release: a bundle file or id.
    #[arg(value_name = "FROM")]
    pub from: String,
    /// The newer release: a bundle file or id.
    #[arg(value_name = "TO")]
    pub to: String,
}
