//! The ingest-writer's handler against real stores: PostgreSQL, the embedded bus and the
//! embedded index, plus the fake KyroDB over gRPC for failure handling.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{BatchHandler, Bus, EmbeddedBus, EmbeddedBusConfig, Incoming, Outcome};
use common::events::{Envelope, EpisodeEmbedded, ImageStatus, ModelEmbedding, Topology};
use common::vector::{
    StoreHealth, VectorHit, VectorQuery, VectorRecord, VectorStore, VectorStoreError,
};
use common::{Embedding, Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use embedded_index::EmbeddedIndex;
use ingest_writer::{IngestDeps, IngestHandler, reindex};
use test_support::db::TestDb;

fn event(tenant: TenantId, seed: f32) -> Envelope<EpisodeEmbedded> {
    let episode_id = EpisodeId::new();
    let episode = Episode::parse(EpisodeFields {
        goal: Some(format!("goal {seed}")),
        tool_chain: vec!["kubectl".into()],
        tags: vec!["rbac".into()],
        ..Default::default()
    })
    .expect("valid");
    let vector: Vec<f32> = (0..384).map(|i| ((i as f32) * seed).sin() + 1.5).collect();
    Envelope::new(
        tenant,
        EpisodeEmbedded {
            episode_id,
            vector_id: VectorId::for_episode(tenant, episode_id),
            captured_at: common::time_util::now_micros(),
            episode,
            text: ModelEmbedding {
                model: "all-MiniLM-L6-v2".into(),
                vector: Embedding::new(vector).expect("vector"),
            },
            image_status: ImageStatus::None,
            image: None,
            redactions: vec![],
        },
        common::time_util::now_micros(),
    )
}

fn incoming(
    event: &Envelope<EpisodeEmbedded>,
    delivered: u32,
) -> Incoming<Envelope<EpisodeEmbedded>> {
    Incoming {
        event: event.clone(),
        subject: format!("x.v1.episodes.embedded.{}", event.tenant_id),
        headers: vec![],
        delivered,
        stream_sequence: 1,
    }
}

struct Env {
    test_db: TestDb,
    embedded: EmbeddedBus,
    bus: Arc<dyn Bus>,
    index: EmbeddedIndex,
    topology: Topology,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = Topology::new("tw").expect("prefix");
    let embedded = EmbeddedBus::open(dir.path().join("bus.db"), EmbeddedBusConfig::default())
        .await
        .expect("bus");
    let bus: Arc<dyn Bus> = Arc::new(embedded.clone());
    bus::ensure_topology(bus.as_ref(), &topology)
        .await
        .expect("topology");
    let path = dir.path().join("index");
    let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(path, 384))
        .await
        .expect("task")
        .expect("index");
    Env {
        test_db: TestDb::postgres().await,
        embedded,
        bus,
        index,
        topology,
        _dir: dir,
    }
}

fn handler(env: &Env, text: Arc<dyn VectorStore>) -> IngestHandler {
    IngestHandler::new(IngestDeps {
        db: env.test_db.db.clone(),
        bus: env.bus.clone(),
        topology: env.topology.clone(),
        text_store: text,
        image_store: None,
    })
}

#[tokio::test]
async fn redelivery_changes_nothing() {
    let env = env().await;
    let tenant = TenantId::new();
    let events: Vec<_> = (1..=5).map(|i| event(tenant, i as f32)).collect();
    let h = handler(&env, Arc::new(env.index.clone()));
    let batch: Vec<_> = events.iter().map(|e| incoming(e, 1)).collect();
    let outcomes = h.handle(batch).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack)),
        "{outcomes:?}"
    );
    // The same batch again (a redelivery after a crash before the ack), plus a duplicate
    // inside one batch.
    let mut again: Vec<_> = events.iter().map(|e| incoming(e, 2)).collect();
    again.push(incoming(&events[0], 2));
    let outcomes = h.handle(again).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack)),
        "{outcomes:?}"
    );
    assert_eq!(
        env.test_db.db.count_episodes(tenant).await.expect("count"),
        5
    );
    assert_eq!(env.index.tenant_len(tenant), 5);
    let stored = env
        .test_db
        .db
        .get_episode(tenant, events[2].data.episode_id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.text_embedding, events[2].data.text.vector);
    assert_eq!(stored.episode, events[2].data.episode);
    // One stored event per episode: the redelivered ones were de-duplicated.
    let stored_events = env
        .embedded
        .stream_len(&env.topology.episodes_stream().name)
        .await
        .expect("stream length");
    assert_eq!(stored_events, 5);
}

