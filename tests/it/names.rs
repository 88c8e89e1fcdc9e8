//! The names a release goes by (issue 14): every command that takes a
//! release takes its id or an id prefix, its version label, or the git tag
//! or commit it was built from; and what `status`, `history` and `push`
//! say of a release beside its id. On a local fleet of a real git
//! repository made in the test's directory: no network.

use fs_err as fs;

use crate::kit::{local_stage, sh, Project};

/// `git <args>` in the project's directory, as a committer of its own.
fn git(p: &Project, args: &str) -> String {
    sh(&format!("cd {} && git -c user.name=ferry -c user.email=ferry@example.org {args}", p.root().display()))
        .trim()
        .to_owned()
}

/// The sample project on a local stage of hosts a and b (with `extra` in
/// `[stages.web]`), made a git repository with two tagged commits: v1.0.0,
/// then v1.1.0 (another main.py), on branch main.
fn repo(extra: &str) -> Project {
    let p = local_stage(&["a", "b"], extra);
    p.write(".gitignore", "fleet/\n");
    git(&p, "init -q -b main");
    git(&p, "add -A");
    git(&p, "commit -q -m one");
    git(&p, "tag v1.0.0");
    p.write("app/main.py", "print('shop v1.1')\n");
    git(&p, "commit -q -am two");
    git(&p, "tag v1.1.0");
    p
}

/// `ferry build --git-ref <reference>` and its release id.
#[track_caller]
fn build_ref(p: &Project, reference: &str, extra: &[&str]) -> String {
    let r = p.ferry([&["build", "--quiet", "--git-ref", reference], extra].concat()).ok();
    let id = r.stdout.trim().to_owned();
    assert_eq!(id.len(), 64, "not a release id: {id:?}");
    id
}

/// `ferry build --version <version>` of the work tree, and its release id.
#[track_caller]
fn build_version(p: &Project, version: &str) -> String {
    let id = p.ferry(["build", "--quiet", "--version", version]).ok().stdout.trim().to_owned();
    assert_eq!(id.len(), 64, "not a release id: {id:?}");
    id
}

/// The release each host's `current` points at, a then b.
fn currents(p: &Project) -> [Option<String>; 2] {
    ["a", "b"].map(|h| {
        let link = fs::read_link(p.path(&format!("fleet/{h}/srv/shop/current"))).ok()?;
        Some(link.to_str().unwrap().trim_start_matches("releases/").to_owned())
    })
}

#[track_caller]
fn on(p: &Project, id: &str) {
    assert_eq!(currents(p), [Some(id.to_owned()), Some(id.to_owned())], "both hosts on {}", &id[..12]);
}

/// Fails if a name resolves to the wrong release (or to none): each push
/// is checked by where both hosts' `current` points.
#[test]
fn push_and_rollback_take_a_tag_a_commit_a_version_or_an_id_prefix() {
    let p = repo("");
    let old = build_ref(&p, "v1.0.0", &[]);
    let new = build_ref(&p, "v1.1.0", &[]);
    p.write("app/main.py", "print('shop, labelled')\n");
    let labelled = build_version(&p, "2026.12-1");
    assert!(old != new && new != labelled);

    p.ferry(["push", "web", "v1.0.0"]).ok();
    on(&p, &old);
    let commit = git(&p, "rev-parse --short=7 v1.1.0");
    p.ferry(["push", "web", &commit]).ok();
    on(&p, &new);
    p.ferry(["push", "web", "2026.12-1"]).ok();
    on(&p, &labelled);
    p.ferry(["push", "web", &old[..6]]).ok();
    on(&p, &old);
    // The whole commit, and a longer abbreviation, as git prints them.
    p.ferry(["push", "web", &git(&p, "rev-parse v1.1.0")]).ok();
    on(&p, &new);

    p.ferry(["rollback", "web", "--to", "v1.0.0"]).ok();
    on(&p, &old);
    p.ferry(["rollback", "web", "--to", &git(&p, "rev-parse --short=9 v1.1.0")]).ok();
    on(&p, &new);

    // The commands that read the store take the same names.
    let inspect = p.ferry(["inspect", "v1.0.0", "--json"]).ok().json();
    assert_eq!(inspect["id"], old.as_str(), "{inspect:#}");
    p.ferry(["verify", &commit]).ok();
    let diff = p.ferry(["diff", "v1.0.0", "v1.1.0"]).ok().stdout;
    assert!(diff.contains("app/main.py"), "{diff}");
    let delta = p.ferry(["delta", "v1.0.0", &commit, "--json"]).ok().json();
    assert_eq!((delta["from"].as_str(), delta["to"].as_str()), (Some(old.as_str()), Some(new.as_str())), "{delta:#}");
}

