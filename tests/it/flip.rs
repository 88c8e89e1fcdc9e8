//! Flips on a host (`ferry host activate`, `rollback`), and what is kept
//! around them (`prune`, `pin`), as the journal records them.

use std::collections::BTreeSet;

use fs_err as fs;
use serde_json::Value;

use crate::kit::{
    build, bundle, current, delta, host, journal, read, release_names, s, sample_project, settings, tempdir,
};

// ---------------------------------------------------------------------------
// Rollback

#[test]
fn rollback_restores_code_and_config_and_goes_back_one_deploy_at_a_time() {
    let p = sample_project();
    let mut ids = Vec::new();
    for n in 1..=3 {
        p.write("app/main.py", format!("print('shop v{n}')\n"));
        settings(&p, n);
        ids.push(build(&p, &format!("v{n}")));
    }
    let [v1, v2, v3] = [&ids[0], &ids[1], &ids[2]];
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, v1)), "--env", "staging"]).ok();
    host(dir, &["stage", s(&delta(&p, v1, v2)), "--env", "staging"]).ok();
    host(dir, &["stage", s(&delta(&p, v2, v3)), "--env", "staging"]).ok();
    let running = |n: u32| {
        let code = read(dir.join("current/app/main.py"));
        let config = read(dir.join("current/config/active/settings.json"));
        assert_eq!(code, format!("print('shop v{n}')\n"), "code");
        assert_eq!(config, format!("{{\"v\": {n}}}\n"), "config");
    };
    let status = || host(dir, &["status", "--json"]).ok().json();

    host(dir, &["activate", v1, "--env", "staging"]).ok();
    running(1);
    host(dir, &["activate", v2, "--env", "staging"]).ok();
    running(2);
    assert_eq!(status()["previous"], v1.as_str());
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v1.as_str());
    assert_eq!(current(dir).as_deref(), Some(v1.as_str()));
    running(1);

    // Twice back is two releases back, not to and fro.
    host(dir, &["activate", v2, "--env", "staging"]).ok();
    host(dir, &["activate", v3, "--env", "staging"]).ok();
    running(3);
    assert_eq!(status()["previous"], v2.as_str());
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v2.as_str());
    running(2);
    assert_eq!(status()["previous"], v1.as_str(), "Capistrano's previous of v2 is v1, not v3");
    assert_eq!(host(dir, &["rollback"]).ok().stdout.trim(), v1.as_str());
    running(1);
    // v1 was the first deploy: nothing before it.
    let err = host(dir, &["rollback"]).fails(2);
    assert!(err.contains("no previous release is recorded"), "{err}");
    running(1);
    // --to goes anywhere kept.
    host(dir, &["rollback", "--to", &v3[..10]]).ok();
    running(3);
    let rollbacks: Vec<(String, String)> = journal(dir)
        .iter()
        .filter(|r| r["action"] == "rollback" && r["result"] == "ok")
        .map(|r| (r["from"].as_str().unwrap()[..8].to_owned(), r["to"].as_str().unwrap()[..8].to_owned()))
        .collect();
    let short = |id: &str| id[..8].to_owned();
    assert_eq!(
        rollbacks,
        [(short(v2), short(v1)), (short(v3), short(v2)), (short(v2), short(v1)), (short(v1), short(v3))],
        "the journal's rollbacks"
    );
}

// ---------------------------------------------------------------------------
// Prune

#[test]
fn a_release_rolled_back_from_does_not_count_toward_keep_and_goes_at_the_next_prune() {
    let p = sample_project();
    let ids: Vec<String> = (1..=4).map(|n| build(&p, &format!("r{n}"))).collect();
    let h = tempdir();
    let dir = h.path();
    for id in &ids[..3] {
        host(dir, &["stage", s(&bundle(&p, id))]).ok();
        host(dir, &["activate", id]).ok();
    }
    // r3 was bad: back to r2. Then r4 goes out.
    host(dir, &["rollback"]).ok();
    host(dir, &["stage", s(&bundle(&p, &ids[3]))]).ok();
    host(dir, &["activate", &ids[3]]).ok();
    let pruned = host(dir, &["prune", "--keep", "3", "--json"]).ok().json();
    // Newest first, r3 is second only to r4; but it failed, so the three
    // kept are the good ones: r4, r2 and r1.
    assert_eq!(pruned["removed"], serde_json::json!([ids[2]]), "{pruned}");
    let mut kept = vec![ids[0].clone(), ids[1].clone(), ids[3].clone()];
    kept.sort();
    assert_eq!(release_names(dir), kept);
}

