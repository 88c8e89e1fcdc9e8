//! Signed releases: what a release's signer vouches for, and the minisign
//! signature that carries it.
//!
//! A signature is a standard minisign signature file (`<id>.minisig`,
//! Ed25519 over the BLAKE2b-512 of the data: minisign's "prehashed" mode),
//! whose signed data is the **statement** below, one line, and whose
//! trusted comment is that same line. The global signature covers the
//! trusted comment, so the statement is read from the file itself and
//! checked twice; `minisign -Vm statement.txt -p ferry.pub -x <id>.minisig`
//! verifies it as well, with the line in `statement.txt`.
//!
//! The statement (version 1), fields in this order, separated by one space,
//! no newline:
//!
//! | field | form | meaning |
//! |---|---|---|
//! | magic | `ferry-release-signature` | what this is |
//! | version | `v1` | [`STATEMENT_VERSION`] |
//! | `service=` | `[a-z0-9][a-z0-9._-]*`, ≤ 64 bytes | the service the release is of |
//! | `release=` | 64 lowercase hex digits | the release id (manifest and metadata) |
//! | `serial=` | decimal u64, no leading zeros | grows with each release signed; a host refuses one lower than it accepted |
//! | `expires=` | decimal u64, unix seconds | a host refuses the statement at and after this time |
//!
//! The file (at most [`MAX_LEN`] bytes, ASCII):
//!
//! | line | content |
//! |---|---|
//! | 1 | `untrusted comment: …` (not signed; ferry writes the key id) |
//! | 2 | base64 of: `ED`, 8-byte key id, 64-byte signature of the statement |
//! | 3 | `trusted comment: ` then the statement |
//! | 4 | base64 of the 64-byte global signature (signature ‖ trusted comment) |
//!
//! A public key is minisign's: base64 of `Ed`, the 8-byte key id and the
//! 32-byte Ed25519 key (`RWS…`), alone or as the second line of a
//! `minisign.pub` file. Key ids are shown as minisign shows them: 16
//! uppercase hex digits of the id read as a little-endian u64.

use std::fmt;

use crate::release::valid_service_name;
use crate::ReleaseId;

/// The statement's first word.
pub const STATEMENT_MAGIC: &str = "ferry-release-signature";
/// The statement format's version.
pub const STATEMENT_VERSION: u32 = 1;
/// The most bytes a signature file may have (a real one has about 330).
pub const MAX_LEN: usize = 2048;

const TRUSTED_PREFIX: &str = "trusted comment: ";
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";

/// What a signer vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub service: String,
    pub release: ReleaseId,
    pub serial: u64,
    /// Unix seconds.
    pub expires: u64,
}

/// A minisign key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:016X}", u64::from_le_bytes(self.0)))
    }
}

/// Why a signature, a statement or a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("the signature is damaged: {0}")]
    Damaged(String),
    #[error("the signed statement is damaged: {0}")]
    Statement(String),
    #[error("statement version {0} is not supported (this ferry reads v{STATEMENT_VERSION})")]
    Version(String),
    #[error("not a minisign public key ({0}): expected the base64 line `RW…` of a minisign .pub file")]
    Key(String),
    #[error("signed by key {got}, which is not trusted here (trusted: {})", list(trusted))]
    UnknownKey { got: KeyId, trusted: Vec<KeyId> },
    #[error("bad signature: the statement or its signature was changed since key {0} signed it")]
    BadSignature(KeyId),
}

