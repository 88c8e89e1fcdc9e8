//! Stages with groups (OpenSky's group1 / group2) and narrowing a command to
//! some hosts with `--hosts` and `--group`, on a local fleet.

use fs_err as fs;

use crate::kit::{sample_project, Project};

fn project(extra: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.web]\nhosts = [\"fleet/a\", \"fleet/b\", \"fleet/c\", \"fleet/d\"]\n\
             env = \"staging\"\n{extra}"
        ),
    );
    p
}

fn current(p: &Project, host: &str) -> Option<String> {
    let link = fs::read_link(p.path(&format!("fleet/{host}/srv/shop/current"))).ok()?;
    Some(link.to_str().unwrap().trim_start_matches("releases/").to_owned())
}

#[test]
fn a_strategy_of_groups_flips_group_by_group_and_a_command_narrows_to_some_hosts() {
    let p = project(
        "strategy = [\"group1\", \"group2\"]\n[stages.web.groups]\ngroup1 = [\"fleet/c\", \"fleet/a\"]\ngroup2 = [\"fleet/b\", \"fleet/d\"]\n",
    );
    let v1 = p.build(&["--version", "v1"])["id"].as_str().unwrap().to_owned();
    let report = p.ferry(["push", "web", "--json"]).ok().json();
    assert_eq!(report["batches"], serde_json::json!([["a", "c"], ["b", "d"]]), "{report:#}");

    p.write("app/main.py", "print('shop v2')\n");
    let v2 = p.build(&["--version", "v2"])["id"].as_str().unwrap().to_owned();
    let report = p.ferry(["push", "web", "--group", "group2", "--json"]).ok().json();
    assert_eq!(report["batches"], serde_json::json!([["b", "d"]]), "{report:#}");
    let currents: Vec<Option<String>> = ["a", "b", "c", "d"].iter().map(|h| current(&p, h)).collect();
    assert_eq!(currents, vec![Some(v1.clone()), Some(v2.clone()), Some(v1.clone()), Some(v2.clone())]);

    p.ferry(["push", "web", "--hosts", "fleet/a"]).ok();
    assert_eq!(current(&p, "a").as_deref(), Some(v2.as_str()));
    assert_eq!(current(&p, "c").as_deref(), Some(v1.as_str()));

    let err = p.ferry(["push", "web", "--group", "group3"]).fails(2);
    assert!(err.contains("stage web has no group \"group3\" (it has: group1, group2)"), "{err}");
    let err = p.ferry(["status", "web", "--hosts", "fleet/z"]).fails(2);
    assert!(err.contains("stage web has no host \"fleet/z\""), "{err}");
}

#[test]
fn groups_must_name_the_stage_s_hosts_once() {
    let p = project("[stages.web.groups]\ngroup1 = [\"fleet/a\", \"fleet/x\"]\n");
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("group group1 lists \"fleet/x\", which is not one of the stage's hosts"), "{err}");
    let p = project("[stages.web.groups]\ngroup1 = [\"fleet/a\"]\ngroup2 = [\"fleet/a\"]\n");
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("host \"fleet/a\" is in groups group1 and group2"), "{err}");
}

