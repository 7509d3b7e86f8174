//! Identities, identifiers and peer addresses: the base types every protocol module builds
//! on, each a typed newtype with a stable text form. Nothing here depends on the protocol
//! ([`wire`](crate::wire), [`sign`](crate::sign)); both of those depend on this.
//!
//! | type | bytes | text form | example |
//! |---|---|---|---|
//! | [`NodeId`] | 32 (ed25519 public key) | 64 lowercase hex digits | `3b6a27bc…` |
//! | [`ModelId`] | 32 (blake3 of the model bytes) | 64 lowercase hex digits (as `b3sum` prints) | `af1349b9…` |
//! | [`DeploymentId`] | 16 | `dep_` + 32 hex digits | `dep_00112233…` |
//! | [`TaskId`] | 16 | `task_` + 32 hex digits | `task_00112233…` |
//! | [`KeyId`] | 16 | `key_` + 32 hex digits | `key_00112233…` |
//! | [`SdkKey`] | 16 + 32 (id, secret) | `sk_` + 32 hex digits + `_` + 64 hex digits | `sk_0011…_aabb…` |
//! | [`PeerAddr`] | 1..=[`PEER_ADDR_BYTES_MAX`] | `ip:port` (QUIC) or `mem:name` (in memory) | `127.0.0.1:7000` |
//!
//! `Display` writes the text form and `FromStr` reads exactly that form back (lowercase or
//! uppercase hex is accepted; `Display` always writes lowercase). The 16-byte ids are random
//! values chosen by whoever creates the object; this crate reads no randomness itself, so
//! callers pass the bytes in ([`DeploymentId::from_bytes`]).
//!
//! The ids' serde uses the text form in human-readable formats (JSON, TOML) and the raw bytes
//! in binary ones (postcard on the wire); an [`SdkKey`] is its id and secret bytes, a
//! [`PeerAddr`] its text, in every format.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// Why a text id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text does not start with the prefix this id type uses.
    #[error("{kind}: expected prefix {prefix:?}")]
    Prefix {
        /// The id type being parsed.
        kind: &'static str,
        /// The prefix it needs.
        prefix: &'static str,
    },
    /// The text after the prefix is not the right number of hex digits.
    #[error("{kind}: expected {digits} hex digits")]
    Hex {
        /// The id type being parsed.
        kind: &'static str,
        /// How many hex digits it needs.
        digits: usize,
    },
    /// The 32 bytes are not a valid ed25519 public key (not a curve point).
    #[error("node id is not a valid ed25519 public key")]
    NotAKey,
}

fn parse_hex<const N: usize>(
    s: &str,
    kind: &'static str,
    prefix: &'static str,
) -> Result<[u8; N], IdError> {
    let digits = s
        .strip_prefix(prefix)
        .ok_or(IdError::Prefix { kind, prefix })?;
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).map_err(|_| IdError::Hex {
        kind,
        digits: 2 * N,
    })?;
    Ok(out)
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $n:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name([u8; $n]);

        impl Ord for $name {
            /// The order of the bytes (lexicographic), compared as big-endian 64-bit words:
            /// the same order as `[u8]`'s, without a call to `memcmp` (ids are compared
            /// millions of times per round when ranking and carrying state forward).
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
                    let a = u64::from_be_bytes(a.try_into().expect("invariant: 8-byte chunk"));
                    let b = u64::from_be_bytes(b.try_into().expect("invariant: 8-byte chunk"));
                    match a.cmp(&b) {
                        std::cmp::Ordering::Equal => {}
                        unequal => return unequal,
                    }
                }
                std::cmp::Ordering::Equal
            }
        }

        impl PartialOrd for $name {
            #[inline]
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $n]>::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $n;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $n]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_hex::<$n>(s, stringify!($name), $prefix).map(Self)
            }
        }
    };
}

byte_id!(
    /// A node's identity: its ed25519 public key. The same key signs its registration and is
    /// pinned in its QUIC certificate. The dispatcher has one too (it signs tickets).
    NodeId, 32, ""
);
byte_id!(
    /// A model's identity: the blake3 hash of its ONNX bytes (content addressing).
    ModelId, 32, ""
);
byte_id!(
    /// One deployment of a model with a pricing plan.
    DeploymentId, 16, "dep_"
);
byte_id!(
    /// One inference task; retries of the same task keep the same id, so it is charged once.
    TaskId, 16, "task_"
);
byte_id!(
    /// The public identifier of an SDK key (the secret part is never sent after creation).
    KeyId, 16, "key_"
);