fn list(keys: &[KeyId]) -> String {
    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl Statement {
    /// The statement's one canonical line (what is signed).
    pub fn to_line(&self) -> String {
        format!(
            "{STATEMENT_MAGIC} v{STATEMENT_VERSION} service={} release={} serial={} expires={}",
            self.service,
            self.release.to_hex(),
            self.serial,
            self.expires
        )
    }

    /// Reads a statement line, strictly: every field, in order, canonical.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignedError> {
        let bad = |what: &str| SignedError::Statement(what.to_owned());
        if bytes.len() > 256 {
            return Err(bad("longer than 256 bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut words = text.split(' ');
        if words.next() != Some(STATEMENT_MAGIC) {
            return Err(bad(&format!("it does not start with {STATEMENT_MAGIC:?}")));
        }
        match words.next() {
            Some("v1") => {}
            Some(v) => return Err(SignedError::Version(v.chars().take(16).collect())),
            None => return Err(bad("no version")),
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| bad(&format!("no {name}= where it belongs")))
        };
        let service = field("service")?;
        if !valid_service_name(service) {
            return Err(bad("its service name is not one"));
        }
        let release = field("release")?;
        if release.len() != 64 || !release.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("its release is not 64 lowercase hex digits"));
        }
        let release: ReleaseId = release.parse().map_err(|_| bad("its release is not an id"))?;
        let serial = number(field("serial")?).ok_or_else(|| bad("its serial is not a number"))?;
        let expires = number(field("expires")?).ok_or_else(|| bad("its expiry is not a number"))?;
        if words.next().is_some() {
            return Err(bad("words after expires="));
        }
        Ok(Self { service: service.to_owned(), release, serial, expires })
    }
}

/// A canonical decimal u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A key a host trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub id: KeyId,
    /// The base64 line, as written in ferry.toml and on the host.
    pub text: String,
    key: minisign_verify::PublicKey,
}

impl TrustedKey {
    /// A minisign public key: the base64 line, or a whole `.pub` file.
    pub fn parse(text: &str) -> Result<Self, SignedError> {
        let line = match text.trim().lines().collect::<Vec<_>>()[..] {
            [one] => one.trim(),
            [comment, key] if comment.starts_with(UNTRUSTED_PREFIX) => key.trim(),
            _ => return Err(SignedError::Key("one line, or a comment and a line".into())),
        };
        let raw = base64(line).ok_or_else(|| SignedError::Key("not base64".into()))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            return Err(SignedError::Key("not 42 bytes starting with Ed".into()));
        }
        let key = minisign_verify::PublicKey::from_base64(line).map_err(|e| SignedError::Key(e.to_string()))?;
        let id = KeyId(raw[2..10].try_into().expect("8 bytes"));
        Ok(Self { id, text: line.to_owned(), key })
    }
}

/// A release's signature, read but not yet verified.
#[derive(Clone)]
pub struct ReleaseSignature {
    /// The key that says it signed (checked by [`ReleaseSignature::verify`]).
    pub key_id: KeyId,
    /// What it says (checked by [`ReleaseSignature::verify`]).
    pub statement: Statement,
    signature: minisign_verify::Signature,
    text: String,
}

impl fmt::Debug for ReleaseSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSignature").field("key_id", &self.key_id).field("statement", &self.statement).finish()
    }
}

