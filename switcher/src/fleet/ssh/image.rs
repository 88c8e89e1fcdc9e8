//! The agent binary the controller uploads, as the controller knows it: its
//! blake3 (its name on hosts), the machine and the oldest glibc it runs on
//! (read from its own ELF headers, not assumed), and its gzip image (what
//! goes down the wire; every Linux host has gzip to undo it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use object::read::elf::{ElfFile64, FileHeader as _};
use object::{elf, Endianness, Object as _};

use crate::host::HostError;

/// A glibc version, as `GLIBC_2.2.5` or `getconf GNU_LIBC_VERSION` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Glibc([u32; 3]);

impl Glibc {
    /// `2.34`, `2.2.5`; `None` for anything else.
    pub(super) fn parse(s: &str) -> Option<Self> {
        let mut parts = [0; 3];
        let mut n = 0;
        for part in s.split('.') {
            *parts.get_mut(n)? = part.parse().ok()?;
            n += 1;
        }
        (n >= 2).then_some(Glibc(parts))
    }

    /// What a host's probe said of its libc: `glibc 2.36` (getconf), or the
    /// first line of `ldd --version` (`ldd (Debian GLIBC 2.36-9) 2.36`,
    /// `ldd (GNU libc) 2.17`). `None` when it is not glibc (musl says
    /// `musl libc (x86_64)`) or says no version.
    pub(super) fn of_host(said: &str) -> Option<Self> {
        let lower = said.to_ascii_lowercase();
        if !(lower.contains("glibc") || lower.contains("gnu libc")) {
            return None;
        }
        Self::parse(said.split_whitespace().last()?)
    }
}

impl std::fmt::Display for Glibc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [major, minor, patch] = self.0;
        let text = match patch {
            0 => format!("{major}.{minor}"),
            _ => format!("{major}.{minor}.{patch}"),
        };
        f.pad(&text)
    }
}

/// The agent binary: what it is and what it needs of a host.
#[derive(Debug)]
pub(super) struct Image {
    pub path: PathBuf,
    /// The blake3 of its bytes, in hex.
    pub hash: String,
    /// The machine it is built for, as `uname -m` says it.
    pub machine: String,
    /// The oldest glibc it runs on (its highest `GLIBC_*` version need);
    /// `None` for a binary that needs no glibc (a static one).
    pub glibc: Option<Glibc>,
    /// The shared libraries it links (its `DT_NEEDED` entries).
    pub libraries: Vec<String>,
    bytes: Vec<u8>,
    gzip: OnceLock<Result<Arc<Vec<u8>>, String>>,
}

/// The agent at `path`, read once per process.
pub(super) fn image(path: &Path) -> Result<Arc<Image>, HostError> {
    static IMAGES: Mutex<Vec<Arc<Image>>> = Mutex::new(Vec::new());
    let mut images = IMAGES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(image) = images.iter().find(|i| i.path == path) {
        return Ok(image.clone());
    }
    let bytes = fs_err::read(path).map_err(HostError::Fs)?;
    let Needs { machine, glibc, libraries } = needs(&bytes).map_err(|e| {
        HostError::Link(format!("the agent {} is not a Linux ELF binary ferry can upload: {e}", path.display()))
    })?;
    let image = Arc::new(Image {
        path: path.to_owned(),
        hash: blake3::hash(&bytes).to_hex().to_string(),
        machine,
        glibc,
        libraries,
        bytes,
        gzip: OnceLock::new(),
    });
    images.push(image.clone());
    Ok(image)
}

