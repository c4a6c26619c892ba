//! The ingest-writer's handler against real stores: PostgreSQL, the embedded bus and the
//! embedded index, plus the fake KyroDB over gRPC for failure handling.

use std::sync::Arc;

use async_trait::async_trait;
use bus::{BatchHandler, Bus, EmbeddedBus, EmbeddedBusConfig, Incoming, Outcome};
use common::events::{
    Envelope, EpisodeDeleted, EpisodeEmbedded, ImageStatus, ModelEmbedding, Topology,
};
use common::vector::{
    StoreHealth, VectorHit, VectorQuery, VectorRecord, VectorSpace, VectorStore, VectorStoreError,
};
use common::{Embedding, Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use db::{Deletion, NewCapture, Tombstone};
use embedded_index::EmbeddedIndex;
use ingest_writer::{DeletionHandler, IngestDeps, IngestHandler, reindex};
use kyrodb_client::{KyroDbConfig, KyroDbStore};
use test_support::db::TestDb;
use test_support::kyrodb_fake::{self, FakeKyroDbOptions};

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

// ---- deletion -----------------------------------------------------------------------------

fn with_image(mut e: Envelope<EpisodeEmbedded>) -> Envelope<EpisodeEmbedded> {
    let vector: Vec<f32> = (0..512).map(|i| ((i as f32) * 0.37).cos() + 1.5).collect();
    e.data.image_status = ImageStatus::Embedded;
    e.data.image = Some(ModelEmbedding {
        model: "clip".into(),
        vector: Embedding::new(vector).expect("vector"),
    });
    e
}

fn deleted_event(t: &Tombstone) -> Incoming<Envelope<EpisodeDeleted>> {
    let env = Envelope::new(
        t.tenant_id,
        EpisodeDeleted {
            episode_id: t.episode_id,
            deleted_at: t.deleted_at,
            text_vector_id: t.text_vector_id,
            image_vector_id: t.image_vector_id,
        },
        t.deleted_at,
    );
    Incoming {
        subject: format!("x.v1.episodes.deleted.{}", t.tenant_id),
        event: env,
        headers: vec![],
        delivered: 1,
        stream_sequence: 1,
    }
}

async fn delete(env: &Env, tenant: TenantId, id: EpisodeId) -> Tombstone {
    match env
        .test_db
        .db
        .delete_episode(tenant, id)
        .await
        .expect("delete")
    {
        Deletion::Deleted(t) => t,
        other => panic!("expected a deletion, got {other:?}"),
    }
}

fn all_acked(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| matches!(o, Outcome::Ack))
}

async fn open_index(dim: usize) -> (EmbeddedIndex, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("index");
    let index = tokio::task::spawn_blocking(move || EmbeddedIndex::open(path, dim))
        .await
        .expect("task")
        .expect("index");
    (index, dir)
}

