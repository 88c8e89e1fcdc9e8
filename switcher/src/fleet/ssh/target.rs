//! Where and as whom to connect: a host's name (`user@host:port`,
//! `[v6]:port`), the user's ssh config (`~/.ssh/config`), and the stage's
//! defaults.

use std::path::PathBuf;
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

use super::{refused, Ssh};
use crate::fleet::host_name::address;
use crate::host::HostError;

/// Reads an ssh config file (OpenSSH's format); `None` when there is none.
pub fn read_ssh_config(path: &std::path::Path) -> Result<Option<SshConfig>, SshConfigError> {
    let file = match fs_err::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SshConfigError::Read(e)),
    };
    SshConfig::default()
        .parse(&mut std::io::BufReader::new(file), ParseRule::ALLOW_UNKNOWN_FIELDS)
        .map(Some)
        .map_err(|e| SshConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// Why an ssh config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SshConfigError {
    /// fs-err's message names the path.
    #[error("{0}")]
    Read(std::io::Error),
    #[error("{}: {message}", path.display())]
    Parse { path: std::path::PathBuf, message: String },
}

/// Where and as whom to connect: the host's name first, then the ssh
/// config's entry for it, then the stage's defaults.
pub(super) struct Target {
    pub(super) user: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) identity: Option<PathBuf>,
    pub(super) connect_timeout: Duration,
    /// The ProxyJump hosts, in the order they are gone through.
    pub(super) jumps: Vec<String>,
}

impl Ssh {
    pub(super) fn target(&self, name: &str) -> Result<Target, HostError> {
        let (user, alias, port) = address(name).map_err(|e| refused(name, e))?;
        let params = self.ssh_config.as_ref().map(|c| c.query(&alias));
        let from_config = |f: fn(&ssh2_config::HostParams) -> Option<String>| params.as_ref().and_then(f);
        Ok(Target {
            user: user
                .or_else(|| self.user.clone())
                .or_else(|| from_config(|p| p.user.clone()))
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "root".into()),
            host: from_config(|p| p.host_name.clone()).unwrap_or(alias),
            port: port.or_else(|| params.as_ref().and_then(|p| p.port)).unwrap_or(22),
            identity: self
                .identity
                .clone()
                .or_else(|| params.as_ref().and_then(|p| p.identity_file.as_ref()).and_then(|f| f.first()).cloned()),
            connect_timeout: params.as_ref().and_then(|p| p.connect_timeout).unwrap_or(self.connect_timeout),
            jumps: params
                .as_ref()
                .and_then(|p| p.proxy_jump.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|j| !j.is_empty() && j != "none")
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::AgentBinary;

    #[test]
    fn the_ssh_config_fills_in_what_the_name_does_not_say() {
        let config = SshConfig::default()
            .parse(
                &mut "Host web-*\n  HostName 10.1.2.3\n  User app\n  Port 2222\n  IdentityFile /keys/app\n".as_bytes(),
                ParseRule::ALLOW_UNKNOWN_FIELDS,
            )
            .unwrap();
        let ssh = Ssh {
            known_hosts: PathBuf::new(),
            accept_new: false,
            identity: None,
            user: None,
            ferry: AgentBinary::OnHost("ferry".into()),
            connect_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(60),
            ssh_config: Some(config),
        };
        let t = ssh.target("web-1").unwrap();
        assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("app", "10.1.2.3", 2222));
        assert_eq!(t.identity, Some(PathBuf::from("/keys/app")));
        let t = ssh.target("root@web-1:22").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("root", 22), "the name wins");
        let t = ssh.target("db1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.identity), ("db1", 22, None));
        // The stage's user, said in ferry.toml, wins over a personal config.
        let ssh = Ssh { user: Some("deploy".into()), ..ssh };
        assert_eq!(ssh.target("web-1").unwrap().user, "deploy");
        assert_eq!(ssh.target("root@web-1").unwrap().user, "root");
    }
}
