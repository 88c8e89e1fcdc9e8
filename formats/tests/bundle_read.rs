//! Every refusal of the strict bundle reader, with hostile bundles crafted
//! tar header by tar header.
//!
//! Each test starts from a good release ([`good`]) and breaks exactly one thing:
//! a line of the manifest, one tar header, the bytes after the archive, or the
//! zstd stream. [`bundle`] writes the tar stream as given, with no checks of
//! its own, so paths the tar crate would refuse to set can be written too.

use std::io::{self, Read};

use ferry_formats::bundle::{read, read_head, write, Discard, Head, ReadError, Visitor, WriteOptions};
use ferry_formats::release::FORMAT_VERSION;
use ferry_formats::{
    BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseId, ReleaseMeta, NORMALIZED_MTIME,
};
use tar::{EntryType, Header};

/// One tar entry: its header (checksummed when written) and its data.
type Part = (Header, Vec<u8>);

const A: &[u8] = b"print('a')\n";
const B: &[u8] = b"#!/bin/sh\necho b\n";

fn dir(p: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Dir { mode: 0o755 } }
}

fn file(p: &str, mode: u32, content: &[u8]) -> Entry {
    let kind = EntryKind::File { mode, size: content.len() as u64, hash: BlobHash::of(content) };
    Entry { path: RelPath::new(p).unwrap(), kind }
}

fn link(p: &str, target: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Symlink { target: target.into() } }
}

fn meta() -> ReleaseMeta {
    let component = |kind, p: &str| Component { kind, path: RelPath::new(p).unwrap(), environments: vec![] };
    ReleaseMeta {
        format: FORMAT_VERSION,
        service: "shop".into(),
        version: Some("v1".into()),
        git: None,
        components: vec![component(ComponentKind::Code, "app"), component(ComponentKind::Venv, "venv")],
    }
}

/// The good release, manifest order (# is the position the reader reports):
/// #1 `app`, #2 `app/a`, #3 `app/b`, #4 `app/l` -> `a`, #5 `venv`, #6 `venv/bin`,
/// #7 `venv/bin/python` -> `/usr/bin/python3` (allowed: `venv` is a venv component).
fn good_entries() -> Vec<Entry> {
    vec![
        dir("app"),
        file("app/a", 0o644, A),
        file("app/b", 0o755, B),
        link("app/l", "a"),
        dir("venv"),
        dir("venv/bin"),
        link("venv/bin/python", "/usr/bin/python3"),
    ]
}

fn good_head() -> Head {
    Head::new(Manifest::from_entries(good_entries()).unwrap(), meta()).unwrap()
}

/// The content of the good release's files.
fn content(path: &str) -> Vec<u8> {
    match path {
        "app/a" => A.to_vec(),
        "app/b" => B.to_vec(),
        _ => panic!("no content for {path}"),
    }
}