#[test]
fn prune_keeps_current_previous_and_pinned_releases() {
    let p = sample_project();
    let ids: Vec<String> = (1..=5).map(|n| build(&p, &format!("r{n}"))).collect();
    let h = tempdir();
    let dir = h.path();
    for id in &ids {
        host(dir, &["stage", s(&bundle(&p, id))]).ok();
    }
    host(dir, &["activate", &ids[3]]).ok();
    host(dir, &["activate", &ids[4]]).ok();
    host(dir, &["pin", &ids[1][..8]]).ok();
    let status = host(dir, &["status", "--json"]).ok().json();
    assert_eq!((&status["current"], &status["previous"]), (&Value::from(ids[4].clone()), &Value::from(ids[3].clone())));
    let pinned: Vec<&str> = status["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pinned"] == true)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(pinned, [ids[1].as_str()]);

    let pruned = host(dir, &["prune", "--keep", "1", "--json"]).ok().json();
    let set = |v: &Value| v.as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    let removed: BTreeSet<String> = [ids[0].clone(), ids[2].clone()].into();
    let kept: BTreeSet<String> = [ids[1].clone(), ids[3].clone(), ids[4].clone()].into();
    assert_eq!(set(&pruned["removed"]), removed, "{pruned}");
    assert_eq!(set(&pruned["kept"]), kept, "{pruned}");
    assert_eq!(release_names(dir).into_iter().collect::<BTreeSet<_>>(), kept, "no .pruning-* left either");
    let records: BTreeSet<String> = journal(dir)
        .iter()
        .filter(|r| r["action"] == "prune" && r["result"] == "ok")
        .map(|r| r["from"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(records, removed, "the journal records each removal");
    // What was hardlinked from the removed releases is intact in the kept ones.
    for id in &kept {
        host(dir, &["verify", id]).ok();
    }
    assert_eq!(current(dir).as_deref(), Some(ids[4].as_str()));

    // Unpinned, it goes; current and previous still stay with --keep 1.
    host(dir, &["unpin", &ids[1]]).ok();
    let pruned = host(dir, &["prune", "--keep", "1", "--json"]).ok().json();
    assert_eq!(set(&pruned["removed"]), [ids[1].clone()].into(), "{pruned}");
    assert_eq!(release_names(dir), {
        let mut v = vec![ids[3].clone(), ids[4].clone()];
        v.sort();
        v
    });
    let err = host(dir, &["pin", &ids[0]]).fails(2);
    assert!(err.contains("no release on") && err.contains(&format!("{:?}", ids[0])), "{err}");
}

// ---------------------------------------------------------------------------
// A failed flip

/// A flip renames `current` first and journals it after; when the journal
/// cannot be written (a full disk, an I/O error; here it is a directory),
/// the flip is undone, so `activate` exiting 2 means `current` did not move
/// (and `ferry push`, which reverts only hosts that succeeded, is right).
#[test]
fn an_activate_that_fails_leaves_current_where_it_was() {
    let p = sample_project();
    let v1 = build(&p, "v1");
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["stage", s(&bundle(&p, &v2))]).ok();
    host(dir, &["activate", &v1]).ok();
    // A journal that cannot be appended to.
    fs::rename(dir.join(".ferry/journal"), dir.join(".ferry/journal.saved")).unwrap();
    fs::create_dir(dir.join(".ferry/journal")).unwrap();
    let r = host(dir, &["activate", &v2]);
    if r.code != 0 {
        assert!(r.stderr.contains("journal"), "{}", r.stderr);
        assert_eq!(
            current(dir).as_deref(),
            Some(v1.as_str()),
            "activate failed ({}) but current moved to v2",
            r.stderr.trim()
        );
    }
}
