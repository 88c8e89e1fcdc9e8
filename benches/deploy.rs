//! The deploy benchmark of issue 14: `ferry deploy` of a git repository whose
//! venv is made by a `[build]` step from a requirements file, with the
//! dependencies unchanged (the step's cache hit) and with the lock file changed
//! (the venv made anew), against `ferry build` + `ferry push` of a prebuilt tree
//! and against what a user runs today (git archive | tar -x, python3 -m venv,
//! pip install, tar | zstd, then a copy, an unpack and a symlink flip per host).
//!
//! Run it with `scripts/bench deploy` (it makes the fixture and downloads the
//! wheels first), or directly:
//! `cargo bench --bench deploy -- FIXTURE_DIR DEPLOY_DIR` where FIXTURE_DIR is
//! the output of `fixtures/bench/make-release.sh` and DEPLOY_DIR holds
//! `requirements.txt` (the fixture's venv, every package pinned),
//! `requirements-bumped.txt` (the same with one patch version bumped) and
//! `wheels/` (every wheel both need, so no step reaches the network).
//! `FERRY_BENCH_RUNS` (default 3) sets the repetitions; medians are reported.
//!
//! The repository (the fixture's app/, media/ and config/, the requirements
//! file, a ferry.toml with a `venv` step, `.gitignore` venv), its store and
//! three local hosts for each way of deploying are made in a scratch directory
//! beside FIXTURE_DIR and removed afterwards. Every run starts from the same
//! state: an untimed deploy of a fresh commit with the base requirements (so
//! the hosts run a release and the step's cache holds the base venv), then
//! each measurement deploys a fresh commit of its own (a changed app file), so
//! every bundle is new: (1) the same requirements, (2) the bumped ones plus a
//! line naming the run (so each run's key is new: the cache keeps 3 entries);
//! (3) and (4) take (1)'s commit: (3) after an untimed build and push of the
//! reset commit's tree, so its store and hosts are as warm as the deploy's.
//! Each measurement starts after a `sync`, so none pays for an earlier one's
//! writeback. Goals missed are reported, not failed; a
//! failing command fails the benchmark.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use common::{list, median_by, secs, verdict};

// Sizes (MIB, fmt_mib) are the other benchmarks'; this one reports times only.
#[allow(dead_code)]
mod common;

