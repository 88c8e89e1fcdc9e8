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
  ferry inspect 3f2a                  metadata and entries of a release (id, version, tag, commit)
  ferry verify 3f2a                   check every byte of a bundle against its manifest
  ferry diff 3f2a 9c1e                what changed between two releases
  ferry push staging                  ship the newest build (of its ref) to every host, canary first
  ferry push production v2.1 --json   push a named release; print the per-host report as JSON
  ferry status staging                what each host runs, what it keeps, who holds its lock
  ferry rollback staging              flip every host back to its previous release
  ferry delta 3f2a 9c1e               make (or find) the delta a host on 3f2a needs for 9c1e
  ferry publish 3f2a                  upload a build to the remote store ([store] url)
  ferry host --deploy-to /srv/app status    on a host: what the agent sees

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

    /// Print the outcome only: no progress bars; push and rollback print no step lines and no
    /// table, only errors, warnings and their last line (what was done, or why it failed).
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
    /// Make the delta from one release to another (stored, and reused next time).
    #[command(after_help = "\
Examples:
  ferry delta 3f2a 9c1e
  ferry delta 3f2a 9c1e --json

Writes <store>/deltas/<from>..<to>: the target's manifest against the base's,
and every file content the base lacks, as a zstd patch against the base's file
at the same path or on its own. A file the base has anywhere costs nothing.")]
    Delta(DiffArgs),
    /// Ship a release to every host of a stage and flip them batch by batch.
    #[command(after_help = "\
Examples:
  ferry push staging                 the newest build (of the stage's ref, if it has one)
  ferry push production 9c1e         a given release, by id prefix
  ferry push production v2.1.0       … by git tag or version label
  ferry push production 1b12254      … by the git commit it was built from
  ferry push production --json       the per-host report as JSON, for CI
  ferry push staging --force         restart and re-run hooks on hosts already on the release
  ferry push production --out        only the hosts out of the load balancer's rotation
  ferry push production v2.1.0 --dry-run   what it would ship and change on each host; nothing moves

RELEASE is an id or id prefix (4+ hex digits), a version label, or the git tag
or commit (7+ hex digits) it was built from, unique among the service's builds
(an exact label or tag wins over an id prefix); an ambiguous name is refused,
listing the candidates. With none, a stage with a `ref` gets the newest build of
the commit the ref names now. Which release is pushed is said before anything
moves.

Each host gets the delta from its current release (the whole bundle when it has
none), stages it beside the running release, then the hosts flip in the stage's
batches (default: 1 host, then half, then all). A failure stops the push and
flips back every host it flipped. Exit 0: all hosts ok; 1: some failed; 2: nothing
could start.

--dry-run changes nothing on any host (no lock, staging, journal line or
restart) and shows, per host: from → to, the bytes it would ship (the deltas are
made in the store, as the push makes them), files added, changed and removed,
config files changed in the stage's environment, and packages changed (venv
dist-info, jars' pom.properties or manifest). Exit 1 when a host could not be
reached (the others are shown).")]
    Push(PushArgs),
    /// Build a git ref and push it to a stage, in one command (and tag the deployed commit).
    #[command(after_help = "\
Examples:
  ferry deploy production stable     the newest tag matching the stage's stable_tags (v*)
  ferry deploy staging               the stage's ref (ferry.toml: ref = \"main\")
  ferry deploy staging 3f2a1b9       a commit, branch or tag
  ferry deploy production stable --json
  ferry deploy production stable --dry-run   build, then preview the push; no push, no tag

Exports the ref with git archive, builds it (running the [build] steps, whose
outputs are reused from the build cache when their inputs did not change),
pushes the release as `ferry push` does, and with the stage's tag = true tags
the deployed commit (production-2026-12-05, then -2, -3 that day) and pushes
the tag; a failed or reverted push makes no tag. Stable is in version order,
pre-releases (v1.2.0-rc1) left out. A work tree whose tracked files have
uncommitted changes is refused unless --allow-dirty (then the report and the
tag say so). Exit 0: all hosts ok; 1: some failed; 2: nothing could start.")]
    Deploy(DeployArgs),
    /// Flip every host of a stage back to its previous release (or --to one).
    #[command(after_help = "\
Examples:
  ferry rollback production
  ferry rollback production --to 3f2a
  ferry rollback production --to v1
  ferry rollback production --to v2.0.3

Picks a release every host still has: the previous release, when it is the same
on all hosts, or the one named with --to (an id prefix, version label, git tag or
commit of a build in the store, or a whole id). Refuses, changing nothing,
otherwise.")]
    Rollback(RollbackArgs),
    /// Show each host of a stage: current release (version, commit, tag), previous, kept, lock.
    #[command(after_help = "Examples:\n  ferry status staging\n  ferry status production --json")]
    Status(StageArgs),
    /// Show the journals of a stage's hosts, merged in time order, with version, commit, tag.
    #[command(after_help = "Examples:\n  ferry history staging\n  ferry history production --json")]
    History(StageArgs),
    /// Prepare each host of a stage for the service's programs (safe to re-run).
    #[command(after_help = "\
Examples:
  ferry setup production
  ferry setup production --hosts web3     a new host
  ferry setup production --install        and start it at boot (systemd or init.d)

On each host: the deploy_to layout, shared/log, and the service's own
supervisord, configured from ferry.toml's [programs] (its socket under
.ferry/), with a systemd unit and an init.d script in .ferry/ that start it.
Started once a release is current; `ferry push` re-runs this before its
first flip, so a changed [programs] reaches the hosts with the release.

