//! `ferry init`: a commented ferry.toml for the tree it finds, as `kamal
//! init` or `cap install` start a project: the code, a venv (and the build
//! step that makes it from the lock file found), a jar, media and
//! per-environment config; a program and a stage to fill in, commented.

use std::path::Path;

use anyhow::{bail, Result};
use fs_err as fs;

use crate::exit;

/// What `init` found in the tree.
#[derive(Debug, Default)]
struct Found {
    code: Vec<String>,
    venv: Option<String>,
    lock: Option<String>,
    jar: Option<String>,
    media: Vec<String>,
    config: Option<(String, Vec<String>)>,
    gunicorn: bool,
}

pub fn run(dir: &Path, force: bool) -> Result<u8> {
    let path = dir.join("ferry.toml");
    if path.exists() && !force {
        bail!("{} exists already; ferry init leaves it as it is (--force writes a new one over it)", path.display());
    }
    let found = look(dir)?;
    let service = service_name(dir);
    fs::write(&path, render(&service, &found))?;
    eprintln!("wrote {}: check it, then `ferry build`", path.display());
    Ok(exit::OK)
}

/// The directory's name, as a service name may be written.
fn service_name(dir: &Path) -> String {
    let name = std::path::absolute(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    let name: String = name
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
    if ferry_formats::release::valid_service_name(&name) {
        name
    } else {
        "service".to_owned()
    }
}

fn look(dir: &Path) -> Result<Found> {
    let mut found = Found::default();
    let mut entries: Vec<(String, bool)> = fs::read_dir(dir)?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path().is_dir()))
        .filter(|(n, _)| !n.starts_with('.') || n == ".venv")
        .collect();
    entries.sort();
    for (name, is_dir) in &entries {
        let path = dir.join(name);
        match (name.as_str(), is_dir) {
            (_, true) if path.join("pyvenv.cfg").is_file() => found.venv = Some(name.clone()),
            ("static" | "media" | "assets" | "public", true) => found.media.push(name.clone()),
            ("config", true) => {
                let envs: Vec<String> = fs::read_dir(&path)?
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                if !envs.is_empty() {
                    let mut envs = envs;
                    envs.sort();
                    found.config = Some((name.clone(), envs));
                }
            }
            ("target" | "build" | "fleet" | "node_modules" | "__pycache__", true) => {}
            (_, true) => found.code.push(name.clone()),
            ("requirements.txt" | "poetry.lock" | "Pipfile.lock", false) if found.lock.is_none() => {
                found.lock = Some(name.clone());
            }
            (_, false) if name.ends_with(".py") => found.code.push(name.clone()),
            _ => {}
        }
    }
    for jars in ["target", "build/libs"] {
        if let Ok(list) = fs::read_dir(dir.join(jars)) {
            let mut names: Vec<String> = list
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".jar"))
                .collect();
            names.sort();
            if let Some(jar) = names.pop() {
                found.jar = Some(format!("{jars}/{jar}"));
            }
        }
    }
    if let (Some(_), Some(lock)) = (&found.venv, &found.lock) {
        found.gunicorn = fs::read_to_string(dir.join(lock)).is_ok_and(|t| t.to_lowercase().contains("gunicorn"));
    }
    Ok(found)
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

fn render(service: &str, f: &Found) -> String {
    let mut t = format!(
        "# ferry.toml for {service}, as `ferry init` found the tree: check each line.\n\
         # Every key: docs/ferry-toml.md of ferry.\nservice = \"{service}\"\n\n[components]\n"
    );
    if f.code.is_empty() {
        t.push_str("# code = [\"app\"]        # no code directory found: name yours\n");
    } else {
        t.push_str(&format!("code = [{}]\n", quoted(&f.code)));
    }
    if let Some(venv) = &f.venv {
        t.push_str(&format!("venv = {venv:?}\n"));
    }
    if let Some(jar) = &f.jar {
        t.push_str(&format!("jar = {jar:?}\n"));
    }
    if !f.media.is_empty() {
        t.push_str(&format!("media = [{}]\n", quoted(&f.media)));
    }
    if let Some((config, envs)) = &f.config {
        t.push_str(&format!("config = {config:?}          # environments: {}\n", envs.join(", ")));
    }
    if let (Some(venv), Some(lock)) = (&f.venv, &f.lock) {
        let install = if lock == "requirements.txt" {
            format!("{venv}/bin/pip install -r requirements.txt")
        } else {
            format!("{venv}/bin/pip install .   # from {lock}: adjust")
        };
        t.push_str(&format!(
            "\n# The venv is not in git: each build makes it, reusing it while {lock} is unchanged.\n\
             [[build.steps]]\nname = \"venv\"\nrun = \"python3 -m venv {venv} && {install}\"\n\
             inputs = [{lock:?}]\noutputs = [{venv:?}]\n"
        ));
    }
    let program = if f.gunicorn {
        "# [programs.web]\n# command = \"venv/bin/gunicorn --workers 4 app:application\"\n# directory = \".\"\n"
            .to_owned()
    } else if let Some(jar) = &f.jar {
        // It runs in <deploy_to>/current: the jar's path in the release is
        // current/<jar> (docs/java.md).
        format!("# [programs.web]\n# command = \"java -Xmx256m -jar {jar}\"    # runs in <deploy_to>/current\n")
    } else {
        "# [programs.web]\n# command = \"venv/bin/python -m yourapp\"\n".to_owned()
    };
    t.push_str(&format!(
        "\n# The service's processes, under its own supervisord on each host.\n{program}\n\
         # Where it runs: hosts over ssh, a canary first, then half, then the rest.\n\
         # [stages.production]\n# transport = \"ssh\"\n# hosts = [\"deploy@web1.example.com\", \"deploy@web2.example.com\"]\n\
         # env = \"production\"\n# [stages.production.health.http]\n# url = \"http://{{host}}:8000/health\"\n"
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_made_from_the_directory() {
        assert_eq!(service_name(Path::new("/srv/My Shop")), "my-shop");
        assert_eq!(service_name(Path::new("/srv/___")), "service");
    }
}