const GOAL: f64 = 1.2;
const HOSTS: [&str; 3] = ["a", "b", "c"];
/// The app file each measured commit changes.
const APP_FILE: &str = "app/shop/views.py";

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).map(PathBuf::from).collect();
    let [fixture, deploy_dir] = &args[..] else {
        bail!("usage: cargo bench --bench deploy -- FIXTURE_DIR DEPLOY_DIR   (run scripts/bench deploy)");
    };
    let fixture = fs_err::canonicalize(fixture)?;
    let deploy_dir = fs_err::canonicalize(deploy_dir)?;
    let wheels = deploy_dir.join("wheels");
    let reqs = fs_err::read_to_string(deploy_dir.join("requirements.txt"))?;
    let bumped = fs_err::read_to_string(deploy_dir.join("requirements-bumped.txt"))?;
    ensure!(wheels.is_dir(), "{} is missing: run scripts/bench deploy", wheels.display());
    ensure!(reqs != bumped, "requirements-bumped.txt is requirements.txt");
    let runs: usize = match std::env::var("FERRY_BENCH_RUNS") {
        Ok(s) => s.parse().ok().filter(|&n| n > 0).context("FERRY_BENCH_RUNS must be a positive integer")?,
        Err(_) => 3,
    };
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let scratch = tempfile::Builder::new()
        .prefix("deploy-scratch-")
        .tempdir_in(fixture.parent().context("fixture has no parent directory")?)?;
    let s = scratch.path();
    let repo = s.join("repo");
    let store = s.join("store");
    let prebuilt = s.join("prebuilt");
    let user = s.join("user");

    // The repository: the fixture's tree without its venv, which the step makes.
    fs_err::create_dir_all(&repo)?;
    for dir in ["app", "media", "config"] {
        run_ok(Command::new("cp").arg("-a").arg(fixture.join(dir)).arg(&repo))?;
    }
    let run_step = format!(
        "python3 -m venv venv && venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links {} -r requirements.txt",
        wheels.display()
    );
    let config = |hosts: &str, step: bool| {
        let hosts: Vec<String> =
            HOSTS.iter().map(|h| format!("\"{}\"", s.join("hosts").join(hosts).join(h).display())).collect();
        let step = if step {
            format!(
                "\n[[build.steps]]\nname = \"venv\"\nrun = \"{run_step}\"\ninputs = [\"requirements.txt\"]\noutputs = [\"venv\"]\n"
            )
        } else {
            String::new()
        };
        format!(
            "service = \"bench\"\n\n[components]\ncode = [\"app\"]\nvenv = \"venv\"\nmedia = [\"media\"]\nconfig = \"config\"\n{step}\n\
             [stages.bench]\ntransport = \"local\"\nhosts = [{}]\nenv = \"production\"\n",
            hosts.join(", ")
        )
    };
    fs_err::write(repo.join("ferry.toml"), config("deploy", true))?;
    fs_err::write(repo.join(".gitignore"), "venv/\n.ferry/\n")?;
    fs_err::write(repo.join("requirements.txt"), &reqs)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let app_base = fs_err::read_to_string(repo.join(APP_FILE))?;
    let commit = |requirements: &str, mark: &str| -> Result<String> {
        fs_err::write(repo.join("requirements.txt"), requirements)?;
        fs_err::write(repo.join(APP_FILE), format!("{app_base}\n# {mark}\n"))?;
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", mark])?;
        git(&repo, &["rev-parse", "HEAD"])
    };
    for group in ["deploy", "prebuilt", "user"] {
        for h in HOSTS {
            fs_err::create_dir_all(s.join("hosts").join(group).join(h))?;
        }
    }

    let files = sh_out(&format!("cd '{}' && find . -type f | wc -l", repo.display()))?;
    let pkgs = reqs.lines().filter(|l| l.contains("==")).count();
    let bump: Vec<&str> = bumped.lines().filter(|l| !reqs.lines().any(|r| r == *l)).collect();
    println!("fixture: {} (app media config) as a git repository: {} files", fixture.display(), files.trim());
    println!(
        "requirements: {pkgs} pinned packages; bumped: {}; wheels: {} (no network)",
        bump.join(", "),
        wheels.display()
    );
    println!("step venv: {run_step}");
    println!("stage: transport local, {} hosts, default strategy; {runs} runs each, medians", HOSTS.len());
    println!("ferry: {}", ferry.display());

    let mut deps_same: Vec<Deploy> = Vec::new();
    let mut deps_changed: Vec<Deploy> = Vec::new();
    let mut baseline: Vec<Prebuilt> = Vec::new();
    let mut today: Vec<Duration> = Vec::new();
    for i in 1..=runs {
        // The common starting point: hosts on a release of the base requirements,
        // whose venv is in the step's cache (made there by the first run's).
        let reset = commit(&reqs, &format!("run {i}: reset"))?;
        let r = deploy(ferry, &repo, &store, &reset)?;
        if i == 1 {
            println!("setup: deploy of c1 {} (venv made) {:.2} s", &reset[..12], secs(r.wall));
            // The prebuilt tree: c1 exported with its venv made in place, as a
            // user's working tree would be; its ferry.toml has no steps.
            fs_err::create_dir_all(&prebuilt)?;
            sh_ok(&format!(
                "git -C '{repo}' archive {reset} | tar -x -C '{dir}' && cd '{dir}' && {run_step}",
                repo = repo.display(),
                dir = prebuilt.display()
            ))?;
            fs_err::write(prebuilt.join("ferry.toml"), config("prebuilt", false))?;
        }

        let c2 = commit(&reqs, &format!("run {i}: c2, an app file changed"))?;
        let d1 = deploy(ferry, &repo, &store, &c2)?;
        ensure!(d1.step_cached == Some(true), "run {i}: the deploy of c2 did not reuse the venv step: {}", d1.stderr);
        println!("run {i}: (1) ferry deploy c2 {}, deps unchanged: {}", &c2[..12], d1.line());

        let c3 = commit(&format!("{bumped}# run {i}\n"), &format!("run {i}: c3, requirements changed"))?;
        let d2 = deploy(ferry, &repo, &store, &c3)?;
        ensure!(d2.step_cached == Some(false), "run {i}: the deploy of c3 reused the venv step: {}", d2.stderr);
        println!("run {i}: (2) ferry deploy c3 {}, lock file changed: {}", &c3[..12], d2.line());

        // The prebuilt tree's hosts run its build of the reset commit (untimed), as
        // the deploy's run theirs; then it takes c2's files (its venv is left as it is).
        let take = |c: &str| {
            sh_ok(&format!("git -C '{}' archive {c} {APP_FILE} | tar -x -C '{}'", repo.display(), prebuilt.display()))
        };
        take(&reset)?;
        build_push(ferry, &prebuilt, &s.join("store-prebuilt"))?;
        take(&c2)?;
        let p = build_push(ferry, &prebuilt, &s.join("store-prebuilt"))?;
        println!(
            "run {i}: (3) ferry build + ferry push of the prebuilt tree: {:.2} s (build {:.2} s: pack {:.2} s, {} of {} files from the stat cache; push {:.2} s)",
            secs(p.wall()),
            secs(p.build),
            p.pack_ms as f64 / 1000.0,
            p.cache_hits,
            p.files,
            secs(p.push)
        );
        ensure!(!p.reused, "run {i}: the prebuilt tree's build was reused, not built");

        let t = user_today(&repo, &c2, &wheels, &user, &s.join("hosts/user"), i)?;
        println!(
            "run {i}: (4) git archive | tar -x, venv, pip install, tar | zstd, copy + unpack + flip: {:.2} s",
            secs(t)
        );
        today.push(t);
        deps_same.push(d1);
        deps_changed.push(d2);
        baseline.push(p);
    }

    let m1 = median_by(&deps_same, |d| d.wall);
    let m2 = median_by(&deps_changed, |d| d.wall);
    let m3 = median_by(&baseline, Prebuilt::wall);
    let m4 = *median_by(&today, |d| *d);
    let (w1, w2, w3, w4) = (secs(m1.wall), secs(m2.wall), secs(m3.wall()), secs(m4));
    println!();
    println!("{:<58}{:>9}   runs", "", "median");
    let row = |name: &str, med: f64, runs: String| println!("{name:<58}{med:>7.2} s   {runs}");
    row("(1) ferry deploy, deps unchanged (venv from the cache)", w1, list(deps_same.iter().map(|d| d.wall), 2));
    row("(2) ferry deploy, lock file changed (venv made)", w2, list(deps_changed.iter().map(|d| d.wall), 2));
    row("(3) ferry build + ferry push of a prebuilt tree", w3, list(baseline.iter().map(Prebuilt::wall), 2));
    row("(4) today: archive, venv, pip, tar | zstd, copy, flip", w4, list(today.iter().copied(), 2));
    println!();
    println!("phases of the median runs (s)       export+load+rm   step venv       pack       push");
    for (name, d) in [("(1) deps unchanged", m1), ("(2) lock file changed", m2)] {
        println!(
            "{name:<38}{:>12.2}{:>12.2}{:>11.2}{:>11.2}",
            d.export_s(),
            d.step_s,
            d.pack_s,
            secs(d.wall.saturating_sub(d.built_at))
        );
    }
    println!(
        "{:<38}{:>12}{:>12}{:>11.2}{:>11.2}   (build wall {:.2})",
        "(3) prebuilt tree",
        "-",
        "-",
        m3.pack_ms as f64 / 1000.0,
        secs(m3.push),
        secs(m3.build)
    );
    println!();
    let r13 = w1 / w3;
    let ratio = |name: &str, r: f64, goal: &str| println!("{name:<58}{r:>6.2}x{goal}");
    let goal = format!("   (goal <= {GOAL}x: {})", verdict(r13 <= GOAL));
    ratio("(1)/(3) deps unchanged / build+push of a prebuilt tree", r13, &goal);
    ratio("(2)/(3) lock file changed / build+push of a prebuilt tree", w2 / w3, "");
    ratio("(1)/(4) deps unchanged / what a user runs today", w1 / w4, "");
    ratio("(2)/(4) lock file changed / what a user runs today", w2 / w4, "");
    Ok(())
}

