//! The vector-store contract. Two implementations exist: KyroDB over gRPC (`kyrodb-client`,
//! production) and an embedded on-disk index (`embedded-index`, the standalone default).
//! Services only ever see [`VectorStore`].
//!
//! Tenant isolation is part of the contract: every call names a tenant, an implementation
//! must scope every read and write to it (KyroDB: a non-empty namespace *and* a tenant
//! metadata filter, and a check of every returned hit), and no call can reach across tenants.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::embedding::Embedding;
use crate::ids::{EpisodeId, TenantId, VectorId};

/// Which index a vector lives in. The two spaces have different dimensions and are separate
/// KyroDB instances in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorSpace {
    /// 384-dim text embeddings of the episode.
    Text,
    /// 512-dim image embeddings of the episode's screenshot.
    Image,
}

impl VectorSpace {
    pub fn as_str(self) -> &'static str {
        match self {
            VectorSpace::Text => "text",
            VectorSpace::Image => "image",
        }
    }
}

/// Metadata keys we write on every vector. Keys are plain strings so they can be used in
/// KyroDB metadata filters. Multi-valued fields (tools, tags) are stored as one key per value
/// (`tool:kubectl = "1"`) so that membership is an exact-match filter.
pub mod meta {
    /// The owning tenant (our own key; KyroDB reserves `__tenant_id__`).
    pub const TENANT: &str = "tenant_id";
    pub const EPISODE: &str = "episode_id";
    pub const ERROR_CLASS: &str = "error_class";
    /// Capture time, microseconds since the Unix epoch, as a decimal string (range filters).
    pub const CAPTURED_AT: &str = "captured_at_us";
    pub const TOOL_PREFIX: &str = "tool:";
    pub const TAG_PREFIX: &str = "tag:";
    /// The value stored under membership keys.
    pub const PRESENT: &str = "1";
    /// Keys a store implementation reserves; user metadata may not use them.
    pub const RESERVED: [&str; 3] = ["__namespace__", "__tenant_id__", "__tenant_idx__"];
}

/// The filterable metadata of an episode's vectors (see [`meta`]): error class, capture
/// time, and one membership key per tool and per tag. The store adds tenant and episode.
pub fn episode_metadata(
    episode: &crate::episode::Episode,
    captured_at: time::OffsetDateTime,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        meta::ERROR_CLASS.to_owned(),
        episode.error_class().as_str().to_owned(),
    );
    m.insert(
        meta::CAPTURED_AT.to_owned(),
        crate::time_util::to_unix_micros(captured_at).to_string(),
    );
    for tool in episode.tool_chain() {
        m.insert(
            format!("{}{tool}", meta::TOOL_PREFIX),
            meta::PRESENT.to_owned(),
        );
    }
    for tag in episode.tags() {
        m.insert(
            format!("{}{tag}", meta::TAG_PREFIX),
            meta::PRESENT.to_owned(),
        );
    }
    m
}

/// One vector with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    pub id: VectorId,
    pub tenant: TenantId,
    pub episode: EpisodeId,
    pub embedding: Embedding,
    /// Filterable metadata. Implementations add the tenant and episode keys themselves.
    pub metadata: BTreeMap<String, String>,
}

/// A metadata filter, mirroring what KyroDB can evaluate server-side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataFilter {
    Exact {
        key: String,
        value: String,
    },
    In {
        key: String,
        values: Vec<String>,
    },
    /// Inclusive/exclusive bounds; compared numerically when both sides parse as numbers.
    Range {
        key: String,
        bound: RangeBound,
        value: String,
    },
    And(Vec<MetadataFilter>),
    Or(Vec<MetadataFilter>),
    Not(Box<MetadataFilter>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeBound {
    Gte,
    Lte,
    Gt,
    Lt,
}

impl MetadataFilter {
    pub fn exact(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::Exact {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Evaluates the filter against a metadata map (used by the embedded index and by the
    /// KyroDB client's defence-in-depth check).
    pub fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        match self {
            MetadataFilter::Exact { key, value } => metadata.get(key) == Some(value),
            MetadataFilter::In { key, values } => metadata
                .get(key)
                .is_some_and(|v| values.iter().any(|x| x == v)),
            MetadataFilter::Range { key, bound, value } => metadata
                .get(key)
                .is_some_and(|actual| compare(actual, *bound, value)),
            MetadataFilter::And(all) => all.iter().all(|f| f.matches(metadata)),
            MetadataFilter::Or(any) => any.iter().any(|f| f.matches(metadata)),
            MetadataFilter::Not(inner) => !inner.matches(metadata),
        }
    }
}

fn compare(actual: &str, bound: RangeBound, limit: &str) -> bool {
    use std::cmp::Ordering;
    let ordering = match (actual.parse::<f64>(), limit.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b),
        _ => Some(actual.cmp(limit)),
    };
    match (ordering, bound) {
        (None, _) => false,
        (Some(o), RangeBound::Gte) => o != Ordering::Less,
        (Some(o), RangeBound::Lte) => o != Ordering::Greater,
        (Some(o), RangeBound::Gt) => o == Ordering::Greater,
        (Some(o), RangeBound::Lt) => o == Ordering::Less,
    }
}

/// A k-NN query within one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    pub tenant: TenantId,
    pub embedding: Embedding,
    /// 1..=1000.
    pub k: usize,
    /// Only hits with a score at or above this are returned.
    pub min_score: Option<f32>,
    pub filter: Option<MetadataFilter>,
}

/// One search hit. `score` is cosine similarity (higher is better, may be negative).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub id: VectorId,
    pub episode: EpisodeId,
    pub score: f32,
    pub metadata: BTreeMap<String, String>,
}

