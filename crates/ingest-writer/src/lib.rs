//! The ingest-writer: consumes `episode.embedded`, writes each episode's vectors to the
//! vector stores and the episode to the system of record, publishes `episode.stored`, and
//! only then acknowledges. Every step is idempotent (vector upserts replace by a
//! deterministic id, the episode insert is `ON CONFLICT DO NOTHING`, the stored event is
//! de-duplicated by its message id), so a redelivery after a crash changes nothing.
//!
//! The vector is written before the episode row, so "the episode is readable" implies
//! "the episode is searchable". The system of record keeps the vectors too, so the index
//! can always be rebuilt from it ([`reindex`]).

pub mod reindex;

use std::sync::Arc;

use async_trait::async_trait;
use bus::{BatchHandler, Bus, Incoming, OutboundMessage, Outcome};
use common::events::{Envelope, EpisodeEmbedded, EpisodeStored, Topology};
use common::vector::{VectorRecord, VectorStore, VectorStoreError, episode_metadata};
use db::{Db, StoredEpisode};
use tokio_util::sync::CancellationToken;

pub use reindex::{ReindexReport, reindex};

/// Everything the ingest-writer binary reads (`EM_INGEST_WRITER__<SECTION>__<KEY>`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: db::DbConfig,
    /// Apply pending migrations at start-up (safe with several replicas).
    pub run_migrations: Option<bool>,
    pub nats: bus::NatsConfig,
    pub events: common::events::TopologySettings,
    pub kyrodb: KyroDbSettings,
}

/// The KyroDB instances: one 384-dim text index, and optionally a 512-dim image index.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KyroDbSettings {
    pub text: kyrodb_client::KyroDbConfig,
    pub image: Option<kyrodb_client::KyroDbConfig>,
}

/// What the writer needs.
#[derive(Clone)]
pub struct IngestDeps {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub topology: Topology,
    pub text_store: Arc<dyn VectorStore>,
    /// Absent when no image index is configured: image vectors are then kept only in the
    /// system of record.
    pub image_store: Option<Arc<dyn VectorStore>>,
}

/// The `episode.embedded` handler.
pub struct IngestHandler {
    deps: IngestDeps,
}

impl IngestHandler {
    pub fn new(deps: IngestDeps) -> Self {
        Self { deps }
    }
}

/// Runs the writer's consume loop until `shutdown`.
pub async fn run(deps: IngestDeps, shutdown: CancellationToken) -> Result<(), bus::BusError> {
    let spec = deps.topology.ingest_writer_consumer();
    let topology = deps.topology.clone();
    let bus = deps.bus.clone();
    bus::run_consumer(
        bus,
        &topology,
        &spec,
        Arc::new(IngestHandler::new(deps)),
        shutdown,
    )
    .await
}

fn to_outcome(e: &VectorStoreError) -> Outcome {
    if e.is_transient() {
        Outcome::Retry(e.to_string())
    } else {
        Outcome::Reject(e.to_string())
    }
}

/// Upserts `records` (index-aligned with `slots`) and records failures in `outcomes`.
/// A batch failing for a non-transient reason is retried record by record, so that one bad
/// record cannot poison its neighbours.
async fn upsert_isolating(
    store: &dyn VectorStore,
    records: Vec<(usize, VectorRecord)>,
    outcomes: &mut [Option<Outcome>],
) {
    if records.is_empty() {
        return;
    }
    let only: Vec<VectorRecord> = records.iter().map(|(_, r)| r.clone()).collect();
    match store.upsert(&only).await {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            for (slot, _) in &records {
                outcomes[*slot].get_or_insert_with(|| to_outcome(&e));
            }
        }
        Err(_) => {
            for (slot, record) in records {
                if let Err(e) = store.upsert(std::slice::from_ref(&record)).await {
                    outcomes[slot].get_or_insert_with(|| to_outcome(&e));
                }
            }
        }
    }
}

#[async_trait]
impl BatchHandler for IngestHandler {
    type Event = Envelope<EpisodeEmbedded>;

    async fn handle(&self, batch: Vec<Incoming<Self::Event>>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        let mut text_records = Vec::new();
        let mut image_records = Vec::new();
        for (slot, incoming) in batch.iter().enumerate() {
            let env = &incoming.event;
            if let Err(reason) = env.check() {
                outcomes[slot] = Some(Outcome::Reject(reason));
                continue;
            }
            let data = &env.data;
            let metadata = episode_metadata(&data.episode, data.captured_at);
            text_records.push((
                slot,
                VectorRecord {
                    id: data.vector_id,
                    tenant: env.tenant_id,
                    episode: data.episode_id,
                    embedding: data.text.vector.clone(),
                    metadata: metadata.clone(),
                },
            ));
            if let (Some(image), true) = (&data.image, self.deps.image_store.is_some()) {
                image_records.push((
                    slot,
                    VectorRecord {
                        id: data.vector_id,
                        tenant: env.tenant_id,
                        episode: data.episode_id,
                        embedding: image.vector.clone(),
                        metadata,
                    },
                ));
            }
        }
        upsert_isolating(self.deps.text_store.as_ref(), text_records, &mut outcomes).await;
        if let Some(image_store) = &self.deps.image_store {
            let pending: Vec<_> = image_records
                .into_iter()
                .filter(|(slot, _)| outcomes[*slot].is_none())
                .collect();
            upsert_isolating(image_store.as_ref(), pending, &mut outcomes).await;
        }

        // The system of record, then the stored event, for every message still in play.
        let stored_at = common::time_util::now_micros();
        let work = batch
            .iter()
            .enumerate()
            .filter(|(slot, _)| outcomes[*slot].is_none())
            .map(|(slot, incoming)| async move {
                (slot, self.store_one(&incoming.event, stored_at).await)
            });
        for (slot, result) in futures::future::join_all(work).await {
            outcomes[slot] = Some(result);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not processed".to_owned())))
            .collect()
    }
}

impl IngestHandler {
    async fn store_one(
        &self,
        env: &Envelope<EpisodeEmbedded>,
        stored_at: time::OffsetDateTime,
    ) -> Outcome {
        let data = &env.data;
        let stored = StoredEpisode {
            id: data.episode_id,
            tenant_id: env.tenant_id,
            vector_id: data.vector_id,
            episode: data.episode.clone(),
            text_embedding: data.text.vector.clone(),
            text_model: data.text.model.clone(),
            image_status: data.image_status,
            image_embedding: data.image.as_ref().map(|i| i.vector.clone()),
            image_model: data.image.as_ref().map(|i| i.model.clone()),
            redactions: data.redactions.clone(),
            captured_at: data.captured_at,
            stored_at,
        };
        if let Err(e) = self.deps.db.insert_episode(&stored).await {
            return if e.is_transient() {
                Outcome::Retry(format!("database: {e}"))
            } else {
                Outcome::Reject(format!("database: {e}"))
            };
        }
        let event = Envelope::new(
            env.tenant_id,
            EpisodeStored {
                episode_id: data.episode_id,
                vector_id: data.vector_id,
                captured_at: data.captured_at,
                stored_at,
                episode: data.episode.clone().without_screenshot(),
                image_status: data.image_status,
                embedding_model: data.text.model.clone(),
            },
            stored_at,
        );
        match OutboundMessage::episode_event(&self.deps.topology, &event) {
            Ok(message) => {
                Outcome::after_publish(self.deps.bus.publish(message).await, "publish stored")
            }
            Err(e) => Outcome::Reject(format!("encode stored event: {e}")),
        }
    }
}
