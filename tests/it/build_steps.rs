//! `[build]` steps: a venv made by a step in a `--git-ref` export, cached by
//! its requirements, restored into the next export, run from a host.

use std::path::Path;
use std::time::{Duration, Instant};

use fs_err as fs;
use serde_json::Value;

use crate::kit::{bundle, host, s, sh, tempdir, Project};

/// Writes a minimal pure-Python wheel of `tinypkg` at `version` into `dir`
/// (no network, no build backend: a zip with its METADATA, WHEEL and RECORD).
fn wheel(dir: &Path, version: &str) {
    fs::create_dir_all(dir).unwrap();
    let script = r#"
import sys, zipfile, hashlib, base64
out, version = sys.argv[1], sys.argv[2]
info = f"tinypkg-{version}.dist-info"
files = {
    "tinypkg/__init__.py": f"VERSION = {version!r}\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: tinypkg\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for p, c in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{p},sha256={digest},{len(c.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(f"{out}/tinypkg-{version}-py3-none-any.whl", "w") as z:
    for p, c in files.items():
        z.writestr(p, c)
"#;
    let r = crate::kit::run(std::process::Command::new("python3").args(["-c", script]).arg(dir).arg(version));
    assert_eq!(r.code, 0, "making the wheel: {}", r.stderr);
}

/// A git repository whose venv (gitignored) a build step makes from
/// requirements.txt and the wheels/ directory; each run of the step adds a
/// line to `log` (outside the tree).
fn service(log: &Path) -> Project {
    let p = Project::new(&format!(
        r#"service = "steps"

[components]
code = "app"
venv = "venv"

[[build.steps]]
name = "venv"
run = "echo ran >> {log} && python3 -m venv venv && venv/bin/pip install --no-index --find-links wheels -r requirements.txt && echo installed"
inputs = ["requirements.txt"]
outputs = ["venv"]
timeout = 300

# Uses the venv in the tree: its scripts must name where the tree is now.
[[build.steps]]
name = "check"
run = "venv/bin/pip --version && venv/bin/python -c 'import tinypkg'"
"#,
        log = log.display()
    ));
    wheel(&p.path("wheels"), "1.0");
    wheel(&p.path("wheels"), "2.0");
    p.write("requirements.txt", "tinypkg==1.0\n")
        .write("app/main.py", "import tinypkg\n")
        .write(".gitignore", "venv/\n");
    let root = p.root().display();
    sh(&format!(
        "cd {root} && git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm one && git tag v1"
    ));
    p
}

fn commit(p: &Project, tag: &str) {
    let root = p.root().display();
    sh(&format!("cd {root} && git add -A && git -c user.name=t -c user.email=t@t commit -qm {tag} && git tag {tag}"));
}

fn runs(log: &Path) -> usize {
    fs::read_to_string(log).map(|t| t.lines().count()).unwrap_or(0)
}

/// The venv step's report; the check step after it ran and passed.
fn step(built: &Value) -> &Value {
    let steps = built["steps"].as_array().unwrap_or_else(|| panic!("no steps in the report: {built}"));
    assert_eq!(steps.len(), 2, "{built}");
    assert_eq!((steps[1]["name"].as_str(), steps[1]["exit"].as_i64()), (Some("check"), Some(0)), "{built}");
    &steps[0]
}

/// Stages and activates the release on a fresh host directory and imports
/// the package with the release's own venv there; returns its version.
fn version_on_a_host(p: &Project, id: &str) -> String {
    let h = tempdir();
    host(h.path(), &["stage", s(&bundle(p, id))]).ok();
    host(h.path(), &["activate", id]).ok();
    let python = h.path().join("current/venv/bin/python");
    sh(&format!(
        "{} -c 'import tinypkg, sys; assert sys.prefix.startswith({:?}); print(tinypkg.VERSION)'",
        python.display(),
        h.path().display()
    ))
    .trim()
    .to_owned()
}

#[test]
fn a_git_ref_build_makes_the_venv_by_its_step_and_the_next_reuses_it() {
    let logs = tempdir();
    let log = logs.path().join("runs");
    let p = service(&log);

    // v1: the export has no venv (gitignored); the step makes it.
    let v1 = p.build(&["--git-ref", "v1"]);
    let st = step(&v1);
    assert_eq!(
        (st["name"].as_str(), st["cached"].as_bool(), st["exit"].as_i64()),
        (Some("venv"), Some(false), Some(0)),
        "{v1}"
    );
    assert!(st["output_tail"].as_array().unwrap().iter().any(|l| l == "installed"), "{st}");
    assert_eq!(runs(&log), 1);
    let v1_id = v1["id"].as_str().unwrap();
    let head = p.ferry(["inspect", "--json", v1_id]).ok().json();
    let paths: Vec<&str> = head["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"venv/pyvenv.cfg"), "the venv is in the bundle: {paths:?}");
    assert!(paths.iter().any(|p| p.ends_with("site-packages/tinypkg/__init__.py")), "{paths:?}");
    assert_eq!(version_on_a_host(&p, v1_id), "1.0");

    // v2 changes only the app: the step is not run, its venv comes from the cache.
    p.write("app/main.py", "import tinypkg\nprint(tinypkg.VERSION)\n");
    commit(&p, "v2");
    let t = Instant::now();
    let v2 = p.build(&["--git-ref", "v2"]);
    let took = t.elapsed();
    let st = step(&v2);
    assert_eq!(st["cached"], true, "{v2}");
    // The export's directory kept the venv the step made there: found in
    // place, nothing copied.
    assert_ne!(st["restored"], true, "{v2}");
    assert_eq!(st["exit"], Value::Null, "{v2}");
    assert_eq!(runs(&log), 1, "the step did not run again");
    assert!(took < Duration::from_secs(20), "a cached build took {took:?}");
    assert_ne!(v2["id"], v1["id"]);
    // Restored into a new export, the venv works from a host as the first did.
    assert_eq!(version_on_a_host(&p, v2["id"].as_str().unwrap()), "1.0");
    let text = p.ferry(["build", "--git-ref", "v2"]).ok().stderr;
    assert!(text.contains("step venv: reused from the cache (inputs unchanged"), "{text}");

    // Changed requirements: the step runs again, from a tree without the
    // venv of the old requirements (which the export kept): a file the old
    // venv had, and the new one's run does not make, is not in the release.
    let exports = fs::read_dir(p.store.path().join("exports")).unwrap();
    let export = exports.flatten().map(|e| e.path()).find(|e| e.is_dir()).expect("a stable export directory");
    fs::write(export.join("venv/OLD-REQUIREMENTS"), "stale\n").unwrap();
    p.write("requirements.txt", "tinypkg==2.0\n");
    commit(&p, "v3");
    let v3 = p.build(&["--git-ref", "v3"]);
    assert_eq!(step(&v3)["cached"], false, "{v3}");
    let listing = p.ferry(["inspect", v3["id"].as_str().unwrap(), "--json"]).ok().stdout;
    assert!(!listing.contains("OLD-REQUIREMENTS"), "the old venv's file is in the release");
    assert_eq!(runs(&log), 2);
    assert_eq!(version_on_a_host(&p, v3["id"].as_str().unwrap()), "2.0");
    let text = {
        p.write("requirements.txt", "tinypkg==1.0\n");
        commit(&p, "v4");
        p.ferry(["build", "--git-ref", "v4"]).ok().stderr
    };
    // Back to v1's requirements: the older entry is still cached.
    assert!(text.contains("step venv: reused from the cache"), "{text}");
    assert_eq!(runs(&log), 2);
}

#[test]
fn a_working_tree_build_runs_the_steps_too() {
    let logs = tempdir();
    let log = logs.path().join("runs");
    let p = service(&log);
    let first = p.build(&[]);
    assert_eq!(step(&first)["cached"], false, "{first}");
    assert!(p.path("venv/bin/python").exists(), "the step made the venv in the working tree");
    let text = p.ferry(["build"]).ok().stderr;
    assert!(text.contains("step venv: reused from the cache (inputs unchanged) in"), "nothing restored: {text}");
    assert!(text.contains("unchanged, reused"), "the same release: {text}");
    assert_eq!(runs(&log), 1);
    // A venv removed by hand is restored, not made again.
    fs::remove_dir_all(p.path("venv")).unwrap();
    let again = p.build(&[]);
    assert_eq!((step(&again)["cached"].as_bool(), runs(&log)), (Some(true), 1), "{again}");
    assert_eq!(again["id"], first["id"], "the restored venv is the same release");
}

#[test]
fn a_failing_step_leaves_no_bundle_and_says_its_last_lines() {
    let p = Project::new(
        "service = \"steps\"\n\n[components]\ncode = \"app\"\n\n[[build.steps]]\nname = \"compile\"\n\
         run = \"for i in $(seq 1 50); do echo line $i; done; echo 'it broke' >&2; exit 3\"\n",
    );
    p.write("app/main.py", "print('hi')\n");
    let err = p.ferry(["build"]).fails(2);
    assert!(err.contains("build step compile failed (exit 3)"), "{err}");
    assert!(err.contains("no bundle was made"), "{err}");
    assert!(err.contains("| line 50") && err.contains("| it broke"), "its last lines: {err}");
    assert!(!err.contains("| line 10\n"), "only the last lines: {err}");
    assert!(p.store_files().is_empty(), "{:?}", p.store_files());
    let json = p.ferry(["build", "--json"]).fails(2);
    assert!(json.contains("exit 3"), "{json}");
}

#[test]
fn a_step_past_its_timeout_is_killed_with_what_it_started() {
    let dir = tempdir();
    let pidfile = dir.path().join("pid");
    let p = Project::new(&format!(
        "service = \"steps\"\n\n[components]\ncode = \"app\"\n\n[[build.steps]]\nname = \"slow\"\n\
         run = \"echo waiting; sleep 30 & echo $! > {}; wait\"\ntimeout = 1\n",
        pidfile.display()
    ));
    p.write("app/main.py", "print('hi')\n");
    let t = Instant::now();
    let err = p.ferry(["build"]).fails(2);
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(err.contains("build step slow timed out after 1 s and was killed"), "{err}");
    assert!(err.contains("| waiting"), "{err}");
    assert!(p.store_files().is_empty(), "{:?}", p.store_files());
    // The sleep it started in the background is gone too.
    let pid = fs::read_to_string(&pidfile).unwrap();
    let proc = Path::new("/proc").join(pid.trim());
    let gone = (0..50).any(|_| {
        let dead = fs::read_to_string(proc.join("stat")).map_or(true, |s| s.contains(") Z "));
        if !dead {
            std::thread::sleep(Duration::from_millis(100));
        }
        dead
    });
    assert!(gone, "the step's sleep {} still runs", pid.trim());
}

#[test]
fn a_missing_input_is_refused_before_the_step_runs() {
    let p = Project::new(
        "service = \"steps\"\n\n[components]\ncode = \"app\"\n\n[[build.steps]]\nname = \"venv\"\n\
         run = \"touch ran\"\ninputs = [\"requirements.txt\"]\noutputs = [\"venv\"]\n",
    );
    p.write("app/main.py", "print('hi')\n");
    let err = p.ferry(["build"]).fails(2);
    assert!(err.contains("build step venv: input \"requirements.txt\" does not exist"), "{err}");
    assert!(err.contains("the step was not run"), "{err}");
    assert!(!p.path("ran").exists(), "the step ran");
    assert!(p.store_files().is_empty(), "{:?}", p.store_files());
}
