//! Hostile heads (issue 11): what the readers refuse in a manifest and its
//! metadata before anything is written, and how much refusing may cost.

use std::time::{Duration, Instant};

use ferry_formats::bundle::Head;
use ferry_formats::release::FORMAT_VERSION;
use ferry_formats::{BlobHash, Component, ComponentKind, Entry, EntryKind, Manifest, RelPath, ReleaseMeta};

fn file(p: &str, content: &[u8]) -> Entry {
    let kind = EntryKind::File { mode: 0o644, size: content.len() as u64, hash: BlobHash::of(content) };
    Entry { path: RelPath::new(p).unwrap(), kind }
}

fn dir(p: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Dir { mode: 0o755 } }
}

fn link(p: &str, t: &str) -> Entry {
    Entry { path: RelPath::new(p).unwrap(), kind: EntryKind::Symlink { target: t.into() } }
}

fn meta(components: &[(ComponentKind, &str)]) -> ReleaseMeta {
    ReleaseMeta {
        format: FORMAT_VERSION,
        service: "shop".into(),
        version: None,
        git: None,
        components: components
            .iter()
            .map(|(kind, p)| Component {
                kind: *kind,
                path: RelPath::new(*p).unwrap(),
                environments: if *kind == ComponentKind::Config { vec!["prod".into()] } else { vec![] },
            })
            .collect(),
    }
}

#[test]
fn one_content_has_one_size() {
    let mut lie = file("b", b"abc");
    if let EntryKind::File { size, .. } = &mut lie.kind {
        *size = 1 << 30;
    }
    let err = Manifest::from_entries(vec![file("a", b"abc"), lie]).unwrap_err().to_string();
    let want = format!(
        "manifest entry \"b\": content {} is 1073741824 bytes here, but 3 bytes at \"a\"",
        BlobHash::of(b"abc")
    );
    assert_eq!(err, want);
}

#[test]
fn a_component_must_be_an_entry_and_never_a_link() {
    let m = meta(&[(ComponentKind::Code, "app"), (ComponentKind::Config, "config"), (ComponentKind::Jar, "shop.jar")]);
    let head = |entries| Head::new(Manifest::from_entries(entries).unwrap(), m.clone());
    head(vec![dir("app"), dir("config"), dir("config/prod"), file("shop.jar", b"PK")]).unwrap();
    let cases = [
        (
            vec![dir("app"), file("shop.jar", b"PK")],
            "component config (config) is not in the manifest; it must be a directory",
        ),
        (
            vec![dir("app"), link("config", "app"), file("shop.jar", b"PK")],
            "component config (config) is a symlink; it must be a directory",
        ),
        (
            vec![dir("app"), dir("config"), dir("shop.jar")],
            "component shop.jar (jar) is a directory; it must be a file",
        ),
    ];
    for (entries, want) in cases {
        let err = head(entries).unwrap_err().to_string();
        assert!(err.contains(want), "got {err:?}, want {want:?}");
    }
}

#[test]
fn a_chain_of_links_deeper_than_the_kernel_follows_is_refused() {
    // l000 -> l001 -> … -> l099 -> d: resolving l000 nests 100 deep (a chain
    // of 100,000 overflowed the stack before this bound).
    let mut entries = vec![dir("d")];
    for i in 0..100 {
        let next = if i == 99 { "d".to_owned() } else { format!("l{:03}", i + 1) };
        entries.push(link(&format!("l{i:03}"), &next));
    }
    let err = Manifest::from_entries(entries).unwrap().check_links(|_| false).unwrap_err().to_string();
    assert!(err.contains("is reached through more than 40 links"), "{err}");
}

/// A directory 3,764 bytes deep holding a link to itself, a link to it at
/// the top, and `n` links through both 2,047 times each: every step lands on
/// the long path again. Each link is resolved once, but each walk copies
/// megabytes.
pub fn long_walks(n: usize) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut deep = String::new();
    for i in 0..15u8 {
        if !deep.is_empty() {
            deep.push('/');
        }
        deep.push_str(&char::from(b'a' + i).to_string().repeat(250));
        entries.push(dir(&deep));
    }
    entries.push(link(&format!("{deep}/L"), "."));
    entries.push(link("L", &deep));
    let through = vec!["L"; 2047].join("/");
    for i in 0..n {
        entries.push(link(&format!("x{i:05}"), &through));
    }
    entries
}

#[test]
fn links_walked_again_and_again_through_long_paths_are_refused_quickly() {
    // 2,000 such links took about a minute before the work was bounded.
    let m = Manifest::from_entries(long_walks(2000)).unwrap();
    let start = Instant::now();
    let err = m.check_links(|_| false).unwrap_err().to_string();
    assert!(err.contains("takes more work than 8 bytes per byte"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn names_one_file_system_would_take_for_one_are_refused_naming_both() {
    let cases = [
        (vec![file("App.py", b"A"), file("app.py", b"a")], "app.py", "App.py"),
        // é composed (NFC, U+00E9) and decomposed (NFD, e and U+0301).
        (vec![file("caf\u{e9}", b"1"), file("cafe\u{301}", b"2")], "caf\u{e9}", "cafe\u{301}"),
        (vec![dir("Lib"), dir("lib")], "lib", "Lib"),
    ];
    for (entries, a, b) in cases {
        // Both named, as the message quotes them.
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        let err = Manifest::from_entries(entries).unwrap_err().to_string();
        assert!(err.contains(&a) && err.contains(&b), "{err}");
        assert!(err.contains("are one name on a case-insensitive or Unicode-normalizing file system"), "{err}");
    }
    // Upper-case and non-ASCII names that collide with nothing pass.
    Manifest::from_entries(vec![file("README", b"r"), file("caf\u{e9}", b"1"), file("\u{c5}ngstr\u{f6}m", b"2")])
        .unwrap();
}