impl Image {
    /// Its bytes as they are.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its bytes gzipped (best compression), made once for every host.
    pub(super) fn gzip(&self) -> Result<Arc<Vec<u8>>, HostError> {
        self.gzip
            .get_or_init(|| {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                gz.write_all(&self.bytes).and_then(|()| gz.finish()).map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| HostError::Link(format!("cannot gzip the agent {}: {e}", self.path.display())))
    }
}

/// What an ELF binary needs of a host.
struct Needs {
    /// The machine it is built for.
    machine: String,
    /// The highest glibc version it needs (its `GLIBC_*` version needs, from
    /// whichever of glibc's libraries).
    glibc: Option<Glibc>,
    /// Its `DT_NEEDED` libraries.
    libraries: Vec<String>,
}

fn needs(bytes: &[u8]) -> Result<Needs, object::read::Error> {
    let file = ElfFile64::<Endianness>::parse(bytes)?;
    let endian = file.endian();
    let machine = match file.elf_header().e_machine(endian) {
        elf::EM_X86_64 => "x86_64".to_owned(),
        elf::EM_AARCH64 => "aarch64".to_owned(),
        elf::EM_RISCV => "riscv64".to_owned(),
        elf::EM_PPC64 => "ppc64le".to_owned(),
        elf::EM_S390 => "s390x".to_owned(),
        other => format!("ELF machine {other}"),
    };
    let sections = file.elf_section_table();
    let mut newest = None;
    if let Some((mut needs, link)) = sections.gnu_verneed(endian, bytes)? {
        let strings = sections.strings(endian, bytes, link)?;
        while let Some((_, mut versions)) = needs.next()? {
            while let Some(version) = versions.next()? {
                let name = String::from_utf8_lossy(version.name(endian, strings)?);
                if let Some(v) = name.strip_prefix("GLIBC_").and_then(Glibc::parse) {
                    newest = newest.max(Some(v));
                }
            }
        }
    }
    let libraries = file
        .import_libraries()?
        .map(|l| l.map(|l| String::from_utf8_lossy(l.name()).into_owned()))
        .collect::<Result<_, _>>()?;
    Ok(Needs { machine, glibc: newest, libraries })
}

/// The agent binary ferry uploads to ssh hosts, as `ferry agent` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    pub path: PathBuf,
    pub blake3: String,
    /// Its size as it is, and gzipped (as it is sent to a host with gzip).
    pub bytes: u64,
    pub gzip_bytes: u64,
    /// The machine it runs on, as `uname -m` says it.
    pub machine: String,
    /// The oldest glibc it runs on (its ELF version needs); `None`: it
    /// needs no glibc.
    pub glibc: Option<String>,
    /// The shared libraries it links (`DT_NEEDED`).
    pub libraries: Vec<String>,
}

/// What the agent at `path` is and needs of a host (read as an upload
/// reads it).
pub fn agent_info(path: &Path) -> Result<AgentInfo, HostError> {
    let image = image(path)?;
    Ok(AgentInfo {
        path: image.path.clone(),
        blake3: image.hash.clone(),
        bytes: image.bytes.len() as u64,
        gzip_bytes: image.gzip()?.len() as u64,
        machine: image.machine.clone(),
        glibc: image.glibc.map(|g| g.to_string()),
        libraries: image.libraries.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_from_symbols_and_from_hosts_compare_as_numbers() {
        let v = |s| Glibc::parse(s).unwrap();
        assert!(v("2.2.5") < v("2.17"));
        assert!(v("2.17") < v("2.34"));
        assert_eq!(v("2.34").to_string(), "2.34");
        assert_eq!(v("2.2.5").to_string(), "2.2.5");
        assert_eq!(Glibc::parse("PRIVATE"), None);
        assert_eq!(Glibc::of_host("glibc 2.36"), Some(v("2.36")));
        assert_eq!(Glibc::of_host("ldd (Debian GLIBC 2.36-9+deb12u4) 2.36"), Some(v("2.36")));
        assert_eq!(Glibc::of_host("ldd (GNU libc) 2.17"), Some(v("2.17")));
        assert_eq!(Glibc::of_host("musl libc (x86_64)"), None);
        assert_eq!(Glibc::of_host(""), None);
    }

    #[test]
    fn this_test_binary_needs_a_glibc_it_has() {
        // The test binary is linked as the agent is, against this machine's
        // glibc: it needs some GLIBC_2.x, and no newer than the glibc here.
        let exe = std::env::current_exe().unwrap();
        let Needs { machine, glibc, libraries } = needs(&fs_err::read(exe).unwrap()).unwrap();
        assert_eq!(machine, std::env::consts::ARCH);
        assert!(libraries.iter().any(|l| l == "libc.so.6"), "{libraries:?}");
        let glibc = glibc.expect("a dynamically linked test binary needs glibc");
        let here = std::process::Command::new("getconf").arg("GNU_LIBC_VERSION").output().unwrap();
        let here = Glibc::of_host(&String::from_utf8_lossy(&here.stdout)).unwrap();
        assert!(glibc >= Glibc::parse("2.2.5").unwrap() && glibc <= here, "{glibc} vs {here}");
        assert!(needs(b"#!/bin/sh\necho not an ELF\n").is_err());
    }
}
