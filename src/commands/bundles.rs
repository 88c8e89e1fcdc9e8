//! `ferry bundles`: the store's listing.

use std::io::Write;

use anyhow::Result;

use crate::exit;
use crate::output;
use crate::settings::Settings;

pub fn run(settings: &Settings) -> Result<u8> {
    let list = settings.store.list()?;
    if settings.output.json {
        output::json(&serde_json::to_value(&list)?)?;
        return Ok(exit::OK);
    }
    if list.is_empty() {
        let remote = settings.store.remote_spec().map(|r| format!(" or {}", r.url())).unwrap_or_default();
        eprintln!("no bundles in {}{remote}; `ferry build` makes one", settings.store.root().display());
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12}  {:<16}  {:<20}  {:>7}  {:>10}  {:>10}  BUILT",
        "ID", "SERVICE", "VERSION", "FILES", "SIZE", "BUNDLE"
    )?;
    for b in &list {
        writeln!(
            out,
            "{:<12}  {:<16}  {:<20}  {:>7}  {:>10}  {:>10}  {}",
            b.id.short(12),
            b.service,
            b.version.as_deref().or(b.git_tag.as_deref()).unwrap_or("-"),
            b.files,
            output::bytes(b.bytes),
            output::bytes(b.size),
            output::time(b.built_at)
        )?;
    }
    Ok(exit::OK)
}
