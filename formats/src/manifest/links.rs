//! A manifest's symlinks, resolved as the kernel would: each must lead
//! inside the release, except where the caller's policy allows.

use std::collections::HashMap;

use super::{EntryKind, Manifest, ManifestError};
use crate::RelPath;

impl Manifest {
    /// Checks that every symlink resolves inside the release, as the kernel
    /// would resolve it, through the release's own symlinks. A link whose
    /// target is absolute — or that ends on such a link — is refused unless
    /// `may_link_outside` allows it (a virtualenv's interpreter links); no
    /// link may pass *through* an outside link. Each link is resolved once,
    /// so the check is linear in the size of the manifest.
    ///
    /// Each link is resolved once, and the work is bounded besides: a chain
    /// more than [`MAX_LINK_DEPTH`] links deep is refused (the kernel gives
    /// up there too, with ELOOP), and so is a manifest whose links take more
    /// than [`LINK_WORK_PER_BYTE`] bytes of path walked per byte of its
    /// paths and targets (long chains walked again and again through long
    /// directories), so the check is linear in the size of the manifest.
    pub fn check_links(&self, may_link_outside: impl Fn(&RelPath) -> bool) -> Result<(), ManifestError> {
        let size: u64 = self
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Symlink { target } => (e.path.as_str().len() + target.len()) as u64,
                _ => 0,
            })
            .sum();
        let budget = size.saturating_mul(LINK_WORK_PER_BYTE).saturating_add(1 << 20);
        let mut resolver =
            Resolver { manifest: self, may_link_outside: &may_link_outside, done: HashMap::new(), depth: 0, budget };
        for e in &self.entries {
            if let EntryKind::Symlink { target } = &e.kind {
                resolver
                    .link(e.path.as_str(), target)
                    .map_err(|reason| ManifestError::Entry { path: e.path.to_string(), reason })?;
            }
        }
        Ok(())
    }
}

/// Where a path leads inside a release.
#[derive(Clone)]
enum Resolved {
    /// To this existing path (empty: the release root).
    Inside(String),
    /// Nowhere: a missing component, or a file used as a directory. The kernel
    /// stops there (ENOENT, ENOTDIR), so nothing can escape through it.
    Nowhere,
    /// To an allowed link that points outside the release.
    Outside,
}

struct Resolver<'a, F> {
    manifest: &'a Manifest,
    may_link_outside: &'a F,
    /// Each link's resolution, once known; `None` while it is being resolved (a loop).
    done: HashMap<String, Option<Result<Resolved, String>>>,
    /// Links being resolved, one inside another.
    depth: u32,
    /// Bytes of path the walks may still build.
    budget: u64,
}

/// The deepest chain of links [`Manifest::check_links`] follows (the
/// kernel's own limit, so a deeper one would not resolve on a host either).
pub const MAX_LINK_DEPTH: u32 = 40;
/// The work [`Manifest::check_links`] may do, in bytes of path walked per
/// byte of the manifest's link paths and targets (plus 1 MiB). A venv's
/// links take a few bytes each; only crafted chains come near.
pub const LINK_WORK_PER_BYTE: u64 = 8;

impl<F: Fn(&RelPath) -> bool> Resolver<'_, F> {
    /// Where the link at `path` leads.
    fn link(&mut self, path: &str, target: &str) -> Result<Resolved, String> {
        match self.done.get(path) {
            Some(Some(r)) => return r.clone(),
            Some(None) => return Err(format!("symlink to {target:?} is part of a loop of links")),
            None => {}
        }
        if self.depth >= MAX_LINK_DEPTH {
            return Err(format!("symlink to {target:?} is reached through more than {MAX_LINK_DEPTH} links"));
        }
        self.done.insert(path.to_owned(), None);
        self.depth += 1;
        let result = if target.starts_with('/') {
            let allowed = RelPath::new(path).is_ok_and(|p| (self.may_link_outside)(&p)) && is_interpreter(target);
            if allowed {
                Ok(Resolved::Outside)
            } else {
                Err(format!("symlink to {target:?} points outside the release"))
            }
        } else {
            let parent = path.rfind('/').map_or("", |i| &path[..i]);
            match self.walk(parent, target) {
                Ok(Resolved::Outside) if !RelPath::new(path).is_ok_and(|p| (self.may_link_outside)(&p)) => {
                    Err(format!("symlink to {target:?} ends at a link that points outside the release"))
                }
                Err(why) => Err(format!("symlink to {target:?} {why}")),
                other => other,
            }
        };
        self.depth -= 1;
        self.done.insert(path.to_owned(), Some(result.clone()));
        result
    }

    /// Takes `bytes` of work from the budget, or says it is spent.
    fn spend(&mut self, bytes: usize) -> Result<(), String> {
        self.budget = self.budget.checked_sub(bytes as u64 + 1).ok_or_else(|| {
            format!(
                "resolving the manifest's symlinks takes more work than {LINK_WORK_PER_BYTE} bytes per byte of \
                 their paths and targets (chains of links walked through long paths): refused as hostile"
            )
        })?;
        Ok(())
    }

    /// Resolves `target`'s components from the directory `from`.
    fn walk(&mut self, from: &str, target: &str) -> Result<Resolved, String> {
        let mut at = from.to_owned();
        let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." {
                if at.is_empty() {
                    return Err("resolves outside the release".into());
                }
                at.truncate(at.rfind('/').unwrap_or(0));
                continue;
            }
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.spend(at.len())?;
            let last = i + 1 == parts.len();
            match self.manifest.get(&at).map(|e| e.kind.clone()) {
                None => return Ok(Resolved::Nowhere),
                Some(EntryKind::Dir { .. }) => {}
                Some(EntryKind::File { .. }) if last => {}
                Some(EntryKind::File { .. }) => return Ok(Resolved::Nowhere),
                Some(EntryKind::Symlink { target: next }) => match self.link(&at, &next)? {
                    Resolved::Inside(there) => {
                        self.spend(there.len())?;
                        at = there;
                    }
                    Resolved::Nowhere => return Ok(Resolved::Nowhere),
                    Resolved::Outside if last => return Ok(Resolved::Outside),
                    Resolved::Outside => {
                        return Err(format!("goes through {:?}, which points outside the release", &at[..]));
                    }
                },
            }
        }
        Ok(Resolved::Inside(at))
    }
}

/// An absolute, normalized path to a Python interpreter: what a venv's
/// `bin/python*` links point at.
fn is_interpreter(target: &str) -> bool {
    let name = target.rsplit('/').next().unwrap_or("");
    target.starts_with('/')
        && target[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && (name.starts_with("python") || name.starts_with("pypy"))
}
