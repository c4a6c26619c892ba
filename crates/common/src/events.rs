//! The event contract: every NATS subject, stream, consumer and event payload of the system.
//!
//! This module is a public, versioned contract: internal teams subscribe to these subjects
//! (see docs/EVENTS.md). Never change a published `v1` payload in place; add a `v2` beside it.
//!
//! Subjects carry the tenant as their last token so that NATS permissions can grant one
//! tenant or all of them:
//!
//! ```text
//! <prefix>.v1.episodes.captured.<tenant>   gateway → embedder        EpisodeCaptured
//! <prefix>.v1.episodes.embedded.<tenant>   embedder → ingest-writer  EpisodeEmbedded
//! <prefix>.v1.episodes.stored.<tenant>     ingest-writer → anyone    EpisodeStored
//! <prefix>.v1.episodes.deleted.<tenant>    gateway → ingest-writer   EpisodeDeleted
//! <prefix>.v1.dlq.<consumer>.<tenant>      poison messages, with the reason in headers
//! <prefix>.v1.rpc.embed.text               request-reply: query text → embedding
//! ```
//!
//! `<prefix>` is `episodic` in production; tests use a unique prefix so runs never collide.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::embedding::Embedding;
use crate::episode::Episode;
use crate::ids::{EpisodeId, TenantId, VectorId};

/// The contract version carried in every subject and stream name.
pub const VERSION: &str = "v1";

/// NATS header names we set.
pub mod headers {
    /// JetStream de-duplication id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The event type, e.g. `episode.captured` (also inside the payload).
    pub const EVENT_TYPE: &str = "Episodic-Event-Type";
    /// The payload's schema version (`1`).
    pub const EVENT_VERSION: &str = "Episodic-Event-Version";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// On dead letters: the subject the message was first published on.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "Episodic-Dlq-Original-Subject";
    /// On dead letters: why it was dead-lettered.
    pub const DLQ_REASON: &str = "Episodic-Dlq-Reason";
    /// On dead letters: how many deliveries were attempted.
    pub const DLQ_DELIVERIES: &str = "Episodic-Dlq-Deliveries";
}

/// A stage of an episode's life that publishes an episode event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Captured,
    Embedded,
    Stored,
    /// The tenant deleted the episode (not a pipeline stage: it may come at any time).
    Deleted,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Captured,
        Stage::Embedded,
        Stage::Stored,
        Stage::Deleted,
    ];

    /// The stages every captured episode passes through, in order.
    pub const PIPELINE: [Stage; 3] = [Stage::Captured, Stage::Embedded, Stage::Stored];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Captured => "captured",
            Stage::Embedded => "embedded",
            Stage::Stored => "stored",
            Stage::Deleted => "deleted",
        }
    }

    /// The event type name, e.g. `episode.captured`.
    pub fn event_type(self) -> &'static str {
        match self {
            Stage::Captured => "episode.captured",
            Stage::Embedded => "episode.embedded",
            Stage::Stored => "episode.stored",
            Stage::Deleted => "episode.deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject prefix {0:?}: use 1-32 characters of [a-z0-9_-]")]
pub struct PrefixError(pub String);

/// Durable stream definition (mapped onto JetStream, or onto the embedded bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    /// How long events are kept for replay by subscribers.
    pub max_age: Duration,
    /// JetStream de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    pub replicas: usize,
}

/// Durable pull-consumer definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable_name: String,
    pub filter_subject: String,
    /// Redelivery after this long without an ack (handlers send progress acks on long work).
    pub ack_wait: Duration,
    /// After this many deliveries a message is dead-lettered.
    pub max_deliver: u32,
    /// Delay before redelivery after a transient failure, by attempt.
    pub backoff: Vec<Duration>,
    pub max_ack_pending: usize,
    /// Largest batch one fetch returns.
    pub max_batch: usize,
}

