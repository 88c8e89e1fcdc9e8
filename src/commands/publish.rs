//! `ferry publish`: a local build, uploaded to the remote store.

use anyhow::Result;
use ferry_builder::remote::sync::Published;
use ferry_formats::ReleaseId;

use crate::exit;
use crate::output;
use crate::settings::Settings;

pub fn run(settings: &Settings, name: &str) -> Result<u8> {
    if settings.store.remote_spec().is_none() {
        return Err(ferry_builder::StoreError::NoRemote { store: settings.store.root().to_owned() }.into());
    }
    let id = settings.store.find(None, name)?;
    publish(settings, &id)?;
    Ok(exit::OK)
}

/// Publishes `id` and says what was uploaded (`ferry publish` and `ferry
/// build --publish`).
pub(super) fn publish(settings: &Settings, id: &ReleaseId) -> Result<()> {
    let published = settings.store.publish(id)?;
    if settings.output.json {
        output::json(&serde_json::to_value(&published)?)?;
    } else {
        say(&published);
    }
    Ok(())
}

/// What a publish did, on stderr.
pub(super) fn say(published: &Published) {
    let id = &published.id;
    let sent: u64 = published.objects.iter().filter(|o| !o.existed).map(|o| o.bytes).sum();
    let already = published.objects.iter().filter(|o| o.existed).count();
    let note = match already {
        0 => String::new(),
        n if n == published.objects.len() => "; all of it was there already".to_owned(),
        n => format!("; {n} of {} objects were there already", published.objects.len()),
    };
    eprintln!("published {} to {}: {} uploaded{note}", id.short(12), published.store, output::bytes(sent));
}
