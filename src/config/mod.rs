//! `ferry.toml`: the service's one config file.
//!
//! Every key is documented in `docs/ferry-toml.md`; unknown keys are refused
//! with their line and column, and so are values that parse but are wrong (a
//! bad service name, a component path that leaves the tree).

mod balancer;
mod build;
mod defaults;
mod raw;
mod runtime;
mod stage;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use ferry_formats::release::valid_service_name;
use ferry_formats::{ComponentKind, RelPath};
use ferry_switcher::fleet::Hooks;
use ferry_switcher::host::runtime::Program;

use defaults::DEFAULT_EXCLUDES;
use raw::{each, FerryToml};
use runtime::{hooks, programs};
use stage::{check_stage, linked_paths};
pub use stage::{FetchFrom, Stage, StageGit, Strategy};

/// A loaded and checked `ferry.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub service: String,
    pub root: PathBuf,
    pub components: Vec<(ComponentKind, RelPath)>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub compression_level: i32,
    pub store: Option<PathBuf>,
    /// `[store] url` and its settings: the remote behind the local store.
    pub remote: Option<ferry_builder::remote::RemoteSpec>,
    pub stages: BTreeMap<String, Stage>,
    pub programs: Vec<Program>,
    pub hooks: Hooks,
    /// `[[build.steps]]`, in order.
    pub build_steps: Vec<ferry_builder::steps::Step>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)
            .context("cannot read the service config (ferry.toml); pass --config or run ferry where it is")?;
        Self::parse(path, &text)
    }

    /// Checks `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: FerryToml =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let at = |span: Range<usize>| {
            let (line, col) = line_col(text, span.start);
            format!("{}:{line}:{col}", path.display())
        };
        let service = raw.service.get_ref();
        if !valid_service_name(service) {
            bail!(
                "{}: service {service:?} must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 bytes",
                at(raw.service.span())
            );
        }
        let level = *raw.release.compression_level.get_ref();
        if !(1..=19).contains(&level) {
            bail!("{}: compression_level {level} must be from 1 to 19", at(raw.release.compression_level.span()));
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
        let root = normalize(&dir.join(&raw.release.root));

        let c = &raw.components;
        let mut components = Vec::new();
        let tagged = each(&c.code)
            .into_iter()
            .map(|p| (ComponentKind::Code, p))
            .chain(c.venv.iter().map(|p| (ComponentKind::Venv, p.clone())))
            .chain(c.jar.iter().map(|p| (ComponentKind::Jar, p.clone())))
            .chain(each(&c.media).into_iter().map(|p| (ComponentKind::Media, p)))
            .chain(c.config.iter().map(|p| (ComponentKind::Config, p.clone())));
        for (kind, p) in tagged {
            let s = p.get_ref().trim_end_matches('/');
            let rel = RelPath::new(s).map_err(|e| {
                anyhow::anyhow!("{}: {kind} path {s:?}: {e}; give a path inside the release root", at(p.span()))
            })?;
            if rel.components().next() == Some(".ferry") {
                bail!("{}: {kind} path {s:?}: .ferry is reserved for ferry's own files", at(p.span()));
            }
            if let Some((other, _)) = components.iter().find(|(_, r): &&(ComponentKind, RelPath)| *r == rel) {
                bail!("{}: {kind} path {s:?} is already the {other} component", at(p.span()));
            }
            components.push((kind, rel));
        }
        let mut exclude: Vec<String> = Vec::new();
        if raw.release.default_excludes {
            exclude.extend(DEFAULT_EXCLUDES.iter().map(ToString::to_string));
        }
        exclude.extend(raw.release.exclude.iter().cloned());
        let store = raw.store.path.as_ref().map(|p| normalize(&dir.join(p)));
        let remote = remote(&raw.store, &at, &dir)?;
        let mut stages = BTreeMap::new();
        let configs: Vec<RelPath> =
            components.iter().filter(|(k, _)| *k == ComponentKind::Config).map(|(_, p)| p.clone()).collect();
        let linked = linked_paths(&raw, &at)?;
        let all: Vec<RelPath> = linked.dirs.iter().chain(&linked.files).cloned().collect();
        ferry_switcher::host::check_linked(&all, &configs).map_err(|e| {
            use ferry_switcher::host::LinkedError;
            // Where: the linked path the error names, as ferry.toml spells it.
            let named = match &e {
                LinkedError::Ours { path } | LinkedError::Config { path, .. } => path,
                LinkedError::Overlap { b, .. } => b,
            };
            let listed: Vec<&toml::Spanned<String>> =
                raw.deploy.linked_dirs.iter().chain(&raw.deploy.linked_files).collect();
            let entry = listed.iter().find(|p| p.get_ref().trim_end_matches('/') == named.as_str()).or(listed.first());
            match entry {
                Some(p) => anyhow::anyhow!("{}: [deploy] {e}", at(p.span())),
                None => anyhow::anyhow!("{}: [deploy] {e}", path.display()),
            }
        })?;
        for (name, stage) in &raw.stages {
            stages.insert(name.clone(), check_stage(name, stage.get_ref(), stage.span(), &raw, &linked, &dir, &at)?);
        }
        let mut hooks = hooks(&raw, &at)?;
        if let Some(h) = &hooks.migrate_on {
            // A local stage's host is named as its tidied path there.
            let named = |st: &Stage, h: &str| st.hosts.iter().any(|(n, _)| n == h);
            if !stages.values().any(|st| named(st, h)) {
                let tidied = host_path(h);
                if !stages.values().any(|st| st.ssh.is_none() && named(st, &tidied)) {
                    bail!("{}: [hooks] migrate_on {h:?} is not a host of any stage", path.display());
                }
                hooks.migrate_on = Some(tidied);
            }
        }
        let any_hook = hooks.migrate.is_some() || hooks.before_flip.is_some() || hooks.after_flip.is_some();
        for (name, st) in stages.iter().filter(|_| any_hook) {
            if let Some(ssh) = st.ssh.as_ref().filter(|s| hooks.timeout >= s.step_timeout) {
                bail!(
                    "{}: [hooks] timeout ({} s) must be under stage {name}'s step_timeout ({} s), \
                     or the controller stops waiting for a hook that still runs",
                    path.display(),
                    hooks.timeout.as_secs(),
                    ssh.step_timeout.as_secs()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            service: service.clone(),
            root,
            components,
            include: raw.release.include.clone(),
            exclude,
            compression_level: level,
            store,
            remote,
            stages,
            programs: programs(&raw, &at)?,
            hooks,
            build_steps: build::steps(&raw, &at)?,
        })
    }
}

