//! `[build]`: the steps `ferry build` runs in the release tree before it
//! packs it (see `ferry_builder::steps`).

use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Result};
use ferry_builder::steps::Step;
use ferry_formats::RelPath;

use super::defaults;
use super::raw::FerryToml;

/// The checked `[[build.steps]]`, in order.
pub(super) fn steps(raw: &FerryToml, at: &dyn Fn(Range<usize>) -> String) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for spanned in &raw.build.steps {
        let s = spanned.get_ref();
        let name = s.name.get_ref();
        // The name is a directory of the build cache.
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !name.starts_with('-');
        if !valid {
            bail!(
                "{}: build step name {name:?} must be letters, digits, '-' or '_', at most 64, not starting with '-'",
                at(s.name.span())
            );
        }
        if steps.iter().any(|p| p.name == *name) {
            bail!("{}: build step {name:?} is named twice", at(s.name.span()));
        }
        if s.run.get_ref().trim().is_empty() {
            bail!("{}: build step {name}: run is empty", at(s.run.span()));
        }
        let mut inputs = Vec::new();
        for i in &s.inputs {
            let text = i.get_ref();
            let bad = text.is_empty()
                || text.starts_with('/')
                || text.split('/').any(|part| part == "..")
                || text.trim_end_matches('/').is_empty();
            if bad {
                bail!(
                    "{}: build step {name}: input {text:?} must be a path or glob inside the release root",
                    at(i.span())
                );
            }
            inputs.push(text.clone());
        }
        let mut outputs: Vec<RelPath> = Vec::new();
        for o in &s.outputs {
            let text = o.get_ref().trim_end_matches('/');
            let rel = RelPath::new(text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: build step {name}: output {text:?}: {e}; give a path inside the release root",
                    at(o.span())
                )
            })?;
            if rel.components().next() == Some(".ferry") {
                bail!("{}: build step {name}: output {text:?}: .ferry is reserved for ferry's own files", at(o.span()));
            }
            if let Some(other) = outputs.iter().find(|p| rel.starts_with(p) || p.starts_with(&rel)) {
                bail!("{}: build step {name}: output {text:?} overlaps output {:?}", at(o.span()), other.as_str());
            }
            outputs.push(rel);
        }
        let timeout = match &s.timeout {
            Some(t) if *t.get_ref() == 0 => {
                bail!("{}: build step {name}: timeout must be at least 1 second", at(t.span()))
            }
            Some(t) => Duration::from_secs(*t.get_ref()),
            None => Duration::from_secs(defaults::BUILD_STEP_TIMEOUT),
        };
        steps.push(Step { name: name.clone(), run: s.run.get_ref().clone(), inputs, outputs, timeout });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Result;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/srv/svc/ferry.toml"), text)
    }

    #[test]
    fn steps_with_their_defaults() {
        let c = parse(
            "service = \"s\"\n[[build.steps]]\nname = \"venv\"\nrun = \"make venv\"\ninputs = [\"requirements.txt\"]\noutputs = [\"venv/\"]\n[[build.steps]]\nname = \"assets\"\nrun = \"make assets\"\ntimeout = 5\n",
        )
        .unwrap();
        assert_eq!(c.build_steps.len(), 2);
        let (v, a) = (&c.build_steps[0], &c.build_steps[1]);
        assert_eq!((v.name.as_str(), v.run.as_str()), ("venv", "make venv"));
        assert_eq!(v.inputs, ["requirements.txt"]);
        assert_eq!(v.outputs[0].as_str(), "venv");
        assert_eq!(v.timeout, Duration::from_secs(600));
        assert!(a.inputs.is_empty() && a.outputs.is_empty());
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert!(parse("service = \"s\"\n").unwrap().build_steps.is_empty());
    }

    #[test]
    fn bad_steps_have_line_and_column() {
        let step = |body: &str| parse(&format!("service = \"s\"\n[[build.steps]]\n{body}")).unwrap_err().to_string();
        let err = step("name = \"a b\"\nrun = \"x\"\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:3:8: build step name \"a b\" must be"), "{err}");
        let err = step("name = \"v\"\nrun = \"x\"\noutputs = [\"../venv\"]\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:5:12: build step v: output \"../venv\""), "{err}");
        let err = step("name = \"v\"\nrun = \"x\"\ninputs = [\"/etc/passwd\"]\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:5:11: build step v: input \"/etc/passwd\""), "{err}");
        let err = step("name = \"v\"\nrun = \"x\"\ntimeout = 0\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:5:11: build step v: timeout must be at least 1"), "{err}");
        let err = step("name = \"v\"\nrun = \"  \"\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:4:7: build step v: run is empty"), "{err}");
        let err = step("name = \"v\"\nrun = \"x\"\n[[build.steps]]\nname = \"v\"\nrun = \"y\"\n");
        assert!(err.starts_with("/srv/svc/ferry.toml:6:8: build step \"v\" is named twice"), "{err}");
        let err = step("name = \"v\"\nrun = \"x\"\nrun_in = \"y\"\n");
        assert!(err.contains("unknown field `run_in`"), "{err}");
        let err = step("name = \"v\"\n");
        assert!(err.contains("missing field `run`"), "{err}");
    }
}