/// One timed `ferry deploy`, with its phases read from its stderr as it came.
struct Deploy {
    wall: Duration,
    /// When the `built`/`unchanged, reused` line came, from the start.
    built_at: Duration,
    step_cached: Option<bool>,
    step_s: f64,
    pack_s: f64,
    stderr: String,
}

impl Deploy {
    /// What is not the step, the pack or the push: the process's start, git's
    /// checks, the export (git archive), the config's load and the export's
    /// removal after the build (its venv's files too).
    fn export_s(&self) -> f64 {
        secs(self.built_at) - self.step_s - self.pack_s
    }

    fn line(&self) -> String {
        format!(
            "{:.2} s (export+load+rm {:.2}, step venv {:.2}{}, pack {:.2}, push {:.2})",
            secs(self.wall),
            self.export_s(),
            self.step_s,
            if self.step_cached == Some(true) { " from the cache" } else { " ran" },
            self.pack_s,
            secs(self.wall.saturating_sub(self.built_at))
        )
    }
}

fn deploy(ferry: &Path, repo: &Path, store: &Path, commit: &str) -> Result<Deploy> {
    sync()?;
    let mut cmd = Command::new(ferry);
    cmd.args(["deploy", "bench", commit]).arg("--store").arg(store).current_dir(repo);
    cmd.env_remove("FERRY_CONFIG").env_remove("FERRY_STORE").stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", ferry.display()))?;
    let mut lines: Vec<(Duration, String)> = Vec::new();
    for line in BufReader::new(child.stderr.take().context("no stderr")?).lines() {
        lines.push((start.elapsed(), line?));
    }
    let status = child.wait()?;
    let wall = start.elapsed();
    let stderr: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    ensure!(status.success(), "ferry deploy bench {commit} failed ({status}):\n{stderr}");
    let seconds = |l: &str| -> Result<f64> {
        let tail = l.rsplit(" in ").next().context("no time")?;
        tail.trim_end_matches('s').parse().with_context(|| format!("no seconds in {l:?}"))
    };
    let (built_at, built) = lines
        .iter()
        .find(|(_, l)| l.starts_with("built ") || l.starts_with("unchanged, reused "))
        .with_context(|| format!("ferry deploy said no `built` line:\n{stderr}"))?;
    ensure!(built.starts_with("built "), "ferry deploy reused a bundle, so built nothing:\n{stderr}");
    let step = lines.iter().find(|(_, l)| l.starts_with("step venv: ")).map(|(_, l)| l);
    Ok(Deploy {
        wall,
        built_at: *built_at,
        step_cached: step.map(|l| l.contains("reused from the cache")),
        step_s: step.map(|l| seconds(l)).transpose()?.unwrap_or(0.0),
        pack_s: seconds(built)?,
        stderr,
    })
}

