//! `[stages.<name>.load_balancer]` and `health.errors.source` in ferry.toml:
//! what is refused, where (file:line:col), and what to do.

use fs_err as fs;

use crate::kit::{sample_project, Project};

fn project(lb: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[release]\nexclude = [\"fleet/\"]\n\n[stages.web]\nhosts = [\"fleet/a\", \"fleet/b\"]\n\
             env = \"staging\"\n\n[stages.web.load_balancer]\n{lb}"
        ),
    );
    p
}

const GOOD: &str = "kind = \"haproxy\"\nnodes = [{ host = \"fleet/lb\", socket = \"/run/haproxy/admin.sock\" }]\nbackends = [\"web\"]\n";

#[test]
fn a_load_balancer_that_ferry_cannot_drive_is_refused_where_it_is_written() {
    let cases: [(&str, &str); 6] = [
        (
            "kind = \"nginx\"\nnodes = []\nbackends = [\"web\"]\n",
            "ferry.toml:16:8: stage web: load_balancer: kind \"nginx\" is not one ferry drives",
        ),
        (
            "kind = \"haproxy\"\nnodes = []\nbackends = [\"web\"]\n",
            "ferry.toml:17:9: stage web: load_balancer: nodes is empty",
        ),
        (
            "kind = \"haproxy\"\nnodes = [{ host = \"fleet/lb\", socket = \"admin.sock\" }]\nbackends = [\"web\"]\n",
            "stage web: load_balancer: socket \"admin.sock\" must be an absolute path",
        ),
        (
            &format!("{GOOD}servers = {{ \"fleet/z\" = \"z\" }}\n"),
            "servers names \"fleet/z\", which is not one of the stage's hosts",
        ),
        (
            &format!("{GOOD}servers = {{ \"fleet/a\" = \"a b\" }}\n"),
            "host fleet/a's server name \"a b\" must be letters, digits",
        ),
        (&format!("{GOOD}min_in_service = 2\n"), "min_in_service = 2 leaves no host to take out of the stage's 2"),
    ];
    for (lb, said) in cases {
        let p = project(lb);
        let err = p.ferry(["status", "web"]).fails(2);
        assert!(err.contains(said), "{lb}\n{err}");
        assert!(err.contains("ferry.toml:"), "no file:line:col for {lb}\n{err}");
    }
    let p = project(&format!("{GOOD}drain_timeut = 3\n"));
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("unknown field `drain_timeut`"), "{err}");
}

#[test]
fn an_errors_gate_from_the_load_balancer_needs_one_and_no_url() {
    let p = project(GOOD);
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!("{toml}\n[stages.web.health.errors]\nsource = \"load_balancer\"\nurl = \"http://{{host}}/\"\n"),
    );
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("reads HAProxy's counts (source = \"load_balancer\"): leave url out"), "{err}");

    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[stages.web]\nhosts = [\"fleet/a\"]\n[stages.web.health.errors]\nsource = \"load_balancer\"\n"
        ),
    );
    let err = p.ferry(["status", "web"]).fails(2);
    assert!(err.contains("has no [stages.web.load_balancer] to read"), "{err}");
    let err = p.ferry(["lb", "web", "status"]).fails(2);
    assert!(err.contains("has no [stages.web.load_balancer] to read"), "{err}");
}

#[test]
fn lb_and_push_out_need_a_load_balancer() {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}\n[stages.web]\nhosts = [\"fleet/a\"]\n"));
    let err = p.ferry(["lb", "web", "status"]).fails(2);
    assert!(err.contains("stage web has no load balancer: add [stages.web.load_balancer]"), "{err}");
    let err = p.ferry(["push", "web", "--out"]).fails(2);
    assert!(
        err.contains("--out deploys to the hosts out of the load balancer's rotation, and stage web has no"),
        "{err}"
    );
}

#[test]
fn a_missing_admin_socket_is_refused_before_anything_changes() {
    let p = project(GOOD);
    p.build(&["--version", "v1"]);
    let err = p.ferry(["push", "web"]).fails(2);
    assert!(
        err.contains("load balancer fleet/lb: HAProxy's admin socket /run/haproxy/admin.sock:")
            && err.contains("check `stats socket /run/haproxy/admin.sock level admin` in haproxy.cfg"),
        "{err}"
    );
    // Connecting took the host's lock; nothing was staged or flipped.
    let releases = fs::read_dir(p.path("fleet/a/srv/shop/releases")).map(Iterator::count).unwrap_or(0);
    assert_eq!(releases, 0, "nothing may be staged before the load balancer answers");
    assert!(!p.path("fleet/a/srv/shop/current").exists());
}