#[tokio::test]
async fn deletion_removes_the_vectors_from_the_embedded_indexes() {
    let env = env().await;
    let (images, _dir) = open_index(512).await;
    let tenant = TenantId::new();
    let events = [with_image(event(tenant, 1.0)), event(tenant, 2.0)];
    let deps = IngestDeps {
        db: env.test_db.db.clone(),
        bus: env.bus.clone(),
        topology: env.topology.clone(),
        text_store: Arc::new(env.index.clone()),
        image_store: Some(Arc::new(images.clone())),
    };
    let outcomes = IngestHandler::new(deps.clone())
        .handle(events.iter().map(|e| incoming(e, 1)).collect())
        .await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!(
        (env.index.tenant_len(tenant), images.tenant_len(tenant)),
        (2, 1)
    );

    let gone = &events[0].data;
    let tombstone = delete(&env, tenant, gone.episode_id).await;
    assert_eq!(tombstone.image_vector_id, Some(gone.vector_id));
    let deletions = DeletionHandler::new(deps);
    // Delivered twice (a redelivery): the same result.
    for _ in 0..2 {
        let outcomes = deletions.handle(vec![deleted_event(&tombstone)]).await;
        assert!(all_acked(&outcomes), "{outcomes:?}");
    }
    assert_eq!(
        env.index.get(tenant, gone.vector_id).await.expect("get"),
        None
    );
    assert_eq!(images.get(tenant, gone.vector_id).await.expect("get"), None);
    assert_eq!(
        (env.index.tenant_len(tenant), images.tenant_len(tenant)),
        (1, 0)
    );
    assert!(
        env.index
            .get(tenant, events[1].data.vector_id)
            .await
            .expect("get")
            .is_some()
    );

    // An announcement without a tombstone is refused, and deletes nothing.
    let live = &events[1].data;
    let forged = Tombstone {
        tenant_id: tenant,
        episode_id: live.episode_id,
        text_vector_id: live.vector_id,
        image_vector_id: None,
        deleted_at: common::time_util::now_micros(),
    };
    let outcomes = deletions.handle(vec![deleted_event(&forged)]).await;
    assert!(matches!(outcomes[..], [Outcome::Reject(_)]), "{outcomes:?}");
    assert_eq!(env.index.tenant_len(tenant), 1);
    assert!(
        env.test_db
            .db
            .get_episode(tenant, live.episode_id)
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn deletion_removes_the_vectors_from_kyrodb() {
    let env = env().await;
    let text_fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(384))
        .await
        .expect("fake text KyroDB");
    let image_fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(512))
        .await
        .expect("fake image KyroDB");
    let text = KyroDbStore::connect(KyroDbConfig::new(text_fake.url(), VectorSpace::Text, 384))
        .await
        .expect("text store");
    let image = KyroDbStore::connect(KyroDbConfig::new(image_fake.url(), VectorSpace::Image, 512))
        .await
        .expect("image store");
    let deps = IngestDeps {
        db: env.test_db.db.clone(),
        bus: env.bus.clone(),
        topology: env.topology.clone(),
        text_store: Arc::new(text),
        image_store: Some(Arc::new(image)),
    };
    let tenant = TenantId::new();
    let events = [with_image(event(tenant, 1.0)), event(tenant, 3.0)];
    let outcomes = IngestHandler::new(deps.clone())
        .handle(events.iter().map(|e| incoming(e, 1)).collect())
        .await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!((text_fake.len(), image_fake.len()), (2, 1));

    let tombstone = delete(&env, tenant, events[0].data.episode_id).await;
    let outcomes = DeletionHandler::new(deps.clone())
        .handle(vec![deleted_event(&tombstone)])
        .await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!((text_fake.len(), image_fake.len()), (1, 0));
    let gone = events[0].data.vector_id;
    assert_eq!(deps.text_store.get(tenant, gone).await.expect("get"), None);
    // Another tenant's deletion naming one of our vector ids deletes nothing of ours: every
    // store call is scoped to the event's tenant.
    let (other, other_episode) = (TenantId::new(), EpisodeId::new());
    env.test_db
        .db
        .reserve_capture(&NewCapture {
            tenant_id: other,
            episode_id: other_episode,
            idempotency_key: None,
            request_hash: "h".into(),
        })
        .await
        .expect("reserve");
    let theirs = delete(&env, other, other_episode).await;
    let outcomes = DeletionHandler::new(deps.clone())
        .handle(vec![deleted_event(&Tombstone {
            text_vector_id: events[1].data.vector_id,
            ..theirs
        })])
        .await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!(text_fake.len(), 1);

    // KyroDB down: retried later, never acked.
    text_fake.inject_failures(100, tonic::Code::Unavailable);
    let second = delete(&env, tenant, events[1].data.episode_id).await;
    let outcomes = DeletionHandler::new(deps)
        .handle(vec![deleted_event(&second)])
        .await;
    assert!(matches!(outcomes[..], [Outcome::Retry(_)]), "{outcomes:?}");
}

