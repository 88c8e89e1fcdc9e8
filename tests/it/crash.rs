//! The kill test: `ferry host` SIGKILLed at any moment leaves a complete
//! `current`, and running the same command again converges.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fs_err as fs;

use crate::kit::{
    build, bundle, current, delta, host, host_cmd, leftovers, read, release_names, s, sh, tempdir, Project,
    NORMALIZED_MTIME,
};

/// xorshift64*: deterministic, and enough to scatter kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One entry of a release tree as the source had it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { content: Vec<u8>, exec: bool },
    Link(String),
}

/// Path (relative, `/`-separated) to entry.
type Tree = BTreeMap<String, Node>;

/// The entries below `root/top`, as a release holds them.
fn snapshot(root: &Path, tops: &[&str]) -> Tree {
    fn walk(root: &Path, rel: &str, out: &mut Tree) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let path = format!("{rel}/{}", e.file_name().to_str().unwrap());
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                out.insert(path.clone(), Node::Dir);
                walk(root, &path, out);
            } else if m.file_type().is_symlink() {
                out.insert(path, Node::Link(fs::read_link(e.path()).unwrap().to_str().unwrap().to_owned()));
            } else {
                let exec = m.mode() & 0o100 != 0;
                out.insert(path, Node::File { content: fs::read(e.path()).unwrap(), exec });
            }
        }
    }
    let mut tree = Tree::new();
    for top in tops {
        tree.insert((*top).to_owned(), Node::Dir);
        walk(root, top, &mut tree);
    }
    tree
}

/// Checks that `release` is complete: every entry of `want` with its content
/// and read-only mode and the normalized mtime, ferry's head, the config
/// link and the log link, and nothing else.
fn check_release(release: &Path, want: &Tree) -> Result<(), String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, (Node, u32, i64)>) -> Result<(), String> {
        let entries = fs::read_dir(dir.join(rel)).map_err(|e| e.to_string())?;
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_str().unwrap().to_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
            let node = if m.is_dir() {
                walk(dir, &path, out)?;
                Node::Dir
            } else if m.file_type().is_symlink() {
                Node::Link(fs::read_link(e.path()).map_err(|e| e.to_string())?.to_str().unwrap().to_owned())
            } else {
                let content = fs::read(e.path()).map_err(|e| e.to_string())?;
                Node::File { content, exec: m.mode() & 0o100 != 0 }
            };
            out.insert(path, (node, m.mode() & 0o7777, m.mtime()));
        }
        Ok(())
    }
    let mut got = BTreeMap::new();
    walk(release, "", &mut got)?;
    for (path, node) in want {
        let Some((have, mode, mtime)) = got.remove(path) else { return Err(format!("{path} is missing")) };
        if &have != node {
            let show = |n: &Node| match n {
                Node::File { content, exec } => format!("file of {} bytes, exec {exec}", content.len()),
                other => format!("{other:?}"),
            };
            return Err(format!("{path} is {}, not {}", show(&have), show(node)));
        }
        if let Node::File { exec, .. } = node {
            let expected = if *exec { 0o555 } else { 0o444 };
            if mode != expected || mtime != NORMALIZED_MTIME {
                return Err(format!("{path} has mode {mode:o} and mtime {mtime}"));
            }
        }
    }
    for (path, (node, ..)) in &got {
        let ok = match path.as_str() {
            ".ferry" => node == &Node::Dir,
            ".ferry/manifest" | ".ferry/release.json" | ".ferry/staged.json" | ".ferry/verified.json" => {
                matches!(node, Node::File { content, .. } if !content.is_empty())
            }
            "config/active" => node == &Node::Link("staging".into()),
            "log" => node == &Node::Link("../../shared/log".into()),
            _ => false,
        };
        if !ok {
            return Err(format!("{path} should not be there ({node:?})"));
        }
    }
    for head in
        [".ferry/manifest", ".ferry/release.json", ".ferry/staged.json", ".ferry/verified.json", "config/active", "log"]
    {
        if fs::symlink_metadata(release.join(head)).is_err() {
            return Err(format!("{head} is missing"));
        }
    }
    Ok(())
}

