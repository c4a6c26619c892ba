//! The KyroDB client against `test_support::kyrodb_fake` over a real socket, plus an opt-in
//! run of the same contract against a real KyroDB (`KYRODB_TEXT_URL`).

use std::time::{Duration, Instant};

use common::embedding::Embedding;
use common::ids::{EpisodeId, TenantId, VectorId};
use common::vector::{
    MetadataFilter, RangeBound, StoreHealth, VectorQuery, VectorRecord, VectorSpace, VectorStore,
    VectorStoreError, meta,
};
use kyrodb_client::proto::batch_delete_request::DeleteCriteria;
use kyrodb_client::proto::health_response::Status as HealthStatus;
use kyrodb_client::{BreakerState, ConnectError, KyroDbConfig, KyroDbStore, TlsConfig};
use test_support::kyrodb_fake::{self, FakeKyroDbHandle, FakeKyroDbOptions, FakeTls, RecordedBody};
use tonic::Code;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DIM: usize = 8;

/// A unit vector pointing mostly along axis `axis`, tilted by `tilt` towards the next one.
fn vector(dim: usize, axis: usize, tilt: f32) -> Embedding {
    let mut v = vec![0.0; dim];
    v[axis % dim] = 1.0;
    v[(axis + 1) % dim] = tilt;
    Embedding::new(v).unwrap_or_else(|e| panic!("test vector: {e}"))
}