/// Fails if a version label shared by two builds picks one of them, if the
/// error does not list both with the prefix that picks each, or if an
/// unknown name does not say what it was tried as and what the store has.
#[test]
fn an_ambiguous_version_lists_both_and_an_unknown_name_says_what_was_tried() {
    let p = repo("");
    let tagged = build_ref(&p, "v1.0.0", &[]);
    let first = build_version(&p, "v1");
    p.write("app/main.py", "print('shop, v1 again')\n");
    let second = build_version(&p, "v1");

    let err = p.ferry(["push", "web", "v1"]).fails(2);
    assert!(err.contains("\"v1\" names 2 releases of shop:\n"), "{err}");
    for id in [&first, &second] {
        let row = err.lines().find(|l| l.starts_with(&format!("  {}  v1", &id[..12])));
        assert!(row.is_some_and(|r| r.contains(" UTC")), "a row for {}, with when it was built:\n{err}", &id[..12]);
    }
    assert!(!err.contains(&tagged[..12]), "only the two named v1: {err}");
    assert!(err.contains("pick one by its id or an id prefix: "), "{err}");
    assert!(!p.path("fleet").exists(), "nothing was pushed");
    // The prefixes it offers pick each.
    let offered = err.lines().last().unwrap().rsplit(": ").next().unwrap().to_owned();
    let mut picked: Vec<String> = offered
        .split(", ")
        .map(|prefix| p.ferry(["inspect", prefix, "--json"]).ok().json()["id"].as_str().unwrap().to_owned())
        .collect();
    picked.sort();
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(picked, both, "the prefixes offered ({offered}) pick one each");

    let err = p.ferry(["push", "web", "nope"]).fails(2);
    assert!(
        err.contains("no release of shop in the store")
            && err.contains("has \"nope\" as its version label or git tag (not hex digits, so no id prefix or commit)"),
        "{err}"
    );
    assert!(err.contains("the 3 it has:\n  ID "), "{err}");
    for id in [&tagged, &first, &second] {
        assert!(err.contains(&format!("  {}  ", &id[..12])), "{err}");
    }
    let err = p.ferry(["rollback", "web", "--to", "abcdef"]).fails(2);
    assert!(err.contains("has \"abcdef\" as its id prefix, version label or git tag (a commit needs 7+"), "{err}");
    let err = p.ferry(["inspect", "release/9"]).fails(2);
    assert!(err.contains("there is no file release/9: no release in the store"), "{err}");
}

/// Fails if an exact version label loses to an id prefix of the same
/// digits (the rule: exact names first).
#[test]
fn a_name_that_is_a_version_and_an_id_prefix_is_the_version() {
    let p = repo("");
    let first = build_version(&p, "v1");
    p.write("app/main.py", "print('shop, hex')\n");
    let hexy = build_version(&p, &first[..8]);
    let shown = p.ferry(["inspect", &first[..8], "--json"]).ok().json();
    assert_eq!(shown["id"], hexy.as_str(), "{shown:#}");
    // A longer prefix is no one's label: the id it starts.
    let shown = p.ferry(["inspect", &first[..9], "--json"]).ok().json();
    assert_eq!(shown["id"], first.as_str(), "{shown:#}");
}

