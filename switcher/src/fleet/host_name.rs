//! A host's name as ferry.toml and reports write it: `user@host:port`,
//! `[v6]:port`. Read the same way by the ssh transport and the health
//! probes (which need no SSH, so this is not the transport's).

/// `user@host:port`, `host:port`, `user@host` or `host`: what the name
/// itself says. An IPv6 address is bare (`fd00::2`) or, with a port, in
/// brackets (`[fd00::2]:2222`), as OpenSSH writes it.
pub(crate) fn address(name: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (user, rest) = match name.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, name),
    };
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("the port {p:?} is not a number from 0 to 65535"));
    if let Some(bracketed) = rest.strip_prefix('[') {
        let (h, after) = bracketed.split_once(']').ok_or_else(|| "a '[' without its ']'".to_owned())?;
        return match after {
            "" => Ok((user, h.to_owned(), None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((user, h.to_owned(), Some(port(p)?))),
                None => Err("after ']' comes ':PORT' or nothing".to_owned()),
            },
        };
    }
    match rest.rsplit_once(':') {
        // More than one colon and no brackets: an IPv6 address, no port.
        Some((h, _)) if h.contains(':') => Ok((user, rest.to_owned(), None)),
        Some((h, p)) => Ok((user, h.to_owned(), Some(port(p)?))),
        None => Ok((user, rest.to_owned(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |name: &str| address(name).unwrap();
        assert_eq!(ok("web1"), (None, "web1".into(), None));
        assert_eq!(ok("root@10.0.0.2:2222"), (Some("root".into()), "10.0.0.2".into(), Some(2222)));
        assert_eq!(ok("app@web1"), (Some("app".into()), "web1".into(), None));
        assert_eq!(ok("fd00::2"), (None, "fd00::2".into(), None));
        assert_eq!(ok("root@[fd00::2]:2222"), (Some("root".into()), "fd00::2".into(), Some(2222)));
        assert_eq!(ok("[fd00::2]"), (None, "fd00::2".into(), None));
        assert_eq!(ok("app@::1"), (Some("app".into()), "::1".into(), None));
        let bad = |name: &str| address(name).unwrap_err();
        assert_eq!(bad("web1:99999"), "the port \"99999\" is not a number from 0 to 65535");
        assert_eq!(bad("root@[fd00::2]:x"), "the port \"x\" is not a number from 0 to 65535");
        assert_eq!(bad("[fd00::2"), "a '[' without its ']'");
        assert_eq!(bad("[fd00::2]2222"), "after ']' comes ':PORT' or nothing");
    }
}