fn record(tenant: TenantId, embedding: Embedding, metadata: &[(&str, &str)]) -> VectorRecord {
    let episode = EpisodeId::new();
    VectorRecord {
        id: VectorId::for_episode(tenant, episode),
        tenant,
        episode,
        embedding,
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn query(tenant: TenantId, embedding: Embedding, k: usize) -> VectorQuery {
    VectorQuery {
        tenant,
        embedding,
        k,
        min_score: None,
        filter: None,
    }
}

fn config_for(fake: &FakeKyroDbHandle) -> KyroDbConfig {
    let mut config = KyroDbConfig::new(fake.url(), VectorSpace::Text, DIM);
    config.request_timeout = Duration::from_secs(2);
    config.retry.base_backoff = Duration::from_millis(5);
    config.retry.max_backoff = Duration::from_millis(20);
    config
}

async fn fake_and_store() -> Result<(FakeKyroDbHandle, KyroDbStore), Box<dyn std::error::Error>> {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(DIM)).await?;
    let store = KyroDbStore::connect(config_for(&fake)).await?;
    Ok((fake, store))
}

/// The behaviour every `KyroDbStore` must show, against the fake or a real KyroDB: round trip
/// and tenant isolation. Leaves nothing behind.
async fn contract(store: &KyroDbStore) -> TestResult {
    let dim = store.dimension();
    let (a, b) = (TenantId::new(), TenantId::new());
    let a_near = record(
        a,
        vector(dim, 0, 0.1),
        &[(meta::ERROR_CLASS, "network_error")],
    );
    let a_far = record(a, vector(dim, 3, 0.0), &[(meta::ERROR_CLASS, "auth_error")]);
    // Tenant b stores exactly the same vector as a's nearest.
    let b_same = record(
        b,
        a_near.embedding.clone(),
        &[(meta::ERROR_CLASS, "network_error")],
    );

    store.upsert(&[a_near.clone(), a_far.clone()]).await?; // BulkInsert
    store.upsert(std::slice::from_ref(&b_same)).await?; // Insert
    // Upsert is idempotent.
    store.upsert(std::slice::from_ref(&b_same)).await?;

    // Search sees only the caller's tenant, best first.
    let hits = store.search(&query(a, vector(dim, 0, 0.1), 10)).await?;
    assert_eq!(
        hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![a_near.id, a_far.id],
        "tenant a sees its own two vectors, nearest first"
    );
    assert!(
        (hits[0].score - 1.0).abs() < 1e-3,
        "cosine of identical vectors"
    );
    assert_eq!(hits[0].episode, a_near.episode);
    assert_eq!(
        hits[0].metadata.get(meta::TENANT),
        Some(&a.to_string()),
        "hit metadata carries the tenant"
    );
    let hits_b = store.search(&query(b, vector(dim, 0, 0.1), 10)).await?;
    assert_eq!(
        hits_b.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![b_same.id]
    );

    // min_score and k.
    let mut q = query(a, vector(dim, 0, 0.1), 10);
    q.min_score = Some(0.5);
    assert_eq!(store.search(&q).await?.len(), 1);
    assert_eq!(
        store.search(&query(a, vector(dim, 0, 0.1), 1)).await?.len(),
        1
    );

    // Get: own record round-trips, the other tenant's is invisible.
    let got = store
        .get(a, a_near.id)
        .await?
        .ok_or("own record must be found")?;
    assert_eq!(got.id, a_near.id);
    assert_eq!(got.tenant, a);
    assert_eq!(got.episode, a_near.episode);
    assert_eq!(got.metadata, a_near.metadata);
    assert!(got.embedding.cosine(&a_near.embedding) > 0.999);
    assert_eq!(store.get(a, b_same.id).await?, None);
    assert_eq!(store.get(b, a_near.id).await?, None);

    // Delete of another tenant's id deletes nothing.
    assert_eq!(store.delete(a, &[b_same.id]).await?, 0);
    assert!(store.get(b, b_same.id).await?.is_some());
    // Delete of own id; deleting a missing id succeeds with 0.
    assert_eq!(store.delete(a, &[a_far.id]).await?, 1);
    assert_eq!(store.delete(a, &[a_far.id]).await?, 0);
    assert_eq!(store.get(a, a_far.id).await?, None);

    // delete_tenant removes only that tenant.
    assert_eq!(store.delete_tenant(a).await?, 1);
    assert!(
        store
            .search(&query(a, vector(dim, 0, 0.1), 10))
            .await?
            .is_empty()
    );
    assert!(store.get(b, b_same.id).await?.is_some());
    assert_eq!(store.delete_tenant(b).await?, 1);
    assert!(store.get(b, b_same.id).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn contract_holds_against_the_fake() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    contract(&store).await?;
    assert!(fake.is_empty());
    fake.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_request_is_scoped_and_bypasses_the_semantic_cache() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    contract(&store).await?;
    let t = TenantId::new();
    let mut q = query(t, vector(DIM, 1, 0.0), 5);
    q.filter = Some(MetadataFilter::exact(meta::ERROR_CLASS, "x"));
    store.search(&q).await?;

    let requests = fake.requests();
    assert!(requests.iter().filter(|r| r.is_data_rpc()).count() > 10);
    let mut searches = 0;
    for request in &requests {
        for ns in request.namespaces() {
            assert!(!ns.is_empty(), "{} sent an empty namespace", request.rpc);
            assert!(ns.parse::<TenantId>().is_ok(), "namespace is a tenant id");
        }
        match &request.body {
            RecordedBody::Search(s) => {
                searches += 1;
                assert!(
                    s.ef_search > 0,
                    "ef_search=0 lets KyroDB answer from its cache"
                );
                assert!(s.k >= 1 && s.k <= 1000);
                assert!(s.filter.is_some(), "every search carries the tenant filter");
                assert!(s.metadata_filters.is_empty());
            }
            RecordedBody::Insert(i) => {
                assert_eq!(i.metadata.get(meta::TENANT), Some(&i.namespace));
                assert!(i.metadata.contains_key(meta::EPISODE));
            }
            RecordedBody::BulkInsert(all) => {
                for i in all {
                    assert_eq!(i.metadata.get(meta::TENANT), Some(&i.namespace));
                }
            }
            RecordedBody::BatchDelete(d) => assert!(d.delete_criteria.is_some()),
            RecordedBody::Query(_)
            | RecordedBody::Delete(_)
            | RecordedBody::Health(_)
            | RecordedBody::GetConfig => {}
        }
    }
    assert!(searches >= 5);
    // The last search: k oversampled (5 * 4), tenant filter AND the caller's filter.
    let Some(RecordedBody::Search(last)) = requests.last().map(|r| &r.body) else {
        return Err("last request should be the search".into());
    };
    assert_eq!(last.k, 20);
    assert_eq!(last.namespace, t.to_string());
    assert!(last.ef_search >= 96);
    Ok(())
}

#[tokio::test]
async fn delete_tenant_is_a_namespaced_filter_delete() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let t = TenantId::new();
    store.delete_tenant(t).await?;
    let Some(RecordedBody::BatchDelete(d)) = fake.requests().last().map(|r| r.body.clone()) else {
        return Err("expected a BatchDelete".into());
    };
    assert_eq!(d.namespace, t.to_string());
    assert!(matches!(d.delete_criteria, Some(DeleteCriteria::Filter(_))));
    Ok(())
}

#[tokio::test]
async fn hits_of_other_tenants_are_dropped_even_if_the_server_leaks_them() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let (a, b) = (TenantId::new(), TenantId::new());
    let ra = record(a, vector(DIM, 0, 0.0), &[]);
    let rb = record(b, vector(DIM, 0, 0.0), &[]);
    store.upsert(&[ra.clone(), rb.clone()]).await?;

    fake.set_ignore_scoping(true); // a broken server: no namespace, no filter
    let hits = store.search(&query(a, vector(DIM, 0, 0.0), 10)).await?;
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ra.id]);
    assert_eq!(store.get(a, rb.id).await?, None);
    // The caller's filter is re-checked too.
    let mut q = query(a, vector(DIM, 0, 0.0), 10);
    q.filter = Some(MetadataFilter::exact(meta::ERROR_CLASS, "nope"));
    assert!(store.search(&q).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn filters_exact_in_and_range() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    filter_contract(&store).await?;
    assert!(fake.is_empty());
    Ok(())
}

