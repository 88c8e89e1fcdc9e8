//! `ferry inspect`, `ferry verify`, `ferry diff`: reading bundles.

use std::io::Write;

use anyhow::Result;
use ferry_formats::bundle::Head;
use ferry_formats::manifest::{self, Entry, EntryKind};
use serde_json::{json, Value};

use super::{head, verified};
use crate::exit;
use crate::output;
use crate::settings::{Settings, Target};

pub fn inspect(settings: &Settings, target: &Target) -> Result<u8> {
    let head = head(settings, target)?;
    let (signed, signed_json) = super::sign::describe(settings, &head.id);
    if settings.output.json {
        output::json(&json!({
            "id": head.id,
            "signature": signed_json,
            "meta": head.meta,
            "entries": head.manifest.entries().iter().map(entry_json).collect::<Vec<_>>(),
        }))?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    print_head(&mut out, &head)?;
    for line in signed {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "entries")?;
    for e in head.manifest.entries() {
        match &e.kind {
            EntryKind::Dir { mode } => writeln!(out, "  d {mode:03o} {:>10}  {}/", "", e.path)?,
            EntryKind::File { mode, size, .. } => writeln!(out, "  f {mode:03o} {size:>10}  {}", e.path)?,
            EntryKind::Symlink { target } => writeln!(out, "  l     {:>10}  {} -> {target}", "", e.path)?,
        }
    }
    Ok(exit::OK)
}

fn print_head(out: &mut impl Write, head: &Head) -> std::io::Result<()> {
    let m = &head.meta;
    let (files, bytes) = head.manifest.file_totals();
    let count = |f: fn(&EntryKind) -> bool| head.manifest.entries().iter().filter(|e| f(&e.kind)).count();
    writeln!(out, "release   {}", head.id)?;
    writeln!(out, "service   {}", m.service)?;
    if let Some(v) = &m.version {
        writeln!(out, "version   {v}")?;
    }
    if let Some(g) = &m.git {
        writeln!(out, "git       {}", g.commit)?;
    }
    writeln!(
        out,
        "contents  {files} files ({}), {} directories, {} symlinks",
        output::bytes(bytes),
        count(|k| matches!(k, EntryKind::Dir { .. })),
        count(|k| matches!(k, EntryKind::Symlink { .. })),
    )?;
    if !m.components.is_empty() {
        writeln!(out, "components")?;
        for c in &m.components {
            let envs =
                if c.environments.is_empty() { String::new() } else { format!(" ({})", c.environments.join(", ")) };
            writeln!(out, "  {:<7} {}{envs}", c.kind.to_string(), c.path)?;
        }
    }
    Ok(())
}

fn entry_json(e: &Entry) -> Value {
    match &e.kind {
        EntryKind::Dir { mode } => json!({"path": e.path, "kind": "dir", "mode": format!("{mode:03o}")}),
        EntryKind::File { mode, size, hash } => {
            json!({"path": e.path, "kind": "file", "mode": format!("{mode:03o}"), "size": size, "blake3": hash})
        }
        EntryKind::Symlink { target } => json!({"path": e.path, "kind": "symlink", "target": target}),
    }
}

pub fn verify(settings: &Settings, target: &Target) -> Result<u8> {
    let (path, v) = verified(settings, target)?;
    let head = v.head();
    let (files, bytes) = head.manifest.file_totals();
    if settings.output.json {
        output::json(&json!({"ok": true, "id": head.id, "path": path, "files": files, "bytes": bytes}))?;
    } else {
        output::line(&format!(
            "ok: release {} ({}): {files} files, {} verified",
            head.id,
            head.meta.service,
            output::bytes(bytes)
        ))?;
    }
    Ok(exit::OK)
}

pub fn diff(settings: &Settings, from: &Target, to: &Target) -> Result<u8> {
    let (a, b) = (head(settings, from)?, head(settings, to)?);
    let d = manifest::diff(&a.manifest, &b.manifest);
    let sum = |v: &[&Entry]| v.iter().map(|e| e.size()).sum::<u64>();
    let (old_changed, new_changed): (u64, u64) =
        d.changed.iter().fold((0, 0), |(o, n), (x, y)| (o + x.size(), n + y.size()));
    if settings.output.json {
        let brief = |e: &&Entry| json!({"path": e.path, "size": e.size()});
        output::json(&json!({
            "from": a.id,
            "to": b.id,
            "added": d.added.iter().map(brief).collect::<Vec<_>>(),
            "removed": d.removed.iter().map(brief).collect::<Vec<_>>(),
            "changed": d.changed.iter().map(|(x, y)| json!({
                "path": y.path, "old_size": x.size(), "new_size": y.size(),
                "what": what_changed(x, y),
            })).collect::<Vec<_>>(),
            "unchanged": d.unchanged,
            "bytes": {"added": sum(&d.added), "removed": sum(&d.removed), "changed_from": old_changed, "changed_to": new_changed},
        }))?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    for e in &d.added {
        writeln!(out, "+ {} ({})", e.path, output::bytes(e.size()))?;
    }
    for e in &d.removed {
        writeln!(out, "- {} ({})", e.path, output::bytes(e.size()))?;
    }
    for (x, y) in &d.changed {
        writeln!(
            out,
            "~ {} ({}: {} → {})",
            y.path,
            what_changed(x, y),
            output::bytes(x.size()),
            output::bytes(y.size())
        )?;
    }
    writeln!(
        out,
        "{} → {}: {} added ({}), {} removed ({}), {} changed ({} → {}), {} unchanged",
        a.id.short(12),
        b.id.short(12),
        d.added.len(),
        output::bytes(sum(&d.added)),
        d.removed.len(),
        output::bytes(sum(&d.removed)),
        d.changed.len(),
        output::bytes(old_changed),
        output::bytes(new_changed),
        d.unchanged
    )?;
    Ok(exit::OK)
}

fn what_changed(x: &Entry, y: &Entry) -> &'static str {
    match (&x.kind, &y.kind) {
        (EntryKind::File { hash: h1, .. }, EntryKind::File { hash: h2, .. }) if h1 != h2 => "content",
        (EntryKind::File { .. }, EntryKind::File { .. }) | (EntryKind::Dir { .. }, EntryKind::Dir { .. }) => "mode",
        (EntryKind::Symlink { .. }, EntryKind::Symlink { .. }) => "target",
        _ => "kind",
    }
}
