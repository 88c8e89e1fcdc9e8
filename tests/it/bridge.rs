//! Asset bridging (`bridge_assets`): a staged release's asset directories
//! also get the files of the release it replaces that it lacks, so either
//! release's pages find their assets on any host during a rolling deploy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use fs_err as fs;

use crate::kit::{
    build, bundle, delta, example_project, host, host_stdin, read, s, sample_project, sh, tempdir, Project,
    StopSupervisors,
};

fn ino(path: impl AsRef<Path>) -> u64 {
    fs::symlink_metadata(path.as_ref()).unwrap().ino()
}

/// Stages `id`'s bundle on the host at `dir` bridging `media`, and returns
/// the `--json` answer.
fn stage_bridging(dir: &Path, p: &Project, id: &str) -> serde_json::Value {
    host(dir, &["stage", s(&bundle(p, id)), "--bridge-asset", "media", "--json"]).ok().json()
}

/// The sample project, whose `media/` has `app-v1.css` and a nested
/// `deep/a/b.css` besides its own logo (and `app/` an `old.py`): built as
/// v1, then as v2 without those, with `same.css` changed and `app-v2.css`
/// added.
fn v1_and_v2() -> (Project, String, String) {
    let p = sample_project();
    p.write("media/app-v1.css", "/* v1 */\n").write("media/same.css", "/* same, v1 */\n");
    p.write("media/deep/a/b.css", "/* deep */\n").write("app/old.py", "OLD = 1\n");
    let v1 = build(&p, "v1");
    fs::remove_file(p.path("app/old.py")).unwrap();
    fs::remove_file(p.path("media/app-v1.css")).unwrap();
    fs::remove_dir_all(p.path("media/deep")).unwrap();
    p.write("media/same.css", "/* same, v2 */\n").write("media/app-v2.css", "/* v2 */\n");
    let v2 = build(&p, "v2");
    (p, v1, v2)
}

