//! Signing releases (the controller's or CI's side; hosts verify, see
//! `ferry_formats::signed`): a minisign key pair, and a signature of a
//! release's statement kept in the store as `signatures/<id>.minisig`.
//!
//! A secret key is minisign's own format, so the `minisign` tool reads it
//! too; it is encrypted with a password (scrypt) unless made with
//! `--no-password`, and is written 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_formats::signed::{self, KeyId, Statement, TrustedKey};
use ferry_formats::{atomic, ReleaseId};
use fs_err as fs;

use crate::Store;

/// The environment variable a key's password is read from (else it is
/// asked for on the terminal).
pub const PASSWORD_ENV: &str = "FERRY_KEY_PASSWORD";

/// Why a key could not be made or read, or a release signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists; a key is never written over (move it away, or give another --out)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("minisign: {0}")]
    Minisign(String),
    #[error("the signature just made does not verify: {0}")]
    SelfCheck(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |source| SignError::Io { path: path.to_owned(), source }
}

/// A key pair written by [`keygen`].
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key_id: KeyId,
    /// The public key's base64 line (what `trusted_keys` lists).
    pub public_key: String,
}

/// Makes a key pair in `dir`: `ferry.key` (secret, 0600; encrypted with
/// `password` unless `None`) and `ferry.pub`. Never writes over a key.
pub fn keygen(dir: &Path, password: Option<String>) -> Result<KeyFiles, SignError> {
    let secret = dir.join("ferry.key");
    let public = dir.join("ferry.pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(SignError::Exists(p.clone()));
        }
    }
    let pair = match password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| SignError::Minisign(e.to_string()))?;
    let key_id = KeyId(pair.pk.keynum().try_into().map_err(|_| SignError::Minisign("a key id is 8 bytes".into()))?);
    let comment = format!("ferry key {key_id}");
    let sk_box = pair.sk.to_box(Some(&comment)).map_err(|e| SignError::Minisign(e.to_string()))?;
    let pk_box = pair.pk.to_box().map_err(|e| SignError::Minisign(e.to_string()))?;
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    atomic::write_atomic_mode(&secret, 0o600, |f| f.write_all(sk_box.to_string().as_bytes()))
        .map_err(io_at(&secret))?;
    atomic::write_atomic(&public, |f| f.write_all(pk_box.to_string().as_bytes())).map_err(io_at(&public))?;
    Ok(KeyFiles { secret, public, key_id, public_key: pair.pk.to_base64() })
}

/// A secret key, ready to sign.
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
    pub key_id: KeyId,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Reads a secret key; an encrypted one with the password from
/// [`PASSWORD_ENV`], else asked for on the terminal.
pub fn load_key(path: &Path) -> Result<SigningKey, SignError> {
    load_key_with(path, std::env::var(PASSWORD_ENV).ok())
}

/// [`load_key`] with the password of an encrypted key given (`None`:
/// asked for on the terminal).
pub fn load_key_with(path: &Path, password: Option<String>) -> Result<SigningKey, SignError> {
    let text = fs::read_to_string(path).map_err(io_at(path))?;
    let bad = |message: String| SignError::Key { path: path.to_owned(), message };
    let sk_box = minisign::SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?;
    let sk = match minisign::SecretKey::from_unencrypted_box(sk_box.clone()) {
        Ok(sk) => sk,
        Err(_) => minisign::SecretKey::from_box(sk_box, password)
            .map_err(|e| bad(format!("{e} (the password is read from {PASSWORD_ENV})")))?,
    };
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| bad(e.to_string()))?;
    let key_id = KeyId(pk.keynum().try_into().map_err(|_| bad("a key id is 8 bytes".into()))?);
    Ok(SigningKey { sk, pk, key_id })
}

impl SigningKey {
    /// The public key's base64 line.
    pub fn public_key(&self) -> String {
        self.pk.to_base64()
    }