impl ConsumerSpec {
    /// The redelivery delay after the `delivered`-th attempt failed transiently.
    pub fn backoff_for(&self, delivered: u32) -> Duration {
        let i = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Deserialisable settings for a [`Topology`] (`EM_<SERVICE>__EVENTS__*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySettings {
    /// Subject prefix (`episodic` in production).
    pub prefix: String,
    /// JetStream stream replicas.
    pub replicas: usize,
    /// How long episode events stay in the stream, in seconds.
    pub retention_secs: u64,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            prefix: "episodic".to_owned(),
            replicas: 1,
            retention_secs: 7 * 24 * 3600,
        }
    }
}

impl TopologySettings {
    pub fn build(&self) -> Result<Topology, PrefixError> {
        Ok(Topology::new(&self.prefix)?
            .with_replicas(self.replicas)
            .with_retention(Duration::from_secs(self.retention_secs)))
    }
}

/// Every subject, stream and consumer name, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    replicas: usize,
    retention: Duration,
}

/// Well-known durable consumer names.
pub mod consumers {
    pub const EMBEDDER: &str = "embedder";
    pub const INGEST_WRITER: &str = "ingest-writer";
    /// The ingest-writer's second consumer: removes deleted episodes' vectors.
    pub const INGEST_WRITER_DELETIONS: &str = "ingest-writer-deletions";
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: "episodic".to_owned(),
            replicas: 1,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Topology {
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(PrefixError(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            ..Self::default()
        })
    }

    /// Stream replicas (1 for a single NATS server, 3 for a production cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How long episode events stay in the stream for replay.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.v1.episodes.<stage>.<tenant>`
    pub fn episode_subject(&self, stage: Stage, tenant: TenantId) -> String {
        format!(
            "{}.{VERSION}.episodes.{}.{tenant}",
            self.prefix,
            stage.as_str()
        )
    }

    /// All tenants of one stage: `<prefix>.v1.episodes.<stage>.*`
    pub fn stage_filter(&self, stage: Stage) -> String {
        format!("{}.{VERSION}.episodes.{}.*", self.prefix, stage.as_str())
    }

    /// `<prefix>.v1.dlq.<consumer>.<tenant token of the original subject>`
    pub fn dead_letter_subject(&self, consumer: &str, original_subject: &str) -> String {
        let tenant = original_subject
            .rsplit('.')
            .next()
            .filter(|t| !t.is_empty())
            .unwrap_or("_");
        format!("{}.{VERSION}.dlq.{consumer}.{tenant}", self.prefix)
    }

    /// Request-reply subject of the embedder's query-embedding service.
    pub fn embed_text_subject(&self) -> String {
        format!("{}.{VERSION}.rpc.embed.text", self.prefix)
    }

    /// Queue group of the embedder's request-reply responders.
    pub fn embed_queue_group(&self) -> String {
        format!("{}-embedder", self.prefix)
    }

    /// Request-reply subject of the retriever's search (`RetrieverCall<SearchRequest>`).
    pub fn search_subject(&self) -> String {
        format!("{}.{VERSION}.rpc.retriever.search", self.prefix)
    }

    /// Request-reply subject of the retriever's gate (`RetrieverCall<GateRequest>`).
    pub fn reflect_subject(&self) -> String {
        format!("{}.{VERSION}.rpc.retriever.reflect", self.prefix)
    }

    /// Queue group of the retriever's responders (replicas share the requests).
    pub fn retriever_queue_group(&self) -> String {
        format!("{}-retriever", self.prefix)
    }

    /// Fan-out notices between gateway replicas that a key was revoked or a customer
    /// changed (suspended, re-tiered, deleted): every replica drops what it cached
    /// ([`AuthNotice`]). Core NATS, not persisted.
    pub fn auth_control_subject(&self) -> String {
        format!("{}.{VERSION}.control.auth", self.prefix)
    }

    fn stream_name(&self, what: &str) -> String {
        format!(
            "{}_{}_{}",
            self.prefix.to_ascii_uppercase().replace('-', "_"),
            VERSION.to_ascii_uppercase(),
            what
        )
    }

    /// The stream holding every episode event.
    pub fn episodes_stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.stream_name("EPISODES"),
            subjects: vec![format!("{}.{VERSION}.episodes.>", self.prefix)],
            max_age: self.retention,
            duplicate_window: Duration::from_secs(10 * 60),
            replicas: self.replicas,
        }
    }

