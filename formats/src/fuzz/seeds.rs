//! The seed inputs of the format fuzz targets: a bundle, a delta and an
//! rsync delta against the fuzz base release ([`base_release`]), their
//! manifests and metadata, a signature and journal lines. scripts/fuzz
//! writes them (`cargo run -p ferry-formats --example fuzz_seeds`) before a
//! target's first run; the corpora committed under fuzz/corpus/ grew from them.

use std::collections::BTreeMap;

use super::{base_files, base_release, base_signature};
use crate::bundle::{self, Head, WriteOptions};
use crate::delta::{self, Ends, Op};
use crate::journal::{Action, Record};
use crate::{BlobHash, Entry, EntryKind, Manifest, RelPath};

const LEVEL: i32 = 3;

/// One seed: the target it is for, a name, its bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// Every seed, for every format target.
pub fn seeds() -> std::io::Result<Vec<Seed>> {
    let mut seeds: Vec<Seed> = Vec::new();
    let base = base_release();
    let base_contents: BTreeMap<&str, Vec<u8>> = base_files().into_iter().collect();
    let (target, contents) = target(&base_contents);
    let mut write = |dir: &'static str, name: &'static str, bytes: &[u8]| -> std::io::Result<()> {
        seeds.push((dir, name, bytes.to_vec()));
        Ok(())
    };

    write("manifest", "base", &base.manifest.to_text())?;
    write("manifest", "target", &target.manifest.to_text())?;
    write("release_meta", "base", &base.meta.to_canonical())?;
    write("release_meta", "target", &target.meta.to_canonical())?;
    let opts = WriteOptions { level: LEVEL, workers: 1 };
    let bundle_of = |head: &Head, files: &BTreeMap<&str, Vec<u8>>| {
        bundle::write(Vec::new(), head, &opts, |e| Ok(&files[e.path.as_str()][..])).expect("the seed bundle writes")
    };
    write("bundle", "base", &bundle_of(&base, &base_contents))?;
    write("bundle", "target", &bundle_of(&target, &contents))?;

    let mut ops = Vec::new();
    for entry in delta::needed(&base.manifest, &target.manifest) {
        let content = &contents[entry.path.as_str()];
        let same_path = base.manifest.entries().iter().position(|e| e.path == entry.path);
        ops.push(match same_path {
            Some(i) => {
                Op::Patch { reference: i, data: delta::compress(content, &base_contents[entry.path.as_str()], LEVEL)? }
            }
            None => Op::Literal { data: delta::compress(content, &[], LEVEL)? },
        });
    }
    let head = delta::encode_head(&base, &target, LEVEL)?;
    let mut bytes = Vec::new();
    delta::write(&mut bytes, Ends { base: base.id, target: target.id }, &head, &ops)?;
    write("delta", "base-to-target", &bytes)?;

    let signature = base_signature();
    let have = signature.files.iter().map(|f| &f.hash).collect();
    let mut ops = Vec::new();
    for entry in delta::needed_from(&have, &target.manifest) {
        let content = &contents[entry.path.as_str()];
        ops.push(match signature.files.iter().position(|f| f.path == entry.path) {
            Some(i) => {
                let old = &base_contents[entry.path.as_str()];
                let options = fast_rsync::SignatureOptions { block_size: 64, crypto_hash_size: 8 };
                let sig = fast_rsync::Signature::calculate(old, options);
                let mut patch = Vec::new();
                fast_rsync::diff(&sig.index(), content, &mut patch).expect("the seed rsync delta encodes");
                Op::Rsync { reference: i, data: delta::compress(&patch, &[], LEVEL)? }
            }
            None => Op::Literal { data: delta::compress(content, &[], LEVEL)? },
        });
    }
    let head = delta::encode_head_rsync(&signature, &target, LEVEL)?;
    let mut bytes = Vec::new();
    delta::write_rsync(&mut bytes, &signature.id, &target.id, &head, &ops)?;
    write("rsync_delta", "signature-to-target", &bytes)?;
    write("signature", "base", &signature.to_bytes())?;

    let flip = Record::now("deploy", Action::Deploy, Some(base.id), Some(target.id));
    let failed = Record::now("deploy", Action::Rollback, Some(target.id), Some(base.id)).failed("health gate");
    write("journal", "two", format!("{}{}", flip.to_line(), failed.to_line()).as_bytes())?;
    Ok(seeds)
}

/// The fuzz base with one file changed, one grown, one removed, one added
/// and one config file changed.
fn target(base: &BTreeMap<&str, Vec<u8>>) -> (Head, BTreeMap<&'static str, Vec<u8>>) {
    let mut files: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    files.insert("app/main.py", b"print('hello from the fuzz target')\n".to_vec());
    let mut big = base["app/big.txt"].clone();
    big.splice(1000..1000, b"an inserted line\n".iter().copied());
    files.insert("app/big.txt", big);
    files.insert("app/new.py", b"NEW = True\n".to_vec());
    files.insert("config/production/app.ini", b"[app]\nworkers = 8\n".to_vec());
    files.insert("config/staging/app.ini", base["config/staging/app.ini"].clone());
    let base_head = base_release();
    let mut entries: Vec<Entry> =
        base_head.manifest.entries().iter().filter(|e| !matches!(e.kind, EntryKind::File { .. })).cloned().collect();
    for (path, content) in &files {
        let kind = EntryKind::File { mode: 0o644, size: content.len() as u64, hash: BlobHash::of(content) };
        entries.push(Entry { path: RelPath::new(*path).expect("a seed path is valid"), kind });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest::from_entries(entries).expect("the seed target's manifest is valid");
    let mut meta = base_head.meta.clone();
    meta.version = Some("2".into());
    (Head::new(manifest, meta).expect("the seed target is valid"), files)
}