#[test]
fn a_strategy_whose_batches_shrink_is_refused_where_it_is_written() {
    let p = project("strategy = [\"50%\", \"1\"]\n");
    let err = p.ferry(["push", "web"]).fails(2);
    let at = format!("{}:14:20:", p.path("ferry.toml").display());
    assert!(
        err.contains(&format!("{at} stage web: strategy \"1\" (1 host) after \"50%\" (2 of the stage's 4) shrinks")),
        "{err}"
    );
    assert!(err.contains(r#"batches grow: a canary first, e.g. ["1", "50%", "100%"]"#), "{err}");
    assert!(!p.path("fleet").exists(), "nothing was pushed");
    // Groups are flipped in the order named, whatever their sizes.
    let p = project(
        "strategy = [\"big\", \"small\"]\n[stages.web.groups]\nbig = [\"fleet/a\", \"fleet/b\", \"fleet/c\"]\nsmall = [\"fleet/d\"]\n",
    );
    p.ferry(["status", "web"]).ok();
}

#[test]
fn a_local_host_written_two_ways_is_one_host() {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let stage = |hosts: &str| {
        format!("{toml}\n[release]\nexclude = [\"h/\"]\n\n[stages.web]\nhosts = [{hosts}]\nenv = \"staging\"\n")
    };
    p.write("ferry.toml", stage(r#""h/a", "./h/a/""#));
    let err = p.ferry(["status", "web"]).fails(2);
    let at = format!("{}:12:17:", p.path("ferry.toml").display());
    assert!(
        err.contains(&format!("{at} stage web lists host \"./h/a/\" twice (as \"h/a\": the same directory)")),
        "{err}"
    );

    p.write("ferry.toml", stage(r#""./h/a", "h//b/""#));
    p.build(&[]);
    let report = p.ferry(["push", "web", "--hosts", "./h/a", "--json"]).ok().json();
    assert_eq!(report["batches"], serde_json::json!([["a"]]), "{report:#}");
    p.ferry(["push", "web", "--hosts", "h/b/"]).ok();
    assert!(p.path("h/a/srv/shop/current").exists() && p.path("h/b/srv/shop/current").exists());

    // migrate_on names it either way too.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}[hooks]\nmigrate = \"echo migrated\"\nmigrate_on = \"h/b/\"\n"));
    p.write("app/main.py", "print('shop v2')\n");
    p.build(&[]);
    let report = p.ferry(["push", "web", "--json"]).ok().json();
    let ran: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["hooks"].as_array().is_some_and(|runs| runs.iter().any(|r| r["name"] == "migrate")))
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["b"], "{report:#}");
}

#[test]
fn hosts_takes_the_names_reports_print() {
    let p = project("");
    p.build(&[]);
    // Reports name a local host by its directory's last component.
    let report = p.ferry(["push", "web", "--hosts", "b,./fleet/c", "--json"]).ok().json();
    assert_eq!(report["batches"], serde_json::json!([["b"], ["c"]]), "{report:#}");
    let status = p.ferry(["status", "web", "--hosts", "c"]).ok().stdout;
    assert!(status.lines().nth(1).is_some_and(|l| l.starts_with("c ")) && status.lines().count() == 2, "{status}");
    let err = p.ferry(["status", "web", "--hosts", "e"]).fails(2);
    assert!(
        err.contains("stage web has no host \"e\" (it has: a (fleet/a), b (fleet/b), c (fleet/c), d (fleet/d))"),
        "{err}"
    );
}

#[test]
fn hosts_takes_an_ssh_host_by_the_address_it_resolves_to() {
    // An ssh stage without `agent` needs the agent to upload, found or not.
    crate::kit::agent_bin();
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ssh_config", "Host web1\n  HostName 127.0.0.1\n  Port 1\n  User deploy\n").write("known_hosts", "");
    let stage = |hosts: &str| {
        format!(
            "{toml}\n[stages.prod]\ntransport = \"ssh\"\nhosts = [{hosts}]\nenv = \"staging\"\nconnect_timeout = 2\n\
             ssh_config = \"ssh_config\"\nknown_hosts = \"known_hosts\"\n"
        )
    };
    p.write("ferry.toml", stage(r#""web1", "web2""#));
    for name in ["deploy@127.0.0.1", "127.0.0.1:1", "deploy@web1"] {
        // Taken: web1 alone is asked, and refuses the connection (port 1).
        let r = p.ferry(["status", "prod", "--hosts", name]);
        assert_eq!(r.code, 1, "{name}: {r:?}");
        assert!(r.stdout.contains("web1") && !r.stdout.contains("web2"), "{name}: {}", r.stdout);
    }
    p.write("ferry.toml", stage(r#""web1", "deploy@web1:2222""#));
    let err = p.ferry(["status", "prod", "--hosts", "127.0.0.1"]).fails(2);
    assert!(err.contains("--hosts \"127.0.0.1\" could be any of web1, deploy@web1:2222"), "{err}");
}

/// `before_batch` and `after_batch` run on the controller around each
/// batch, with the batch in their environment (for a load balancer ferry
/// does not drive); a stage's own hooks win over `[hooks]`; a failing
/// `before_batch` stops the push before its batch flips, and the batches
/// before it go back.
#[test]
fn batch_hooks_run_on_the_controller_around_each_batch_and_a_failing_one_stops_the_push() {
    let p = project("strategy = [\"1\", \"100%\"]\n");
    let log = p.path("batches.log");
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let hook = |when: &str| format!("echo \"{when} $FERRY_STAGE $FERRY_BATCH $FERRY_HOSTS\" >> {}", log.display());
    p.write(
        "ferry.toml",
        format!(
            "{toml}[stages.web.hooks]\nbefore_batch = '{}'\nafter_batch = '{}'\n\n[hooks]\nbefore_batch = \"exit 3\"\n",
            hook("before"),
            hook("after")
        ),
    );
    let v1 = p.build(&["--version", "v1"])["id"].as_str().unwrap().to_owned();
    p.ferry(["push", "web"]).ok();
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "before web 1 a\nafter web 1 a\nbefore web 2 b c d\nafter web 2 b c d\n",
        "the stage's hooks, around each batch, in order"
    );

    // Fails before batch 2: batch 1 flipped and goes back; batch 2 never flips.
    fs::remove_file(&log).unwrap();
    let failing = format!("{}; test $FERRY_BATCH = 1", hook("before"));
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let (head, _) = toml.split_once("[stages.web.hooks]").unwrap();
    p.write("ferry.toml", format!("{head}[stages.web.hooks]\nbefore_batch = '{failing}'\n"));
    p.write("app/main.py", "print('shop v2')\n");
    p.build(&["--version", "v2"]);
    let err = p.ferry(["push", "web"]).fails(1);
    assert!(err.contains("push failed: before_batch hook of batch 2: `echo"), "{err}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "before web 1 a\nbefore web 2 b c d\n");
    for host in ["a", "b", "c", "d"] {
        assert_eq!(current(&p, host).as_deref(), Some(v1.as_str()), "{host}");
    }
}
