//! Snapshots (insta) of what a person reads: `--help`, a push's report and
//! its last line, `status` and `history`, config errors. Stored in
//! tests/it/snapshots/; review a change with `cargo insta review` (or run
//! with `INSTA_UPDATE=always` and read the diff). In CI (`CI=true`) a
//! missing or changed snapshot fails the test and nothing is written.
//!
//! What varies from run to run is filtered: temporary paths, release ids
//! (each test names its own releases, `[v1]`, before the generic filters),
//! times and durations, byte sizes, `user@host`.

use insta::Settings;

use crate::kit::{build, ferry_cmd, local_stage, run, Project, Run};

/// Snapshots under tests/it/snapshots/, named as the test says, without
/// filters: for output that has nothing varying (`--help`).
fn plain() -> Settings {
    let mut s = Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

/// [`plain`] with the filters of what varies, after `releases` (id, name):
/// the full and short ids of the test's own releases, by name. A short id
/// becomes a placeholder as wide (12), so that columns stay aligned.
fn settings(releases: &[(&str, &str)]) -> Settings {
    let mut s = plain();
    for (id, name) in releases {
        s.add_filter(&regex_escape(id), format!("[{name} id]"));
        s.add_filter(&regex_escape(&id[..12]), format!("{:_<12}", format!("[{name}]")));
    }
    // Release ids, whole and short.
    s.add_filter(r"\b[0-9a-f]{64}\b", "[ID]");
    s.add_filter(r"\b[0-9a-f]{12}\b", "[short-id]__");
    // Temporary directories (kit::tempdir's), wherever the system keeps them.
    s.add_filter(r"(?:/[^/\s'\x22():]+)*/ferry-it-[A-Za-z0-9]+", "[TMP]");
    // RFC 3339 timestamps.
    s.add_filter(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})", "[TIME]");
    // When a release was built, as the push line and the release tables say it.
    s.add_filter(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC\b", "[BUILT]");
    // Byte sizes, with the padding that right-aligns them in a column (its
    // width would vary with theirs).
    s.add_filter(r" *\b\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)\b", " [SIZE]");
    // Durations (`0.12s`, `3ms`).
    s.add_filter(r"\b\d+(?:\.\d+)?(?:ms|s)\b", "[DURATION]");
    // The SECONDS column: a number with two decimals, right-aligned (so
    // with its padding, as sizes).
    s.add_filter(r" +\d+\.\d{2}\b", " [SECS]");
    // Who did it: `user@host`.
    s.add_filter(r"\b[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+", "[USER@HOST]");
    s
}

fn regex_escape(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}

/// A run as one text: its exit code, stdout and stderr.
fn shown(r: &Run) -> String {
    format!("exit {}\n--- stdout\n{}--- stderr\n{}", r.code, r.stdout, r.stderr)
}

/// `ferry <args>` outside any project, at a fixed width for the help's wrapping.
fn ferry(args: &[&str]) -> Run {
    run(ferry_cmd().args(args).env("COLUMNS", "100"))
}

#[test]
fn help() {
    plain().bind(|| insta::assert_snapshot!("ferry_help", shown(&ferry(&["--help"]))));
}

#[test]
fn push_help() {
    plain().bind(|| insta::assert_snapshot!("ferry_push_help", shown(&ferry(&["push", "--help"]))));
}

/// A local stage of one host (its steps come in one order), pushed v1.
fn pushed_v1() -> (Project, String) {
    let p = local_stage(&["a"], "");
    let v1 = build(&p, "v1");
    (p, v1)
}

#[test]
fn a_push_report() {
    let (p, v1) = pushed_v1();
    let r = p.ferry(["push", "web"]);
    settings(&[(&v1, "v1")]).bind(|| insta::assert_snapshot!("push_report", shown(&r)));
}

/// v1 pushed, then v2 pushed to a stage whose command gate fails; and the
/// stage's status and history after.
#[test]
fn a_failed_push_and_the_status_and_history_after() {
    let (p, v1) = pushed_v1();
    p.ferry(["push", "web"]).ok();
    let toml = fs_err::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}[stages.web.health.command]\nrun = \"exit 1\"\n"));
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = build(&p, "v2");
    let failed = p.ferry(["push", "web"]);
    let status = p.ferry(["status", "web"]);
    let history = p.ferry(["history", "web"]);
    settings(&[(&v1, "v1"), (&v2, "v2")]).bind(|| {
        insta::assert_snapshot!("push_failed_last_line", failed.stderr.lines().last().unwrap_or_default());
        insta::assert_snapshot!("push_failed", shown(&failed));
        insta::assert_snapshot!("status", shown(&status));
        insta::assert_snapshot!("history", shown(&history));
    });
}

#[test]
fn a_config_error_for_an_unknown_key() {
    let p = local_stage(&["a"], "\n[deploy]\nlinkd_dirs = [\"log\"]\n");
    let r = p.ferry(["status", "web"]);
    settings(&[]).bind(|| insta::assert_snapshot!("config_unknown_key", shown(&r)));
}

#[test]
fn a_config_error_for_a_shrinking_strategy() {
    let p = local_stage(&["a", "b", "c", "d"], "strategy = [\"50%\", \"1\"]\n");
    let r = p.ferry(["push", "web"]);
    settings(&[]).bind(|| insta::assert_snapshot!("config_shrinking_strategy", shown(&r)));
}
