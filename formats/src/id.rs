//! Content ids.
//!
//! | type | what it names | how it is made |
//! |---|---|---|
//! | [`BlobHash`] | the bytes of one file | `blake3(content)` |
//! | [`ReleaseId`] | a whole release | blake3 in derive-key mode (context [`RELEASE_ID_CONTEXT`]) over `u64le(len(manifest)) ‖ manifest ‖ u64le(len(meta)) ‖ meta`, the canonical manifest text and canonical release metadata |
//!
//! Both print as 64 lowercase hex digits. The two are distinct types so a file
//! hash can never be passed where a release is meant.

use std::fmt;
use std::str::FromStr;

/// The blake3 derive-key context of release ids. Changing it changes every id.
pub const RELEASE_ID_CONTEXT: &str = "ferry 2026-11 release id v1";

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a {what}: expected 64 lowercase hex digits")]
pub struct ParseIdError {
    what: &'static str,
    input: String,
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Wraps 32 raw bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The full 64-digit hex form.
            pub fn to_hex(&self) -> String {
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }

            /// The first `n` hex digits, for display.
            pub fn short(&self, n: usize) -> String {
                let mut hex = self.to_hex();
                hex.truncate(n);
                hex
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(hash: blake3::Hash) -> Self {
                Self(*hash.as_bytes())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError { what: $what, input: s.to_owned() };
                if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(err());
                }
                blake3::Hash::from_hex(s).map(Self::from).map_err(|_| err())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short(12))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash_id!(
    /// The blake3 hash of one file's content.
    BlobHash,
    "blob hash"
);

hash_id!(
    /// The id of a release: the hash of its canonical manifest and metadata.
    /// The bundle that carries it is stored as `<id>.tar.zst`, and a host keeps
    /// it as `releases/<id>`.
    ReleaseId,
    "release id"
);

impl BlobHash {
    /// Hashes a whole buffer.
    pub fn of(bytes: &[u8]) -> Self {
        blake3::hash(bytes).into()
    }
}

impl ReleaseId {
    /// The id of the release with this canonical manifest text and metadata.
    pub fn compute(manifest: &[u8], meta: &[u8]) -> Self {
        let mut h = blake3::Hasher::new_derive_key(RELEASE_ID_CONTEXT);
        h.update(&(manifest.len() as u64).to_le_bytes());
        h.update(manifest);
        h.update(&(meta.len() as u64).to_le_bytes());
        h.update(meta);
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ReleaseId::compute(b"m", b"r");
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<ReleaseId>().unwrap(), id);
        assert_eq!(id.short(12), hex[..12]);
    }

    #[test]
    fn refuses_uppercase_and_short() {
        let hex = BlobHash::of(b"x").to_string();
        let err = hex.to_uppercase().parse::<BlobHash>().unwrap_err();
        assert!(err.to_string().contains("not a blob hash"), "{err}");
        assert!(hex[..63].parse::<BlobHash>().is_err());
    }

    #[test]
    fn lengths_separate_manifest_from_meta() {
        // Moving a byte across the boundary must change the id.
        assert_ne!(ReleaseId::compute(b"ab", b"c"), ReleaseId::compute(b"a", b"bc"));
    }
}