/// A GNU header with `path` written straight into the name field.
fn header(kind: EntryType, path: &[u8], mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    assert!(path.len() <= name.len(), "{} bytes need a GNU long name", path.len());
    name[..path.len()].copy_from_slice(path);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(NORMALIZED_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn file_part(path: &str, mode: u32, data: &[u8]) -> Part {
    (header(EntryType::Regular, path.as_bytes(), mode, data.len() as u64), data.to_vec())
}

fn dir_part(path: &str, mode: u32) -> Part {
    (header(EntryType::Directory, path.as_bytes(), mode, 0), vec![])
}

fn link_part(path: &str, target: &[u8]) -> Part {
    let mut h = header(EntryType::Symlink, path.as_bytes(), 0o777, 0);
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
    (h, vec![])
}

/// A GNU long name (`L`) or long link name (`K`) entry, as the tar crate writes one.
fn long_name(kind: EntryType, name: &[u8]) -> Part {
    let mut data = name.to_vec();
    data.push(0);
    (header(kind, b"././@LongLink", 0o644, data.len() as u64), data)
}

fn meta_parts(manifest: &[u8], meta: &[u8]) -> Vec<Part> {
    vec![
        dir_part(".ferry", 0o755),
        file_part(".ferry/manifest", 0o644, manifest),
        file_part(".ferry/release.json", 0o644, meta),
    ]
}

/// The tar entries of `head`'s bundle, as the writer lays them out.
fn parts_of(head: &Head, content: impl Fn(&str) -> Vec<u8>) -> Vec<Part> {
    let mut parts = meta_parts(&head.manifest.to_text(), &head.meta.to_canonical());
    for e in head.manifest.entries() {
        let p = e.path.as_str();
        parts.push(match &e.kind {
            EntryKind::Dir { mode } => dir_part(p, *mode),
            EntryKind::File { mode, .. } => file_part(p, *mode, &content(p)),
            EntryKind::Symlink { target } => link_part(p, target.as_bytes()),
        });
    }
    parts
}

fn good() -> Vec<Part> {
    parts_of(&good_head(), content)
}

/// The index in `parts` of the entry named `path`.
fn find(parts: &[Part], path: &str) -> usize {
    parts.iter().position(|(h, _)| h.path_bytes() == path.as_bytes()).unwrap()
}

/// The tar stream of `parts`, headers written as given (then checksummed),
/// data padded to 512 bytes, and the tar crate's two-zero-block end marker.
fn tar_of(parts: &[Part]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (h, data) in parts {
        let mut h = h.clone();
        h.set_cksum();
        tar.append(&h, &data[..]).unwrap();
    }
    tar.into_inner().unwrap()
}

/// One zstd frame of `tar`, without ferry's checksum trailer.
fn zst(tar: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(tar, 3).unwrap()
}

/// A metadata frame and the padding frame format 3 puts after it.
fn padded(metadata_frame: Vec<u8>) -> Vec<u8> {
    let pad = ferry_formats::bundle::padding(metadata_frame.len());
    [metadata_frame, pad].concat()
}

/// A metadata frame, its padding and a files frame, followed by ferry's
/// trailer: a skippable frame holding the blake3 of what comes before the
/// files frame and of the files frame.
fn seal(metadata_frame: Vec<u8>, files_frame: Vec<u8>) -> Vec<u8> {
    let head = padded(metadata_frame);
    let trailer = ferry_formats::bundle::trailer(blake3::hash(&head), blake3::hash(&files_frame));
    [head, files_frame, trailer.to_vec()].concat()
}

/// The one helper that crafts a bundle.
/// A bundle of `parts` as ferry lays it out: the first three entries (the
/// metadata) in a zstd frame of their own, the rest and the end marker in a
/// second, then the trailer.
fn bundle(parts: &[Part]) -> Vec<u8> {
    sealed(&tar_of(parts))
}

/// A tar stream that starts with the good metadata entries, compressed as ferry
/// does: the metadata in a zstd frame of its own, the rest in a second.
fn two_frames(tar: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let split = (tar_of(&good()[..3]).len() - 1024).min(tar.len());
    (zst(&tar[..split]), zst(&tar[split..]))
}

/// [`two_frames`] and the trailer.
fn sealed(tar: &[u8]) -> Vec<u8> {
    let (metadata, files) = two_frames(tar);
    seal(metadata, files)
}

/// The good bundle with the entry at `path` replaced by `with` (one or more parts).
fn replaced(path: &str, with: Vec<Part>) -> Vec<u8> {
    let mut parts = good();
    let i = find(&parts, path);
    parts.splice(i..=i, with);
    bundle(&parts)
}

/// A bundle with this manifest text and the good metadata; no entries follow.
fn with_manifest(text: &[u8]) -> Vec<u8> {
    bundle(&meta_parts(text, &meta().to_canonical()))
}

fn manifest_text(lines: &[String]) -> Vec<u8> {
    let mut text = b"ferry-manifest 1\n".to_vec();
    for l in lines {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    text
}

fn f_line(path: &str, content: &[u8]) -> String {
    format!("f\t644\t{}\t{}\t{path}", content.len(), BlobHash::of(content))
}

/// `read`'s refusal of `bundle` (a rule broken), as text.
fn refused(bundle: &[u8]) -> String {
    match read(bundle, None, &mut Discard) {
        Err(e @ ReadError::Refused { .. }) => e.to_string(),
        Err(e) => panic!("expected a refusal, got another error: {e:?}"),
        Ok(_) => panic!("the reader accepted the bundle"),
    }
}

/// A refusal of the head: `read_head` must refuse it with the same words.
fn head_refused(bundle: &[u8]) -> String {
    let msg = refused(bundle);
    let head = read_head(bundle, None).map(|h| h.id).unwrap_err().to_string();
    assert_eq!(head, msg, "read_head and read disagree");
    msg
}

/// `read`'s report of a damaged stream and its cause, as text.
fn corrupt(bundle: &[u8]) -> String {
    match read(bundle, None, &mut Discard) {
        Err(e @ ReadError::Corrupt { .. }) => {
            format!("{e}: {}", std::error::Error::source(&e).unwrap())
        }
        Err(e) => panic!("expected Corrupt, got another error: {e:?}"),
        Ok(_) => panic!("the reader accepted the bundle"),
    }
}

// ---- the baseline -------------------------------------------------------

#[test]
fn crafted_good_bundle_is_the_writers_bundle() {
    let head = good_head();
    let written = write(Vec::new(), &head, &WriteOptions { level: 3, workers: 1 }, |e| {
        Ok(io::Cursor::new(content(e.path.as_str())))
    })
    .unwrap();
    assert!(
        zstd::stream::decode_all(&written[..]).unwrap() == tar_of(&good()),
        "crafted tar differs from the writer's"
    );
    let verified = read(&bundle(&good())[..], Some(&head.id), &mut Discard).unwrap();
    assert_eq!(verified.head().id, head.id);
    assert_eq!(read_head(&bundle(&good())[..], Some(&head.id)).unwrap().id, head.id);
}

#[test]
fn longest_path_and_link_target_are_accepted() {
    // 4096-byte path (carried by a 4097-byte GNU long name) and 4096-byte target.
    let lens = [[255; 15].as_slice(), &[240, 15]].concat();
    let comps: Vec<String> =
        lens.iter().enumerate().map(|(i, n)| char::from(b'a' + i as u8).to_string().repeat(*n)).collect();
    let interpreter = format!("/{}python3", "q/".repeat(2044));
    assert_eq!(interpreter.len(), 4096);
    // `app` too: meta()'s code component, which must be a directory of the release.
    let mut entries = vec![dir("app"), dir("venv"), dir("venv/bin"), link("venv/bin/python", &interpreter)];
    for i in 1..comps.len() {
        entries.push(dir(&comps[..i].join("/")));
    }
    let long = comps.join("/");
    assert_eq!(long.len(), 4096);
    entries.push(file(&long, 0o644, A));
    let head = Head::new(Manifest::from_entries(entries).unwrap(), meta()).unwrap();
    let bytes = write(Vec::new(), &head, &WriteOptions { level: 3, workers: 1 }, |_| Ok(A)).unwrap();
    read(&bytes[..], Some(&head.id), &mut Discard).unwrap();
}

// ---- 1. path rules of the manifest ------------------------------------------

#[test]
fn manifest_path_with_dot_dot() {
    let msg = head_refused(&with_manifest(&manifest_text(&["d\t755\t..".into(), f_line("../evil", A)])));
    assert!(
        msg.contains(".ferry/manifest: manifest line 2: path \"..\": the path has a '.' or '..' component"),
        "{msg}"
    );
    let msg = head_refused(&with_manifest(&manifest_text(&["d\t755\tapp".into(), f_line("app/../../evil", A)])));
    assert!(msg.contains("line 3: path \"app/../../evil\": the path has a '.' or '..' component"), "{msg}");
}

#[test]
fn manifest_absolute_path() {
    let msg = head_refused(&with_manifest(&manifest_text(&[f_line("/etc/passwd", A)])));
    assert!(msg.contains(".ferry/manifest: manifest line 2: path \"/etc/passwd\": the path is absolute"), "{msg}");
}

#[test]
fn manifest_duplicate_path() {
    let msg = head_refused(&with_manifest(&manifest_text(&[f_line("a", A), f_line("a", B)])));
    assert!(msg.contains("manifest line 3: \"a\": duplicate path \"a\""), "{msg}");
}

#[test]
fn manifest_unsorted() {
    let msg = head_refused(&with_manifest(&manifest_text(&[f_line("b", A), f_line("a", A)])));
    assert!(msg.contains("manifest line 3: \"a\": not sorted: comes after \"b\""), "{msg}");
}

#[test]
fn manifest_not_utf8() {
    let mut text = manifest_text(&[f_line("a", A), f_line("bX", A)]);
    let x = text.iter().rposition(|&b| b == b'X').unwrap();
    text[x] = 0xff;
    let msg = head_refused(&with_manifest(&text));
    assert!(msg.contains(".ferry/manifest: manifest line 3: not UTF-8"), "{msg}");
}

#[test]
fn manifest_reserved_ferry_paths() {
    let msg = head_refused(&with_manifest(&manifest_text(&["d\t755\t.ferry".into(), f_line(".ferry/manifest", A)])));
    assert!(msg.contains("manifest entry \".ferry\": paths under .ferry are reserved for bundle metadata"), "{msg}");
}

#[test]
fn manifest_not_canonical() {
    let msg = head_refused(&with_manifest(&manifest_text(&["d\t0755\tapp".into()])));
    assert!(msg.contains("manifest line 2: mode \"0755\" must be exactly three octal digits"), "{msg}");
    let msg = head_refused(&with_manifest(b"ferry-manifest 2\n"));
    assert!(msg.contains("manifest line 1: expected header \"ferry-manifest 1\""), "{msg}");
}

// ---- 2. a tar path that is not the manifest's next entry ---------------------

#[test]
fn tar_path_dot_dot_in_place_of_manifest_entry() {
    let msg = refused(&replaced("app/a", vec![file_part("../evil", 0o644, A)]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar has \"../evil\" in its place"), "{msg}");
}

#[test]
fn tar_path_absolute_in_place_of_manifest_entry() {
    let msg = refused(&replaced("app/a", vec![file_part("/etc/x", 0o644, A)]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar has \"/etc/x\" in its place"), "{msg}");
}

#[test]
fn tar_long_name_overrides_a_matching_header_name() {
    // The header itself says app/a, but a GNU long name (what tar extracts) says ../evil.
    let msg =
        refused(&replaced("app/a", vec![long_name(EntryType::GNULongName, b"../evil"), file_part("app/a", 0o644, A)]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar has \"../evil\" in its place"), "{msg}");
}

#[test]
fn tar_path_not_utf8() {
    let mut part = file_part("app/a", 0o644, A);
    part.0.as_old_mut().name[4] = 0xff;
    let msg = refused(&replaced("app/a", vec![part]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar has \"app/\u{fffd}\" in its place"), "{msg}");
}

// ---- 3. symlinks out of the release -----------------------------------------

fn with_entries(entries: Vec<Entry>, meta: &ReleaseMeta) -> Vec<u8> {
    // Manifest::from_entries checks paths but not links; Head::new would refuse these.
    with_manifest_and_meta(&Manifest::from_entries(entries).unwrap().to_text(), &meta.to_canonical())
}

fn with_manifest_and_meta(manifest: &[u8], meta: &[u8]) -> Vec<u8> {
    bundle(&meta_parts(manifest, meta))
}

#[test]
fn relative_symlink_escaping_the_root() {
    let msg = head_refused(&with_entries(vec![dir("app"), link("app/l", "../../x")], &meta()));
    assert!(
        msg.contains(".ferry/manifest: manifest entry \"app/l\": symlink to \"../../x\" resolves outside the release"),
        "{msg}"
    );
}

#[test]
fn absolute_symlink_outside_a_venv() {
    let msg = head_refused(&with_entries(vec![dir("app"), link("app/python", "/usr/bin/python3")], &meta()));
    assert!(
        msg.contains("manifest entry \"app/python\": symlink to \"/usr/bin/python3\" points outside the release"),
        "{msg}"
    );
}

#[test]
fn absolute_interpreter_link_needs_a_venv_component() {
    // The good release's venv/bin/python, with metadata that has no venv component.
    let mut no_venv = meta();
    no_venv.components.retain(|c| c.kind != ComponentKind::Venv);
    let head = good_head();
    let msg = head_refused(&with_manifest_and_meta(&head.manifest.to_text(), &no_venv.to_canonical()));
    assert!(
        msg.contains("manifest entry \"venv/bin/python\": symlink to \"/usr/bin/python3\" points outside"),
        "{msg}"
    );
}

#[test]
fn absolute_interpreter_link_in_a_venv_is_allowed() {
    let head = good_head();
    let python = head.manifest.get("venv/bin/python").unwrap();
    assert_eq!(python.kind, EntryKind::Symlink { target: "/usr/bin/python3".into() });
    read(&bundle(&good())[..], Some(&head.id), &mut Discard).unwrap();
}

#[test]
fn tar_symlink_target_differs_from_manifest() {
    let msg = refused(&replaced("app/l", vec![link_part("app/l", b"../../x")]));
    assert!(
        msg.contains("entry \"app/l\" (#4 of the manifest): links to \"../../x\" in the tar, \"a\" in the manifest"),
        "{msg}"
    );
    let msg = refused(&replaced("app/l", vec![link_part("app/l", b"/etc/passwd")]));
    assert!(msg.contains("links to \"/etc/passwd\" in the tar, \"a\" in the manifest"), "{msg}");
}

#[test]
fn tar_long_link_target_differs_from_manifest() {
    let msg =
        refused(&replaced("app/l", vec![long_name(EntryType::GNULongLink, b"../../x"), link_part("app/l", b"a")]));
    assert!(
        msg.contains("entry \"app/l\" (#4 of the manifest): links to \"../../x\" in the tar, \"a\" in the manifest"),
        "{msg}"
    );
}

// ---- 4. a file under a symlinked directory ------------------------------------

#[test]
fn manifest_file_under_a_symlink() {
    let lines = ["l\tapp\t/etc".to_string(), f_line("app/passwd", A)];
    let msg = head_refused(&with_manifest(&manifest_text(&lines)));
    assert!(
        msg.contains("manifest entry \"app/passwd\": its parent \"app\" is not a directory entry of the manifest"),
        "{msg}"
    );
}

#[test]
fn tar_symlink_in_place_of_a_directory() {
    let msg = refused(&replaced("app", vec![link_part("app", b"/etc")]));
    assert!(
        msg.contains("entry \"app\" (#1 of the manifest): the tar holds a symlink, the manifest says a directory"),
        "{msg}"
    );
}

// ---- 5. entry types ferry bundles never have --------------------------------

fn in_place_of_app_a(kind: EntryType) -> String {
    let mut part = (header(kind, b"app/a", 0o644, 0), vec![]);
    if kind == EntryType::Link {
        part.0.as_old_mut().linkname[..5].copy_from_slice(b"app/b");
    }
    refused(&replaced("app/a", vec![part]))
}

#[test]
fn char_device_in_place_of_a_file() {
    let msg = in_place_of_app_a(EntryType::Char);
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar holds a character device (ferry bundles have none), the manifest says a file"), "{msg}");
}

#[test]
fn block_device_in_place_of_a_file() {
    let msg = in_place_of_app_a(EntryType::Block);
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar holds a block device"), "{msg}");
}

#[test]
fn fifo_in_place_of_a_file() {
    let msg = in_place_of_app_a(EntryType::Fifo);
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar holds a fifo"), "{msg}");
}

#[test]
fn hard_link_in_place_of_a_file() {
    let msg = in_place_of_app_a(EntryType::Link);
    assert!(
        msg.contains("entry \"app/a\" (#2 of the manifest): the tar holds a hard link (ferry bundles have none)"),
        "{msg}"
    );
}

#[test]
fn contiguous_file_in_place_of_a_file() {
    // Type '7' is refused; the message must not call it what the manifest wants.
    let msg = in_place_of_app_a(EntryType::Continuous);
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): the tar holds"), "{msg}");
    assert!(!msg.contains("the tar holds a file, the manifest says a file"), "{msg}");
}

#[test]
fn other_types_in_place_of_a_file() {
    let msg = in_place_of_app_a(EntryType::GNUSparse);
    assert!(msg.contains("the tar holds a sparse file"), "{msg}");
    let msg = in_place_of_app_a(EntryType::Directory);
    assert!(msg.contains("the tar holds a directory, the manifest says a file"), "{msg}");
}

#[test]
fn non_gnu_headers() {
    for (name, mut h) in [("ustar", Header::new_ustar()), ("v7", Header::new_old())] {
        h.set_path("app/a").unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(A.len() as u64);
        let msg = refused(&replaced("app/a", vec![(h, A.to_vec())]));
        assert!(
            msg.contains("after entry \"app\" (tar entry #5): a tar header that is not in GNU format"),
            "{name}: {msg}"
        );
    }
}

// ---- 6. modes -------------------------------------------------------------

#[test]
fn setuid_setgid_sticky_in_tar_mode() {
    let msg = refused(&replaced("app/b", vec![file_part("app/b", 0o4755, B)]));
    assert!(msg.contains("entry \"app/b\" (#3 of the manifest): mode 4755 has setuid, setgid or sticky bits"), "{msg}");
    let msg = refused(&replaced("app/b", vec![file_part("app/b", 0o2755, B)]));
    assert!(msg.contains("mode 2755 has setuid, setgid or sticky bits"), "{msg}");
    let msg = refused(&replaced("app", vec![dir_part("app", 0o1755)]));
    assert!(msg.contains("entry \"app\" (#1 of the manifest): mode 1755 has setuid, setgid or sticky bits"), "{msg}");
}

#[test]
fn tar_mode_differs_from_manifest() {
    let msg = refused(&replaced("app/a", vec![file_part("app/a", 0o755, A)]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): mode 755 in the tar, 644 in the manifest"), "{msg}");
    let mut l = link_part("app/l", b"a");
    l.0.set_mode(0o755);
    let msg = refused(&replaced("app/l", vec![l]));
    assert!(msg.contains("entry \"app/l\" (#4 of the manifest): mode 755 in the tar, 777 in the manifest"), "{msg}");
    // File-type bits in the mode field (as some tars write) are not permission bits.
    let msg = refused(&replaced("app/a", vec![file_part("app/a", 0o100644, A)]));
    assert!(msg.contains("mode 100644 in the tar, 644 in the manifest"), "{msg}");
}

#[test]
fn unreadable_mode_field() {
    let mut part = file_part("app/a", 0o644, A);
    part.0.as_old_mut().mode = *b"zzzzzzz\0";
    let msg = refused(&replaced("app/a", vec![part]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): unreadable mode field"), "{msg}");
}

// ---- 7. size and content ----------------------------------------------------

#[test]
fn tar_size_differs_from_manifest() {
    let msg = refused(&replaced("app/a", vec![file_part("app/a", 0o644, b"print('a')\n\n")]));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): size 12 in the tar, 11 in the manifest"), "{msg}");
    let msg = refused(&replaced("app", vec![(header(EntryType::Directory, b"app", 0o755, 512), vec![0; 512])]));
    assert!(msg.contains("entry \"app\" (#1 of the manifest): size 512 in the tar, 0 in the manifest"), "{msg}");
    let mut l = link_part("app/l", b"a");
    l.0.set_size(1);
    l.1 = b"x".to_vec();
    let msg = refused(&replaced("app/l", vec![l]));
    assert!(msg.contains("entry \"app/l\" (#4 of the manifest): size 1 in the tar, 0 in the manifest"), "{msg}");
}

#[test]
fn crafted_content_hash_mismatch() {
    let msg = refused(&replaced("app/b", vec![file_part("app/b", 0o755, b"#!/bin/sh\necho B\n")]));
    let want = format!(
        "entry \"app/b\" (#3 of the manifest): content hashes to {}, the manifest says {}",
        BlobHash::of(b"#!/bin/sh\necho B\n"),
        BlobHash::of(B)
    );
    assert!(msg.contains(&want), "{msg}");
}

#[test]
fn written_bundle_with_one_flipped_content_byte() {
    let head = good_head();
    let written = write(Vec::new(), &head, &WriteOptions { level: 3, workers: 1 }, |e| {
        Ok(io::Cursor::new(content(e.path.as_str())))
    })
    .unwrap();
    let mut tar = zstd::stream::decode_all(&written[..]).unwrap();
    let at = tar.windows(A.len()).position(|w| w == A).unwrap();
    tar[at + 6] ^= 0x01; // print('a') -> print('`')
    let msg = refused(&sealed(&tar));
    assert!(msg.contains("entry \"app/a\" (#2 of the manifest): content hashes to"), "{msg}");
    assert!(msg.contains(&format!("the manifest says {}", BlobHash::of(A))), "{msg}");
}

#[test]
fn tar_stream_ends_inside_a_file() {
    // A well-formed zstd stream whose tar stops 3 bytes into app/b's content.
    let parts = good();
    let i = find(&parts, "app/b");
    let mut tar = tar_of(&parts[..i]);
    tar.truncate(tar.len() - 1024); // no end marker yet
    tar.extend_from_slice(&tar_of(&parts[i..=i])[..512 + 3]);
    let msg = refused(&sealed(&tar));
    assert!(msg.contains("entry \"app/b\" (#3 of the manifest): 3 bytes of content, the manifest says 17"), "{msg}");
}

// ---- 8. missing, trailing and truncated ----------------------------------------

#[test]
fn bundle_ends_early() {
    let parts = good();
    let msg = refused(&bundle(&parts[..find(&parts, "app/b")]));
    assert!(msg.contains("entry \"app/b\" (#3 of the manifest): missing: the bundle ends early"), "{msg}");
}

#[test]
fn trailing_tar_entry_not_in_manifest() {
    let mut parts = good();
    parts.push(file_part("zzz", 0o644, A));
    let msg = refused(&bundle(&parts));
    assert!(msg.contains("entry \"zzz\": trailing: it is not in the manifest"), "{msg}");
}

#[test]
fn extra_block_after_the_end_of_the_archive() {
    let mut tar = tar_of(&good());
    tar.extend_from_slice(&[0x41; 512]);
    let msg = refused(&sealed(&tar));
    assert!(
        msg.contains("in the files frame, after the last entry: 1024 trailing bytes, expected one 512-byte zero block"),
        "{msg}"
    );
    // A hidden entry after the first zero block.
    let mut tar = tar_of(&good());
    tar.truncate(tar.len() - 512);
    tar.extend_from_slice(&tar_of(&[file_part("zzz", 0o644, A)]));
    let msg = refused(&sealed(&tar));
    assert!(msg.contains("in the files frame, after the last entry: 2048 trailing bytes"), "{msg}");
}

#[test]
fn missing_end_blocks() {
    let mut tar = tar_of(&good());
    tar.truncate(tar.len() - 512);
    let msg = refused(&sealed(&tar));
    assert!(
        msg.contains("in the files frame, after the last entry: 0 trailing bytes, expected one 512-byte zero block"),
        "{msg}"
    );
    tar.truncate(tar.len() - 512);
    let msg = refused(&sealed(&tar));
    assert!(msg.contains("in the files frame, after the last entry: 0 trailing bytes"), "{msg}");
}

#[test]
fn garbage_after_the_zstd_frame() {
    let mut bytes = bundle(&good());
    bytes.extend_from_slice(b"garbage!");
    let err = read(&bytes[..], None, &mut Discard).map(|v| v.head().id).unwrap_err();
    assert_eq!(err.to_string(), "after the files frame: trailing data after the checksum trailer");
}

#[test]
fn skippable_zstd_frame_after_the_bundle() {
    // A zstd skippable frame (magic 0x184D2A50, length, payload): decoders skip it silently.
    let mut bytes = bundle(&good());
    bytes.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(b"payload!");
    let err = read(&bytes[..], None, &mut Discard).map(|v| v.head().id).unwrap_err();
    assert_eq!(err.to_string(), "after the files frame: trailing data after the checksum trailer");
}

#[test]
fn second_zstd_frame_after_the_bundle() {
    // An empty second zstd frame: nothing is decoded from it, but it is bytes after the bundle.
    let mut bytes = bundle(&good());
    bytes.extend_from_slice(&zst(b""));
    let err = read(&bytes[..], None, &mut Discard).map(|v| v.head().id).unwrap_err();
    assert_eq!(err.to_string(), "after the files frame: trailing data after the checksum trailer");
}

#[test]
fn truncated_zstd_stream() {
    // 512 KiB of incompressible content (several zstd blocks), so half the
    // compressed bytes cuts the stream inside that file.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..1 << 19)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let mut entries = good_entries();
    entries.push(file("zzz", 0o644, &big));
    let head = Head::new(Manifest::from_entries(entries).unwrap(), meta()).unwrap();
    let parts = parts_of(&head, |p| if p == "zzz" { big.clone() } else { content(p) });
    let mut bytes = bundle(&parts);
    read(&bytes[..], Some(&head.id), &mut Discard).unwrap();
    bytes.truncate(bytes.len() / 2);
    let msg = corrupt(&bytes);
    assert!(
        msg.contains("the bundle is corrupt or truncated in entry \"zzz\" (#8 of the manifest): incomplete frame"),
        "{msg}"
    );
}

#[test]
fn not_zstd_at_all() {
    let msg = corrupt(&tar_of(&good()));
    assert!(msg.contains("the bundle is corrupt or truncated in the metadata frame, before the first entry"), "{msg}");
    let err = read_head(&b"not a bundle"[..], None).map(|h| h.id).unwrap_err();
    assert!(matches!(err, ReadError::Corrupt { .. }), "{err}");
}

#[test]
fn zstd_window_larger_than_allowed() {
    // Hand-made frames: a header with the given window, one raw last block.
    let tar = tar_of(&good());
    assert!(tar.len() < 128 << 10);
    let split = tar_of(&good()[..3]).len() - 1024;
    let frame = |window_log: u8, data: &[u8]| {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
        f.extend_from_slice(&((data.len() as u32) << 3 | 1).to_le_bytes()[..3]);
        f.extend_from_slice(data);
        f
    };
    let bundle = |meta_log: u8, files_log: u8| seal(frame(meta_log, &tar[..split]), frame(files_log, &tar[split..]));
    read(&bundle(20, 20)[..], None, &mut Discard).unwrap();
    // A 256 MiB window (log 28) in either frame.
    let msg = corrupt(&bundle(28, 20));
    assert!(
        msg.contains(
            "corrupt or truncated in the metadata frame, before the first entry: Frame requires too much memory"
        ),
        "{msg}"
    );
    let msg = corrupt(&bundle(20, 28));
    assert!(msg.contains("Frame requires too much memory"), "{msg}");
}

#[test]
fn bad_header_checksum() {
    // Change one digit of app/a's mtime field without fixing the header checksum.
    let mut tar = tar_of(&good());
    let h = tar.windows(6).position(|w| w == b"app/a\0").unwrap();
    tar[h + 136] ^= 0x01;
    let msg = corrupt(&sealed(&tar));
    assert!(
        msg.contains("corrupt or truncated after entry \"app\" (tar entry #4): archive header checksum mismatch"),
        "{msg}"
    );
}

#[test]
fn unreadable_size_field() {
    let mut part = file_part("app/a", 0o644, A);
    part.0.as_old_mut().size = *b"zzzzzzzzzzz\0";
    let msg = corrupt(&replaced("app/a", vec![part]));
    assert!(msg.contains("corrupt or truncated after entry \"app\" (tar entry #4)"), "{msg}");
}

// ---- 9. PAX headers and GNU long names -----------------------------------------

#[test]
fn pax_extended_header() {
    let pax = b"30 path=app/aaaaaaaaaaaaaaaaa\n".to_vec();
    let x = (header(EntryType::XHeader, b"PaxHeader/app/a", 0o644, pax.len() as u64), pax.clone());
    let msg = refused(&replaced("app/a", vec![x, file_part("app/a", 0o644, A)]));
    assert!(
        msg.contains("after entry \"app\" (tar entry #5): a PAX extended header (ferry bundles have none)"),
        "{msg}"
    );
    let g = (header(EntryType::XGlobalHeader, b"pax_global_header", 0o644, pax.len() as u64), pax);
    let mut parts = good();
    parts.insert(0, g);
    let msg = refused(&bundle(&parts));
    assert!(
        msg.contains("in the metadata frame, before the first entry: a PAX extended header (ferry bundles have none)"),
        "{msg}"
    );
}

#[test]
fn gnu_long_name_too_long() {
    let msg = refused(&replaced(
        "app/a",
        vec![long_name(EntryType::GNULongName, &[b'a'; 4097]), file_part("app/a", 0o644, A)],
    ));
    assert!(msg.contains("after entry \"app\" (tar entry #5): a GNU long name of 4098 bytes"), "{msg}");
}

#[test]
fn gnu_long_name_size_is_refused_before_reading() {
    // Claims 300 MiB and carries nothing: reading would hit the end of the stream.
    let claim = (header(EntryType::GNULongName, b"././@LongLink", 0o644, 300 << 20), vec![]);
    let msg = refused(&replaced("app/a", vec![claim]));
    assert!(msg.contains("a GNU long name of 314572800 bytes"), "{msg}");
}

#[test]
fn two_gnu_long_names_for_one_entry() {
    let l = long_name(EntryType::GNULongName, b"app/a");
    let msg = refused(&replaced("app/a", vec![l.clone(), l, file_part("app/a", 0o644, A)]));
    assert!(msg.contains("after entry \"app\" (tar entry #6): two GNU long names for one entry"), "{msg}");
}

#[test]
fn gnu_long_name_followed_by_nothing() {
    let mut parts = good();
    parts.push(long_name(EntryType::GNULongName, b"zzz"));
    let msg = refused(&bundle(&parts));
    assert!(msg.contains("a GNU long name is followed by no entry"), "{msg}");
}

#[test]
fn gnu_long_link_on_a_file() {
    let msg = refused(&replaced(
        "app/a",
        vec![long_name(EntryType::GNULongLink, b"/etc/passwd"), file_part("app/a", 0o644, A)],
    ));
    assert!(
        msg.contains("entry \"app/a\" (#2 of the manifest): has a GNU long link name but is not a symlink"),
        "{msg}"
    );
}

// ---- 10. the metadata -----------------------------------------------------

#[test]
fn empty_bundle() {
    let msg = head_refused(&bundle(&[]));
    assert!(msg.contains("the metadata directory .ferry: missing: the bundle is empty"), "{msg}");
}

#[test]
fn first_entry_not_ferry_dir() {
    let mut parts = good();
    parts.remove(0);
    let msg = head_refused(&bundle(&parts));
    assert!(
        msg.contains("the metadata directory .ferry: the first entry must be it, found \".ferry/manifest\""),
        "{msg}"
    );
    let mut parts = good();
    parts.rotate_left(3); // the release's entries first
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains("the first entry must be it, found \"app\""), "{msg}");
    let mut parts = good();
    parts[0] = file_part(".ferry", 0o755, b"");
    let msg = head_refused(&bundle(&parts));
    assert_eq!(msg, "the metadata directory .ferry: the tar holds a file, the manifest says a directory");
}

#[test]
fn manifest_not_second() {
    let mut parts = good();
    parts.swap(1, 2);
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/manifest: expected it next, found \".ferry/release.json\""), "{msg}");
    let mut parts = good();
    parts[1] = dir_part(".ferry/manifest", 0o755);
    let msg = head_refused(&bundle(&parts));
    assert_eq!(msg, ".ferry/manifest: the tar holds a directory, the manifest says a file");
}

