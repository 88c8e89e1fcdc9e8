//! Making a virtualenv run from wherever a release is unpacked.
//!
//! A venv built at `/build/svc/venv` names that path in a few files; on a host
//! it lives at `<deploy_to>/releases/<id>/venv`. The builder rewrites them:
//!
//! | file | what it holds | rewritten to |
//! |---|---|---|
//! | `bin/*` scripts | `#!/build/svc/venv/bin/python` (or pip's `#!/bin/sh` + `'''exec' /build/…/python` form for long paths) | a `/bin/sh` trampoline that execs the `python` beside the script's resolved path |
//! | `bin/activate` | `VIRTUAL_ENV="/build/svc/venv"`, or unquoted (CPython ≥ 3.12.8, 3.13.1), also inside `$(cygpath …)` | the directory above the sourced script (bash, zsh) |
//! | `bin/activate.fish` | `set -gx VIRTUAL_ENV "/build/svc/venv"` (or unquoted) | `(builtin realpath (status dirname)/..)` |
//! | `bin/activate.csh` | `setenv VIRTUAL_ENV "/build/svc/venv"` (or unquoted) | the directory above the sourced script, from tcsh's `$_` |
//! | `pyvenv.cfg` | `command = /usr/bin/python3 -m venv /build/svc/venv` (CPython ≥ 3.11; informational, Python never reads it) | the same command with the venv's path in the release (`… -m venv venv`): what makes it again from the release's root |
//!
//! Only scripts whose interpreter is the venv's `python*` or `pypy*` get the
//! trampoline (it is Python syntax); another interpreter's script in `bin/`
//! is left as it is and reported.
//!
//! `pyvenv.cfg`'s `command` line is rewritten, not left as it is, although no
//! program reads it: the build promises that no text file of the release
//! names the build path unreported, and reporting it would warn about every
//! venv (and fail every `--strict` build) for a line that harms nothing.
//! `bin/python*` stay symlinks to the base interpreter, which every host must
//! have at the same path, as with any venv.
//!
//! Any other file under the venv that still holds the build path (a `.pth` of
//! an editable install, an rpath in a shared library, …) is reported as not
//! relocated; `ferry build --strict` makes that an error.

use std::borrow::Cow;

use ferry_formats::RelPath;
use memchr::memmem;

/// How one file of a venv is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rewrite {
    Script,
    ActivateSh,
    ActivateFish,
    ActivateCsh,
    PyvenvCfg,
}

/// A venv component and the absolute paths it was built under.
#[derive(Debug, Clone)]
pub struct Venv {
    pub rel: RelPath,
    /// Absolute paths that mean "this venv" in its files: where `bin/activate`
    /// says it was created, and where it is now (as given and canonical).
    pub origins: Vec<String>,
}

impl Venv {
    /// The rewrite for the file at `rel`, if it is one of the venv's own
    /// scripts or its `pyvenv.cfg` (decided by path; the content decides
    /// whether anything changes).
    pub fn rewrite_for(&self, rel: &RelPath) -> Option<Rewrite> {
        // Asked for every file of the venv: compared as text, not as new paths.
        let (parent, name) = rel.as_str().rsplit_once('/')?;
        if parent == self.rel.as_str() && name == "pyvenv.cfg" {
            return Some(Rewrite::PyvenvCfg);
        }
        if parent.strip_prefix(self.rel.as_str()) != Some("/bin") {
            return None;
        }
        Some(match name {
            "activate" => Rewrite::ActivateSh,
            "activate.fish" => Rewrite::ActivateFish,
            "activate.csh" => Rewrite::ActivateCsh,
            _ => Rewrite::Script,
        })
    }

    /// Whether `content` still names the venv's build path.
    pub fn names_build_path(&self, content: &[u8]) -> bool {
        self.origins.iter().any(|o| memmem::find(content, o.as_bytes()).is_some())
    }

    /// A search for the build path in a file read in pieces.
    pub fn scan(&self) -> Scan<'_> {
        let keep = self.origins.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
        Scan { venv: self, keep, tail: Vec::with_capacity(2 * keep), found: false }
    }

    /// Applies a rewrite. Content without the build path comes back borrowed.
    pub fn apply<'a>(&self, rewrite: Rewrite, content: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out = Cow::Borrowed(content);
        for origin in &self.origins {
            if let Some(new) = apply_one(rewrite, &out, origin, self.rel.as_str()) {
                out = Cow::Owned(new);
            }
        }
        out
    }
}

/// [`Venv::names_build_path`] over a file's pieces, in order, including a
/// path that a boundary between two pieces cuts.
#[derive(Debug)]
pub struct Scan<'a> {
    venv: &'a Venv,
    /// An origin's length less one: the most of it one piece can end with.
    keep: usize,
    /// The last `keep` bytes seen.
    tail: Vec<u8>,
    found: bool,
}