/// The tree for the kill test: enough files that staging takes a while.
fn write_tree(p: &Project, rng: &mut Rng, dirs: usize, per_dir: usize) {
    for d in 0..dirs {
        for f in 0..per_dir {
            let words: Vec<String> = (0..24).map(|_| format!("{:x}", rng.next())).collect();
            p.write(&format!("app/m{d}/f{f}.py"), format!("# m{d}/f{f}\n{}\n", words.join(" ")));
        }
    }
    p.write("app/bin/run.sh", "#!/bin/sh\nexec python3 -m m0.f0\n");
    sh(&format!("chmod 755 {}", p.path("app/bin/run.sh").display()));
    std::os::unix::fs::symlink("m0/f0.py", p.path("app/entry.py")).unwrap();
    p.write("config/staging/settings.json", "{\"release\": \"a\"}\n")
        .write("config/production/settings.json", "{\"release\": \"a\", \"prod\": true}\n");
}

/// Releases a to d of the kill test's service, each a change of the one
/// before: changed, added, removed and moved files, a retargeted link, a
/// mode change, a duplicate content; and what each holds.
fn kill_releases(p: &Project) -> (Vec<String>, Vec<Tree>) {
    const DIRS: usize = 12;
    write_tree(p, &mut Rng(7), DIRS, 30);
    let tops = ["app", "config"];
    let mut trees = vec![snapshot(p.root(), &tops)];
    let mut ids = vec![build(p, "a")];
    for (n, name) in ["b", "c", "d"].into_iter().enumerate() {
        for f in 0..20 {
            let d = (f + 5 * n) % DIRS;
            p.write(&format!("app/m{d}/f{}.py", (f + 7 * n) % 30), format!("# changed in {name} {f}\n"));
        }
        for f in 0..5 {
            p.write(&format!("app/new{name}/n{f}.py"), format!("# new in {name}\n{}\n", "x".repeat(f * 300)));
        }
        match name {
            "b" => {
                for f in 20..25 {
                    fs::remove_file(p.path(&format!("app/m3/f{f}.py"))).unwrap();
                }
                fs::remove_file(p.path("app/entry.py")).unwrap();
                std::os::unix::fs::symlink("newb/n1.py", p.path("app/entry.py")).unwrap();
            }
            "c" => {
                sh(&format!("chmod 644 {}", p.path("app/bin/run.sh").display()));
                sh(&format!("mv {} {}", p.path("app/m11").display(), p.path("app/moved").display()));
                p.write("app/dup.py", read(p.path("app/m0/f5.py")));
            }
            _ => {
                sh(&format!("rm -r {}", p.path("app/newb").display()));
                sh(&format!("chmod 755 {}", p.path("app/dup.py").display()));
            }
        }
        p.write("config/staging/settings.json", format!("{{\"release\": \"{name}\"}}\n"));
        trees.push(snapshot(p.root(), &tops));
        ids.push(build(p, name));
    }
    (ids, trees)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// Stage release i, from a delta against release `base` or from the
    /// bundle; on stdin or as a path.
    Stage {
        i: usize,
        base: Option<usize>,
        stdin: bool,
    },
    Activate(usize),
    /// `rollback --to` the previous release (so that a re-run converges).
    Rollback(usize),
    Prune,
}

impl Verb {
    fn kind(self) -> &'static str {
        match self {
            Verb::Stage { base: None, .. } => "bundle",
            Verb::Stage { base: Some(_), .. } => "delta",
            Verb::Activate(_) | Verb::Rollback(_) => "flip",
            Verb::Prune => "prune",
        }
    }
}

/// A host, the releases it goes through, and how to run each verb there.
struct KillRig {
    p: Project,
    dir: PathBuf,
    ids: Vec<String>,
    trees: Vec<Tree>,
    /// (from, to) → path, made on first use.
    deltas: BTreeMap<(usize, usize), PathBuf>,
}

/// A `ferry host` command line and its stdin.
struct Invocation {
    args: Vec<OsString>,
    stdin: Option<PathBuf>,
}

impl KillRig {
    fn invocation(&mut self, verb: Verb) -> Invocation {
        let (args, stdin): (Vec<String>, Option<PathBuf>) = match verb {
            Verb::Stage { i, base, stdin } => {
                let payload = match base {
                    Some(j) => {
                        let (p, ids) = (&self.p, &self.ids);
                        self.deltas.entry((j, i)).or_insert_with(|| delta(p, &ids[j], &ids[i])).clone()
                    }
                    None => bundle(&self.p, &self.ids[i]),
                };
                let (input, stdin) = if stdin { ("-".into(), Some(payload)) } else { (s(&payload).into(), None) };
                (
                    vec!["stage".into(), input, "--env".into(), "staging".into(), "--linked-dir".into(), "log".into()],
                    stdin,
                )
            }
            Verb::Activate(i) => (vec!["activate".into(), self.ids[i].clone(), "--env".into(), "staging".into()], None),
            Verb::Rollback(i) => (vec!["rollback".into(), "--to".into(), self.ids[i].clone()], None),
            Verb::Prune => (vec!["prune".into(), "--keep".into(), "1".into()], None),
        };
        Invocation { args: args.into_iter().map(OsString::from).collect(), stdin }
    }