/// `[store] url` and the keys that go with it, checked.
fn remote(
    raw: &raw::StoreSection,
    at: &dyn Fn(Range<usize>) -> String,
    dir: &Path,
) -> Result<Option<ferry_builder::remote::RemoteSpec>> {
    let Some(url) = &raw.url else {
        if let Some(e) = &raw.endpoint {
            bail!("{}: [store] endpoint needs a url = \"s3://BUCKET/PREFIX\" beside it", at(e.span()));
        }
        if let Some(e) = &raw.ca_file {
            bail!("{}: [store] ca_file needs a url = \"s3://BUCKET/PREFIX\" beside it", at(e.span()));
        }
        return Ok(None);
    };
    let (bucket, prefix) = ferry_builder::remote::RemoteSpec::parse_url(url.get_ref())
        .map_err(|e| anyhow::anyhow!("{}: [store] url: {e}", at(url.span())))?;
    let endpoint = match &raw.endpoint {
        Some(e) => {
            let text = e.get_ref().trim_end_matches('/');
            if !(text.starts_with("http://") || text.starts_with("https://")) || text.len() <= "https://".len() {
                bail!(
                    "{}: [store] endpoint {text:?} is not an http:// or https:// URL (e.g. https://minio.example:9000)",
                    at(e.span())
                );
            }
            Some(text.to_owned())
        }
        None => None,
    };
    let ca_file = match &raw.ca_file {
        Some(f) => {
            let path = normalize(&dir.join(f.get_ref()));
            ferry_builder::remote::read_ca_file(&path)
                .map_err(|e| anyhow::anyhow!("{}: [store] ca_file: {e}", at(f.span())))?;
            Some(path)
        }
        None => None,
    };
    Ok(Some(ferry_builder::remote::RemoteSpec {
        bucket,
        prefix,
        endpoint,
        region: raw.region.clone(),
        path_style: raw.path_style,
        profile: raw.profile.clone(),
        ca_file,
    }))
}

/// A local host's name, lexically tidied as the path it is: no `./`, no
/// `//`, no trailing `/` (`..` stays: it is not lexical). `.` for the
/// config's own directory.
pub fn host_path(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    match (name.starts_with('/'), parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_owned(),
        (false, false) => parts.join("/"),
    }
}