/// Metadata filters (exact, in, range, and/or/not) within one tenant. Leaves nothing behind.
async fn filter_contract(store: &KyroDbStore) -> TestResult {
    let dim = store.dimension();
    let t = TenantId::new();
    let kubectl = format!("{}kubectl", meta::TOOL_PREFIX);
    let records = [
        record(
            t,
            vector(dim, 0, 0.1),
            &[
                (meta::ERROR_CLASS, "network_error"),
                (meta::CAPTURED_AT, "9"),
                (&kubectl, "1"),
            ],
        ),
        record(
            t,
            vector(dim, 0, 0.2),
            &[(meta::ERROR_CLASS, "auth_error"), (meta::CAPTURED_AT, "10")],
        ),
        record(
            t,
            vector(dim, 0, 0.3),
            &[
                (meta::ERROR_CLASS, "oom"),
                (meta::CAPTURED_AT, "100"),
                (&kubectl, "1"),
            ],
        ),
    ];
    store.upsert(&records).await?;
    let ids = |hits: Vec<common::vector::VectorHit>| {
        let mut ids: Vec<VectorId> = hits.into_iter().map(|h| h.id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<VectorId>| {
        v.sort();
        v
    };
    let search = |filter: MetadataFilter| {
        let mut q = query(t, vector(dim, 0, 0.0), 10);
        q.filter = Some(filter);
        q
    };

    let exact = store
        .search(&search(MetadataFilter::exact(&kubectl, "1")))
        .await?;
    assert_eq!(ids(exact), sorted(vec![records[0].id, records[2].id]));

    let in_f = MetadataFilter::In {
        key: meta::ERROR_CLASS.into(),
        values: vec!["auth_error".into(), "oom".into()],
    };
    assert_eq!(
        ids(store.search(&search(in_f)).await?),
        sorted(vec![records[1].id, records[2].id])
    );

    // Numeric, not lexicographic: "100" >= "10" and "9" < "10".
    let range = MetadataFilter::Range {
        key: meta::CAPTURED_AT.into(),
        bound: RangeBound::Gte,
        value: "10".into(),
    };
    assert_eq!(
        ids(store.search(&search(range.clone())).await?),
        sorted(vec![records[1].id, records[2].id])
    );

    let combined = MetadataFilter::And(vec![
        range,
        MetadataFilter::Not(Box::new(MetadataFilter::exact(&kubectl, "1"))),
    ]);
    assert_eq!(
        ids(store.search(&search(combined)).await?),
        vec![records[1].id]
    );

    let or = MetadataFilter::Or(vec![
        MetadataFilter::exact(meta::ERROR_CLASS, "network_error"),
        MetadataFilter::Range {
            key: meta::CAPTURED_AT.into(),
            bound: RangeBound::Gt,
            value: "99".into(),
        },
    ]);
    assert_eq!(
        ids(store.search(&search(or)).await?),
        sorted(vec![records[0].id, records[2].id])
    );
    assert_eq!(store.delete_tenant(t).await?, 3);
    Ok(())
}

#[tokio::test]
async fn invalid_requests_are_refused_before_the_wire() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let t = TenantId::new();
    let before = fake.request_count();

    let bad = record(t, vector(DIM, 0, 0.0), &[("__tenant_id__", "x")]);
    assert!(matches!(
        store.upsert(&[bad]).await,
        Err(VectorStoreError::InvalidArgument(_))
    ));
    let wrong_dim = record(t, vector(DIM + 1, 0, 0.0), &[]);
    assert_eq!(
        store.upsert(&[wrong_dim]).await,
        Err(VectorStoreError::DimensionMismatch {
            expected: DIM,
            actual: DIM + 1
        })
    );
    for k in [0, 1001] {
        assert!(matches!(
            store.search(&query(t, vector(DIM, 0, 0.0), k)).await,
            Err(VectorStoreError::InvalidArgument(_))
        ));
    }
    assert_eq!(fake.request_count(), before, "nothing was sent");
    // Empty writes and deletes are no-ops.
    store.upsert(&[]).await?;
    assert_eq!(store.delete(t, &[]).await?, 0);
    assert_eq!(fake.request_count(), before);
    Ok(())
}

#[tokio::test]
async fn bulk_partial_failure_in_the_body_is_an_error() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let t = TenantId::new();
    fake.set_reject_inserts(true);
    let records = [
        record(t, vector(DIM, 0, 0.0), &[]),
        record(t, vector(DIM, 1, 0.0), &[]),
    ];
    let err = store.upsert(&records).await;
    assert!(
        matches!(&err, Err(VectorStoreError::Internal(m)) if m.contains("2 failed")),
        "{err:?}"
    );
    assert!(matches!(
        store.upsert(&records[..1]).await,
        Err(VectorStoreError::Internal(_))
    ));
    Ok(())
}