    /// The stream of customer-level events (`<prefix>.v1.tenants.<event>.<tenant>`): quota
    /// warnings, account deletion. Kept as long as the episodes stream.
    pub fn tenants_stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.stream_name("TENANTS"),
            subjects: vec![format!("{}.{VERSION}.tenants.>", self.prefix)],
            max_age: self.retention,
            duplicate_window: Duration::from_secs(10 * 60),
            replicas: self.replicas,
        }
    }

    /// Subject of a customer-level event, e.g. `episodic.v1.tenants.quota_warning.<tenant>`.
    pub fn tenant_subject(&self, event: TenantEventKind, tenant: TenantId) -> String {
        format!(
            "{}.{VERSION}.tenants.{}.{tenant}",
            self.prefix,
            event.subject_token()
        )
    }

    /// The dead-letter stream (kept 30 days for inspection and redrive).
    pub fn dead_letter_stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.stream_name("DLQ"),
            subjects: vec![format!("{}.{VERSION}.dlq.>", self.prefix)],
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(2 * 60),
            replicas: self.replicas,
        }
    }

    fn pipeline_consumer(&self, durable: &str, stage: Stage) -> ConsumerSpec {
        ConsumerSpec {
            stream: self.episodes_stream().name,
            durable_name: durable.to_owned(),
            filter_subject: self.stage_filter(stage),
            ack_wait: Duration::from_secs(30),
            max_deliver: 12,
            backoff: [1, 2, 5, 10, 30, 60, 120, 300, 600, 600, 600]
                .map(Duration::from_secs)
                .to_vec(),
            max_ack_pending: 1_000,
            max_batch: 64,
        }
    }

    /// The embedder consumes captured episodes.
    pub fn embedder_consumer(&self) -> ConsumerSpec {
        self.pipeline_consumer(consumers::EMBEDDER, Stage::Captured)
    }

    /// The ingest-writer consumes embedded episodes.
    pub fn ingest_writer_consumer(&self) -> ConsumerSpec {
        self.pipeline_consumer(consumers::INGEST_WRITER, Stage::Embedded)
    }

    /// The ingest-writer also consumes deletions (to remove the vectors).
    pub fn ingest_writer_deletions_consumer(&self) -> ConsumerSpec {
        self.pipeline_consumer(consumers::INGEST_WRITER_DELETIONS, Stage::Deleted)
    }
}

/// The envelope around every event payload (CloudEvents-like).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<T> {
    /// Unique per event; also the JetStream de-duplication id.
    pub id: String,
    /// e.g. `episode.captured`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload schema version.
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub tenant_id: TenantId,
    pub data: T,
}

/// A payload that belongs to a pipeline stage.
pub trait EpisodeEvent: Serialize + for<'de> Deserialize<'de> {
    const STAGE: Stage;
    fn episode_id(&self) -> EpisodeId;
}

impl<T: EpisodeEvent> Envelope<T> {
    /// Wraps a payload. The id is `<episode>.<stage>`, so publishing the same stage of the
    /// same episode twice is de-duplicated by JetStream and ignored by handlers.
    pub fn new(tenant_id: TenantId, data: T, time: OffsetDateTime) -> Self {
        Self {
            id: format!("{}.{}", data.episode_id(), T::STAGE.as_str()),
            event_type: T::STAGE.event_type().to_owned(),
            version: 1,
            time,
            tenant_id,
            data,
        }
    }

    /// Checks that the envelope describes a `T` (type and version).
    pub fn check(&self) -> Result<(), String> {
        if self.event_type != T::STAGE.event_type() || self.version != 1 {
            return Err(format!(
                "expected {} v1, got {} v{}",
                T::STAGE.event_type(),
                self.event_type,
                self.version
            ));
        }
        Ok(())
    }
}

/// A count of redactions of one kind (e.g. `email`), reported without the redacted text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionCount {
    pub kind: String,
    pub count: u32,
}

/// `episode.captured`: the gateway accepted, validated and redacted an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeCaptured {
    pub episode_id: EpisodeId,
    pub vector_id: VectorId,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    /// The redacted episode, including its screenshot (base64) if any.
    pub episode: Episode,
    #[serde(default)]
    pub redactions: Vec<RedactionCount>,
}

impl EpisodeEvent for EpisodeCaptured {
    const STAGE: Stage = Stage::Captured;
    fn episode_id(&self) -> EpisodeId {
        self.episode_id
    }
}

/// What became of an episode's screenshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// The episode has no screenshot.
    None,
    /// Embedded with the configured image model.
    Embedded,
    /// Stored, but no image model is configured, so it is not searchable by image.
    NotConfigured,
    /// Stored, but the image could not be embedded (e.g. undecodable).
    Failed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::None => "none",
            ImageStatus::Embedded => "embedded",
            ImageStatus::NotConfigured => "not_configured",
            ImageStatus::Failed => "failed",
        }
    }
}

impl std::str::FromStr for ImageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ImageStatus::None,
            ImageStatus::Embedded,
            ImageStatus::NotConfigured,
            ImageStatus::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown image status {s:?}"))
    }
}