/// `1 host`, `2 hosts`.
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Removes `.` and `..` components lexically (the root need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/srv/svc/ferry.toml"), text)
    }

    #[test]
    fn minimal_config() {
        let c = parse("service = \"shop\"\n").unwrap();
        assert_eq!(c.service, "shop");
        assert_eq!(c.root, Path::new("/srv/svc"));
        assert!(c.components.is_empty());
        assert!(c.exclude.contains(&".git/".to_string()));
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let err =
            parse("service = \"shop\"\n[components]\ncode = \"app\"\nvenvs = \"venv\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml: TOML parse error at line 4, column 1"), "{err}");
        assert!(err.contains("unknown field `venvs`"), "{err}");
    }

    #[test]
    fn bad_values_have_line_and_column() {
        let err = parse("service = \"Shop Front\"\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:1:11: service \"Shop Front\" must be"), "{err}");
        let err = parse("service = \"s\"\n[components]\ncode = [\"app\", \"../etc\"]\n").unwrap_err().to_string();
        assert!(err.starts_with("/srv/svc/ferry.toml:3:8: code path \"../etc\""), "{err}");
        let err = parse("service = \"s\"\n[release]\ncompression_level = 30\n").unwrap_err().to_string();
        assert!(err.contains("ferry.toml:3:21: compression_level 30"), "{err}");
        let err = parse("service = \"s\"\n[components]\ncode = \"app\"\nmedia = \"app\"\n").unwrap_err().to_string();
        assert!(err.contains("media path \"app\" is already the code component"), "{err}");
    }

    /// The class the ferry_toml fuzz target found (its inputs are kept in
    /// fuzz/regressions/ferry_toml/): checks of a stage's health gates and
    /// name, and of linked paths, that said what but not where. Each now
    /// names line and column.
    #[test]
    fn stage_and_health_errors_say_where() {
        let stage = "service = \"s\"\n[stages.prod]\nhosts = [\"web1\", \"web2\"]\ntransport = \"local\"\n";
        let cases = [
            // A health URL for a host the stage does not have (the fuzzer's input).
            (
                format!("{stage}[stages.prod.health.http]\nurl = \"http://{{host}}:8000/\"\nurls = {{ web9 = \"http://x/\" }}\n"),
                "/srv/svc/ferry.toml:6:7: stage prod: health urls name \"web9\"",
            ),
            // One URL without {host} for two hosts.
            (
                format!("{stage}[stages.prod.health.http]\nurl = \"http://127.0.0.1:8000/\"\n"),
                "/srv/svc/ferry.toml:6:7: stage prod: health.http.url",
            ),
            (
                format!("{stage}[stages.prod.health.command]\nrun = \"true\"\ntimeout = 0\n"),
                "/srv/svc/ferry.toml:7:11: stage prod: health.command.timeout must be at least 1 second",
            ),
            (
                format!("{stage}[stages.prod.health.errors]\nsource = \"load_balancer\"\n"),
                "/srv/svc/ferry.toml:5:1: stage prod: health.errors has source = \"load_balancer\"",
            ),
            (
                "service = \"s\"\n[stages.\"pr od\"]\nhosts = [\"web1\"]\n".to_owned(),
                "/srv/svc/ferry.toml:2:1: stage \"pr od\": a stage name is",
            ),
            // The second input it found: a linked path over the active config link.
            (
                "service = \"s\"\n[components]\nconfig = \"config\"\n[deploy]\nlinked_dirs = [\"log\", \"config/active\"]\n"
                    .to_owned(),
                "/srv/svc/ferry.toml:5:23: [deploy] linked path config/active overlaps the config directory config",
            ),
        ];
        for (text, says) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.starts_with(says), "{text}\n→ {err}");
        }
    }

    /// Every example config the project ships parses: the fixtures and the
    /// full example in docs/ferry-toml.md.
    #[test]
    fn every_example_config_parses() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for entry in walkdir_like(&repo.join("fixtures")) {
            if entry.file_name().is_some_and(|n| n == "ferry.toml") {
                let text = fs_err::read_to_string(&entry).unwrap();
                Config::parse(&entry, &text).unwrap_or_else(|e| panic!("{}: {e:#}", entry.display()));
                checked += 1;
            }
        }
        assert!(checked >= 2, "found {checked} fixture configs");
        let docs = fs_err::read_to_string(repo.join("docs/ferry-toml.md")).unwrap();
        let block = docs.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let c = Config::parse(&repo.join("docs/ferry.toml"), block).unwrap();
        assert_eq!(c.components.len(), 6, "the docs example names every component kind");
        assert!(c.exclude.contains(&"media/cache/".to_string()));
    }

    /// The files below `dir`, recursively (a test helper; the builder walks with walkdir).
    fn walkdir_like(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in fs_err::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir_like(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_local_host_is_its_path_tidied() {
        for (written, name) in
            [("h/a", "h/a"), ("./h/a", "h/a"), ("h//a/", "h/a"), ("./h/./a", "h/a"), ("/x//y/", "/x/y")]
        {
            assert_eq!(host_path(written), name, "{written}");
        }
        assert_eq!((host_path("."), host_path("./"), host_path("../h")), (".".into(), ".".into(), "../h".into()));
        let c = parse("service = \"s\"\n[hooks]\nmigrate = \"m\"\nmigrate_on = \"./h//b/\"\n[stages.web]\nhosts = [\"h/a\", \"h/b\"]\n")
            .unwrap();
        assert_eq!(c.hooks.migrate_on.as_deref(), Some("h/b"));
        let err = parse("service = \"s\"\n[stages.web]\nhosts = [\"h/a\", \"./h/a/\"]\n").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/srv/svc/ferry.toml:3:17: stage web lists host \"./h/a/\" twice (as \"h/a\": the same directory)"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_service() {
        let err = parse("[components]\n").unwrap_err().to_string();
        assert!(err.contains("missing field `service`"), "{err}");
    }
}