With --install, each host's init system also starts that supervisord at boot,
and the host's own commands work (`systemctl status ferry-<service>`, or
`service ferry-<service> status`): under systemd the unit goes to
/etc/systemd/system/ and is enabled; without systemd the init script goes to
/etc/init.d/ and is enabled with update-rc.d, else chkconfig, else rc?.d links.
A supervisord already running is kept, not started twice. That needs root on
the host: without it the host's line fails, nothing is written, and it says the
commands to run as root. Safe to re-run (\"already installed\").")]
    Setup(SetupArgs),
    /// Show the programs' logs on a stage's hosts, prefixed by host.
    #[command(after_help = "\
Examples:
  ferry logs production
  ferry logs production --hosts web1 --program web -f

Read through each host's supervisord (stdout and stderr of every process).")]
    Logs(LogsArgs),
    /// Move a stage's hosts in and out of its load balancer's rotation (HAProxy).
    #[command(after_help = "\
Examples:
  ferry lb production status          every server on every LB node: state, sessions, check
  ferry lb production out group1      drain group1's servers, wait for their sessions, maint
  ferry push production --out         deploy to the hosts now out of rotation
  ferry lb production flip            bring the out group in (wait UP), take the other out
  ferry push production --out
  ferry lb production all             every host back in rotation

GROUP is a group of the stage or hosts (comma-separated). A step that would leave
a backend with fewer than min_in_service servers in service is refused before
anything changes. HAProxy forgets runtime states when it reloads: `status` shows
where it no longer has what ferry set, and the same `out` sets it again.")]
    Lb(LbArgs),
    /// The on-host agent: what the controller runs on each host (also by hand).
    Host(HostArgs),
    /// The blake3 of this binary (how the controller checks its agent on a host).
    #[command(hide = true)]
    AgentHash,
    /// Show the agent ferry uploads to ssh hosts: its size and what it needs of a host.
    #[command(after_help = "\
Examples:
  ferry agent           its path, size (and gzipped), machine, glibc floor, libraries
  ferry agent --json

An ssh stage without `agent` gets ferry-agent uploaded to each host that lacks
it, found by FERRY_AGENT, beside ferry, or in cargo's target/agent/ (build it
with `cargo build -p ferry-agent --profile agent`). It runs on a Linux host of
its machine whose glibc is at least the one shown (read from the binary's own
version needs); an older host is refused before anything is sent.")]
    Agent,
    /// Run a command on a stage's hosts, in the current release with its environment.
    #[command(after_help = "\