/// Reads a signature file, strictly (the fuzzed entry point).
pub fn parse(bytes: &[u8]) -> Result<ReleaseSignature, SignedError> {
    let bad = |what: &str| SignedError::Damaged(what.to_owned());
    if bytes.len() > MAX_LEN {
        return Err(bad(&format!("longer than {MAX_LEN} bytes")));
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n') {
        return Err(bad("it holds bytes other than printable ASCII and newlines"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not ASCII"))?;
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(text).split('\n').collect();
    let [untrusted, sig, trusted, global] = lines[..] else {
        return Err(bad(&format!("{} lines, not 4", lines.len())));
    };
    if !untrusted.starts_with(UNTRUSTED_PREFIX) {
        return Err(bad("line 1 is not an untrusted comment"));
    }
    let raw = base64(sig).ok_or_else(|| bad("line 2 is not base64"))?;
    if raw.len() != 74 {
        return Err(bad("line 2 is not 74 bytes"));
    }
    if &raw[..2] != b"ED" {
        return Err(bad("not a prehashed (ED) minisign signature"));
    }
    let global = base64(global).ok_or_else(|| bad("line 4 is not base64"))?;
    if global.len() != 64 {
        return Err(bad("line 4 is not 64 bytes"));
    }
    let statement = trusted.strip_prefix(TRUSTED_PREFIX).ok_or_else(|| bad("line 3 is not a trusted comment"))?;
    let statement = Statement::parse(statement.as_bytes())?;
    let signature = minisign_verify::Signature::decode(text).map_err(|e| bad(&e.to_string()))?;
    Ok(ReleaseSignature {
        key_id: KeyId(raw[2..10].try_into().expect("8 bytes")),
        statement,
        signature,
        text: text.to_owned(),
    })
}

impl ReleaseSignature {
    /// Checks the signature under the trusted key of its id: the statement
    /// (data) and the trusted comment (global signature) both.
    pub fn verify(&self, keys: &[TrustedKey]) -> Result<KeyId, SignedError> {
        let Some(key) = keys.iter().find(|k| k.id == self.key_id) else {
            return Err(SignedError::UnknownKey { got: self.key_id, trusted: keys.iter().map(|k| k.id).collect() });
        };
        key.key
            .verify(self.statement.to_line().as_bytes(), &self.signature, false)
            .map_err(|_| SignedError::BadSignature(self.key_id))?;
        Ok(key.id)
    }

    /// The file's text, as read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Standard base64 with padding, strictly (what minisign writes).
fn base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || s.len() % 4 != 0 || s.len() > 4096 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        // Bits a padded chunk does not use must be zero (one encoding only).
        if (pad == 1 && bytes[3] != 0) || (pad == 2 && (bytes[2] != 0 || bytes[3] != 0)) {
            return None;
        }
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            service: "shop".into(),
            release: ReleaseId::from_bytes([0xab; 32]),
            serial: 7,
            expires: 1_900_000_000,
        }
    }

    #[test]
    fn statements_round_trip_and_only_the_canonical_form_parses() {
        let s = statement();
        let line = s.to_line();
        assert_eq!(
            line,
            format!("ferry-release-signature v1 service=shop release={} serial=7 expires=1900000000", "ab".repeat(32))
        );
        assert_eq!(Statement::parse(line.as_bytes()).unwrap(), s);
        for bad in [
            line.replace("serial=7", "serial=07"),
            line.replace("serial=7", "serial=+7"),
            line.replace("serial=7", "serial=18446744073709551616"),
            line.replace(" v1 ", " v2 "),
            line.replace("service=shop", "service=Shop"),
            line.replace("release=ab", "release=AB"),
            line.replace(" expires", "  expires"),
            format!("{line} "),
            format!("{line} extra=1"),
            line.replace("serial=7 expires=1900000000", "expires=1900000000 serial=7"),
            line[..line.len() - 1].to_owned() + "x",
        ] {
            assert!(Statement::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(
            matches!(Statement::parse(line.replace(" v1 ", " v2 ").as_bytes()), Err(SignedError::Version(v)) if v == "v2")
        );
    }

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGk=").unwrap(), b"hi");
        assert_eq!(base64("aGVs").unwrap(), b"hel");
        for bad in ["", "aGk", "aGl=", "a=Vs", "aG==bG8=", "aGVsbG8=\n", "aGV*"] {
            assert!(base64(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let line = statement().to_line();
        let good_sig = format!("RUQ{}=", "A".repeat(96)); // 74 bytes once decoded, starts with "ED"
        let global = format!("{}==", "A".repeat(86));
        let file = format!("untrusted comment: x\n{good_sig}\ntrusted comment: {line}\n{global}\n");
        assert!(parse(file.as_bytes()).is_ok(), "{:?}", parse(file.as_bytes()).err());
        let cases = [
            (file.replace("untrusted", "Untrusted"), "line 1"),
            (file.replace("trusted comment: ferry", "trusted comment:ferry"), "line 3"),
            (file.replacen("RUQ", "RWQ", 1), "prehashed"),
            (format!("{file}extra\n"), "5 lines"),
            (file.replace('\n', "\r\n"), "printable"),
            ("x".repeat(MAX_LEN + 1), "longer"),
        ];
        for (bad, says) in cases {
            let e = parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(says), "{e} (wanted {says})");
        }
    }
}
