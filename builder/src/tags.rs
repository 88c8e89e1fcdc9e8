//! The git side of a deploy: which tag `stable` names, whether the work
//! tree is clean, and the dated tag a push leaves on the commit it
//! deployed (`production-2026-12-05`, then `-2`, `-3` that day).

use std::path::Path;

use crate::git::git;
use crate::BuildError;

/// A release version read from a tag: its numbers, after any leading
/// non-digits (`v1.10.0` is `[1, 10, 0]`). `None` for a pre-release or
/// anything else that is not only numbers and dots (`v1.2.0-rc1`,
/// `v2.0b1`, `latest`).
pub fn release_version(tag: &str) -> Option<Vec<u64>> {
    let digits = tag.trim_start_matches(|c: char| !c.is_ascii_digit());
    if digits.is_empty() {
        return None;
    }
    digits.split('.').map(|part| part.parse::<u64>().ok().filter(|_| !part.is_empty())).collect()
}

/// The newest of `tags` that match the glob `pattern`, in version order,
/// pre-releases left out.
pub fn newest_stable<'a>(tags: impl IntoIterator<Item = &'a str>, pattern: &str) -> Result<Option<&'a str>, String> {
    let glob = globset::Glob::new(pattern).map_err(|e| format!("stable_tags {pattern:?}: {e}"))?.compile_matcher();
    Ok(tags
        .into_iter()
        .filter(|t| glob.is_match(t))
        .filter_map(|t| release_version(t).map(|v| (v, t)))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, t)| t))
}

/// The tags of the repository that holds `workdir`.
pub fn tags(workdir: &Path) -> Result<Vec<String>, BuildError> {
    Ok(git(workdir, &["tag", "--list"])?.lines().map(str::to_owned).collect())
}

/// `stable`: the newest tag matching `pattern` (see [`newest_stable`]).
pub fn stable(workdir: &Path, pattern: &str) -> Result<String, BuildError> {
    let all = tags(workdir)?;
    match newest_stable(all.iter().map(String::as_str), pattern).map_err(BuildError::Git)? {
        Some(tag) => Ok(tag.to_owned()),
        None => {
            let glob = globset::Glob::new(pattern).map_err(|e| BuildError::Git(e.to_string()))?.compile_matcher();
            let matching: Vec<&str> = all.iter().map(String::as_str).filter(|t| glob.is_match(t)).collect();
            Err(BuildError::Git(if matching.is_empty() {
                format!(
                    "no tag matches stable_tags {pattern:?} in {} (it has {} tags); tag a release (git tag v1.0.0) \
                     or change the pattern",
                    workdir.display(),
                    all.len()
                )
            } else {
                format!(
                    "no release tag matches stable_tags {pattern:?}: only pre-releases or tags without a version \
                     ({}); stable is the newest tag of numbers and dots after its prefix",
                    matching.join(", ")
                )
            }))
        }
    }
}

/// The tracked files changed in the work tree or the index, against
/// `HEAD` (as `git describe --dirty` counts: untracked files do not make
/// it dirty).
pub fn dirty(workdir: &Path) -> Result<Vec<String>, BuildError> {
    Ok(git(workdir, &["diff", "--name-only", "HEAD", "--"])?.lines().map(str::to_owned).collect())
}

/// `format` with `{stage}` and `{date}` replaced, and `-2`, `-3`… after it
/// when `taken` already has that name.
pub fn dated_name(format: &str, stage: &str, date: &str, taken: &[String]) -> String {
    let base = format.replace("{stage}", stage).replace("{date}", date);
    (1..)
        .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
        .find(|name| !taken.iter().any(|t| t == name))
        .expect("an unused suffix")
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_owned()
}

/// What became of a dated tag.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatedTag {
    pub name: String,
    pub commit: String,
    /// Pushed to the remote.
    pub pushed: bool,
    /// Why it was not pushed, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Makes the annotated tag `format` names on `commit`, with `message`, and
/// pushes it to `remote`. The tags the remote has count as taken too, so
/// two controllers deploying the same day do not make the same name. A push
/// that fails is a warning in the result, not an error: the deploy it
/// records happened.
pub fn tag_deploy(
    workdir: &Path,
    format: &str,
    stage: &str,
    commit: &str,
    message: &str,
    remote: &str,
) -> Result<DatedTag, BuildError> {
    let mut taken = tags(workdir)?;
    let remote_tags = git(workdir, &["ls-remote", "--tags", "--refs", remote]);
    if let Ok(listed) = &remote_tags {
        taken.extend(listed.lines().filter_map(|l| l.split_once("refs/tags/")).map(|(_, t)| t.to_owned()));
    }
    let name = dated_name(format, stage, &today(), &taken);
    git(workdir, &["tag", "--annotate", "--message", message, "--end-of-options", &name, commit])?;
    let pushed = match remote_tags {
        Err(e) => Err(format!("the remote {remote:?} did not answer: {e}")),
        Ok(_) => git(workdir, &["push", "--quiet", remote, &format!("refs/tags/{name}")])
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    Ok(DatedTag {
        name,
        commit: commit.to_owned(),
        pushed: pushed.is_ok(),
        warning: pushed.err().map(|e| format!("{e}; the tag is made here: push it with `git push {remote} --tags`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbers_and_dots_after_a_prefix() {
        assert_eq!(release_version("v1.10.0"), Some(vec![1, 10, 0]));
        assert_eq!(release_version("release-2"), Some(vec![2]));
        for not in ["v1.2.0-rc1", "v2.0b1", "latest", "v", "v1..2", "v1.2."] {
            assert_eq!(release_version(not), None, "{not}");
        }
    }

    #[test]
    fn stable_is_the_newest_release_in_version_order() {
        let tags = ["v1.9.0", "v1.10.0", "v1.11.0-rc1", "v2.0.0b1", "other-3.0", "v1.2"];
        assert_eq!(newest_stable(tags, "v*").unwrap(), Some("v1.10.0"));
        assert_eq!(newest_stable(tags, "other-*").unwrap(), Some("other-3.0"));
        assert_eq!(newest_stable(tags, "x*").unwrap(), None);
        assert!(newest_stable(tags, "v[").is_err());
    }

    #[test]
    fn dated_names_count_up_the_same_day() {
        let taken = vec!["production-2026-12-05".to_owned(), "production-2026-12-05-2".to_owned()];
        assert_eq!(dated_name("{stage}-{date}", "production", "2026-12-05", &[]), "production-2026-12-05");
        assert_eq!(dated_name("{stage}-{date}", "production", "2026-12-05", &taken), "production-2026-12-05-3");
        assert_eq!(dated_name("deploy/{date}", "x", "2026-12-06", &taken), "deploy/2026-12-06");
        assert_eq!(today().len(), 10);
    }
}