    /// Signs `statement` and returns the signature file's text, checked
    /// as a host will check it.
    pub fn sign(&self, statement: &Statement) -> Result<String, SignError> {
        let line = statement.to_line();
        let untrusted = format!("ferry release signature, key {}", self.key_id);
        let sig = minisign::sign(Some(&self.pk), &self.sk, line.as_bytes(), Some(&line), Some(&untrusted))
            .map_err(|e| SignError::Minisign(e.to_string()))?;
        let text = sig.to_string();
        let key = TrustedKey::parse(&self.public_key()).map_err(|e| SignError::SelfCheck(e.to_string()))?;
        let parsed = signed::parse(text.as_bytes()).map_err(|e| SignError::SelfCheck(e.to_string()))?;
        parsed.verify(&[key]).map_err(|e| SignError::SelfCheck(e.to_string()))?;
        if parsed.statement != *statement {
            return Err(SignError::SelfCheck("it reads back as another statement".into()));
        }
        Ok(text)
    }
}

impl Store {
    /// Where a release's signature is kept.
    pub fn signature_path(&self, id: &ReleaseId) -> PathBuf {
        self.root().join("signatures").join(format!("{id}.minisig"))
    }

    /// A release's signature file, if it was signed.
    pub fn signature(&self, id: &ReleaseId) -> Result<Option<String>, SignError> {
        let path = self.signature_path(id);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SignError::Io { path, source: e }),
        }
    }

    /// Keeps `text` as release `id`'s signature (over any earlier one).
    pub fn put_signature(&self, id: &ReleaseId, text: &str) -> Result<PathBuf, SignError> {
        let path = self.signature_path(id);
        let dir = path.parent().expect("in signatures/");
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        atomic::write_atomic(&path, |f| f.write_all(text.as_bytes())).map_err(io_at(&path))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(serial: u64) -> Statement {
        Statement { service: "shop".into(), release: ReleaseId::from_bytes([3; 32]), serial, expires: 2_000_000_000 }
    }

    #[test]
    fn a_signature_verifies_under_its_key_only_and_not_once_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(&dir.path().join("a"), None).unwrap();
        let b = keygen(&dir.path().join("b"), None).unwrap();
        assert!(matches!(keygen(&dir.path().join("a"), None), Err(SignError::Exists(_))));
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&a.secret).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let key = load_key_with(&a.secret, None).unwrap();
        assert_eq!(key.key_id, a.key_id);
        let text = key.sign(&statement(7)).unwrap();
        let trusted_a = TrustedKey::parse(&fs::read_to_string(&a.public).unwrap()).unwrap();
        let trusted_b = TrustedKey::parse(&b.public_key).unwrap();
        let sig = signed::parse(text.as_bytes()).unwrap();
        assert_eq!(sig.statement, statement(7));
        assert_eq!(sig.verify(std::slice::from_ref(&trusted_a)).unwrap(), a.key_id);
        assert_eq!(sig.verify(&[trusted_b.clone(), trusted_a.clone()]).unwrap(), a.key_id);
        assert!(matches!(sig.verify(&[trusted_b]), Err(signed::SignedError::UnknownKey { .. })));
        // Any field of the statement changed: the trusted comment no longer
        // matches its global signature, nor the data its signature.
        for (from, to) in [("serial=7", "serial=8"), ("expires=2000000000", "expires=2000000001"), ("shop", "shoq")] {
            let changed = signed::parse(text.replace(from, to).as_bytes()).unwrap();
            assert!(
                matches!(changed.verify(std::slice::from_ref(&trusted_a)), Err(signed::SignedError::BadSignature(_))),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let k = keygen(dir.path(), Some("hunter2".into())).unwrap();
        assert!(!fs::read_to_string(&k.secret).unwrap().contains(&k.public_key));
        let e = load_key_with(&k.secret, Some("wrong".into())).unwrap_err().to_string();
        assert!(e.contains("Wrong password") && e.contains(PASSWORD_ENV), "{e}");
        let key = load_key_with(&k.secret, Some("hunter2".into())).unwrap();
        assert_eq!(key.public_key(), k.public_key);
    }
}