#[test]
fn metadata_ends_early() {
    let parts = good();
    let msg = head_refused(&bundle(&parts[..1]));
    assert!(msg.contains(".ferry/manifest: missing: the bundle ends early"), "{msg}");
    let msg = head_refused(&bundle(&parts[..2]));
    assert!(msg.contains(".ferry/release.json: missing: the bundle ends early"), "{msg}");
}

#[test]
fn oversize_manifest_claim_is_refused_before_reading() {
    let mut parts = good();
    parts[1].0.set_size(300 << 20); // the data stays a few hundred bytes
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/manifest: 314572800 bytes; at most 16777216 are accepted"), "{msg}");
    let mut parts = good();
    parts[2].0.set_size((1 << 20) + 1);
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/release.json: 1048577 bytes; at most 1048576 are accepted"), "{msg}");
}

#[test]
fn metadata_file_truncated() {
    // release.json claims 1 MiB and the stream ends after a few hundred bytes.
    let mut parts = good();
    parts.truncate(3);
    parts[2].0.set_size(1 << 20);
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/release.json: truncated"), "{msg}");
}

#[test]
fn release_json_unknown_field() {
    let text = br#"{"format":1,"service":"shop","components":[],"evil":1}
"#;
    let msg = head_refused(&with_manifest_and_meta(b"ferry-manifest 1\n", text));
    assert!(
        msg.contains(
            ".ferry/release.json: release metadata is not valid JSON of the expected shape: unknown field `evil`"
        ),
        "{msg}"
    );
}

