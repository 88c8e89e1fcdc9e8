//! The host's key, checked against known_hosts (and recorded there when
//! new keys are accepted).

use std::io::Write;

use ssh2::{CheckResult, HashType, KnownHostFileKind};

use super::{refused, Ssh};
use crate::host::HostError;

impl Ssh {
    pub(super) fn check_host_key(
        &self,
        session: &ssh2::Session,
        name: &str,
        host: &str,
        port: u16,
    ) -> Result<(), HostError> {
        let (key, kind) = session.host_key().ok_or_else(|| refused(name, "the host sent no key"))?;
        let fingerprint = session.host_key_hash(HashType::Sha256).map(base64).unwrap_or_default();
        let mut known = session.known_hosts().map_err(|e| refused(name, e))?;
        if self.known_hosts.exists() {
            known
                .read_file(&self.known_hosts, KnownHostFileKind::OpenSSH)
                .map_err(|e| refused(name, format!("cannot read {}: {e}", self.known_hosts.display())))?;
        }
        match known.check_port(host, port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(refused(
                name,
                format!(
                    "its host key (SHA256:{fingerprint}) is not the one {} has for it: refused; if the host was really re-keyed, remove the old entry",
                    self.known_hosts.display()
                ),
            )),
            CheckResult::NotFound if self.accept_new => {
                let entry = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
                let kind_name = match kind {
                    ssh2::HostKeyType::Rsa => "ssh-rsa",
                    ssh2::HostKeyType::Dss => "ssh-dss",
                    ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
                    ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
                    ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
                    ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
                    ssh2::HostKeyType::Unknown => return Err(refused(name, "its host key is of an unknown type")),
                };
                let line = format!("{entry} {kind_name} {}\n", base64_padded(key));
                append_known_host(&self.known_hosts, &line)
                    .map_err(|e| refused(name, format!("cannot record its key in {}: {e}", self.known_hosts.display())))
            }
            CheckResult::NotFound => Err(refused(
                name,
                format!(
                    "its host key (SHA256:{fingerprint}) is not in {}: refused; check the fingerprint and add it, or allow new keys",
                    self.known_hosts.display()
                ),
            )),
            CheckResult::Failure => Err(refused(name, "the host key could not be checked")),
        }
    }
}

/// The key types a known_hosts file lists for `host` (plain entries; hashed
/// ones are left to libssh2's check).
pub(super) fn known_key_types(path: &std::path::Path, host: &str, port: u16) -> Vec<String> {
    let name = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let mut types: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(kind)) = (fields.next(), fields.next()) else { continue };
        if hosts.split(',').any(|h| h == name) && !types.iter().any(|t| t == kind) {
            types.push(kind.to_owned());
        }
    }
    types
}

/// Appends one line to a known_hosts file: hosts connect in parallel, so
/// the append is serialized in this process and flock(2)ed against others,
/// and never rewrites what the file already has.
fn append_known_host(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir)?;
    }
    let mut file = fs_err::OpenOptions::new().append(true).create(true).open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// Padded standard base64, as known_hosts stores keys.
fn base64_padded(bytes: &[u8]) -> String {
    let mut out = base64(bytes);
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

/// Unpadded standard base64, as OpenSSH prints fingerprints.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_base64_without_padding() {
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg");
    }
}