/// A model's output for one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEmbedding {
    /// Model identifier, e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    pub vector: Embedding,
}

/// `episode.embedded`: the embedder computed the episode's vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeEmbedded {
    pub episode_id: EpisodeId,
    pub vector_id: VectorId,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    /// The redacted episode, including its screenshot (the writer stores it).
    pub episode: Episode,
    /// 384-dim text embedding.
    pub text: ModelEmbedding,
    pub image_status: ImageStatus,
    /// 512-dim image embedding when `image_status` is `embedded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ModelEmbedding>,
    #[serde(default)]
    pub redactions: Vec<RedactionCount>,
}

impl EpisodeEvent for EpisodeEmbedded {
    const STAGE: Stage = Stage::Embedded;
    fn episode_id(&self) -> EpisodeId {
        self.episode_id
    }
}

/// `episode.stored`: the episode is durable in the system of record and indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeStored {
    pub episode_id: EpisodeId,
    pub vector_id: VectorId,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub stored_at: OffsetDateTime,
    /// The redacted episode without its screenshot bytes.
    pub episode: Episode,
    pub image_status: ImageStatus,
    pub embedding_model: String,
}

impl EpisodeEvent for EpisodeStored {
    const STAGE: Stage = Stage::Stored;
    fn episode_id(&self) -> EpisodeId {
        self.episode_id
    }
}

/// `episode.deleted`: the tenant deleted the episode. It is already gone from the system of
/// record (a tombstone keeps it from coming back); consumers remove every copy they hold.
/// Final: an `episode.stored` of the same episode seen after it (possible when the deletion
/// raced the pipeline) is to be ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeDeleted {
    pub episode_id: EpisodeId,
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_at: OffsetDateTime,
    /// The episode's vector in the text index.
    pub text_vector_id: VectorId,
    /// Its vector in the image index, when it has one (or, deleted while still processing,
    /// may have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_vector_id: Option<VectorId>,
}

impl EpisodeEvent for EpisodeDeleted {
    const STAGE: Stage = Stage::Deleted;
    fn episode_id(&self) -> EpisodeId {
        self.episode_id
    }
}

/// Request on `<prefix>.v1.rpc.embed.text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedTextRequest {
    /// 1..=[`EmbedTextRequest::MAX_TEXTS`] texts, each at most [`EmbedTextRequest::MAX_BYTES`].
    pub texts: Vec<String>,
}

impl EmbedTextRequest {
    pub const MAX_TEXTS: usize = 64;
    pub const MAX_BYTES: usize = 16 * 1024;
}

/// Reply on `<prefix>.v1.rpc.embed.text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmbedTextReply {
    Ok {
        model: String,
        dimension: usize,
        /// One unit vector per input text, in order.
        embeddings: Vec<Embedding>,
    },
    Error {
        /// `invalid_request` (do not retry) or `unavailable` (retry later).
        code: String,
        message: String,
    },
}

/// A fresh event id for events that are not tied to a stage (future use, e.g. tenant events).
pub fn new_event_id() -> String {
    Uuid::now_v7().to_string()
}

/// Customer-level events (stream [`Topology::tenants_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantEventKind {
    /// `quota.warning`: the month's captures reached a warning level.
    QuotaWarning,
}

impl TenantEventKind {
    /// The `type` of the envelope.
    pub fn event_type(self) -> &'static str {
        match self {
            TenantEventKind::QuotaWarning => "quota.warning",
        }
    }

    fn subject_token(self) -> &'static str {
        match self {
            TenantEventKind::QuotaWarning => "quota_warning",
        }
    }
}

/// `quota.warning`: a customer's captures this month reached `level` percent of the
/// quota (80: approaching; 100: reached — further captures are refused, or accepted as
/// overage where the tier allows it). Announced once per level and month; the envelope id
/// is `<tenant>.<month>.quota.<level>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaWarning {
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub level: u32,
    pub used: u64,
    pub limit: u64,
    /// The most that will be accepted this month (limit plus the tier's overage).
    pub hard_limit: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub resets_at: OffsetDateTime,
}