#[tokio::test]
async fn dimension_mismatch_at_connect_is_refused() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(16)).await?;
    let err = KyroDbStore::connect(config_for(&fake))
        .await
        .err()
        .ok_or("connect must fail")?;
    assert!(matches!(
        err,
        ConnectError::DimensionMismatch {
            expected: DIM,
            server: 16,
            ..
        }
    ));
    let message = err.to_string();
    assert!(
        message.contains("16") && message.contains(&DIM.to_string()),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_non_cosine_server_is_accepted_with_a_warning() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions {
        distance: "Euclidean".into(),
        ..FakeKyroDbOptions::with_dimension(DIM)
    })
    .await?;
    let store = KyroDbStore::connect(config_for(&fake)).await?;
    assert_eq!(store.server_info().distance, "Euclidean");
    assert_eq!(store.server_info().dimension, DIM as u64);
    Ok(())
}

#[tokio::test]
async fn connect_fails_fast_when_nothing_listens() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(DIM)).await?;
    let mut config = config_for(&fake);
    fake.shutdown().await;
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = KyroDbStore::connect(config)
        .await
        .err()
        .ok_or("must fail")?;
    assert!(matches!(err, ConnectError::Transport { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}

#[tokio::test]
async fn transient_unavailable_is_retried_transparently() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let t = TenantId::new();
    store.upsert(&[record(t, vector(DIM, 0, 0.0), &[])]).await?;
    fake.clear_requests();
    fake.inject_failures(2, Code::Unavailable);
    let hits = store.search(&query(t, vector(DIM, 0, 0.0), 3)).await?;
    assert_eq!(hits.len(), 1);
    assert_eq!(fake.request_count(), 3, "two failures, then success");
    assert_eq!(store.breaker_state(), BreakerState::Closed);

    // Not transient: no retry.
    fake.clear_requests();
    fake.inject_failures(1, Code::InvalidArgument);
    assert!(matches!(
        store.search(&query(t, vector(DIM, 0, 0.0), 3)).await,
        Err(VectorStoreError::InvalidArgument(_))
    ));
    assert_eq!(fake.request_count(), 1);

    // Retries are bounded: max_attempts = 3.
    fake.clear_requests();
    fake.inject_failures(10, Code::ResourceExhausted);
    assert!(matches!(
        store.search(&query(t, vector(DIM, 0, 0.0), 3)).await,
        Err(VectorStoreError::ResourceExhausted(_))
    ));
    assert_eq!(fake.request_count(), 3);
    Ok(())
}

#[tokio::test]
async fn a_slow_server_times_out_within_the_deadline() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(DIM)).await?;
    let mut config = config_for(&fake);
    config.request_timeout = Duration::from_millis(200);
    let store = KyroDbStore::connect(config).await?;
    fake.set_latency(Duration::from_secs(30));
    let started = Instant::now();
    let result = store
        .search(&query(TenantId::new(), vector(DIM, 0, 0.0), 3))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        result,
        Err(VectorStoreError::Timeout(Duration::from_millis(200)))
    );
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(
        fake.request_count(),
        2,
        "GetConfig + one search: timeouts are not retried"
    );
    Ok(())
}

