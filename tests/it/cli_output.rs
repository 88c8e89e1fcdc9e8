//! What `ferry push` and `ferry rollback` say, and what they take, on a
//! local fleet: the lines a person reads, the names they can give.

use fs_err as fs;

use crate::kit::{sample_project, Project};

/// The sample project with a local stage `web` of `hosts` (under fleet/).
fn fleet(hosts: &[&str], extra: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let list: Vec<String> = hosts.iter().map(|h| format!("\"fleet/{h}\"")).collect();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.web]\nhosts = [{}]\nenv = \"staging\"\n{extra}",
            list.join(", ")
        ),
    );
    p
}

fn current(p: &Project, host: &str) -> String {
    let link = fs::read_link(p.path(&format!("fleet/{host}/srv/shop/current"))).unwrap();
    link.to_str().unwrap().trim_start_matches("releases/").to_owned()
}

/// Builds the tree as it is, labelled `version`; its id.
fn build(p: &Project, version: &str) -> String {
    p.build(&["--version", version])["id"].as_str().unwrap().to_owned()
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
    assert!(err.contains(&format!("has the id prefix or version \"v9\" (it has: {} (v3), ", &v3[..12])), "{err}");

    // Another build labelled v1: the label names two releases.
    p.write("app/main.py", "print('shop v1, again')\n");
    let again = build(&p, "v1");
    let err = p.ferry(["rollback", "web", "--to", "v1"]).fails(2);
    assert!(err.contains("\"v1\" names 2 releases of shop: "), "{err}");
    assert!(err.contains(&format!("{} (v1)", &v1[..12])) && err.contains(&format!("{} (v1)", &again[..12])), "{err}");
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