    fn spawn(&self, inv: &Invocation, quiet: bool) -> std::process::Child {
        let mut cmd = host_cmd(&self.dir);
        cmd.args(&inv.args);
        cmd.stdin(match &inv.stdin {
            Some(path) => Stdio::from(fs::File::open(path).unwrap().into_file()),
            None => Stdio::null(),
        });
        if quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        cmd.spawn().unwrap()
    }

    /// Runs `inv` to the end; panics unless it succeeds. Returns how long it
    /// took and whether it found its work already done.
    fn complete(&self, inv: &Invocation, context: &dyn Fn() -> String) -> (Duration, bool) {
        let t = Instant::now();
        let out = self.spawn(inv, false).wait_with_output().unwrap();
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: the re-run failed: {stderr}", context());
        (took, stderr.contains("already"))
    }

    /// `current` (as an index) and which releases are on the host.
    fn observe(&self) -> (Option<usize>, Vec<bool>) {
        let cur = current(&self.dir).map(|c| self.ids.iter().position(|i| *i == c).expect("a known release"));
        let names = release_names(&self.dir);
        (cur, self.ids.iter().map(|id| names.contains(id)).collect())
    }

    /// What holds whenever no ferry runs, however the last one ended:
    /// `current` is `releases/<id>` of a complete release, and every
    /// directory named like a release is complete.
    fn check(&self) -> Result<(), String> {
        let link = fs::read_link(self.dir.join("current")).map_err(|e| format!("current: {e}"))?;
        let cur = link
            .to_str()
            .and_then(|t| t.strip_prefix("releases/"))
            .filter(|id| self.ids.iter().any(|i| i == id))
            .ok_or_else(|| format!("current -> {}, not releases/<one of the releases>", link.display()))?;
        if !self.dir.join("releases").join(cur).is_dir() {
            return Err(format!("current -> {}, which does not exist", link.display()));
        }
        for name in release_names(&self.dir) {
            if name.starts_with(".staging-") || name.starts_with(".pruning-") {
                continue;
            }
            let Some(i) = self.ids.iter().position(|id| *id == name) else {
                return Err(format!("releases/{name}: not a release of this test"));
            };
            check_release(&self.dir.join("releases").join(&name), &self.trees[i])
                .map_err(|e| format!("releases/{name} (release {i}) is incomplete: {e}"))?;
        }
        Ok(())
    }

    /// A verb that makes sense on the host as it is.
    fn choose(&self, rng: &mut Rng) -> Verb {
        let n = self.ids.len();
        let (cur, present) = self.observe();
        let cur = cur.expect("current always exists");
        let missing: Vec<usize> = (0..n).filter(|i| !present[*i]).collect();
        let others: Vec<usize> = (0..n).filter(|i| present[*i] && *i != cur).collect();
        let roll = rng.below(100);
        if !missing.is_empty() && (roll < 55 || others.is_empty()) {
            let i = rng.pick(&missing);
            let bases: Vec<usize> = (0..n).filter(|j| present[*j]).collect();
            let base = if rng.below(3) == 0 { None } else { Some(rng.pick(&bases)) };
            return Verb::Stage { i, base, stdin: rng.below(2) == 0 };
        }
        if roll < 75 && others.len() >= 2 {
            return Verb::Prune;
        }
        if roll < 88 {
            let st = host(&self.dir, &["status", "--json"]).ok().json();
            if let Some(prev) = st["previous"].as_str().and_then(|p| self.ids.iter().position(|i| i == p)) {
                return Verb::Rollback(prev);
            }
        }
        Verb::Activate(rng.pick(&others))
    }
}

