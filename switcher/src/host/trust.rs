//! Signed releases on a host: the keys pinned here, and the check a release
//! passes before a byte of it is written (see `ferry_formats::signed`).
//!
//! ```text
//! <deploy_to>/.ferry/trusted_keys      the pinned minisign public keys, a line each
//!                                      (written by `ferry setup`; a push pins them
//!                                      only on a host that has none)
//! <deploy_to>/.ferry/serial            the highest serial this host accepted, and its release
//! releases/<id>/.ferry/signature.minisig   the signature a release was staged with
//! ```
//!
//! With no pinned keys a host takes any release (as before). With keys, a
//! release is staged only with a signature that a pinned key made, over a
//! statement that names this release and its service, that has not
//! expired, and whose serial is above the highest this host accepted (or
//! equal to it, for the release that came with it).
//! A release already kept here (a re-push, a rollback) was checked when it
//! was staged: it is taken without the serial check.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_formats::signed::{self, KeyId, ReleaseSignature, SignedError, TrustedKey};
use ferry_formats::{atomic, ReleaseId};
use fs_err as fs;

use super::{at, Host, HostError};

/// Where a release keeps the signature it was staged with.
pub(crate) const SIGNATURE: &str = ".ferry/signature.minisig";

/// Why a host refuses a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is not signed, and this host trusts only releases signed by {}; sign it (`ferry sign`)", list(.0))]
    Unsigned(Vec<KeyId>),
    #[error("{0}")]
    Signature(SignedError),
    #[error("the signature is for release {signed}, not this one")]
    OtherRelease { signed: ReleaseId },
    #[error("the signature is for service {signed:?}, not {service:?}")]
    OtherService { signed: String, service: String },
    #[error("the signature expired at {} (now {})", time(*.expires), time(*.now))]
    Expired { expires: u64, now: u64 },
    #[error("downgrade: serial {serial} is not above {highest}, the highest this host accepted; to go back to an older release use `ferry rollback`, or sign it again")]
    Downgrade { serial: u64, highest: u64 },
}

fn list(keys: &[KeyId]) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// A signature a host checked and takes.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub key: KeyId,
    pub serial: u64,
    pub(crate) signature: ReleaseSignature,
}

/// What pinning did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    /// The key ids pinned on the host now.
    pub keys: Vec<String>,
    /// Whether the host's pins changed.
    pub changed: bool,
    /// The host kept other pins than it was given (a push does not change
    /// pins a host has: `ferry setup` does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept_other: bool,
}

impl Host {
    fn trusted_keys_path(&self) -> std::path::PathBuf {
        self.ferry_dir().join("trusted_keys")
    }

    fn serial_path(&self) -> std::path::PathBuf {
        self.ferry_dir().join("serial")
    }

    /// The keys pinned on this host (none: it takes unsigned releases).
    pub fn trusted_keys(&self) -> Result<Vec<TrustedKey>, HostError> {
        let path = self.trusted_keys_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HostError::Fs(e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|(n, l)| {
                TrustedKey::parse(l).map_err(|e| HostError::Input(format!("{}:{}: {e}", path.display(), n + 1)))
            })
            .collect()
    }