/// `ferry build` then `ferry push` of a tree whose venv is already made.
struct Prebuilt {
    build: Duration,
    push: Duration,
    pack_ms: u64,
    cache_hits: u64,
    files: u64,
    reused: bool,
}

impl Prebuilt {
    fn wall(&self) -> Duration {
        self.build + self.push
    }
}

fn build_push(ferry: &Path, tree: &Path, store: &Path) -> Result<Prebuilt> {
    sync()?;
    let start = Instant::now();
    let out = Command::new(ferry)
        .args(["build", "--json", "--quiet", "--store"])
        .arg(store)
        .current_dir(tree)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_STORE")
        .output()?;
    let build = start.elapsed();
    ensure!(out.status.success(), "ferry build failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).context("ferry build --json printed no JSON")?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).with_context(|| format!("JSON lacks {k}"));
    let id = json.get("id").and_then(Value::as_str).context("JSON lacks id")?.to_owned();
    let start = Instant::now();
    let out = Command::new(ferry)
        .args(["push", "bench", &id, "--quiet", "--store"])
        .arg(store)
        .current_dir(tree)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_STORE")
        .output()?;
    let push = start.elapsed();
    ensure!(out.status.success(), "ferry push bench {id} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(Prebuilt {
        build,
        push,
        pack_ms: num(json.get("timings_ms").context("JSON lacks timings_ms")?, "total")?,
        cache_hits: num(&json, "cache_hits")?,
        files: num(&json, "files")?,
        reused: json.get("reused").and_then(Value::as_bool).context("JSON lacks reused")?,
    })
}

/// What a user runs today, as a Fabric task would: export, venv, pip, one
/// archive, then per host a copy, an unpack into a new release directory and
/// a symlink flip. Timed as a whole.
fn user_today(repo: &Path, commit: &str, wheels: &Path, work: &Path, hosts: &Path, run: usize) -> Result<Duration> {
    let script = r#"set -e
rm -rf "$W"; mkdir -p "$W/dir"
git -C "$REPO" archive "$C" | tar -x -C "$W/dir"
cd "$W/dir"
python3 -m venv venv
venv/bin/pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" -r requirements.txt
tar -C "$W/dir" -cf - . | zstd -3 -T0 -q > "$W/release.tar.zst"
for h in a b c; do
    d=$HOSTS/$h/srv/bench
    mkdir -p "$d/releases/$NAME"
    cp "$W/release.tar.zst" "$d/release.tar.zst"
    zstd -dc -q "$d/release.tar.zst" | tar -x -C "$d/releases/$NAME"
    rm "$d/release.tar.zst"
    ln -sfn "releases/$NAME" "$d/current.new" && mv -T "$d/current.new" "$d/current"
done
"#;
    sync()?;
    let start = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("W", work)
        .env("REPO", repo)
        .env("C", commit)
        .env("WHEELS", wheels)
        .env("HOSTS", hosts)
        .env("NAME", format!("run{run}"))
        .output()?;
    let wall = start.elapsed();
    ensure!(out.status.success(), "the user's steps failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(wall)
}

/// Untimed, before each measurement: what earlier ones wrote goes to disk now,
/// not during the next one.
fn sync() -> Result<()> {
    run_ok(&mut Command::new("sync"))
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()?;
    ensure!(out.status.success(), "git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn sh_out(script: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(script).output()?;
    ensure!(out.status.success(), "sh -c {script:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_ok(script: &str) -> Result<()> {
    sh_out(script).map(drop)
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