impl Scan<'_> {
    pub fn feed(&mut self, piece: &[u8]) {
        if self.found {
            return;
        }
        // Across the boundary: the end of what came before, the start of this.
        self.tail.extend_from_slice(&piece[..piece.len().min(self.keep)]);
        self.found = self.venv.names_build_path(&self.tail) || self.venv.names_build_path(piece);
        if piece.len() >= self.keep {
            self.tail.clear();
            self.tail.extend_from_slice(&piece[piece.len() - self.keep..]);
        } else {
            // A piece shorter than an origin: keep the last bytes of both.
            let drop = self.tail.len().saturating_sub(self.keep);
            self.tail.drain(..drop);
        }
    }

    /// Whether any piece so far, or two side by side, named the build path.
    pub fn found(&self) -> bool {
        self.found
    }
}

/// The venv's directory, as the sourced `activate` finds it (bash, zsh).
const SH_SELF: &str = r#""$(CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]:-$0}")/.." >/dev/null && pwd)""#;
/// The same for fish.
const FISH_SELF: &str = "(builtin realpath (status dirname)/..)";
/// The same for tcsh, which knows the sourced file only from `$_`.
const CSH_SELF: &str = "set _ferry_args = ($_)\n\
                        set _ferry_bin = `dirname \"$_ferry_args[2]\"`\n\
                        setenv VIRTUAL_ENV `cd \"$_ferry_bin/..\" && pwd`\n\
                        unset _ferry_args _ferry_bin";

/// `rel` is the venv's path in the release.
fn apply_one(rewrite: Rewrite, content: &[u8], origin: &str, rel: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(content).ok()?;
    let out = match rewrite {
        Rewrite::Script => return rewrite_script(content, origin),
        Rewrite::ActivateSh => replace_word(text, origin, SH_SELF)?,
        Rewrite::ActivateFish => replace_word(text, origin, FISH_SELF)?,
        Rewrite::PyvenvCfg => {
            // Only the `command` line: a path elsewhere in the file (a
            // `home` inside the venv, say) would mean something, and stays
            // to be reported.
            let mut out = String::with_capacity(text.len());
            let mut changed = false;
            for line in text.split_inclusive('\n') {
                let is_command = line.split_once('=').is_some_and(|(key, _)| key.trim() == "command");
                match replace_word(line, origin, rel).filter(|_| is_command) {
                    Some(new) => {
                        out.push_str(&new);
                        changed = true;
                    }
                    None => out.push_str(line),
                }
            }
            if !changed {
                return None;
            }
            out
        }
        Rewrite::ActivateCsh => {
            let mut out = String::with_capacity(text.len());
            for line in text.split_inclusive('\n') {
                let value = line.trim().strip_prefix("setenv VIRTUAL_ENV ").map(|v| v.trim_matches(['"', '\'']));
                if value == Some(origin) {
                    out.push_str(CSH_SELF);
                    out.push_str(if line.ends_with('\n') { "\n" } else { "" });
                } else {
                    out.push_str(line);
                }
            }
            if out == text {
                return None;
            }
            out
        }
    };
    Some(out.into_bytes())
}