/// A store that fails in a chosen way.
struct Failing(VectorStoreError);

#[async_trait]
impl VectorStore for Failing {
    fn dimension(&self) -> usize {
        384
    }
    async fn upsert(&self, _: &[VectorRecord]) -> Result<(), VectorStoreError> {
        Err(self.0.clone())
    }
    async fn search(&self, _: &VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        Err(self.0.clone())
    }
    async fn get(
        &self,
        _: TenantId,
        _: VectorId,
    ) -> Result<Option<VectorRecord>, VectorStoreError> {
        Err(self.0.clone())
    }
    async fn delete(&self, _: TenantId, _: &[VectorId]) -> Result<u64, VectorStoreError> {
        Err(self.0.clone())
    }
    async fn delete_tenant(&self, _: TenantId) -> Result<u64, VectorStoreError> {
        Err(self.0.clone())
    }
    async fn health(&self) -> Result<StoreHealth, VectorStoreError> {
        Err(self.0.clone())
    }
}

#[tokio::test]
async fn vector_store_failures_retry_or_dead_letter_and_store_nothing() {
    let env = env().await;
    let tenant = TenantId::new();
    let e = event(tenant, 1.0);

    let down = handler(
        &env,
        Arc::new(Failing(VectorStoreError::Unavailable("down".into()))),
    );
    let outcomes = down.handle(vec![incoming(&e, 1)]).await;
    assert!(matches!(outcomes[..], [Outcome::Retry(_)]), "{outcomes:?}");

    let broken = handler(
        &env,
        Arc::new(Failing(VectorStoreError::DimensionMismatch {
            expected: 512,
            actual: 384,
        })),
    );
    let outcomes = broken.handle(vec![incoming(&e, 1)]).await;
    assert!(matches!(outcomes[..], [Outcome::Reject(_)]), "{outcomes:?}");

    // Nothing reached the system of record: "readable" implies "indexed".
    assert_eq!(
        env.test_db.db.count_episodes(tenant).await.expect("count"),
        0
    );
}

#[tokio::test]
async fn reindex_rebuilds_an_empty_index_from_the_system_of_record() {
    let env = env().await;
    let tenant = TenantId::new();
    let events: Vec<_> = (1..=7).map(|i| event(tenant, i as f32)).collect();
    let h = handler(&env, Arc::new(env.index.clone()));
    let outcomes = h
        .handle(events.iter().map(|e| incoming(e, 1)).collect())
        .await;
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Ack)));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh");
    let fresh = tokio::task::spawn_blocking(move || EmbeddedIndex::open(path, 384))
        .await
        .expect("task")
        .expect("index");
    let report = reindex(&env.test_db.db, &fresh, None, 3)
        .await
        .expect("reindex");
    assert!(report.episodes >= 7);
    assert_eq!(fresh.tenant_len(tenant), 7);
    let hits = fresh
        .search(&VectorQuery {
            tenant,
            embedding: events[4].data.text.vector.clone(),
            k: 1,
            min_score: None,
            filter: None,
        })
        .await
        .expect("search");
    assert_eq!(hits[0].episode, events[4].data.episode_id);
    assert!(hits[0].score > 0.9999);
    assert_eq!(
        hits[0].metadata.get("tool:kubectl").map(String::as_str),
        Some("1")
    );
}