impl TaskId {
    /// A fresh task id that sorts by when it was made: `unix_ms` (milliseconds since the Unix
    /// epoch, its low 48 bits, big-endian) then the 80 bits of `random`, the layout of a
    /// UUIDv7. Stores keyed by task id (the dispatcher's usage table, whose key begins with
    /// it) then insert near the end of their index instead of at a random place: on SQLite a
    /// report of 2,000 records took 6 times as long with random ids
    /// (`cargo bench -p crat-benches --bench ledger`). 80 random bits keep it unguessable.
    /// The SDK and the dispatcher's canaries both make their ids this way, so a node cannot
    /// tell a canary by its id.
    ///
    /// ```
    /// # use crat_core::id::TaskId;
    /// let a = TaskId::time_ordered(1_765_000_000_000, [0xff; 10]);
    /// let b = TaskId::time_ordered(1_765_000_000_001, [0; 10]);
    /// assert!(a < b);
    /// ```
    pub fn time_ordered(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        Self(b)
    }
}

impl NodeId {
    /// The id of an ed25519 verifying key.
    pub fn from_key(key: &VerifyingKey) -> Self {
        Self(key.to_bytes())
    }

    /// The ed25519 verifying key, or [`IdError::NotAKey`] if the bytes are not a curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::NotAKey)
    }
}

impl From<&VerifyingKey> for NodeId {
    fn from(key: &VerifyingKey) -> Self {
        Self::from_key(key)
    }
}

impl ModelId {
    /// The id of a model: blake3 of its bytes.
    pub fn of_bytes(model: &[u8]) -> Self {
        Self(*blake3::hash(model).as_bytes())
    }
}

/// Longest peer address text.
pub const PEER_ADDR_BYTES_MAX: usize = 256;

/// Where a peer can be reached, as text: `ip:port` for QUIC, `mem:name` in memory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerAddr(String);

/// A peer address that is empty or longer than [`PEER_ADDR_BYTES_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer address must be 1..={PEER_ADDR_BYTES_MAX} bytes")]
pub struct PeerAddrError;

impl PeerAddr {
    /// A peer address from text.
    pub fn new(text: impl Into<String>) -> Result<Self, PeerAddrError> {
        let text = text.into();
        if text.is_empty() || text.len() > PEER_ADDR_BYTES_MAX {
            return Err(PeerAddrError);
        }
        Ok(Self(text))
    }

    /// The address text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = PeerAddrError;
    fn try_from(s: String) -> Result<Self, PeerAddrError> {
        Self::new(s)
    }
}

impl From<PeerAddr> for String {
    fn from(a: PeerAddr) -> String {
        a.0
    }
}

impl From<std::net::SocketAddr> for PeerAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        Self(a.to_string())
    }
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;
    fn from_str(s: &str) -> Result<Self, PeerAddrError> {
        Self::new(s)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerAddr({})", self.0)
    }
}

/// An SDK key: its public id and its secret. The dispatcher stores only a hash of the secret.
///
/// Text form: `sk_` + 32 hex digits of the id + `_` + 64 hex digits of the secret.
/// `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkKey {
    /// The key's public id.
    pub id: KeyId,
    /// The secret.
    pub secret: [u8; 32],
}

impl fmt::Display for SdkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id.to_string();
        let id_hex = id.strip_prefix("key_").unwrap_or(&id);
        write!(f, "sk_{id_hex}_{}", hex::encode(self.secret))
    }
}

impl fmt::Debug for SdkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SdkKey({}, secret: <redacted>)", self.id)
    }
}

/// Text that is not an SDK key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an SDK key looks like sk_<32 hex digits>_<64 hex digits>")]
pub struct SdkKeyError;