/// SIGKILLs `ferry host stage/activate/rollback/prune` at random moments,
/// hundreds of times, and checks after each kill that `current` is a
/// complete release and that every release on the host is complete, and
/// that running the same command again converges.
#[test]
fn sigkill_at_any_moment_leaves_a_complete_current_and_a_rerun_converges() {
    const WANT_KILLS: usize = 200;
    const MAX_ITERATIONS: usize = 600;
    let seed: u64 = std::env::var("FERRY_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let mut rng = Rng(seed);
    let started = Instant::now();
    let p = Project::new("service = \"killme\"\n\n[components]\ncode = \"app\"\nconfig = \"config\"\n");
    let (ids, trees) = kill_releases(&p);
    let h = tempdir();
    let mut rig = KillRig { p, dir: h.path().to_owned(), ids, trees, deltas: BTreeMap::new() };
    let setup = started.elapsed();

    // Calibration: how long each kind of command takes here, whole.
    let no_context = || "setting up".to_owned();
    let mut typical: BTreeMap<&str, Duration> = BTreeMap::new();
    let inv = rig.invocation(Verb::Stage { i: 0, base: None, stdin: false });
    typical.insert("bundle", rig.complete(&inv, &no_context).0);
    let inv = rig.invocation(Verb::Stage { i: 1, base: Some(0), stdin: false });
    typical.insert("delta", rig.complete(&inv, &no_context).0);
    let inv = rig.invocation(Verb::Activate(0));
    typical.insert("flip", rig.complete(&inv, &no_context).0);
    typical.insert("prune", typical["flip"]);
    rig.check().unwrap();

    let mut landed = 0usize;
    let mut kills = BTreeMap::<&str, usize>::new();
    let mut iterations = 0;
    let mut mid_stage = 0;
    while landed < WANT_KILLS && iterations < MAX_ITERATIONS {
        iterations += 1;
        let verb = rig.choose(&mut rng);
        let before = rig.observe().0.unwrap();
        let inv = rig.invocation(verb);
        let context = || format!("seed {seed} (FERRY_KILL_SEED={seed} reruns it), iteration {iterations}, {verb:?}");

        // Killed at a random moment of its typical run.
        let budget = typical[verb.kind()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(budget + 1));
        let mut child = rig.spawn(&inv, true);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            landed += 1;
            *kills.entry(verb.kind()).or_default() += 1;
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        if leftovers(&rig.dir).iter().any(|n| n.starts_with(".staging-")) {
            mid_stage += 1;
        }
        if let Err(e) = rig.check() {
            panic!("after a SIGKILL {delay:?} into {}: {e}", context());
        }

        // The same command again, unharmed, converges (and clears what the
        // killed one left).
        let (took, already) = rig.complete(&inv, &context);
        if !already {
            let t = typical.get_mut(verb.kind()).unwrap();
            *t = (*t * 3 + took) / 4;
        }
        let left = leftovers(&rig.dir);
        assert!(left.is_empty(), "{}: the re-run left {left:?}", context());
        let (now, present) = rig.observe();
        let now = now.unwrap_or_else(|| panic!("{}: no current", context()));
        match verb {
            Verb::Stage { i, .. } => {
                assert!(present[i], "{}: not staged", context());
                let staged = check_release(&rig.dir.join("releases").join(&rig.ids[i]), &rig.trees[i]);
                staged.unwrap_or_else(|e| panic!("{}: the staged release: {e}", context()));
                assert_eq!(now, before, "{}: stage moved current", context());
            }
            Verb::Activate(i) | Verb::Rollback(i) => assert_eq!(now, i, "{}", context()),
            Verb::Prune => assert_eq!(now, before, "{}: prune moved current", context()),
        }
        if iterations % 10 == 0 {
            let r = host(&rig.dir, &["verify"]);
            assert_eq!(r.code, 0, "{}: ferry host verify: {}", context(), r.stderr);
        }
    }
    eprintln!(
        "kill test: seed {seed}, {iterations} iterations, {landed} kills while ferry ran {kills:?}, \
         {mid_stage} left a staging directory; typical run {typical:?}; setup {:.1}s, all {:.1}s",
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(landed >= 200, "only {landed} of {iterations} kills landed while ferry ran (seed {seed})");
    assert!(mid_stage > 0, "no kill landed mid-stage (seed {seed})");
    rig.check().unwrap();
    for id in
        &rig.observe().1.iter().enumerate().filter(|(_, p)| **p).map(|(i, _)| rig.ids[i].clone()).collect::<Vec<_>>()
    {
        host(&rig.dir, &["verify", id]).ok();
    }
}