#[test]
fn release_json_not_canonical() {
    let manifest = good_head().manifest.to_text();
    let pretty = serde_json::to_vec_pretty(&meta()).unwrap();
    let msg = head_refused(&with_manifest_and_meta(&manifest, &pretty));
    assert!(msg.contains(".ferry/release.json: release metadata is not in canonical form"), "{msg}");
    let mut no_newline = meta().to_canonical();
    no_newline.pop();
    let msg = head_refused(&with_manifest_and_meta(&manifest, &no_newline));
    assert!(msg.contains(".ferry/release.json: release metadata is not in canonical form"), "{msg}");
}

#[test]
fn release_json_invalid() {
    let mut bad = meta();
    bad.service = "Shop".into();
    let msg = head_refused(&with_manifest_and_meta(b"ferry-manifest 1\n", &bad.to_canonical()));
    assert!(msg.contains(".ferry/release.json: release metadata: service name \"Shop\""), "{msg}");
    let msg = head_refused(&with_manifest_and_meta(
        b"ferry-manifest 1\n",
        b"{\"format\":4,\"service\":\"shop\",\"components\":[]}\n",
    ));
    assert!(
        msg.contains(".ferry/release.json: release metadata has format 4; this ferry reads formats 1 to 3"),
        "{msg}"
    );
}

