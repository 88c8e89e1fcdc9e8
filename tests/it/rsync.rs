//! A host whose release the store does not have gets an rsync delta against
//! the signature of what it really has, checked by blake3 like everything.

use fs_err as fs;

use crate::kit::{sample_project, sh, Project};

/// The sample project with a local stage of two hosts under `fleet/`.
fn project() -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.test]\nhosts = [\"fleet/a\", \"fleet/b\"]\nenv = \"staging\"\n"
        ),
    );
    // A file big enough for rsync blocks to matter.
    let big: String = (0..4000).map(|i| format!("line {i} of the big module\n")).collect();
    p.write("app/big.py", big);
    p
}

fn push(p: &Project) -> serde_json::Value {
    p.ferry(["push", "test", "--json"]).ok().json()
}

fn deploy_to(p: &Project, host: &str) -> std::path::PathBuf {
    p.path(&format!("fleet/{host}/srv/shop"))
}

#[test]
fn a_host_on_a_release_the_store_lost_gets_an_rsync_delta() {
    let p = project();
    let v1 = p.build(&["--version", "v1"])["id"].as_str().unwrap().to_owned();
    push(&p);
    // The store forgets v1 (pruned, or built elsewhere).
    fs::remove_file(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap();
    fs::remove_file(p.store.path().join(format!("bundles/{v1}.json"))).unwrap();

    let big = fs::read_to_string(p.path("app/big.py")).unwrap().replace("line 2000 ", "line two thousand ");
    p.write("app/big.py", big);
    let v2 = p.build(&["--version", "v2"]);
    let report = push(&p);
    assert_eq!(report["ok"], true, "{report:#}");
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["shipped"], "rsync", "{h}");
        assert!(h["bytes"].as_u64().unwrap() < 4000, "a one-line change ships little: {h}");
        let dir = deploy_to(&p, h["host"].as_str().unwrap());
        let current = fs::read_link(dir.join("current")).unwrap();
        assert_eq!(current.to_str().unwrap(), format!("releases/{}", v2["id"].as_str().unwrap()));
        p.ferry(["host", "--deploy-to", dir.to_str().unwrap(), "verify"]).ok();
    }
}

#[test]
fn a_drifted_host_is_brought_back_to_the_exact_release() {
    let p = project();
    let v1 = p.build(&["--version", "v1"])["id"].as_str().unwrap().to_owned();
    push(&p);
    // Someone edits a file of b's release in place, and the store loses v1.
    let drifted = deploy_to(&p, "b").join(format!("releases/{v1}/app/big.py"));
    sh(&format!("chmod u+w {0} && sed -i 's/line 10 /line ten /' {0}", drifted.display()));
    p.ferry(["host", "--deploy-to", deploy_to(&p, "b").to_str().unwrap(), "verify"]).fails(2);
    fs::remove_file(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap();

    p.write("app/main.py", "print('shop v2')\n");
    p.build(&["--version", "v2"]);
    let report = push(&p);
    assert_eq!(report["ok"], true, "{report:#}");
    // The drifted big.py was patched from what b really had, and checked.
    p.ferry(["host", "--deploy-to", deploy_to(&p, "b").to_str().unwrap(), "verify"]).ok();
    let fixed = fs::read_to_string(deploy_to(&p, "b").join("current/app/big.py")).unwrap();
    assert!(fixed.contains("line 10 of the big module"));
}