/// What a store reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Healthy,
    /// Serving, but reporting a problem (e.g. KyroDB SLO breach).
    Degraded(String),
}

/// Why a vector-store call failed. [`VectorStoreError::is_transient`] tells a consumer whether
/// to retry (NATS nak with backoff) or give up (term + dead letter).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorStoreError {
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    #[error("vector store call timed out after {0:?}")]
    Timeout(Duration),
    #[error("vector store circuit breaker is open")]
    CircuitOpen,
    #[error("vector store is rate limiting or out of quota: {0}")]
    ResourceExhausted(String),
    #[error("vector dimension mismatch: store expects {expected}, got {actual}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("invalid vector-store request: {0}")]
    InvalidArgument(String),
    #[error("vector store rejected our credentials: {0}")]
    Unauthenticated(String),
    #[error("vector store internal error: {0}")]
    Internal(String),
}

impl VectorStoreError {
    /// Transient errors may succeed on retry; the others will not.
    pub fn is_transient(&self) -> bool {
        match self {
            VectorStoreError::Unavailable(_)
            | VectorStoreError::Timeout(_)
            | VectorStoreError::CircuitOpen
            | VectorStoreError::ResourceExhausted(_)
            | VectorStoreError::Internal(_) => true,
            VectorStoreError::DimensionMismatch { .. }
            | VectorStoreError::InvalidArgument(_)
            | VectorStoreError::Unauthenticated(_) => false,
        }
    }
}

/// A tenant-scoped vector index of one [`VectorSpace`].
///
/// Every method is idempotent: `upsert` replaces, `delete` of a missing id succeeds.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// The dimension this store accepts (checked against the server at start-up for KyroDB).
    fn dimension(&self) -> usize;

    /// Inserts or replaces vectors. Durable when it returns `Ok`.
    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), VectorStoreError>;

    /// k-NN within `query.tenant`, best first.
    async fn search(&self, query: &VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError>;

    /// Point lookup; `None` when absent or owned by another tenant.
    async fn get(
        &self,
        tenant: TenantId,
        id: VectorId,
    ) -> Result<Option<VectorRecord>, VectorStoreError>;

    /// Deletes ids of this tenant; returns how many existed.
    async fn delete(&self, tenant: TenantId, ids: &[VectorId]) -> Result<u64, VectorStoreError>;

    /// Deletes every vector of a tenant; returns how many were deleted.
    async fn delete_tenant(&self, tenant: TenantId) -> Result<u64, VectorStoreError>;

    /// Liveness and health.
    async fn health(&self) -> Result<StoreHealth, VectorStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_evaluate() {
        let m = md(&[
            ("tool:kubectl", "1"),
            ("error_class", "network_error"),
            ("t", "10"),
        ]);
        assert!(MetadataFilter::exact("tool:kubectl", "1").matches(&m));
        assert!(!MetadataFilter::exact("tool:helm", "1").matches(&m));
        let range = |bound, value: &str| MetadataFilter::Range {
            key: "t".into(),
            bound,
            value: value.into(),
        };
        assert!(range(RangeBound::Gte, "9").matches(&m));
        assert!(range(RangeBound::Gt, "9").matches(&m));
        // Numeric, not lexicographic: "10" > "9".
        assert!(!range(RangeBound::Lt, "9").matches(&m));
        assert!(range(RangeBound::Lte, "10").matches(&m));
        let in_f = MetadataFilter::In {
            key: "error_class".into(),
            values: vec!["a".into(), "network_error".into()],
        };
        assert!(in_f.matches(&m));
        assert!(!MetadataFilter::Not(Box::new(in_f.clone())).matches(&m));
        assert!(MetadataFilter::And(vec![in_f.clone(), range(RangeBound::Gt, "1")]).matches(&m));
        assert!(MetadataFilter::Or(vec![range(RangeBound::Gt, "100"), in_f]).matches(&m));
    }

    #[test]
    fn transient_errors_are_classified() {
        assert!(VectorStoreError::Unavailable("x".into()).is_transient());
        assert!(
            !VectorStoreError::DimensionMismatch {
                expected: 384,
                actual: 3
            }
            .is_transient()
        );
    }
}