// ---- format 3's padding frame ---------------------------------------------------

/// The good release as a bundle whose bytes before the files frame are
/// `head(metadata frame)`, sealed over them.
fn with_head(head: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let (metadata, files) = two_frames(&tar_of(&good()));
    let head = head(metadata);
    let trailer = ferry_formats::bundle::trailer(blake3::hash(&head), blake3::hash(&files));
    [head, files, trailer.to_vec()].concat()
}

#[test]
fn the_files_frame_starts_on_a_4_kib_boundary_after_zeros() {
    let bytes = bundle(&good());
    read(&bytes[..], None, &mut Discard).unwrap();
    let (metadata, files) = two_frames(&tar_of(&good()));
    let start = bytes.len() - 80 - files.len();
    assert_eq!(start % 4096, 0, "the files frame starts at {start}");
    let pad = &bytes[metadata.len()..start];
    assert!(pad.len() >= 8 && pad.len() < 4096 + 8, "{} bytes of padding", pad.len());
    assert_eq!(pad[..4], 0x184D_2A50u32.to_le_bytes(), "a skippable frame");
    assert_eq!(u32::from_le_bytes(pad[4..8].try_into().unwrap()) as usize, pad.len() - 8);
    assert!(pad[8..].iter().all(|&b| b == 0));
    // Any zstd decoder passes over it: the bundle is one tar stream.
    assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), tar_of(&good()));
}

