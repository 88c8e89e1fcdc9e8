//! What `ferry push` and `ferry rollback` say, and what they take, on a
//! local fleet: the lines a person reads, the names they can give.

use fs_err as fs;

use crate::kit::{build, local_stage as fleet, Project};

fn current(p: &Project, host: &str) -> String {
    let link = fs::read_link(p.path(&format!("fleet/{host}/srv/shop/current"))).unwrap();
    link.to_str().unwrap().trim_start_matches("releases/").to_owned()
}

#[test]
fn rollback_to_takes_a_version_label_or_an_id_prefix() {
    let p = fleet(&["a", "b"], "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "web", &v1]).ok();
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    p.ferry(["push", "web", &v2]).ok();
    p.write("app/main.py", "print('shop v3')\n");
    let v3 = build(&p, "v3");
    p.ferry(["push", "web", &v3]).ok();

    p.ferry(["rollback", "web", "--to", "v1"]).ok();
    assert_eq!((current(&p, "a"), current(&p, "b")), (v1.clone(), v1.clone()));
    p.ferry(["rollback", "web", "--to", &v2[..8]]).ok();
    assert_eq!((current(&p, "a"), current(&p, "b")), (v2.clone(), v2.clone()));

    let err = p.ferry(["rollback", "web", "--to", "v9"]).fails(2);
    assert!(err.contains("no release of shop in the store"), "{err}");
    assert!(err.contains("has \"v9\" as its version label or git tag"), "{err}");
    assert!(
        err.contains(&format!("the 3 it has:\n  ID            VERSION  COMMIT  TAG  BUILT\n  {}  v3  ", &v3[..12])),
        "{err}"
    );

    // Another build labelled v1: the label names two releases.
    p.write("app/main.py", "print('shop v1, again')\n");
    let again = build(&p, "v1");
    let err = p.ferry(["rollback", "web", "--to", "v1"]).fails(2);
    assert!(err.contains("\"v1\" names 2 releases of shop:\n"), "{err}");
    assert!(
        err.contains(&format!("  {}  v1  ", &v1[..12])) && err.contains(&format!("  {}  v1  ", &again[..12])),
        "{err}"
    );
    assert_eq!(current(&p, "a"), v2, "nothing changed");
}

#[test]
fn a_stage_whose_environment_the_release_lacks_is_refused_once_before_any_host_is_reached() {
    let p = fleet(&["a", "b", "c"], "");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("env = \"staging\"", "env = \"qa\""));
    let id = build(&p, "v1");
    let err = p.ferry(["push", "web"]).fails(2);
    let said = format!("release {} has no config for environment \"qa\" (it has: production, staging)", &id[..12]);
    assert_eq!(err.matches(&said).count(), 1, "{err}");
    assert!(err.contains("add config/qa/ to the release and build it again, or set stage web's env"), "{err}");
    assert!(!p.path("fleet").exists(), "no host was contacted");
}

/// `[stages.web.health.command]` that fails, with words to count.
const BROKEN_GATE: &str = "[stages.web.health.command]\nrun = \"echo canary-is-broken; exit 3\"\n";

fn with_gate(p: &Project, gate: &str) {
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}{gate}"));
}

#[test]
fn counts_of_hosts_read_right() {
    let p = fleet(&["a"], "");
    let id = build(&p, "v1");
    let err = p.ferry(["push", "web"]).ok().stderr;
    let pushing = err.lines().next().unwrap();
    assert!(pushing.starts_with(&format!("pushing {} (v1, built ", &id[..12])), "{err}");
    assert!(pushing.ends_with(" UTC), the newest build of shop, to 1 host of web"), "{err}");
    assert!(err.lines().last().unwrap().starts_with(&format!("pushed {} to 1 host of web in ", &id[..12])), "{err}");
    assert!(!err.contains("1 hosts"), "{err}");
    p.write("app/main.py", "print('shop v2')\n");
    build(&p, "v2");
    p.ferry(["push", "web"]).ok();
    let err = p.ferry(["rollback", "web"]).ok().stderr;
    assert!(
        err.lines().last().unwrap().starts_with(&format!("rolled 1 host of web back to {} in ", &id[..12])),
        "{err}"
    );
}

