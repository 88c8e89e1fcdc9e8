//! S3 credentials and region, found where the AWS tools look for them:
//!
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`; `AWS_REGION` or `AWS_DEFAULT_REGION`;
//! 2. the profile (`[store] profile`, else `AWS_PROFILE`, else `default`) of
//!    the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`) and of the config file (`AWS_CONFIG_FILE`, else
//!    `~/.aws/config`, where it is `[profile NAME]`, or `[default]`), for
//!    `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
//!    `region` and `endpoint_url`.
//!
//! Nothing else: no instance metadata service, no SSO, no credential
//! processes. A controller with none of these is told so, not left waiting
//! on a network call.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fs_err as fs;

/// Keys to sign requests with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they were found, for messages.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).field("source", &self.source).finish()
    }
}

/// What the environment and the profile files say.
#[derive(Debug, Default)]
pub struct Found {
    pub credentials: Option<Credentials>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// The profile read, and the files looked in (for messages).
    pub profile: String,
    pub files: Vec<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home() -> Option<PathBuf> {
    env("HOME").map(PathBuf::from)
}

/// Reads the environment, then the profile files.
pub fn find(profile: Option<&str>) -> Found {
    let profile = profile.map(str::to_owned).or_else(|| env("AWS_PROFILE")).unwrap_or_else(|| "default".into());
    let creds_file =
        env("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from).or_else(|| home().map(|h| h.join(".aws/credentials")));
    let config_file = env("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| home().map(|h| h.join(".aws/config")));
    let from_creds = creds_file.as_ref().map(|p| section(p, &profile)).unwrap_or_default();
    let config_name = if profile == "default" { "default".to_owned() } else { format!("profile {profile}") };
    let from_config = config_file.as_ref().map(|p| section(p, &config_name)).unwrap_or_default();
    let get = |key: &str| from_creds.get(key).or_else(|| from_config.get(key)).cloned();

    let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
            source: "the environment (AWS_ACCESS_KEY_ID)".into(),
        }),
        _ => match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("aws_session_token"),
                source: format!("profile {profile:?} of the AWS credentials files"),
            }),
            _ => None,
        },
    };
    Found {
        credentials,
        region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or_else(|| get("region")),
        endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| get("endpoint_url")),
        profile,
        files: [creds_file, config_file].into_iter().flatten().collect(),
    }
}

/// The `key = value` lines of INI section `[name]` of the file at `path`
/// (none if the file or section is missing).
fn section(path: &PathBuf, name: &str) -> BTreeMap<String, String> {
    let Ok(text) = fs::read_to_string(path) else { return BTreeMap::new() };
    parse_section(&text, name)
}

fn parse_section(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = head.trim() == name;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_section;

    #[test]
    fn a_profile_section_is_read_alone() {
        let text = "[default]\naws_access_key_id = A\n\n[profile ci]\n# comment\nregion=eu-west-1\naws_access_key_id = B\n[other]\nregion = x\n";
        let ci = parse_section(text, "profile ci");
        assert_eq!(ci.get("region").map(String::as_str), Some("eu-west-1"));
        assert_eq!(ci.get("aws_access_key_id").map(String::as_str), Some("B"));
        assert_eq!(parse_section(text, "default").len(), 1);
        assert!(parse_section(text, "missing").is_empty());
    }
}
