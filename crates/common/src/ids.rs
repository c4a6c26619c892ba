//! Identifiers. Each is a newtype so that a tenant id can never be passed where an episode id
//! is expected, and each parses (never panics) from its wire form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Why an identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Hyphenated lower-case: safe as a NATS subject token and as a KyroDB namespace.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self).map_err(|e| IdError {
                    kind: $kind,
                    reason: e.to_string(),
                })
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}

uuid_id!(
    /// A tenant (customer). Appears in NATS subjects, as the KyroDB namespace and in every
    /// vector's metadata.
    TenantId,
    "tenant id"
);

uuid_id!(
    /// An episode. UUIDv7, so ids sort by capture time.
    EpisodeId,
    "episode id"
);

/// The vector-store document id of an episode: a deterministic function of (tenant, episode),
/// so every retry and every re-index writes the same document.
///
/// It is the first 63 bits of `SHA-256("episodic.v1.vector-id" ‖ tenant ‖ episode)`, never 0
/// (KyroDB requires ids ≥ 1) and always representable as a signed 64-bit database integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct VectorId(u64);

impl VectorId {
    pub const MAX: u64 = i64::MAX as u64;

    pub fn for_episode(tenant: TenantId, episode: EpisodeId) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"episodic.v1.vector-id");
        hasher.update(tenant.as_uuid().as_bytes());
        hasher.update(episode.as_uuid().as_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let id = u64::from_be_bytes(first) & Self::MAX;
        Self(id.max(1))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// As stored in a signed 64-bit database column (lossless by construction).
    pub fn as_i64(self) -> i64 {
        // Lossless: the value is at most i64::MAX by construction.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl TryFrom<u64> for VectorId {
    type Error = IdError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        if v == 0 || v > Self::MAX {
            return Err(IdError {
                kind: "vector id",
                reason: format!("{v} is outside 1..=2^63-1"),
            });
        }
        Ok(Self(v))
    }
}

impl TryFrom<i64> for VectorId {
    type Error = IdError;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        u64::try_from(v)
            .map_err(|_| IdError {
                kind: "vector id",
                reason: format!("{v} is negative"),
            })
            .and_then(Self::try_from)
    }
}

impl From<VectorId> for u64 {
    fn from(v: VectorId) -> u64 {
        v.0
    }
}

impl fmt::Display for VectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn episode_ids_are_v7_and_ordered() {
        let a = EpisodeId::new();
        let b = EpisodeId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a <= b);
    }

    #[test]
    fn ids_round_trip_through_strings_and_json() {
        let t = TenantId::new();
        assert_eq!(t.to_string().parse::<TenantId>(), Ok(t));
        let json = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(serde_json::from_str::<TenantId>(&json).ok(), Some(t));
        assert!("not-a-uuid".parse::<TenantId>().is_err());
        assert!(serde_json::from_str::<EpisodeId>("\"nope\"").is_err());
    }

    #[test]
    fn vector_id_is_deterministic_and_tenant_specific() {
        let t1 = TenantId::new();
        let t2 = TenantId::new();
        let e = EpisodeId::new();
        assert_eq!(VectorId::for_episode(t1, e), VectorId::for_episode(t1, e));
        assert_ne!(VectorId::for_episode(t1, e), VectorId::for_episode(t2, e));
    }

    #[test]
    fn vector_id_rejects_zero_and_negative() {
        assert!(VectorId::try_from(0u64).is_err());
        assert!(VectorId::try_from(-1i64).is_err());
        assert!(VectorId::try_from(u64::MAX).is_err());
        assert!(VectorId::try_from(7i64).is_ok());
    }

    proptest! {
        #[test]
        fn vector_id_always_in_range(a in any::<u128>(), b in any::<u128>()) {
            let id = VectorId::for_episode(
                TenantId::from_uuid(Uuid::from_u128(a)),
                EpisodeId::from_uuid(Uuid::from_u128(b)),
            );
            prop_assert!(id.get() >= 1 && id.get() <= VectorId::MAX);
            prop_assert_eq!(VectorId::try_from(id.as_i64()).ok(), Some(id));
        }
    }
}