/// Fails if status or history leave out the version, the short commit or
/// the tag, or a release the store does not know shows anything but "-".
#[test]
fn status_and_history_show_version_commit_and_tag() {
    let p = repo("");
    let old = build_ref(&p, "v1.0.0", &[]);
    p.ferry(["push", "web", "v1.0.0"]).ok();
    let commit = git(&p, "rev-parse --short=7 v1.0.0");

    let status = p.ferry(["status", "web"]).ok().stdout;
    let header = status.lines().next().unwrap();
    assert!(header.contains("CURRENT       VERSION  COMMIT   TAG     PREVIOUS"), "{status}");
    let row = status.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(row.contains(&format!("{}  -        {commit}  v1.0.0  -", &old[..12])), "{status}");
    let json = p.ferry(["status", "web", "--json"]).ok().json();
    let host = &json["hosts"][0];
    assert_eq!(host["status"]["current"], old.as_str(), "the existing field: {json:#}");
    assert_eq!(host["current_release"]["git_tag"], "v1.0.0", "{json:#}");
    assert_eq!(host["current_release"]["git_commit"], git(&p, "rev-parse v1.0.0").as_str(), "{json:#}");
    assert_eq!(host["previous_release"], serde_json::Value::Null, "{json:#}");

    let history = p.ferry(["history", "web"]).ok().stdout;
    let deploys: Vec<&str> = history.lines().filter(|l| l.contains(" deploy ")).collect();
    assert_eq!(deploys.len(), 2, "{history}");
    for line in &deploys {
        assert!(line.contains(&format!("-> {}  -        {commit}  v1.0.0  ok", &old[..12])), "{history}");
    }
    let line = p.ferry(["history", "web", "--json"]).ok().stdout;
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(first["to"], old.as_str(), "{first:#}");
    assert_eq!(first["to_release"]["git_tag"], "v1.0.0", "{first:#}");

    // A store that no longer has the release: the hosts still name it.
    fs::remove_dir_all(p.store.path().join("bundles")).unwrap();
    let status = p.ferry(["status", "web"]).ok().stdout;
    let row = words(status.lines().find(|l| l.starts_with("a ")).unwrap());
    assert!(row.starts_with(&format!("a {} - - - - 1 free", &old[..12])), "{status}");
    let history = p.ferry(["history", "web"]).ok().stdout;
    assert!(words(&history).contains(&format!("-> {} - - - ok", &old[..12])), "{history}");
}

/// `text` with every run of blanks one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fails if a push with no release and a stage `ref` picks the newest
/// build of anything rather than the newest of the ref's commit, if it
/// does not say which before the first host moves, or if with no build of
/// the commit it pushes anything.
#[test]
fn a_push_with_no_release_picks_the_newest_build_of_the_stage_ref_and_says_so() {
    let p = repo("ref = \"stable\"\n");
    git(&p, "branch stable v1.0.0");
    let stable = build_ref(&p, "stable", &[]);
    // Newer, of another ref: not the stage's.
    let main = build_ref(&p, "main", &[]);
    assert_ne!(stable, main);
    let commit = git(&p, "rev-parse --short=7 stable");

    let err = p.ferry(["push", "web"]).ok().stderr;
    on(&p, &stable);
    let first = err.lines().next().unwrap();
    let said = format!("pushing {} (no version, commit {commit}, tag v1.0.0, built ", &stable[..12]);
    assert!(first.starts_with(&said), "the first line says which: {err}");
    assert!(
        first.ends_with(&format!(" UTC), the newest build of stable (commit {commit}), to 2 hosts of web")),
        "{err}"
    );

    // The ref moves to a commit nothing was built from: nothing is pushed.
    git(&p, "checkout -q stable");
    p.write("app/main.py", "print('shop, stable fix')\n");
    git(&p, "commit -q -am fix");
    let err = p.ferry(["push", "web"]).fails(2);
    let now = git(&p, "rev-parse --short=7 stable");
    assert!(
        err.contains(&format!("stage web deploys ref \"stable\", which names commit {now} now, and the store")),
        "{err}"
    );
    assert!(err.contains("`ferry build --git-ref stable`") && err.contains("`ferry deploy web`"), "{err}");
    on(&p, &stable);

    // Without a ref: the newest build of the service, as before.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", toml.replace("ref = \"stable\"\n", ""));
    let err = p.ferry(["push", "web"]).ok().stderr;
    on(&p, &main);
    assert!(err.lines().next().unwrap().ends_with("), the newest build of shop, to 2 hosts of web"), "{err}");
}