#[tokio::test]
async fn an_episode_deleted_while_processing_is_never_stored() {
    let env = env().await;
    let tenant = TenantId::new();
    let e = with_image(event(tenant, 4.0));
    let id = e.data.episode_id;
    env.test_db
        .db
        .reserve_capture(&NewCapture {
            tenant_id: tenant,
            episode_id: id,
            idempotency_key: Some("k".into()),
            request_hash: "h".into(),
        })
        .await
        .expect("reserve");
    delete(&env, tenant, id).await;
    let (images, _dir) = open_index(512).await;
    let deps = IngestDeps {
        db: env.test_db.db.clone(),
        bus: env.bus.clone(),
        topology: env.topology.clone(),
        text_store: Arc::new(env.index.clone()),
        image_store: Some(Arc::new(images.clone())),
    };
    let live = event(tenant, 5.0);
    let outcomes = IngestHandler::new(deps)
        .handle(vec![incoming(&e, 1), incoming(&live, 1)])
        .await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    let db = &env.test_db.db;
    assert_eq!(db.get_episode(tenant, id).await.expect("get"), None);
    assert_eq!(db.count_episodes(tenant).await.expect("count"), 1);
    assert_eq!(env.index.tenant_len(tenant), 1);
    assert_eq!(images.tenant_len(tenant), 0);
    // Only the live episode's stored event was published.
    let published = env
        .embedded
        .stream_len(&env.topology.episodes_stream().name)
        .await
        .expect("stream length");
    assert_eq!(published, 1);
}

/// A vector store whose upsert lets a deletion commit first: the deletion lands between the
/// writer's tombstone check and its insert of the row.
struct DeleteDuringUpsert {
    inner: EmbeddedIndex,
    db: db::Db,
}

#[async_trait]
impl VectorStore for DeleteDuringUpsert {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), VectorStoreError> {
        for r in records {
            let _ = self.db.delete_episode(r.tenant, r.episode).await;
        }
        self.inner.upsert(records).await
    }
    async fn search(&self, q: &VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        self.inner.search(q).await
    }
    async fn get(
        &self,
        tenant: TenantId,
        id: VectorId,
    ) -> Result<Option<VectorRecord>, VectorStoreError> {
        self.inner.get(tenant, id).await
    }
    async fn delete(&self, tenant: TenantId, ids: &[VectorId]) -> Result<u64, VectorStoreError> {
        self.inner.delete(tenant, ids).await
    }
    async fn delete_tenant(&self, tenant: TenantId) -> Result<u64, VectorStoreError> {
        self.inner.delete_tenant(tenant).await
    }
    async fn health(&self) -> Result<StoreHealth, VectorStoreError> {
        self.inner.health().await
    }
}

#[tokio::test]
async fn a_deletion_racing_the_store_is_undone_by_the_writer() {
    let env = env().await;
    let tenant = TenantId::new();
    let e = event(tenant, 6.0);
    env.test_db
        .db
        .reserve_capture(&NewCapture {
            tenant_id: tenant,
            episode_id: e.data.episode_id,
            idempotency_key: None,
            request_hash: "h".into(),
        })
        .await
        .expect("reserve");
    let h = handler(
        &env,
        Arc::new(DeleteDuringUpsert {
            inner: env.index.clone(),
            db: env.test_db.db.clone(),
        }),
    );
    let outcomes = h.handle(vec![incoming(&e, 1)]).await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert!(
        env.test_db
            .db
            .is_episode_deleted(tenant, e.data.episode_id)
            .await
            .expect("check")
    );
    assert_eq!(
        env.test_db.db.count_episodes(tenant).await.expect("count"),
        0
    );
    assert_eq!(env.index.tenant_len(tenant), 0);
    assert_eq!(
        env.embedded
            .stream_len(&env.topology.episodes_stream().name)
            .await
            .expect("stream length"),
        0,
        "no stored event for a deleted episode"
    );
}
