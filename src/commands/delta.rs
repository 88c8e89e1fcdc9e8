//! `ferry delta FROM TO`.

use anyhow::{Context as _, Result};
use ferry_builder::delta;

use crate::exit;
use crate::output;
use crate::settings::{Settings, Target};

pub fn run(settings: &Settings, from: &Target, to: &Target) -> Result<u8> {
    let base = super::stored_id(settings, from)?;
    let target = super::stored_id(settings, to)?;
    let d = delta::encode(&settings.store, &base, &target)
        .with_context(|| format!("cannot make the delta {}..{}", base.short(12), target.short(12)))?;
    if settings.output.json {
        output::json(&serde_json::json!({
            "ok": true,
            "from": base,
            "to": target,
            "path": d.path,
            "bytes": d.bytes,
            "patches": d.patches,
            "literals": d.literals,
            "reused_files": d.reused,
            "cached": !d.made,
            "elapsed_ms": output::ms(d.elapsed),
        }))?;
    } else {
        output::line(&d.path.display().to_string())?;
        eprintln!(
            "delta {}..{}: {} ({} patched, {} new, {} reused files){}",
            base.short(12),
            target.short(12),
            output::bytes(d.bytes),
            d.patches,
            d.literals,
            d.reused,
            if d.made { format!(" in {:.2}s", d.elapsed.as_secs_f64()) } else { ", from the store".into() }
        );
    }
    Ok(exit::OK)
}