#[test]
fn a_failed_push_ends_with_why_and_says_each_error_once() {
    let p = fleet(&["a", "b", "c"], "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "web"]).ok();
    with_gate(&p, BROKEN_GATE);
    p.write("app/main.py", "print('shop v2')\n");
    build(&p, "v2");
    let r = p.ferry(["push", "web"]);
    let err = r.fails(1);
    assert_eq!(
        err.lines().last().unwrap(),
        "push failed: gate command failed after batch a: `echo canary-is-broken; exit 3` exited with exit status: 3: \
         canary-is-broken; the 1 host this push flipped went back",
        "{err}"
    );
    assert_eq!(err.matches("canary-is-broken").count(), 2, "the command and its words, once: {err}");
    assert!(!err.contains("pushed ") && !err.contains("0/3"), "{err}");
    // Every step still has its line, failures without their why.
    for line in ["  a            staged", "  a            activated   batch 1", "  a            gate command failed\n"]
    {
        assert!(err.contains(line), "{line:?}: {err}");
    }
    assert_eq!(current(&p, "a"), v1);

    // A host that fails: its step and error, once, in the last line.
    fs::remove_dir_all(p.path("fleet/b")).unwrap();
    p.write("fleet/b", "not a directory");
    let err = p.ferry(["push", "web"]).fails(2);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("push failed: b: connect failed: ") && last.ends_with("Not a directory (os error 20)"),
        "{err}"
    );
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

#[test]
fn quiet_prints_only_the_outcome_errors_and_warnings() {
    let p = fleet(&["a", "b", "c"], "");
    let v1 = build(&p, "v1");
    let r = p.ferry(["push", "web", "--quiet"]).ok();
    assert_eq!(r.stdout, "", "no table");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with(&format!("pushed {} to 3 hosts of web in ", &v1[..12])), "{}", r.stderr);

    with_gate(&p, BROKEN_GATE);
    p.write("app/main.py", "print('shop v2')\n");
    build(&p, "v2");
    let r = p.ferry(["push", "web", "-q"]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("push failed: gate command failed after batch a: "), "{}", r.stderr);

    fs::remove_dir_all(p.path("fleet/c")).unwrap();
    p.write("fleet/c", "not a directory");
    let r = p.ferry(["push", "web", "-q"]);
    assert_eq!((r.code, r.stdout.as_str()), (2, ""), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("push failed: c: connect failed: "), "{}", r.stderr);
}