#[test]
fn a_format_3_bundle_without_its_padding_or_with_other_padding_is_refused() {
    let no_padding = with_head(|m| m);
    let msg = corrupt(&no_padding);
    assert!(msg.contains("format 3 has a padding frame of"), "{msg}");
    let nonzero = with_head(|m| {
        let mut head = padded(m);
        let last = head.len() - 1;
        head[last] = 1;
        head
    });
    let msg = corrupt(&nonzero);
    assert!(msg.contains("format 3 has a padding frame of") && msg.contains("these bytes are not it"), "{msg}");
    // A valid skippable frame 4 KiB longer than the rule's: the files frame
    // would still start on a boundary, but the same release has one byte sequence.
    let longer = with_head(|m| {
        let at = m.len();
        let mut head = padded(m);
        let len = u32::from_le_bytes(head[at + 4..at + 8].try_into().unwrap()) + 4096;
        head[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&[0; 4096]);
        head
    });
    let msg = corrupt(&longer);
    assert!(msg.contains("these bytes are not it"), "{msg}");
}

#[test]
fn a_format_2_bundle_with_a_padding_frame_is_refused() {
    let mut old = meta();
    old.format = 2;
    let head = Head::new(Manifest::from_entries(good_entries()).unwrap(), old).unwrap();
    let tar = tar_of(&parts_of(&head, content));
    let split = (tar_of(&parts_of(&head, content)[..3]).len() - 1024).min(tar.len());
    let (metadata, files) = (zst(&tar[..split]), zst(&tar[split..]));
    let plain = {
        let trailer = ferry_formats::bundle::trailer(blake3::hash(&metadata), blake3::hash(&files));
        [metadata.clone(), files.clone(), trailer.to_vec()].concat()
    };
    read(&plain[..], Some(&head.id), &mut Discard).unwrap();
    let with_pad = {
        let head = padded(metadata);
        let trailer = ferry_formats::bundle::trailer(blake3::hash(&head), blake3::hash(&files));
        [head, files, trailer.to_vec()].concat()
    };
    assert!(read(&with_pad[..], Some(&head.id), &mut Discard).is_err(), "format 2 has no padding frame");
}