#[tokio::test]
async fn repeated_failures_open_the_breaker_then_half_open_recovers() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(DIM)).await?;
    let mut config = config_for(&fake);
    config.retry.max_attempts = 1;
    config.breaker.failure_threshold = 3;
    config.breaker.open_for = Duration::from_secs(1);
    let store = KyroDbStore::connect(config).await?;
    let t = TenantId::new();

    fake.inject_failures(3, Code::Unavailable);
    for _ in 0..3 {
        assert!(matches!(
            store.get(t, VectorId::try_from(7u64)?).await,
            Err(VectorStoreError::Unavailable(_))
        ));
    }
    assert_eq!(store.breaker_state(), BreakerState::Open);
    let sent = fake.request_count();
    assert_eq!(
        store.get(t, VectorId::try_from(7u64)?).await,
        Err(VectorStoreError::CircuitOpen)
    );
    assert_eq!(store.health().await, Err(VectorStoreError::CircuitOpen));
    assert_eq!(
        fake.request_count(),
        sent,
        "an open breaker does not call the server"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Half-open: one probe goes through and closes the breaker.
    assert_eq!(store.get(t, VectorId::try_from(7u64)?).await, Ok(None));
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    assert_eq!(fake.request_count(), sent + 1);

    // A failed probe re-opens it.
    fake.inject_failures(3, Code::Unavailable);
    for _ in 0..3 {
        let _ = store.get(t, VectorId::try_from(7u64)?).await;
    }
    assert_eq!(store.breaker_state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.inject_failures(1, Code::Unavailable);
    assert!(store.get(t, VectorId::try_from(7u64)?).await.is_err());
    assert_eq!(store.breaker_state(), BreakerState::Open);
    Ok(())
}

#[tokio::test]
async fn api_key_is_sent_and_required() -> TestResult {
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions {
        api_key: Some("s3cret-key".into()),
        ..FakeKyroDbOptions::with_dimension(DIM)
    })
    .await?;
    let err = KyroDbStore::connect(config_for(&fake))
        .await
        .err()
        .ok_or("connect without a key must fail")?;
    assert!(
        matches!(
            err,
            ConnectError::Store(VectorStoreError::Unauthenticated(_))
        ),
        "{err:?}"
    );

    let mut config = config_for(&fake);
    config.api_key = Some("s3cret-key".to_owned().into());
    assert!(
        !format!("{config:?}").contains("s3cret-key"),
        "Debug hides the key"
    );
    let store = KyroDbStore::connect(config).await?;
    fake.clear_requests();
    contract(&store).await?;
    assert!(!format!("{store:?}").contains("s3cret-key"));
    let requests = fake.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.api_key.as_deref() == Some("s3cret-key"))
    );
    Ok(())
}

#[tokio::test]
async fn tls_and_mtls_connections_work() -> TestResult {
    // TLS, server verified against the fake's CA.
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions {
        tls: Some(FakeTls::default()),
        ..FakeKyroDbOptions::with_dimension(DIM)
    })
    .await?;
    assert!(fake.url().starts_with("https://"));
    let mut config = config_for(&fake);
    config.tls = Some(TlsConfig {
        ca_cert_pem: fake.ca_cert_path().map(Into::into),
        ..TlsConfig::default()
    });
    let store = KyroDbStore::connect(config.clone()).await?;
    contract(&store).await?;

    // The domain override is what gets verified.
    let mut wrong = config.clone();
    if let Some(tls) = wrong.tls.as_mut() {
        tls.domain = Some("not-kyrodb.example".into());
    }
    assert!(KyroDbStore::connect(wrong).await.is_err());
    // Plaintext against a TLS server fails.
    let mut plain = config_for(&fake);
    plain.url = fake.url().replacen("https", "http", 1);
    plain.connect_timeout = Duration::from_secs(1);
    plain.request_timeout = Duration::from_secs(1);
    assert!(KyroDbStore::connect(plain).await.is_err());

    // mTLS: without a client certificate the handshake fails; with one it works.
    let fake = kyrodb_fake::spawn(FakeKyroDbOptions {
        tls: Some(FakeTls {
            require_client_cert: true,
        }),
        ..FakeKyroDbOptions::with_dimension(DIM)
    })
    .await?;
    let mut config = config_for(&fake);
    config.tls = Some(TlsConfig {
        ca_cert_pem: fake.ca_cert_path().map(Into::into),
        domain: Some("localhost".into()),
        ..TlsConfig::default()
    });
    config.retry.max_attempts = 1;
    assert!(KyroDbStore::connect(config.clone()).await.is_err());
    if let Some(tls) = config.tls.as_mut() {
        tls.client_cert_pem = fake.client_cert_path().map(Into::into);
        tls.client_key_pem = fake.client_key_path().map(Into::into);
    }
    let store = KyroDbStore::connect(config).await?;
    contract(&store).await?;
    Ok(())
}

