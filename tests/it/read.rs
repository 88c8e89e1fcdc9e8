//! `ferry verify`, `inspect`, `diff` on good and damaged bundles.

use fs_err as fs;

use crate::kit::{ferry_cmd, run, sample_project, tempdir};

#[test]
fn verify_passes_a_good_bundle() {
    let p = sample_project();
    let id = p.build(&[])["id"].as_str().unwrap().to_owned();
    let out = p.ferry(["verify", &id[..8]]).ok().stdout;
    assert_eq!(out, format!("ok: release {id} (shop): 6 files, 77 B verified\n"));
    let json = p.ferry(["verify", "--json", &id]).ok().json();
    assert_eq!(json["ok"], true);
}

#[test]
fn verify_fails_on_any_flipped_byte_and_says_where() {
    let p = sample_project();
    let built = p.build(&[]);
    let bytes = fs::read(built["path"].as_str().unwrap()).unwrap();
    let dir = tempdir();
    let copy = dir.path().join("copy.tar.zst");
    // Every byte at 3 bit positions is thousands of runs (done once by hand on the
    // golden bundle: 3699 flips, none passed); a stride over the whole file,
    // frame header to trailer, keeps it quick.
    let positions: Vec<usize> = (0..bytes.len()).step_by(bytes.len() / 97 + 1).chain([bytes.len() - 1]).collect();
    assert!(positions.len() > 90);
    for pos in positions {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x10;
        fs::write(&copy, &bad).unwrap();
        let err = run(ferry_cmd().arg("verify").arg(&copy)).fails(2);
        // Each message names the entry, or where no entry is to blame, the frame.
        let says_where = ["entry \"", ".ferry/", "frame"];
        assert!(says_where.iter().any(|w| err.contains(w)), "flipping byte {pos} gave: {err}");
        assert!(err.contains("copy.tar.zst"), "the message names the file: {err}");
    }
}

#[test]
fn a_file_whose_name_is_an_id_must_hash_to_it() {
    let p = sample_project();
    let built = p.build(&[]);
    let dir = tempdir();
    let lying = dir.path().join(format!("{}.tar.zst", "ab".repeat(32)));
    fs::copy(built["path"].as_str().unwrap(), &lying).unwrap();
    let err = run(ferry_cmd().arg("verify").arg(&lying)).fails(2);
    assert!(err.contains(&format!("the bundle's contents hash to release {}", built["id"].as_str().unwrap())), "{err}");
    assert!(err.contains(&format!("not the expected {}", "ab".repeat(32))), "{err}");
}

#[test]
fn diff_reports_added_removed_and_changed() {
    let p = sample_project();
    let one = p.build(&["--version", "1"]);
    p.write("app/main.py", "print('shop v2')\nprint('more')\n").write("app/new.py", "N = 1\n");
    fs::remove_file(p.path("media/logo.svg")).unwrap();
    let two = p.build(&["--version", "2"]);
    let (a, b) = (one["id"].as_str().unwrap(), two["id"].as_str().unwrap());
    let out = p.ferry(["diff", a, b]).ok().stdout;
    assert!(out.contains("+ app/new.py (6 B)"), "{out}");
    assert!(out.contains("- media/logo.svg (7 B)"), "{out}");
    assert!(out.contains("~ app/main.py (content: 17 B → 31 B)"), "{out}");
    assert!(out.contains("1 added (6 B), 1 removed (7 B), 1 changed (17 B → 31 B)"), "{out}");
    let json = p.ferry(["diff", "--json", a, b]).ok().json();
    assert_eq!(json["changed"][0]["path"], "app/main.py");
    assert_eq!(json["bytes"]["added"], 6);
}

#[test]
fn inspect_json_lists_every_entry() {
    let p = sample_project();
    let id = p.build(&[])["id"].as_str().unwrap().to_owned();
    let j = p.ferry(["inspect", "--json", &id]).ok().json();
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["meta"]["service"], "shop");
    let entries = j["entries"].as_array().unwrap();
    let run_sh = entries.iter().find(|e| e["path"] == "app/run.sh").unwrap();
    assert_eq!(run_sh["mode"], "755");
    assert_eq!(run_sh["kind"], "file");
    let paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries are in manifest (byte) order");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let p = sample_project();
    for i in 0..3000 {
        p.write(&format!("media/many/{i:05}.txt"), "x");
    }
    let id = p.build(&[])["id"].as_str().unwrap().to_owned();
    // More than a pipe buffer of entries, so ferry is still writing when head exits.
    for args in ["inspect", "inspect --json"] {
        let script = format!(
            "{} {args} --store {} {id} | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
            crate::kit::ferry_bin(),
            p.store.path().display()
        );
        let r = run(std::process::Command::new("bash").args(["-c", &script]));
        assert!(r.stdout.ends_with("status=0\n"), "{args}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args}: {}", r.stderr);
    }
}

#[test]
fn reading_a_bundle_file_needs_no_config() {
    let p = sample_project();
    let path = p.build(&[])["path"].as_str().unwrap().to_owned();
    // A broken ferry.toml where the command runs is none of verify's business.
    let elsewhere = tempdir();
    fs::write(elsewhere.path().join("ferry.toml"), "this is not toml = = =").unwrap();
    let r = run(ferry_cmd().args(["verify", &path]).current_dir(elsewhere.path())).ok();
    assert!(r.stdout.starts_with("ok: release "), "{}", r.stdout);
    // Asking for an id does need the store, and so the config.
    let err = run(ferry_cmd().args(["verify", "abcd"]).current_dir(elsewhere.path())).fails(2);
    assert!(err.contains("ferry.toml: TOML parse error"), "{err}");
}

#[test]
fn json_errors_are_json() {
    let dir = tempdir();
    let r = run(ferry_cmd().args(["verify", "--json", "/nonexistent/x.tar.zst"]).current_dir(dir.path()));
    assert_eq!(r.code, 2);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("/nonexistent/x.tar.zst"), "{j}");
}