Examples:
  ferry exec production -- venv/bin/python manage.py showmigrations
  ferry exec production --hosts web1 -- 'tail -n 20 log/app.log'
  ferry exec staging --json -- uname -r

Runs `sh -c` with the words after -- (joined by spaces, as ssh does) on every
host at once, in <deploy_to>/releases/<current> with the release's
config/active/env, FERRY_RELEASE and FERRY_DEPLOY_TO, as a hook runs, holding
each host's lock meanwhile, so no push flips or prunes that release under it
(and a host a push holds says so). Each output line is prefixed by its host; then each host's exit code.
Exit 0: it exited 0 everywhere; 1: it failed (or could not run) somewhere.")]
    Exec(ExecArgs),
    /// Write a commented ferry.toml for the tree in a directory (as `kamal init` or `cap install`).
    #[command(after_help = "\
Examples:
  ferry init                 the current directory
  ferry init ../shop --force write over an existing ferry.toml

Finds the code (top-level directories and .py files), a venv (a directory
with pyvenv.cfg) and its lock file (requirements.txt, poetry.lock), a jar
(target/, build/libs/), media (static, media, assets, public) and config
(config/<env>/), and writes what it found, with the build step that makes
the venv and a program and a stage to fill in, commented. Refuses to write
over a ferry.toml unless --force.")]
    Init {
        /// The tree [default: the current directory].
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// Write over an existing ferry.toml.
        #[arg(long)]
        force: bool,
    },
    /// Make a minisign key pair for signing releases.
    #[command(after_help = "\
Examples:
  FERRY_KEY_PASSWORD=… ferry keygen          ~/.ferry/ferry.key (encrypted) and ferry.pub
  ferry keygen --out ci-key --no-password    for CI: keep ferry.key in CI's secret store