impl FromStr for SdkKey {
    type Err = SdkKeyError;
    fn from_str(s: &str) -> Result<Self, SdkKeyError> {
        let rest = s.strip_prefix("sk_").ok_or(SdkKeyError)?;
        let (id, secret_hex) = rest.split_once('_').ok_or(SdkKeyError)?;
        let id: KeyId = format!("key_{id}").parse().map_err(|_| SdkKeyError)?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(secret_hex, &mut secret).map_err(|_| SdkKeyError)?;
        Ok(Self { id, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_task_ids_sort_by_their_millisecond_then_their_random_bits() {
        let t = TaskId::time_ordered(0x0102_0304_0506, [9; 10]);
        assert_eq!(t.as_bytes()[..6], [1, 2, 3, 4, 5, 6]);
        assert_eq!(t.as_bytes()[6..], [9; 10]);
        // Only the low 48 bits of the time are kept (until the year 10889).
        assert_eq!(TaskId::time_ordered(0xffff_0102_0304_0506, [9; 10]), t);
        let mut ids: Vec<TaskId> = (0..100u64)
            .map(|i| TaskId::time_ordered(1_765_000_000_000 + i / 10, [(i % 10) as u8; 10]))
            .collect();
        let made = ids.clone();
        ids.sort();
        assert_eq!(ids, made);
    }

    #[test]
    fn text_forms_round_trip() {
        let d = DeploymentId::from_bytes([0xab; 16]);
        assert_eq!(d.to_string(), format!("dep_{}", "ab".repeat(16)));
        assert_eq!(d.to_string().parse::<DeploymentId>(), Ok(d));
        let t = TaskId::from_bytes([1; 16]);
        assert_eq!(t.to_string().parse::<TaskId>(), Ok(t));
        let k = KeyId::from_bytes([2; 16]);
        assert_eq!(k.to_string().parse::<KeyId>(), Ok(k));
        let m = ModelId::of_bytes(b"model");
        assert_eq!(m.to_string(), blake3::hash(b"model").to_hex().as_str());
        assert_eq!(m.to_string().parse::<ModelId>(), Ok(m));
        assert_eq!(
            "AB".repeat(16).parse::<KeyId>().map(|_| ()),
            Err(IdError::Prefix {
                kind: "KeyId",
                prefix: "key_"
            })
        );
    }

    #[test]
    fn bad_text_is_rejected() {
        assert!(matches!(
            "dep_12".parse::<DeploymentId>(),
            Err(IdError::Hex { digits: 32, .. })
        ));
        assert!(matches!(
            "task_".parse::<TaskId>(),
            Err(IdError::Hex { .. })
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<NodeId>(),
            Err(IdError::Hex { digits: 64, .. })
        ));
        // Prefix of another id type.
        assert!(matches!(
            DeploymentId::from_bytes([0; 16])
                .to_string()
                .parse::<TaskId>(),
            Err(IdError::Prefix { .. })
        ));
    }

    #[test]
    fn serde_text_in_json_bytes_in_postcard() {
        let d = DeploymentId::from_bytes([0xab; 16]);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<DeploymentId>(&json).unwrap(), d);
        assert!(serde_json::from_str::<DeploymentId>("\"task_00\"").is_err());
        let bin = postcard::to_stdvec(&d).unwrap();
        assert_eq!(bin, vec![0xab; 16]);
        assert_eq!(postcard::from_bytes::<DeploymentId>(&bin).unwrap(), d);
    }

    #[test]
    fn order_is_byte_order() {
        let mut ids: Vec<[u8; 32]> = (0..200u32)
            .map(|i| {
                let mut b = [0u8; 32];
                // Differences in every word position, including ties in leading words.
                b[(i % 32) as usize] = (i * 37 % 251) as u8;
                b[31 - (i % 7) as usize] ^= (i * 13) as u8;
                b
            })
            .collect();
        ids.push([0xff; 32]);
        ids.push([0; 32]);
        for a in &ids {
            for b in &ids {
                assert_eq!(
                    NodeId::from_bytes(*a).cmp(&NodeId::from_bytes(*b)),
                    a.cmp(b)
                );
            }
        }
        let (x, y) = ([1u8; 16], [2u8; 16]);
        assert!(TaskId::from_bytes(x) < TaskId::from_bytes(y));
    }

    #[test]
    fn node_id_is_a_key() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let id = NodeId::from_key(&sk.verifying_key());
        assert_eq!(id.verifying_key(), Ok(sk.verifying_key()));
        assert_eq!(id.to_string().len(), 64);
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
    }

    #[test]
    fn sdk_key_text_and_redaction() {
        let k = SdkKey {
            id: KeyId::from_bytes([0xaa; 16]),
            secret: [0x55; 32],
        };
        let text = k.to_string();
        assert_eq!(text, format!("sk_{}_{}", "aa".repeat(16), "55".repeat(32)));
        assert_eq!(text.parse::<SdkKey>().unwrap(), k);
        assert!(!format!("{k:?}").contains("5555"));
        assert!("sk_00_11".parse::<SdkKey>().is_err());
    }

    #[test]
    fn peer_addr_bounds() {
        assert!(PeerAddr::new("").is_err());
        assert!(PeerAddr::new("x".repeat(PEER_ADDR_BYTES_MAX + 1)).is_err());
        assert_eq!(PeerAddr::new("mem:a").unwrap().as_str(), "mem:a");
        let bad = postcard::to_stdvec(&String::new()).unwrap();
        assert!(postcard::from_bytes::<PeerAddr>(&bad).is_err());
    }
}
