//! The ingest-writer: consumes `episode.embedded`, writes each episode's vectors to the
//! vector stores and the episode to the system of record, publishes `episode.stored`, and
//! only then acknowledges. Every step is idempotent (vector upserts replace by a
//! deterministic id, the episode insert is `ON CONFLICT DO NOTHING`, the stored event is
//! de-duplicated by its message id), so a redelivery after a crash changes nothing.
//!
//! The vector is written before the episode row, so "the episode is readable" implies
//! "the episode is searchable". The system of record keeps the vectors too, so the index
//! can always be rebuilt from it ([`reindex`]).
//!
//! A second consumer handles `episode.deleted` ([`DeletionHandler`]): it removes the
//! episode's vectors. An episode deleted while still in the pipeline has a tombstone in the
//! system of record; the embedded-episode handler checks it before writing anything (and
//! again after writing the row, in case the deletion committed in between) and then cleans
//! up instead of storing, so a deleted episode never comes back.

pub mod deletion;
pub mod reindex;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bus::{BatchHandler, Bus, Incoming, OutboundMessage, Outcome};
use common::events::{Envelope, EpisodeEmbedded, EpisodeStored, Topology};
use common::vector::{VectorRecord, VectorStore, VectorStoreError, episode_metadata};
use common::{EpisodeId, TenantId};
use db::{Db, StoredEpisode};
use tokio_util::sync::CancellationToken;

pub use deletion::DeletionHandler;
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

/// Runs the writer's two consume loops — embedded episodes (`ingest-writer`) and deletions
/// (`ingest-writer-deletions`) — until `shutdown`; if one fails, both stop.
pub async fn run(deps: IngestDeps, shutdown: CancellationToken) -> Result<(), bus::BusError> {
    let topology = deps.topology.clone();
    let bus = deps.bus.clone();
    let stop = shutdown.child_token();
    let stored_spec = topology.ingest_writer_consumer();
    let deleted_spec = topology.ingest_writer_deletions_consumer();
    let stored = async {
        let r = bus::run_consumer(
            bus.clone(),
            &topology,
            &stored_spec,
            Arc::new(IngestHandler::new(deps.clone())),
            stop.clone(),
        )
        .await;
        if r.is_err() {
            stop.cancel();
        }
        r
    };
    let deleted = async {
        let r = bus::run_consumer(
            bus.clone(),
            &topology,
            &deleted_spec,
            Arc::new(DeletionHandler::new(deps.clone())),
            stop.clone(),
        )
        .await;
        if r.is_err() {
            stop.cancel();
        }
        r
    };
    let (stored, deleted) = tokio::join!(Box::pin(stored), Box::pin(deleted));
    stored.and(deleted)
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
        for (slot, incoming) in batch.iter().enumerate() {
            if let Err(reason) = incoming.event.check() {
                outcomes[slot] = Some(Outcome::Reject(reason));
            }
        }
        // Episodes deleted before they were stored: clean up, store nothing.
        self.skip_deleted(&batch, &mut outcomes).await;

        let mut text_records = Vec::new();
        let mut image_records = Vec::new();
        for (slot, incoming) in batch.iter().enumerate() {
            if outcomes[slot].is_some() {
                continue;
            }
            let env = &incoming.event;
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
    /// Settles the messages of episodes that have a tombstone: removes whatever an earlier
    /// delivery may have written (the row, the vectors) and acks. One query per tenant.
    async fn skip_deleted(
        &self,
        batch: &[Incoming<Envelope<EpisodeEmbedded>>],
        outcomes: &mut [Option<Outcome>],
    ) {
        let mut by_tenant: HashMap<TenantId, Vec<EpisodeId>> = HashMap::new();
        for (slot, incoming) in batch.iter().enumerate() {
            if outcomes[slot].is_none() {
                let env = &incoming.event;
                by_tenant
                    .entry(env.tenant_id)
                    .or_default()
                    .push(env.data.episode_id);
            }
        }
        for (tenant, ids) in by_tenant {
            let in_tenant =
                |slot: &usize| outcomes[*slot].is_none() && batch[*slot].event.tenant_id == tenant;
            let slots: Vec<usize> = (0..batch.len()).filter(in_tenant).collect();
            match self.deps.db.deleted_episode_ids(tenant, &ids).await {
                Ok(deleted) => {
                    for slot in slots {
                        let data = &batch[slot].event.data;
                        if deleted.contains(&data.episode_id) {
                            tracing::info!(episode_id = %data.episode_id, "episode was deleted; not storing it");
                            outcomes[slot] = Some(
                                deletion::discard(
                                    &self.deps,
                                    tenant,
                                    data.episode_id,
                                    data.vector_id,
                                )
                                .await,
                            );
                        }
                    }
                }
                Err(e) => {
                    let outcome = deletion::db_outcome("check tombstones", &e);
                    for slot in slots {
                        outcomes[slot] = Some(outcome.clone());
                    }
                }
            }
        }
    }

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
        // The deletion may have committed between the check before the vector upsert and
        // the insert: look again now that the row is committed. (If it commits after this
        // look, the deletion consumer, which runs after that commit, removes the row and
        // the vectors.)
        match self
            .deps
            .db
            .is_episode_deleted(env.tenant_id, data.episode_id)
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(episode_id = %data.episode_id, "episode was deleted while being stored; removing it");
                return deletion::discard(
                    &self.deps,
                    env.tenant_id,
                    data.episode_id,
                    data.vector_id,
                )
                .await;
            }
            Err(e) => return deletion::db_outcome("check tombstone", &e),
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