    /// Pins `keys` (minisign public keys; they replace the pinned ones, and
    /// none removes the pins) when `replace`, else only when the host has
    /// none.
    pub fn pin_keys(&self, keys: &[String], replace: bool) -> Result<Pinned, HostError> {
        let parsed = keys
            .iter()
            .map(|k| TrustedKey::parse(k).map_err(|e| HostError::Input(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let have = self.trusted_keys()?;
        let ids = |keys: &[TrustedKey]| keys.iter().map(|k| k.id.to_string()).collect::<Vec<_>>();
        let same = have.iter().map(|k| &k.text).eq(parsed.iter().map(|k| &k.text));
        if same || (!replace && !have.is_empty()) {
            return Ok(Pinned { keys: ids(&have), changed: false, kept_other: !same });
        }
        let path = self.trusted_keys_path();
        if parsed.is_empty() {
            fs::remove_file(&path).map_err(HostError::Fs)?;
        } else {
            fs::create_dir_all(self.ferry_dir()).map_err(HostError::Fs)?;
            atomic::write_atomic(&path, |f| {
                f.write_all(b"# minisign public keys this host takes releases signed by (written by ferry setup)\n")?;
                for k in &parsed {
                    writeln!(f, "{}", k.text)?;
                }
                Ok::<_, io::Error>(())
            })
            .map_err(at(&path))?;
        }
        Ok(Pinned { keys: ids(&parsed), changed: true, kept_other: false })
    }

    /// The highest serial this host accepted (0: none), and the release
    /// it came with: `<serial> <release id>`.
    pub fn highest_serial(&self) -> Result<(u64, Option<ReleaseId>), HostError> {
        let path = self.serial_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
            Err(e) => return Err(HostError::Fs(e)),
        };
        let damaged = || HostError::Input(format!("{} is damaged: {text:?}", path.display()));
        let (serial, id) = text.trim_end().split_once(' ').ok_or_else(damaged)?;
        Ok((serial.parse().map_err(|_| damaged())?, Some(id.parse().map_err(|_| damaged())?)))
    }

    /// Checks release `id` of `service`, about to be staged, against the
    /// pinned keys: `Ok(None)` when none are pinned. `kept`: the release is
    /// here already (no serial check).
    pub(crate) fn check_signature(
        &self,
        id: &ReleaseId,
        service: &str,
        signature: Option<&str>,
        kept: bool,
    ) -> Result<Option<Accepted>, HostError> {
        let keys = self.trusted_keys()?;
        if keys.is_empty() {
            return Ok(None);
        }
        let refuse = |reason: Refusal| HostError::Untrusted { id: *id, reason };
        let Some(text) = signature else {
            return Err(refuse(Refusal::Unsigned(keys.iter().map(|k| k.id).collect())));
        };
        let sig = signed::parse(text.as_bytes()).map_err(|e| refuse(Refusal::Signature(e)))?;
        let key = sig.verify(&keys).map_err(|e| refuse(Refusal::Signature(e)))?;
        let st = &sig.statement;
        if st.release != *id {
            return Err(refuse(Refusal::OtherRelease { signed: st.release }));
        }
        if st.service != service {
            return Err(refuse(Refusal::OtherService { signed: st.service.clone(), service: service.to_owned() }));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if !kept {
            if now >= st.expires {
                return Err(refuse(Refusal::Expired { expires: st.expires, now }));
            }
            // Equal only for the same release (staged again after a prune).
            let (highest, with) = self.highest_serial()?;
            if st.serial < highest || (st.serial == highest && with.is_some_and(|w| w != *id)) {
                return Err(refuse(Refusal::Downgrade { serial: st.serial, highest }));
            }
        }
        Ok(Some(Accepted { key, serial: st.serial, signature: sig }))
    }

    /// Records that the host accepted `accepted`: its serial is the lowest
    /// the next release may have.
    pub(crate) fn raise_serial(&self, accepted: &Accepted) -> Result<(), HostError> {
        if accepted.serial <= self.highest_serial()?.0 {
            return Ok(());
        }
        let path = self.serial_path();
        let id = accepted.signature.statement.release;
        atomic::write_atomic(&path, |f| writeln!(f, "{} {id}", accepted.serial)).map_err(at(&path))
    }

    /// The signature release `id` was staged with, if it was signed.
    pub fn release_signature(&self, id: &ReleaseId) -> Option<ReleaseSignature> {
        let bytes = fs::read(self.release_dir(id).join(SIGNATURE)).ok()?;
        signed::parse(&bytes).ok()
    }

    /// A kept release's signature, or a check of the one given now (a
    /// release staged before keys were pinned), kept with it.
    pub(crate) fn check_kept(&self, id: &ReleaseId, signature: Option<&str>) -> Result<(), HostError> {
        if self.trusted_keys()?.is_empty() || self.release_signature(id).is_some() {
            return Ok(());
        }
        let service = self.head(id)?.meta.service;
        if let Some(accepted) = self.check_signature(id, &service, signature, true)? {
            let path = self.release_dir(id).join(SIGNATURE);
            atomic::write_atomic(&path, |f| f.write_all(accepted.signature.text().as_bytes())).map_err(at(&path))?;
        }
        Ok(())
    }
}
