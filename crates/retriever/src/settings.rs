//! Settings of the retriever (`EM_RETRIEVER__<SECTION>__<KEY>`; the standalone binary
//! embeds the same sections under `EM_STANDALONE__`).

use std::time::Duration;

use serde::Deserialize;

use crate::gate::GateSettings;
use crate::rank::RankSettings;

/// Caches and the embedder deadline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Recent query embeddings kept (entries).
    pub query_embeddings: u64,
    #[serde(with = "humantime_serde")]
    pub query_embedding_ttl: Duration,
    /// Candidate episodes kept parsed in memory (entries; episodes are immutable once
    /// stored, and existence is re-checked on every query).
    pub episodes: u64,
    /// Deadline of one query-embedding request to the embedder.
    #[serde(with = "humantime_serde")]
    pub embed_timeout: Duration,
    /// How long an identical search or gate request is answered from the result cache (0s:
    /// never). Deleted episodes are re-checked on every hit, so only new episodes and new
    /// feedback can take this long to show.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// Cached results (entries).
    pub results: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            query_embeddings: 20_000,
            query_embedding_ttl: Duration::from_secs(3600),
            episodes: 50_000,
            embed_timeout: Duration::from_secs(2),
            result_ttl: Duration::from_secs(10),
            results: 10_000,
        }
    }
}

/// What search and gate need to be tuned (shared by the service and the standalone
/// binary).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalSettings {
    pub ranking: RankSettings,
    pub gate: GateSettings,
    pub cache: CacheSettings,
}

/// Everything the retriever binary reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: db::DbConfig,
    pub nats: bus::NatsConfig,
    pub events: common::events::TopologySettings,
    /// The text index (384-dim).
    pub kyrodb: kyrodb_client::KyroDbConfig,
    pub retrieval: RetrievalSettings,
}