Prints the public key (for a stage's trusted_keys in ferry.toml) on stdout. The
secret key is encrypted with the password in FERRY_KEY_PASSWORD unless
--no-password; an existing key is never written over.")]
    Keygen {
        /// Where to write ferry.key and ferry.pub [default: ~/.ferry].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Leave the secret key unencrypted (for CI, where a secret store keeps it).
        #[arg(long)]
        no_password: bool,
    },
    /// Sign a release in the store, for hosts whose stage has trusted_keys.
    #[command(after_help = "\
Examples:
  ferry sign 9c1e
  ferry sign v2.1.0 --key ci-key/ferry.key --expires 7d
  ferry build --sign                 build and sign in one step

Signs the statement `service, release id, serial, expiry` with minisign and keeps
it in <store>/signatures/<id>.minisig, which a push sends with the release.
The serial is the time of signing (seconds) unless --serial: a host refuses a
release whose serial is below the highest it took (use `ferry rollback` to go
back). Prints the signature's path on stdout.")]
    Sign {
        /// The release: id prefix, version label, git tag or commit.
        #[arg(value_name = "RELEASE")]
        release: String,
        #[command(flatten)]
        signing: SignArgs,
    },
    /// Print a shell completion script for ferry.
    #[command(after_help = "\
Examples:
  ferry completions bash > /etc/bash_completion.d/ferry
  ferry completions zsh > \"${fpath[1]}/_ferry\"
  ferry completions fish > ~/.config/fish/completions/ferry.fish")]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Upload a release built here to the remote store (`[store] url = "s3://…"`).
    #[command(after_help = "\
Examples:
  ferry publish 3f2a                 a build of the local store, by id prefix
  ferry publish v2.1.0 --json        by version label or tag; what was uploaded, as JSON
  ferry build --publish              build, then publish

Uploads bundles/<id>.tar.zst, the release's signature if the local store has
one (signatures/<id>.minisig), and its record (what `ferry bundles` shows),
each with a conditional put: an object already there with the same bytes is
success, so two CI jobs publishing one release at once both succeed; other
bytes under the same key are refused. Credentials come from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the AWS
profile files (~/.aws/credentials, ~/.aws/config; AWS_PROFILE).")]
    Publish(TargetArgs),
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    #[command(flatten)]
    pub narrow: Narrow,
    /// Only this program's processes.
    #[arg(long)]
    pub program: Option<String>,
    /// Keep printing what they write, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How much of each log to show first, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub bytes: i32,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    /// The release to push: id prefix, version label, git tag or commit [default: the newest build
    /// of the stage's ref, or of the service].
    #[arg(value_name = "RELEASE")]
    pub id: Option<String>,
    #[command(flatten)]
    pub narrow: Narrow,
    /// Push even to hosts that already run this release and serve it: restart its programs and run
    /// the hooks again; without it, such hosts are left as they are and reported `already current`.
    #[arg(long)]
    pub force: bool,
    /// Only the hosts now out of the load balancer's rotation (after `ferry lb STAGE out GROUP`); the
    /// load balancer's states are left as they are.
    #[arg(long, conflicts_with_all = ["hosts", "groups"])]
    pub out: bool,
    /// Change nothing: show per host what the push would ship and change (files, bytes, config,
    /// packages).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    /// A git ref: a branch, tag or commit, or `stable` [default: the stage's ref].
    #[arg(value_name = "REF")]
    pub reference: Option<String>,
    /// Deploy even when tracked files have uncommitted changes (which the ref's export leaves out).
    #[arg(long)]
    pub allow_dirty: bool,
    #[command(flatten)]
    pub narrow: Narrow,
    /// As `ferry push --force`.
    #[arg(long)]
    pub force: bool,
    /// Build the ref (the store keeps the release), then show what pushing it would do, as `ferry
    /// push --dry-run`; no host is touched and no tag is made.
    #[arg(long)]
    pub dry_run: bool,
    /// Sign the release once built, before it is pushed (as `ferry sign`).
    #[arg(long)]
    pub sign: bool,
    #[command(flatten)]
    pub signing: SignArgs,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    #[command(flatten)]
    pub narrow: Narrow,
    /// Also install and enable, on each host, the systemd unit (or the init.d script where
    /// systemd does not run) that starts the service's supervisord at boot (needs root there).
    #[arg(long)]
    pub install: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    #[command(flatten)]
    pub narrow: Narrow,
    /// Seconds it may run on a host before it is killed (with its process group).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The command (after --).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LbArgs {
    /// A stage of ferry.toml with a `[stages.<name>.load_balancer]`.
    pub stage: String,
    #[command(subcommand)]
    pub verb: LbVerb,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum LbVerb {
    /// Every server of the stage's backends on every LB node.
    Status,
    /// Drain GROUP's servers, wait for their sessions to end, then maint.
    Out { group: String },
    /// Put GROUP's servers back in rotation and wait until HAProxy sees them UP.
    In { group: String },
    /// Bring the group that is out in (wait UP), then take the other out.
    Flip,
    /// Put every host of the stage back in rotation.
    All,
}

/// Some of a stage's hosts, as Fabric's -H does.
#[derive(Debug, Args, Default)]
pub struct Narrow {
    /// Only these hosts of the stage (comma-separated): as ferry.toml writes them or as reports print
    /// them; an ssh host also as the user@host or user@host:port it resolves to.
    #[arg(long, value_name = "HOST,…", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Only the hosts of this group of the stage (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    /// The release to flip to: an id prefix, version label, git tag or commit of a build in the
    /// store, or a whole id [default: each host's previous release, if it is the same everywhere].
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    #[command(flatten)]
    pub narrow: Narrow,
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// A stage of ferry.toml.
    pub stage: String,
    #[command(flatten)]
    pub narrow: Narrow,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ferry host --deploy-to /srv/shop stage 9c1e…tar.zst --env production
  ferry host --deploy-to /srv/shop stage - < 3f2a..9c1e      a delta on stdin
  ferry host --deploy-to /srv/shop activate 9c1e
  ferry host --deploy-to /srv/shop rollback
  ferry host --deploy-to /srv/shop prune --keep 5
  ferry host --deploy-to /srv/shop status --json")]
pub struct HostArgs {
    /// The service's directory on this host (releases/, current, shared/).
    #[arg(long, value_name = "DIR", env = "FERRY_DEPLOY_TO")]
    pub deploy_to: PathBuf,
    #[command(subcommand)]
    pub verb: HostVerb,
}

#[derive(Debug, Subcommand)]
pub enum HostVerb {
    /// Unpack a bundle or a delta into releases/ID, verified and synced, without flipping.
    Stage {
        /// A bundle or delta file, or - for stdin.
        input: PathBuf,
        #[command(flatten)]
        options: HostOptions,
        /// The release's minisign signature (`<store>/signatures/<id>.minisig`), checked against the
        /// keys pinned in <deploy_to>/.ferry/trusted_keys before anything is written.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// Flip current to a staged release.
    Activate {
        /// A staged release (id or unique prefix).
        id: String,
        #[command(flatten)]
        options: HostOptions,
    },
    /// Flip current back to the previous release, or --to a kept one.
    Rollback {
        #[arg(long, value_name = "ID")]
        to: Option<String>,
    },
    /// Remove old releases, keeping N and always current, previous and pinned ones.
    Prune {
        #[arg(long, value_name = "N", default_value_t = 5)]
        keep: usize,
    },
    /// Keep a release from being pruned.
    Pin { id: String },
    /// Let a pinned release be pruned again.
    Unpin { id: String },
    /// Current, previous and kept releases, and who holds the lock.
    Status,
    /// The journal: every stage, deploy, rollback and prune.
    History,
    /// Hash every file of a release (default: current) against its manifest.
    Verify { id: Option<String> },
    /// One agent session on stdin/stdout, as the controller drives it (JSON lines; see docs/deploying.md).
    Serve {
        /// Take the service's lock for the session, naming this command as the holder.
        #[arg(long, value_name = "COMMAND")]
        lock: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct HostOptions {
    /// Activate config/ENV/ of the release (a config/active symlink).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// A path linked to shared/PATH in each release (a directory; repeatable).
    #[arg(long = "linked-dir", value_name = "PATH")]
    pub linked_dirs: Vec<String>,
    /// A file linked to shared/PATH in each release; must exist (repeatable).
    #[arg(long = "linked-file", value_name = "PATH")]
    pub linked_files: Vec<String>,
    /// An asset directory that also gets the current release's files it lacks, hardlinked (repeatable).
    #[arg(long = "bridge-asset", value_name = "PATH")]
    pub bridge_assets: Vec<String>,
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

    /// Then upload the release to the remote store (as `ferry publish`).
    #[arg(long)]
    pub publish: bool,
    /// Sign the release once built (as `ferry sign`).
    #[arg(long)]
    pub sign: bool,

    #[command(flatten)]
    pub signing: SignArgs,
}

/// How to sign a release.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The secret key [default: ~/.ferry/ferry.key]; an encrypted one's password is read from
    /// FERRY_KEY_PASSWORD.
    #[arg(long, value_name = "FILE", env = "FERRY_SIGNING_KEY")]
    pub key: Option<PathBuf>,
    /// How long hosts take the signature: 30d, 12h…
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub expires: humantime::Duration,
    /// The release's serial [default: the time of signing, in seconds].
    #[arg(long, value_name = "N")]
    pub serial: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A bundle file, or a release in the store: id prefix, version label, git tag or commit.
    #[arg(value_name = "BUNDLE|RELEASE")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older release: a bundle file, or an id prefix, version label, git tag or commit.
    #[arg(value_name = "FROM")]
    pub from: String,
    /// The newer release: a bundle file, or an id prefix, version label, git tag or commit.
    #[arg(value_name = "TO")]
    pub to: String,
}