#[test]
fn release_id_mismatch() {
    let bytes = bundle(&good());
    let other = ReleaseId::compute(b"other", b"release");
    let want = format!("the bundle's contents hash to release {}, not the expected {other}", good_head().id);
    let err = read(&bytes[..], Some(&other), &mut Discard).map(|v| v.head().id).unwrap_err();
    assert!(matches!(err, ReadError::IdMismatch { .. }) && err.to_string() == want, "{err}");
    let err = read_head(&bytes[..], Some(&other)).map(|h| h.id).unwrap_err();
    assert!(matches!(err, ReadError::IdMismatch { .. }) && err.to_string() == want, "{err}");
}

// ---- 11. visitor errors ---------------------------------------------------

/// Fails at one entry, after reading a little of it, or before the first entry.
struct FailAt(&'static str);

impl Visitor for FailAt {
    fn head(&mut self, _head: &Head) -> io::Result<()> {
        if self.0.is_empty() {
            return Err(io::Error::other("no space left"));
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry, content: &mut dyn Read) -> io::Result<()> {
        if entry.path.as_str() == self.0 {
            let _ = content.read(&mut [0; 3])?;
            return Err(io::Error::other("disk full"));
        }
        Ok(())
    }
}

fn visitor_error(at: &'static str) -> (String, String) {
    match read(&bundle(&good())[..], None, &mut FailAt(at)) {
        Err(ReadError::Visitor { at, source }) => (at, source.to_string()),
        other => panic!("expected a visitor error, got {:?}", other.map(|v| v.head().id)),
    }
}

#[test]
fn visitor_error_names_the_file() {
    let (at, source) = visitor_error("app/b");
    assert_eq!((at.as_str(), source.as_str()), ("entry \"app/b\" (#3 of the manifest)", "disk full"));
}

#[test]
fn visitor_error_names_the_directory() {
    let (at, source) = visitor_error("venv");
    assert_eq!((at.as_str(), source.as_str()), ("entry \"venv\" (#5 of the manifest)", "disk full"));
}

#[test]
fn visitor_error_before_the_first_entry() {
    let (at, source) = visitor_error("");
    assert_eq!((at.as_str(), source.as_str()), ("before the first entry", "no space left"));
}

// ---- headers of the metadata entries --------------------------------------

#[test]
fn metadata_dir_carrying_data() {
    // `.ferry` is a directory without content; this one hides 512 bytes (a release entry may not).
    let mut parts = good();
    parts[0] = (header(EntryType::Directory, b".ferry", 0o755, 512), vec![0x41; 512]);
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains("the metadata directory .ferry") && msg.contains("512"), "{msg}");
}

#[test]
fn metadata_file_with_setuid_mode() {
    let mut parts = good();
    parts[1].0.set_mode(0o4644);
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/manifest") && msg.contains("4644"), "{msg}");
}

#[test]
fn gnu_long_link_on_a_metadata_file() {
    let mut parts = good();
    parts.insert(1, long_name(EntryType::GNULongLink, b"/etc/passwd"));
    let msg = head_refused(&bundle(&parts));
    assert!(msg.contains(".ferry/manifest") && msg.contains("long link"), "{msg}");
}

#[test]
fn a_flipped_bit_that_decodes_the_same_is_caught_by_the_trailer() {
    // Bit 4 of the zstd frame header descriptor is unused: decoders ignore it,
    // so only the trailer's hash of the file can notice the change.
    let mut bytes = bundle(&good());
    bytes[4] ^= 0x10;
    let msg = refused(&bytes);
    assert!(msg.starts_with("after the files frame: the metadata frame's bytes hash to "), "{msg}");
    assert!(msg.ends_with("the file was changed after it was written"), "{msg}");
}

#[test]
fn a_missing_or_damaged_trailer_is_refused() {
    let (metadata, files) = two_frames(&tar_of(&good()));
    let plain = [padded(metadata), files].concat();
    assert_eq!(refused(&plain), "after the files frame: the checksum trailer is missing (truncated?)");
    let good_bytes = bundle(&good());
    let cut = &good_bytes[..good_bytes.len() - 10];
    assert_eq!(refused(cut), "after the files frame: the checksum trailer is cut short (truncated?)");
    let mut junk = plain.clone();
    junk.extend_from_slice(&[0xAB; 80]);
    assert_eq!(
        refused(&junk),
        "after the files frame: trailing data after the compressed stream, where the checksum trailer belongs"
    );
}

#[test]
fn a_flipped_bit_in_the_files_frame_header_is_caught_too() {
    let (metadata, mut files) = two_frames(&tar_of(&good()));
    let sealed_good = seal(metadata.clone(), files.clone());
    read(&sealed_good[..], None, &mut Discard).unwrap();
    let good_trailer = sealed_good[sealed_good.len() - 80..].to_vec();
    files[4] ^= 0x10; // the unused bit of the files frame's header descriptor
    let bytes = [padded(metadata), files, good_trailer].concat();
    let msg = refused(&bytes);
    assert!(msg.starts_with("after the files frame: the files frame's bytes hash to "), "{msg}");
}

// ---- canonical headers: every field, byte for byte ----------------------------

/// The good bundle with `app/a`'s header changed by `edit` (checksum fixed by `tar_of`).
fn with_app_a_header(edit: impl Fn(&mut Header)) -> String {
    let mut part = file_part("app/a", 0o644, A);
    edit(&mut part.0);
    refused(&replaced("app/a", vec![part]))
}

#[test]
fn owner_and_time_must_be_the_canonical_ones() {
    // GNU tar run as root would restore this owner from a bundle that "verified".
    let msg = with_app_a_header(|h| h.set_uid(1000));
    assert!(msg.ends_with("its tar header differs from the one ferry writes, in the uid field"), "{msg}");
    let msg = with_app_a_header(|h| h.set_gid(1000));
    assert!(msg.ends_with("in the gid field"), "{msg}");
    let msg = with_app_a_header(|h| h.set_mtime(1_700_000_000));
    assert!(msg.ends_with("in the mtime field"), "{msg}");
    let msg = with_app_a_header(|h| h.set_username("alice").unwrap());
    assert!(msg.ends_with("in the user name field"), "{msg}");
    assert!(msg.starts_with("entry \"app/a\""), "{msg}");
}

#[test]
fn an_old_style_file_type_or_a_stray_link_name_is_refused() {
    let msg = with_app_a_header(|h| h.as_old_mut().linkflag = [0]);
    assert!(msg.ends_with("in the type field"), "{msg}");
    let msg = with_app_a_header(|h| h.as_old_mut().linkname[..4].copy_from_slice(b"/etc"));
    assert!(msg.ends_with("in the link name field"), "{msg}");
}

#[test]
fn a_long_name_for_a_short_path_is_refused() {
    let mut long = Header::new_gnu();
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    long.set_entry_type(EntryType::GNULongName);
    long.set_size(6);
    long.set_mode(0o644);
    let msg = refused(&replaced("app/a", vec![(long, b"app/a\0".to_vec()), file_part("app/a", 0o644, A)]));
    assert!(msg.contains("1536 bytes of tar headers where ferry writes 512"), "{msg}");
}