#[test]
fn bridged_assets_are_hardlinked_in_never_over_the_new_releases_own_and_verify_still_passes() {
    let (p, v1, v2) = v1_and_v2();
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    let staged = stage_bridging(dir, &p, &v2);
    assert_eq!(staged["bridged"], 2, "{staged}");
    assert_eq!(staged["bridged_from"], v1.as_str(), "{staged}");
    let (r1, r2) = (dir.join("releases").join(&v1), dir.join("releases").join(&v2));
    for bridged in ["media/app-v1.css", "media/deep/a/b.css"] {
        assert!(r2.join(bridged).is_file(), "{bridged} was not bridged");
        assert_eq!(ino(r1.join(bridged)), ino(r2.join(bridged)), "{bridged} is not hardlinked");
    }
    assert_eq!(read(r2.join("media/app-v1.css")), "/* v1 */\n");
    // Its own file of the same path stays its own.
    assert_eq!(read(r2.join("media/same.css")), "/* same, v2 */\n");
    assert_ne!(ino(r1.join("media/same.css")), ino(r2.join("media/same.css")));
    assert_eq!(read(r2.join("media/app-v2.css")), "/* v2 */\n");
    // Nothing outside the bridged directory.
    assert!(!r2.join("app/old.py").exists());
    let record: serde_json::Value = serde_json::from_str(&read(r2.join(".ferry/bridged.json"))).unwrap();
    assert_eq!(record["from"], v1.as_str(), "{record}");
    assert_eq!(record["files"], serde_json::json!(["media/app-v1.css", "media/deep/a/b.css"]), "{record}");

    // Verified against its own manifest, the bridged files are not tampering;
    // it flips, and its status counts them.
    let out = host(dir, &["verify", &v2]).ok().stdout;
    assert!(out.contains(&format!("release {v2} ok: 8 files")), "{out}");
    host(dir, &["activate", &v2]).ok();
    host(dir, &["verify"]).ok();
    let status = host(dir, &["status", "--json"]).ok().json();
    let row = |id: &str| status["releases"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(row(&v2)["bridged"], 2, "{status}");
    assert!(row(&v1).get("bridged").is_none(), "{status}");
    let human = host(dir, &["status"]).ok().stdout;
    assert!(human.lines().any(|l| l.starts_with(&format!("* {}", &v2[..12])) && l.ends_with("  2 bridged")), "{human}");
}

#[test]
fn nothing_is_bridged_without_a_current_release_or_without_bridge_assets() {
    let (p, v1, v2) = v1_and_v2();
    // No current release: nothing to bridge from.
    let h = tempdir();
    host(h.path(), &["stage", s(&bundle(&p, &v1))]).ok();
    let staged = stage_bridging(h.path(), &p, &v2);
    assert!(staged.get("bridged").is_none() && staged.get("bridged_from").is_none(), "{staged}");
    let r2 = h.path().join("releases").join(&v2);
    assert!(!r2.join("media/app-v1.css").exists());
    assert!(!r2.join(".ferry/bridged.json").exists());

    // A current release, but no bridge_assets: nothing either.
    let h = tempdir();
    host(h.path(), &["stage", s(&bundle(&p, &v1))]).ok();
    host(h.path(), &["activate", &v1]).ok();
    let staged = host(h.path(), &["stage", s(&bundle(&p, &v2)), "--json"]).ok().json();
    assert!(staged.get("bridged").is_none(), "{staged}");
    assert!(!h.path().join("releases").join(&v2).join("media/app-v1.css").exists());
    // Asked again with bridge_assets, the release staged is not staged anew
    // (bridging is not its layout), even when it is current.
    let staged = stage_bridging(h.path(), &p, &v2);
    assert_eq!(staged["already"], true, "{staged}");
    let staged = stage_bridging(h.path(), &p, &v1);
    assert_eq!(staged["already"], true, "the current release: {staged}");
}

#[test]
fn bridging_follows_no_symlink_out_of_either_release_and_takes_only_regular_files() {
    let p = sample_project();
    p.write("media/sub/evil.css", "/* v1 sub */\n").write("media/deep/b.css", "/* deep */\n");
    p.write("media/plain.css", "/* plain */\n");
    std::os::unix::fs::symlink("../app/main.py", p.path("media/link.css")).unwrap();
    let v1 = build(&p, "v1");
    // v2: media/sub is a symlink into app/; the others are gone.
    fs::remove_dir_all(p.path("media/sub")).unwrap();
    fs::remove_dir_all(p.path("media/deep")).unwrap();
    fs::remove_file(p.path("media/link.css")).unwrap();
    fs::remove_file(p.path("media/plain.css")).unwrap();
    std::os::unix::fs::symlink("../app", p.path("media/sub")).unwrap();
    let v2 = build(&p, "v2");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    // On the host, v1's media/deep became a symlink to a directory outside
    // the release that has a b.css of the same content.
    let (r1, r2) = (dir.join("releases").join(&v1), dir.join("releases").join(&v2));
    let outside = tempdir();
    fs::write(outside.path().join("b.css"), "/* deep */\n").unwrap();
    sh(&format!("rm -rf {d} && ln -s {o} {d}", d = r1.join("media/deep").display(), o = outside.path().display()));

    let staged = stage_bridging(dir, &p, &v2);
    assert_eq!(staged["bridged"], 1, "only media/plain.css: {staged}");
    assert_eq!(read(r2.join("media/plain.css")), "/* plain */\n");
    assert!(!r2.join("app/evil.css").exists(), "written through the new release's symlink media/sub");
    assert_eq!(fs::read_link(r2.join("media/sub")).unwrap(), Path::new("../app"));
    assert!(fs::symlink_metadata(r2.join("media/link.css")).is_err(), "a symlink was bridged");
    assert!(!r2.join("media/deep").exists(), "followed the current release's symlink out of it");
    host(dir, &["verify", &v2]).ok();
}

#[test]
fn a_third_release_gets_only_what_the_second_had_of_its_own_and_a_delta_on_a_bridged_base_applies() {
    let (p, v1, v2) = v1_and_v2();
    // v3 lacks v2's app-v2.css and has app-v3.css.
    fs::remove_file(p.path("media/app-v2.css")).unwrap();
    p.write("media/app-v3.css", "/* v3 */\n");
    let v3 = build(&p, "v3");
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    assert_eq!(stage_bridging(dir, &p, &v2)["bridged"], 2);
    host(dir, &["activate", &v2]).ok();
    // The delta from v2, whose directory has v1's bridged files beside its own.
    let staged =
        host_stdin(dir, &["stage", "-", "--bridge-asset", "media", "--json"], &delta(&p, &v2, &v3)).ok().json();
    assert_eq!(staged["id"], v3.as_str(), "{staged}");
    assert_eq!(staged["bridged"], 1, "{staged}");
    assert_eq!(staged["bridged_from"], v2.as_str(), "{staged}");
    let r3 = dir.join("releases").join(&v3);
    assert_eq!(read(r3.join("media/app-v2.css")), "/* v2 */\n");
    for gone in ["media/app-v1.css", "media/deep/a/b.css"] {
        assert!(!r3.join(gone).exists(), "{gone}, which v2 had only bridged, came into v3");
    }
    host(dir, &["verify", &v3]).ok();
    host(dir, &["activate", &v3]).ok();

    // A release that has, of its own, a file its base had bridged: the delta
    // writes it, and nothing is bridged over it.
    p.write("media/app-v2.css", "/* v4's own */\n").write("media/app-v1.css", "/* v1 */\n");
    let v4 = build(&p, "v4");
    let staged =
        host_stdin(dir, &["stage", "-", "--bridge-asset", "media", "--json"], &delta(&p, &v3, &v4)).ok().json();
    assert!(staged.get("bridged").is_none(), "v4 has every file v3 has: {staged}");
    let r4 = dir.join("releases").join(&v4);
    assert_eq!(read(r4.join("media/app-v2.css")), "/* v4's own */\n");
    assert_eq!(read(r4.join("media/app-v1.css")), "/* v1 */\n");
    host(dir, &["verify", &v4]).ok();
}

// ---------------------------------------------------------------------------
// End to end: gunicorn under supervisord, on a local stage

/// `GET path` on 127.0.0.1:`port`: the status and the body.
fn get(port: u32, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port as u16)).expect("the service answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// The example service on a local stage `one` of one host serving on
/// `port`, `extra` in the stage: pushes v1 (with `media/static/app-v1.css`)
/// then v2 (with `app-v2.css` instead), and asks the host, which serves v2
/// now, for v1's stylesheet. Returns that answer and v2's push report.
fn old_asset_after_v2(port: u32, extra: &str) -> ((u16, String), serde_json::Value) {
    let p = example_project();
    let toml = read(p.path("ferry.toml"));
    p.write(
        "ferry.toml",
        format!(
            "{toml}\n[stages.one]\ntransport = \"local\"\nhosts = [\"fleet/one\"]\nenv = \"staging\"\n{extra}\n\
             host_env = {{ \"fleet/one\" = {{ PORT = \"{port}\" }} }}\n\n[stages.one.health.http]\n\
             url = \"http://127.0.0.1:{port}/health\"\ntimeout = 2\nretries = 5\n"
        ),
    );
    let _stop = StopSupervisors(p.path("fleet"));
    p.write("media/static/app-v1.css", "body { color: teal } /* v1 */\n");
    let v1 = build(&p, "v1");
    fs::remove_file(p.path("media/static/app-v1.css")).unwrap();
    p.write("media/static/app-v2.css", "body { color: plum } /* v2 */\n");
    let v2 = build(&p, "v2");
    assert_eq!(p.ferry(["push", "one", &v1, "--json"]).ok().json()["ok"], true);
    assert_eq!(get(port, "/static/app-v1.css").0, 200, "v1 serves its own stylesheet");
    let report = p.ferry(["push", "one", &v2, "--json"]).ok().json();
    assert_eq!(report["ok"], true, "{report}");
    let (status, _) = get(port, "/static/app-v2.css");
    assert_eq!(status, 200, "the host serves v2");
    let current = fs::read_link(p.path("fleet/one/srv/hello/current")).unwrap();
    assert_eq!(current, Path::new("releases").join(&v2));
    (get(port, "/static/app-v1.css"), report)
}

#[test]
fn an_old_pages_asset_is_served_by_a_host_running_the_new_release() {
    let ports = crate::kit::local_ports(2);
    let ((status, body), report) = old_asset_after_v2(ports[0], "bridge_assets = [\"media/static\"]");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "body { color: teal } /* v1 */\n");
    let notes = &report["hosts"][0]["notes"];
    let note = notes[0].as_str().unwrap_or_default();
    assert!(note.starts_with("bridged 1 asset file from "), "{report}");

    // Without bridge_assets, the new release does not have it.
    let ((status, body), report) = old_asset_after_v2(ports[1], "");
    assert_eq!(status, 404, "{body}");
    assert!(report["hosts"][0].get("notes").is_none(), "{report}");
}

#[test]
fn an_asset_changed_on_the_host_is_not_bridged_on_but_refuses_the_stage() {
    let (p, v1, v2) = v1_and_v2();
    let h = tempdir();
    let dir = h.path();
    host(dir, &["stage", s(&bundle(&p, &v1))]).ok();
    host(dir, &["activate", &v1]).ok();
    let css = dir.join("releases").join(&v1).join("media/app-v1.css");
    sh(&format!("chmod u+w {c} && printf '/* v9 */\\n' > {c} && chmod u-w {c}", c = css.display()));
    let err = host(dir, &["stage", s(&bundle(&p, &v2)), "--bridge-asset", "media"]).fails(2);
    assert!(err.contains("media/app-v1.css: the current release's copy hashes to"), "{err}");
    assert!(!dir.join("releases").join(&v2).exists());
    assert!(crate::kit::leftovers(dir).is_empty(), "{:?}", crate::kit::leftovers(dir));
}