#[tokio::test]
async fn health_maps_slo_breaches_to_degraded() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    assert_eq!(store.health().await?, StoreHealth::Healthy);
    fake.set_health(HealthStatus::Unhealthy);
    assert!(matches!(store.health().await?, StoreHealth::Degraded(m) if m.contains("UNHEALTHY")));
    fake.set_health(HealthStatus::Degraded);
    assert!(matches!(store.health().await?, StoreHealth::Degraded(_)));
    fake.inject_failures(3, Code::Unavailable);
    assert!(matches!(
        store.health().await,
        Err(VectorStoreError::Unavailable(_))
    ));
    Ok(())
}

#[tokio::test]
async fn large_upserts_are_chunked() -> TestResult {
    let (fake, store) = fake_and_store().await?;
    let t = TenantId::new();
    let records: Vec<VectorRecord> = (0..10_001)
        .map(|i| record(t, vector(DIM, i % DIM, (i % 97) as f32 / 97.0), &[]))
        .collect();
    fake.clear_requests();
    store.upsert(&records).await?;
    let sizes: Vec<usize> = fake
        .requests()
        .iter()
        .filter_map(|r| match &r.body {
            RecordedBody::BulkInsert(all) => Some(all.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![10_000, 1]);
    assert_eq!(fake.len(), 10_001);
    let ids: Vec<VectorId> = records.iter().map(|r| r.id).collect();
    assert_eq!(store.delete(t, &ids).await?, 10_001);
    Ok(())
}

#[tokio::test]
async fn config_defaults_are_sane() {
    let config = KyroDbConfig::new("http://127.0.0.1:1", VectorSpace::Text, 384);
    assert_eq!(config.ef_search, 96);
    assert!(config.validate().is_ok());
}

/// The same contract against a real KyroDB, when one is reachable. Opt-in:
/// `KYRODB_TEXT_URL=http://127.0.0.1:50051 [KYRODB_API_KEY=...] cargo test -p kyrodb-client`
/// (an `https://` URL is verified against `KYRODB_CA_CERT`, a PEM path, or the WebPKI roots).
mod real_kyrodb {
    use super::*;

    #[tokio::test]
    async fn contract_holds_against_a_real_kyrodb() -> TestResult {
        let Ok(url) = std::env::var("KYRODB_TEXT_URL") else {
            // Written to stderr directly (not eprintln!) so the test harness does not capture it.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "real_kyrodb: SKIPPED, KYRODB_TEXT_URL is not set (e.g. http://127.0.0.1:50051; \
                 optional KYRODB_API_KEY, KYRODB_CA_CERT) so the client contract did not run \
                 against a real KyroDB"
            );
            return Ok(());
        };
        let mut config = KyroDbConfig::new(url, VectorSpace::Text, common::embedding::TEXT_DIM);
        config.api_key = std::env::var("KYRODB_API_KEY").ok().map(Into::into);
        if config.url.starts_with("https://") {
            config.tls = Some(TlsConfig {
                ca_cert_pem: std::env::var_os("KYRODB_CA_CERT").map(Into::into),
                ..TlsConfig::default()
            });
        }
        let store = KyroDbStore::connect(config).await?;
        eprintln!("real_kyrodb: connected to {:?}", store.server_info());
        assert!(store.health().await.is_ok());
        contract(&store).await?;
        filter_contract(&store).await?;

        let mut wrong = KyroDbConfig::new(
            store.config().url.clone(),
            VectorSpace::Text,
            common::embedding::TEXT_DIM + 1,
        );
        wrong.api_key = store.config().api_key.clone();
        wrong.tls = store.config().tls.clone();
        assert!(matches!(
            KyroDbStore::connect(wrong).await,
            Err(ConnectError::DimensionMismatch { .. })
        ));
        Ok(())
    }
}