/// Replaces each shell word that is exactly `origin` — bare as `python -m
/// venv` writes it since CPython 3.12.8 and 3.13.1, or in double or single
/// quotes as before — with `with`.
fn replace_word(text: &str, origin: &str, with: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(origin) {
        let end = i + origin.len();
        let before = rest[..i].chars().last();
        let after = rest[end..].chars().next();
        let (from, to) = match (before, after) {
            (Some(q @ ('"' | '\'')), Some(p)) if q == p => (i - 1, end + 1),
            (None | Some('=' | ' ' | '\t' | '('), None | Some(' ' | '\t' | '\n' | ')' | ';')) => (i, end),
            _ => {
                out.push_str(&rest[..end]);
                rest = &rest[end..];
                continue;
            }
        };
        out.push_str(&rest[..from]);
        out.push_str(with);
        rest = &rest[to..];
        changed = true;
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The shell lines that run `python` from the directory of the script's
/// resolved path. `readlink -f` resolves `current`, so a running process keeps
/// the release it started from even after the next flip.
fn trampoline(exe: &str, args: &str) -> String {
    let args = if args.is_empty() { String::new() } else { format!(" {args}") };
    format!("#!/bin/sh\n'''exec' \"$(dirname -- \"$(readlink -f -- \"$0\")\")/{exe}\"{args} \"$0\" \"$@\"\n' '''\n")
}

fn rewrite_script(content: &[u8], origin: &str) -> Option<Vec<u8>> {
    let bin = format!("{origin}/bin/");
    let first_end = memchr::memchr(b'\n', content)?;
    let first = std::str::from_utf8(&content[..first_end]).ok()?;
    // `#!/build/venv/bin/python3 -E`
    if let Some(rest) = first.strip_prefix("#!").and_then(|s| s.strip_prefix(bin.as_str())) {
        let (exe, args) = rest.split_once(' ').unwrap_or((rest, ""));
        if !is_python(exe) {
            // The trampoline is Python syntax; another interpreter's script
            // (node from nodeenv, say) is left as it is and reported.
            return None;
        }
        let mut out = trampoline(exe, args.trim()).into_bytes();
        out.extend_from_slice(&content[first_end + 1..]);
        return Some(out);
    }
    // pip's form for shebangs too long for the kernel:
    // #!/bin/sh
    // '''exec' /build/venv/bin/python "$0" "$@"
    // ' '''
    if first == "#!/bin/sh" {
        let rest = &content[first_end + 1..];
        let second_end = memchr::memchr(b'\n', rest)?;
        let second = std::str::from_utf8(&rest[..second_end]).ok()?;
        let after = second.strip_prefix("'''exec' ")?.strip_prefix(bin.as_str())?;
        let (exe, tail) = after.split_once(' ')?;
        if !is_python(exe) {
            return None;
        }
        let third = rest[second_end + 1..].strip_prefix(b"' '''\n")?;
        if tail != "\"$0\" \"$@\"" {
            return None;
        }
        let mut out = trampoline(exe, "").into_bytes();
        out.extend_from_slice(third);
        return Some(out);
    }
    None
}

fn is_python(exe: &str) -> bool {
    exe.starts_with("python") || exe.starts_with("pypy")
}

/// Where `bin/activate` says the venv was created, if it says.
pub fn origin_from_activate(activate: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(activate).ok()?;
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("export ").unwrap_or(line.trim()).strip_prefix("VIRTUAL_ENV=")?;
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (value.starts_with('/') && !value.contains('$')).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn venv() -> Venv {
        Venv { rel: RelPath::new("venv").unwrap(), origins: vec!["/build/svc/venv".into()] }
    }

    #[test]
    fn a_scan_in_pieces_finds_the_build_path_wherever_the_pieces_are_cut() {
        let v = Venv { origins: vec!["/build/svc/venv".into(), "/b/v".into()], ..venv() };
        let with = b"\x7fELF...RPATH=/build/svc/venv/lib\0...".to_vec();
        let without = b"\x7fELF...RPATH=/build/svc/ven/lib\0.../b/x".to_vec();
        // Every way of cutting each into two or three pieces (and into bytes).
        for (text, expected) in [(&with, true), (&without, false)] {
            for a in 0..=text.len() {
                for b in a..=text.len() {
                    let mut scan = v.scan();
                    for piece in [&text[..a], &text[a..b], &text[b..]] {
                        scan.feed(piece);
                    }
                    assert_eq!(scan.found(), expected, "cut at {a} and {b}");
                }
            }
            let mut scan = v.scan();
            text.chunks(1).for_each(|byte| scan.feed(byte));
            assert_eq!(scan.found(), expected, "byte by byte");
            assert_eq!(v.names_build_path(text), expected);
        }
    }

    #[test]
    fn script_shebang_becomes_a_trampoline() {
        let v = venv();
        let script = b"#!/build/svc/venv/bin/python3\n# -*- coding: utf-8 -*-\nimport sys\n";
        let out = v.apply(Rewrite::Script, script);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("#!/bin/sh\n'''exec' \"$(dirname -- \"$(readlink -f -- \"$0\")\")/python3\" \"$0\" \"$@\"\n' '''\n# -*- coding"), "{text}");
        assert!(!v.names_build_path(&out));
        // A script that runs elsewhere is untouched.
        assert!(matches!(v.apply(Rewrite::Script, b"#!/usr/bin/env python3\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn pips_long_form_is_rewritten() {
        let script = b"#!/bin/sh\n'''exec' /build/svc/venv/bin/python \"$0\" \"$@\"\n' '''\nimport sys\n";
        let out = venv().apply(Rewrite::Script, script);
        assert!(out.ends_with(b"/python\" \"$0\" \"$@\"\n' '''\nimport sys\n"), "{}", String::from_utf8_lossy(&out));
        assert!(!venv().names_build_path(&out));
    }

    #[test]
    fn activate_scripts_find_themselves() {
        let v = venv();
        let sh = v.apply(Rewrite::ActivateSh, b"VIRTUAL_ENV=\"/build/svc/venv\"\nexport VIRTUAL_ENV\n");
        assert_eq!(std::str::from_utf8(&sh).unwrap(), format!("VIRTUAL_ENV={SH_SELF}\nexport VIRTUAL_ENV\n"));
        let fish = v.apply(Rewrite::ActivateFish, b"set -gx VIRTUAL_ENV \"/build/svc/venv\"\n");
        assert_eq!(&*fish, b"set -gx VIRTUAL_ENV (builtin realpath (status dirname)/..)\n");
        let csh = v.apply(Rewrite::ActivateCsh, b"setenv VIRTUAL_ENV \"/build/svc/venv\"\n");
        assert!(!v.names_build_path(&csh));
        assert!(std::str::from_utf8(&csh).unwrap().contains("setenv VIRTUAL_ENV `cd \"$_ferry_bin/..\" && pwd`"));
    }

    /// The templates of CPython 3.12.8+ and 3.13.1+, which quote the path only
    /// when it needs quoting (CVE-2024-9287).
    #[test]
    fn unquoted_activate_templates_are_rewritten() {
        let v = venv();
        let sh = "case \"$(uname)\" in\n    CYGWIN*|MSYS*|MINGW*)\n        VIRTUAL_ENV=$(cygpath /build/svc/venv)\n        \
                  export VIRTUAL_ENV\n        ;;\n    *)\n        export VIRTUAL_ENV=/build/svc/venv\n        ;;\nesac\n";
        let out = String::from_utf8(v.apply(Rewrite::ActivateSh, sh.as_bytes()).into_owned()).unwrap();
        assert!(out.contains(&format!("VIRTUAL_ENV=$(cygpath {SH_SELF})")), "{out}");
        assert!(out.contains(&format!("export VIRTUAL_ENV={SH_SELF}\n")), "{out}");
        assert!(!v.names_build_path(out.as_bytes()));
        let fish = v.apply(Rewrite::ActivateFish, b"set -gx VIRTUAL_ENV /build/svc/venv\n");
        assert_eq!(std::str::from_utf8(&fish).unwrap(), format!("set -gx VIRTUAL_ENV {FISH_SELF}\n"));
        let csh = v.apply(Rewrite::ActivateCsh, b"setenv VIRTUAL_ENV /build/svc/venv\nset x\n");
        assert_eq!(std::str::from_utf8(&csh).unwrap(), format!("{CSH_SELF}\nset x\n"));
        // A longer path that merely starts with the origin is another path.
        let other = b"export OTHER=/build/svc/venv2\n";
        assert!(matches!(v.apply(Rewrite::ActivateSh, other), Cow::Borrowed(_)));
    }

    #[test]
    fn pyvenv_cfg_says_how_to_make_the_venv_in_the_release() {
        let v = venv();
        let cfg = "home = /usr/bin\ninclude-system-site-packages = false\n\
                   command = /usr/bin/python3 -m venv --without-pip /build/svc/venv\n";
        let out = v.apply(Rewrite::PyvenvCfg, cfg.as_bytes());
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "home = /usr/bin\ninclude-system-site-packages = false\n\
             command = /usr/bin/python3 -m venv --without-pip venv\n"
        );
        // Another key's value is not informational: left, so the build reports it.
        let home = b"home = /build/svc/venv/bin\n";
        assert!(matches!(v.apply(Rewrite::PyvenvCfg, home), Cow::Borrowed(_)));
        assert_eq!(v.rewrite_for(&RelPath::new("venv/pyvenv.cfg").unwrap()), Some(Rewrite::PyvenvCfg));
        assert_eq!(v.rewrite_for(&RelPath::new("venv/lib/pyvenv.cfg").unwrap()), None);
    }

    #[test]
    fn only_python_scripts_get_the_trampoline() {
        let v = venv();
        let node = b"#!/build/svc/venv/bin/node\nconsole.log(1)\n";
        assert!(matches!(v.apply(Rewrite::Script, node), Cow::Borrowed(_)));
        assert!(v.names_build_path(node), "left as it is, so the build reports it");
        let pypy = v.apply(Rewrite::Script, b"#!/build/svc/venv/bin/pypy3\nimport x\n");
        assert!(!v.names_build_path(&pypy));
    }

    #[test]
    fn origin_is_read_from_activate() {
        assert_eq!(origin_from_activate(b"# x\nVIRTUAL_ENV=\"/a/b/venv\"\n").as_deref(), Some("/a/b/venv"));
        assert_eq!(origin_from_activate(b"    export VIRTUAL_ENV='/c'\n").as_deref(), Some("/c"));
        assert_eq!(origin_from_activate(b"VIRTUAL_ENV=\"$(pwd)\"\n"), None);
    }

    #[test]
    fn only_files_in_bin_are_rewritten() {
        let v = venv();
        assert_eq!(v.rewrite_for(&RelPath::new("venv/bin/gunicorn").unwrap()), Some(Rewrite::Script));
        assert_eq!(v.rewrite_for(&RelPath::new("venv/bin/activate.fish").unwrap()), Some(Rewrite::ActivateFish));
        assert_eq!(v.rewrite_for(&RelPath::new("venv/lib/x.py").unwrap()), None);
    }
}
