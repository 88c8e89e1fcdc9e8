//! `ferry agent`: the agent ferry uploads to ssh hosts, and what it needs.

use std::path::Path;

use anyhow::Result;
use ferry_switcher::fleet::agent_info;

use crate::output;
use crate::settings::Settings;

pub fn run(settings: &Settings, path: &Path) -> Result<u8> {
    let info = agent_info(path)?;
    if settings.output.json {
        output::json(&serde_json::to_value(&info)?)?;
        return Ok(crate::exit::OK);
    }
    let runs_on = match &info.glibc {
        Some(glibc) => format!("Linux {}, glibc {glibc} or newer", info.machine),
        None => format!("Linux {}, any libc (it needs no glibc)", info.machine),
    };
    output::line(&format!("agent      {}", info.path.display()))?;
    output::line(&format!("blake3     {}", info.blake3))?;
    output::line(&format!(
        "size       {} ({} gzipped, as it is sent)",
        output::bytes(info.bytes),
        output::bytes(info.gzip_bytes)
    ))?;
    output::line(&format!("runs on    {runs_on}"))?;
    let libraries = match info.libraries.is_empty() {
        true => "none (static)".to_owned(),
        false => info.libraries.join(", "),
    };
    output::line(&format!("links      {libraries}"))?;
    Ok(crate::exit::OK)
}