/// A notice on [`Topology::auth_control_subject`]: forget cached verifications of one key
/// or of every key of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthNotice {
    /// The key was revoked (or rotated away).
    KeyRevoked { key_id: String },
    /// The customer's status, tier or existence changed.
    CustomerChanged { tenant_id: TenantId },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::EpisodeFields;

    #[test]
    fn subjects_carry_version_stage_and_tenant() {
        let t = Topology::default();
        let tenant = TenantId::new();
        assert_eq!(
            t.episode_subject(Stage::Captured, tenant),
            format!("episodic.v1.episodes.captured.{tenant}")
        );
        assert_eq!(
            t.stage_filter(Stage::Stored),
            "episodic.v1.episodes.stored.*"
        );
        assert_eq!(
            t.dead_letter_subject("embedder", &t.episode_subject(Stage::Captured, tenant)),
            format!("episodic.v1.dlq.embedder.{tenant}")
        );
        assert_eq!(t.episodes_stream().name, "EPISODIC_V1_EPISODES");
        assert_eq!(
            Topology::new("t-1a2b").map(|t| t.dead_letter_stream().name),
            Ok("T_1A2B_V1_DLQ".to_owned())
        );
        assert!(Topology::new("Bad.Prefix").is_err());
        assert!(Topology::new("").is_err());
    }

    #[test]
    fn every_stage_subject_is_inside_the_stream() {
        let t = Topology::default();
        let stream = t.episodes_stream();
        let base = stream.subjects[0].trim_end_matches('>');
        for stage in Stage::ALL {
            assert!(t.stage_filter(stage).starts_with(base));
        }
        assert!(
            t.dead_letter_subject("x", "a.b")
                .starts_with(t.dead_letter_stream().subjects[0].trim_end_matches('>'))
        );
    }

    #[test]
    fn backoff_grows_and_saturates() {
        let c = Topology::default().embedder_consumer();
        assert_eq!(c.backoff_for(1), Duration::from_secs(1));
        assert!(c.backoff_for(3) > c.backoff_for(2));
        assert_eq!(c.backoff_for(100), Duration::from_secs(600));
    }

    #[test]
    fn envelope_round_trips_and_checks_type() {
        let tenant = TenantId::new();
        let episode_id = EpisodeId::new();
        let episode = Episode::parse(EpisodeFields {
            goal: Some("g".into()),
            ..Default::default()
        })
        .expect("valid");
        let env = Envelope::new(
            tenant,
            EpisodeCaptured {
                episode_id,
                vector_id: VectorId::for_episode(tenant, episode_id),
                captured_at: crate::time_util::now_micros(),
                episode,
                redactions: vec![],
            },
            crate::time_util::now_micros(),
        );
        assert_eq!(env.id, format!("{episode_id}.captured"));
        let json = serde_json::to_vec(&env).expect("json");
        let back: Envelope<EpisodeCaptured> = serde_json::from_slice(&json).expect("parse");
        assert_eq!(back, env);
        assert!(back.check().is_ok());
        let wrong: Result<Envelope<EpisodeStored>, _> = serde_json::from_slice(&json);
        assert!(wrong.is_err());
    }

    #[test]
    fn deleted_event_has_its_own_subject_consumer_and_id() {
        let t = Topology::default();
        let tenant = TenantId::new();
        let episode_id = EpisodeId::new();
        assert_eq!(
            t.episode_subject(Stage::Deleted, tenant),
            format!("episodic.v1.episodes.deleted.{tenant}")
        );
        let consumer = t.ingest_writer_deletions_consumer();
        assert_eq!(consumer.durable_name, "ingest-writer-deletions");
        assert_eq!(consumer.filter_subject, "episodic.v1.episodes.deleted.*");
        assert_eq!(consumer.stream, t.episodes_stream().name);
        let env = Envelope::new(
            tenant,
            EpisodeDeleted {
                episode_id,
                deleted_at: crate::time_util::now_micros(),
                text_vector_id: VectorId::for_episode(tenant, episode_id),
                image_vector_id: None,
            },
            crate::time_util::now_micros(),
        );
        assert_eq!(env.id, format!("{episode_id}.deleted"));
        assert_eq!(env.event_type, "episode.deleted");
        let json = serde_json::to_string(&env).expect("json");
        assert!(!json.contains("image_vector_id"));
        let back: Envelope<EpisodeDeleted> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, env);
        assert!(back.check().is_ok());
    }

    #[test]
    fn embed_reply_is_tagged() {
        let json = serde_json::to_string(&EmbedTextReply::Error {
            code: "invalid_request".into(),
            message: "empty".into(),
        })
        .expect("json");
        assert!(json.contains("\"status\":\"error\""));
    }
}