/// On a terminal every host step has its line above the bar, whole, however
/// wide it is.
#[test]
fn on_a_terminal_each_step_has_its_whole_line_above_the_bar() {
    let long = "c-has-a-name-long-enough-that-its-step-lines-are-wider-than-any-terminal-bar";
    let p = fleet(&["a", "b", long], "");
    let id = build(&p, "v1");
    let command = format!(
        "stty rows 24 cols 60; {} push web --store {} -c {}",
        crate::kit::ferry_bin(),
        p.store.path().display(),
        p.path("ferry.toml").display()
    );
    let r = crate::kit::run(
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("FERRY_STORE")
            .env_remove("FERRY_CONFIG"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let out = r.stdout.replace('\r', "");
    for host in ["a", "b", long] {
        for step in ["staged      ", "activated   batch "] {
            let line = format!("  {host:<12} {step}");
            assert!(out.contains(&line), "{line:?}:\n{out}");
        }
    }
    assert!(out.contains(&format!("pushed {} to 3 hosts of web", &id[..12])), "{out}");
}

#[test]
fn push_takes_force_and_says_what_it_does() {
    let p = fleet(&["a", "b"], "");
    let id = build(&p, "v1");
    p.ferry(["push", "web"]).ok();
    let r = p.ferry(["push", "web", "--force"]).ok();
    assert!(r.stderr.lines().last().unwrap().starts_with(&format!("pushed {} to 2 hosts of web", &id[..12])), "{r:?}");
    assert_eq!((current(&p, "a"), current(&p, "b")), (id.clone(), id));
    let help = p.ferry(["push", "--help"]).ok().stdout;
    assert!(help.contains("--force") && help.contains("reported `already current`"), "{help}");
}

/// `ferry completions SHELL`: a script for bash, zsh and fish. bash is
/// here, so its script is loaded and asked to complete `ferry de` and
/// `ferry lb prod `; the others are checked for what their shells read.
#[test]
fn completions_for_bash_zsh_and_fish_complete_ferry_s_commands() {
    let bin = crate::kit::ferry_bin();
    let complete = |words: &str, cword: usize| {
        crate::kit::sh(&format!(
            "bash -c 'source <({bin} completions bash); COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _ferry ferry \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo ${{COMPREPLY[@]}}'"
        ))
    };
    assert_eq!(complete("ferry de", 1).split_whitespace().collect::<Vec<_>>(), ["delta", "deploy"]);
    let lb = complete("ferry lb prod ''", 3);
    for verb in ["status", "out", "in", "flip", "all"] {
        assert!(lb.split_whitespace().any(|w| w == verb), "ferry lb prod <TAB>: {lb}");
    }
    let zsh = crate::kit::run(crate::kit::ferry_cmd().args(["completions", "zsh"])).stdout;
    assert!(zsh.starts_with("#compdef ferry") && zsh.contains("'deploy:"), "{}", &zsh[..zsh.len().min(300)]);
    let fish = crate::kit::run(crate::kit::ferry_cmd().args(["completions", "fish"])).stdout;
    assert!(fish.contains("complete -c ferry") && fish.contains("-a \"deploy\""), "{}", &fish[..fish.len().min(300)]);
    let err = crate::kit::run(crate::kit::ferry_cmd().args(["completions", "tcsh"]));
    assert_eq!(err.code, 2);
    assert!(err.stderr.contains("possible values: bash, elvish, fish, powershell, zsh"), "{}", err.stderr);
}

/// `ferry exec`: the command runs on every host of the stage, in its
/// current release with that release's environment; each line is prefixed
/// by its host, each host's exit code is said, and one host's failure makes
/// the exit 1. A host with no release says so on its line.
#[test]
fn exec_runs_on_every_host_in_its_current_release_and_reports_each_exit_code() {
    let p = fleet(&["a", "b", "c"], "");
    let v1 = build(&p, "v1");
    p.ferry(["push", "web", "--hosts", "fleet/a,fleet/b"]).ok();
    // Options before `--`: what follows it is the command.
    let exec = |args: &[&str]| {
        let mut cmd = crate::kit::ferry_cmd();
        cmd.arg("-c").arg(p.path("ferry.toml")).arg("--store").arg(p.store.path()).arg("exec").args(args);
        crate::kit::run(&mut cmd)
    };
    let run = exec(&[
        "web",
        "--hosts",
        "fleet/a,fleet/b",
        "--",
        "echo",
        "in $(basename $PWD), $FERRY_RELEASE;",
        "cat app/main.py",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            format!("a: in {v1}, {v1}").as_str(),
            "a: print('shop v1')",
            format!("b: in {v1}, {v1}").as_str(),
            "b: print('shop v1')"
        ],
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("a: exit 0 in") && run.stderr.contains("b: exit 0 in"), "{}", run.stderr);

    // b fails; c has no release: exit 1, each said on its own line.
    let err = exec(&["web", "--", "case $FERRY_DEPLOY_TO in */b/*) exit 3;; esac; echo fine"]);
    assert_eq!(err.code, 1, "{}", err.stderr);
    assert!(err.stdout.contains("a: fine") && !err.stdout.contains("b: fine"), "{}", err.stdout);
    assert!(err.stderr.contains("b: exit 3 in"), "{}", err.stderr);
    assert!(err.stderr.contains("c: could not run: it has no current release to run in"), "{}", err.stderr);
    let json = exec(&["web", "--hosts", "fleet/b", "--json", "--", "echo out; exit 4"]);
    assert_eq!(json.code, 1);
    let doc = json.json();
    assert_eq!(doc["hosts"][0]["exit"], 4, "{doc}");
    assert_eq!(doc["hosts"][0]["output"], "out", "{doc}");
    assert_eq!(doc["ok"], false);
}

/// `ferry init` on the example's tree (its ferry.toml removed) writes a
/// ferry.toml of what it finds — the code, the venv, media and the config
/// of two environments — that builds; it refuses to write over one unless
/// `--force`.
#[test]
fn init_writes_a_ferry_toml_for_the_example_tree_that_builds() {
    let p = crate::kit::example_project();
    fs::remove_file(p.path("ferry.toml")).unwrap();
    let init = |args: &[&str]| crate::kit::run(crate::kit::ferry_cmd().arg("init").arg(p.root()).args(args));
    let run = init(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    for line in [
        "code = [\"app\"]",
        "venv = \"venv\"",
        "media = [\"media\"]",
        "config = \"config\"",
        "environments: production, staging",
    ] {
        assert!(toml.contains(line), "no {line:?} in:\n{toml}");
    }
    let built = p.build(&[]);
    let listing = p.ferry(["inspect", built["id"].as_str().unwrap(), "--json"]).ok().stdout;
    for path in ["app/hello.py", "venv/pyvenv.cfg", "media/robots.txt", "config/staging/settings.json"] {
        assert!(listing.contains(path), "{path} is not in the release");
    }
    let again = init(&[]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("exists already") && again.stderr.contains("--force"), "{}", again.stderr);
    fs::write(p.path("ferry.toml"), "mine\n").unwrap();
    assert_eq!(init(&[]).code, 2);
    assert_eq!(fs::read_to_string(p.path("ferry.toml")).unwrap(), "mine\n", "left as it was");
    assert_eq!(init(&["--force"]).code, 0);
    assert!(fs::read_to_string(p.path("ferry.toml")).unwrap().contains("venv = \"venv\""));
}
