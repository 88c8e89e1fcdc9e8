//! `ferry keygen`, `ferry sign`, and `ferry build --sign`: release
//! signatures (see `ferry_builder::signing` and `ferry_formats::signed`).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use ferry_builder::signing::{self, PASSWORD_ENV};
use ferry_formats::signed::{self, Statement};
use ferry_formats::ReleaseId;
use serde_json::json;

use crate::exit;
use crate::output;
use crate::settings::{Settings, SignSettings};

/// `ferry keygen`.
pub fn keygen(settings: &Settings, dir: &std::path::Path, no_password: bool) -> Result<u8> {
    let password = if no_password {
        None
    } else {
        match std::env::var(PASSWORD_ENV) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => anyhow::bail!(
                "a secret key is encrypted with a password: set {PASSWORD_ENV}, or pass --no-password for a key \
                 kept only in CI's secret store"
            ),
        }
    };
    let files = signing::keygen(dir, password)?;
    if settings.output.json {
        output::json(&json!({
            "key_id": files.key_id.to_string(),
            "public_key": files.public_key,
            "secret": files.secret,
            "public": files.public,
        }))?;
    } else {
        output::line(&files.public_key)?;
        eprintln!(
            "key {}: secret key {} (keep it secret: CI's secret store), public key {}\n\
             hosts take releases it signs once ferry.toml's stage lists it and `ferry setup STAGE` ran:\n  \
             trusted_keys = [\"{}\"]",
            files.key_id,
            files.secret.display(),
            files.public.display(),
            files.public_key
        );
    }
    Ok(exit::OK)
}

/// `ferry sign RELEASE`.
pub fn sign(settings: &Settings, name: &str, s: &SignSettings) -> Result<u8> {
    let id = settings.store.find(None, name)?;
    let said = sign_release(settings, &id, s)?;
    if settings.output.json {
        output::json(&said)?;
    } else {
        output::line(said["signature"].as_str().unwrap_or_default())?;
    }
    Ok(exit::OK)
}

/// Signs release `id` of the store, keeps the signature beside its bundle,
/// says so on stderr, and returns what it signed.
pub(super) fn sign_release(settings: &Settings, id: &ReleaseId, s: &SignSettings) -> Result<serde_json::Value> {
    let head = settings.store.read_head(id)?;
    let key = signing::load_key(&s.key).context("cannot read the signing key")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // The time of signing: it grows from one signature to the next on any
    // machine with a sane clock, with no counter to keep between CI runs.
    let serial = s.serial.unwrap_or(now);
    let statement =
        Statement { service: head.meta.service.clone(), release: *id, serial, expires: now + s.expires.as_secs() };
    let text = key.sign(&statement)?;
    let path = settings.store.put_signature(id, &text)?;
    let expires = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(statement.expires));
    if !settings.output.json && !settings.output.quiet {
        eprintln!("signed {} with key {}: serial {serial}, expires {expires}", id.short(12), key.key_id);
    }
    Ok(json!({
        "id": id,
        "key_id": key.key_id.to_string(),
        "serial": serial,
        "expires": expires.to_string(),
        "signature": path,
    }))
}

/// The signature lines of `ferry inspect`, and its JSON.
pub(super) fn describe(settings: &Settings, id: &ReleaseId) -> (Vec<String>, serde_json::Value) {
    match settings.store.signature(id) {
        Ok(None) => (vec!["signed    no (unsigned)".into()], serde_json::Value::Null),
        Ok(Some(text)) => match signed::parse(text.as_bytes()) {
            Ok(sig) => {
                let st = &sig.statement;
                let expires =
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(st.expires));
                let mut lines = vec![format!("signed    key {}, serial {}, expires {expires}", sig.key_id, st.serial)];
                if st.release != *id {
                    lines.push(format!("          (but for release {}: not this one's)", st.release));
                }
                let j =
                    json!({ "key_id": sig.key_id.to_string(), "serial": st.serial, "expires": expires.to_string() });
                (lines, j)
            }
            Err(e) => (vec![format!("signed    damaged signature: {e}")], json!({ "error": e.to_string() })),
        },
        Err(e) => (vec![format!("signed    unreadable: {e}")], json!({ "error": e.to_string() })),
    }
}
