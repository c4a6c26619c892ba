//! The embedded index against real disk (a temp dir per test).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::embedding::Embedding;
use common::ids::{EpisodeId, TenantId, VectorId};
use common::vector::{
    MetadataFilter, RangeBound, StoreHealth, VectorQuery, VectorRecord, VectorStore,
    VectorStoreError, meta,
};
use embedded_index::{
    EmbeddedIndex, GraphState, IndexConfig, IndexError, SearchPath, stored_metadata,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 32;

fn random_embedding(rng: &mut StdRng, dim: usize) -> Embedding {
    loop {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        if let Ok(e) = Embedding::new(v) {
            return e;
        }
    }
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
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn query(tenant: TenantId, embedding: &Embedding, k: usize) -> VectorQuery {
    VectorQuery {
        tenant,
        embedding: embedding.clone(),
        k,
        min_score: None,
        filter: None,
    }
}

/// Graph kicks in early, so small tests exercise the ANN path too.
fn ann_config(min: usize) -> IndexConfig {
    IndexConfig {
        ann_min_vectors: min,
        filter_exact_below: 50,
        ..IndexConfig::default()
    }
}

fn wait_for_graphs(index: &EmbeddedIndex) {
    assert!(
        index.wait_for_graphs(Duration::from_secs(120)),
        "graph build timed out"
    );
}

fn assert_same_record(got: &VectorRecord, want: &VectorRecord) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.tenant, want.tenant);
    assert_eq!(got.episode, want.episode);
    assert_eq!(got.metadata, stored_metadata(want));
    assert!(got.embedding.cosine(&want.embedding) > 0.999_99);
}

/// Brute-force top-k ids (the reference).
fn brute_force(
    records: &[VectorRecord],
    q: &Embedding,
    k: usize,
    filter: Option<&MetadataFilter>,
) -> Vec<VectorId> {
    let mut scored: Vec<(f32, VectorId)> = records
        .iter()
        .filter(|r| filter.is_none_or(|f| f.matches(&stored_metadata(r))))
        .map(|r| (r.embedding.cosine(q), r.id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, id)| id).collect()
}

#[tokio::test]
async fn round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("open");
    assert_eq!(index.dimension(), DIM);
    let mut rng = StdRng::seed_from_u64(1);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..5)
        .map(|i| {
            record(
                tenant,
                random_embedding(&mut rng, DIM),
                &[(meta::ERROR_CLASS, if i % 2 == 0 { "net" } else { "disk" })],
            )
        })
        .collect();
    index.upsert(&records).await.expect("upsert");
    for r in &records {
        let got = index
            .get(tenant, r.id)
            .await
            .expect("get")
            .expect("present");
        assert_same_record(&got, r);
        let hits = index
            .search(&query(tenant, &r.embedding, 3))
            .await
            .expect("search");
        assert_eq!(hits[0].id, r.id);
        assert_eq!(hits[0].episode, r.episode);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert_eq!(hits[0].metadata, stored_metadata(r));
    }
    assert_eq!(index.health().await, Ok(StoreHealth::Healthy));
}

#[tokio::test]
async fn upsert_replaces_vector_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("open");
    let mut rng = StdRng::seed_from_u64(2);
    let tenant = TenantId::new();
    let first = record(tenant, random_embedding(&mut rng, DIM), &[("v", "1")]);
    index
        .upsert(std::slice::from_ref(&first))
        .await
        .expect("upsert");
    let second = VectorRecord {
        embedding: random_embedding(&mut rng, DIM),
        metadata: [("v".to_owned(), "2".to_owned())].into(),
        ..first.clone()
    };
    index
        .upsert(std::slice::from_ref(&second))
        .await
        .expect("upsert again");
    // Idempotent: the same write twice changes nothing.
    index
        .upsert(std::slice::from_ref(&second))
        .await
        .expect("upsert twice");
    assert_eq!(index.tenant_len(tenant), 1);
    let got = index
        .get(tenant, first.id)
        .await
        .expect("get")
        .expect("present");
    assert_same_record(&got, &second);
    let hits = index
        .search(&query(tenant, &first.embedding, 5))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert!((hits[0].score - first.embedding.cosine(&second.embedding)).abs() < 1e-5);
    assert_eq!(hits[0].metadata.get("v").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn tenants_with_identical_vectors_are_isolated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open_with(dir.path(), DIM, ann_config(64)).expect("open");
    let mut rng = StdRng::seed_from_u64(3);
    let (a, b) = (TenantId::new(), TenantId::new());
    let mut recs_a = Vec::new();
    let mut recs_b = Vec::new();
    for _ in 0..200 {
        let e = random_embedding(&mut rng, DIM);
        let ra = record(a, e.clone(), &[("tool:kubectl", "1")]);
        // Same vector, metadata, and even the same id in the other tenant.
        let rb = VectorRecord {
            tenant: b,
            episode: EpisodeId::new(),
            ..ra.clone()
        };
        recs_a.push(ra);
        recs_b.push(rb);
    }
    index.upsert(&recs_a).await.expect("upsert a");
    index.upsert(&recs_b).await.expect("upsert b");
    wait_for_graphs(&index);
    let a_episodes: HashSet<_> = recs_a.iter().map(|r| r.episode).collect();
    for r in recs_a.iter().take(20) {
        for filter in [None, Some(MetadataFilter::exact("tool:kubectl", "1"))] {
            let q = VectorQuery {
                filter,
                ..query(a, &r.embedding, 50)
            };
            let hits = index.search(&q).await.expect("search");
            assert_eq!(hits.len(), 50);
            for h in &hits {
                assert!(a_episodes.contains(&h.episode), "hit from another tenant");
                assert_eq!(h.metadata.get(meta::TENANT), Some(&a.to_string()));
            }
        }
        let got_b = index.get(b, r.id).await.expect("get").expect("b has it");
        assert_eq!(got_b.tenant, b);
        assert!(!a_episodes.contains(&got_b.episode));
    }
    // A write or delete in one tenant leaves the other alone.
    assert_eq!(index.delete(a, &[recs_a[0].id]).await, Ok(1));
    assert!(index.get(b, recs_a[0].id).await.expect("get").is_some());
    assert_eq!(index.delete_tenant(a).await, Ok(199));
    assert_eq!(index.tenant_len(b), 200);
    let unknown = TenantId::new();
    assert!(
        index
            .search(&query(unknown, &recs_a[1].embedding, 10))
            .await
            .expect("search")
            .is_empty()
    );
    assert_eq!(index.get(unknown, recs_a[1].id).await, Ok(None));
}

#[tokio::test]
async fn filters_return_all_k_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open_with(dir.path(), DIM, ann_config(256)).expect("open");
    let mut rng = StdRng::seed_from_u64(4);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..2000)
        .map(|i| {
            let class = if i % 2 == 0 { "net" } else { "disk" };
            let ts = (i * 10).to_string();
            let mut md = vec![(meta::ERROR_CLASS, class), (meta::CAPTURED_AT, ts.as_str())];
            if i % 100 == 7 {
                md.push(("tool:helm", "1"));
            }
            record(tenant, random_embedding(&mut rng, DIM), &md)
        })
        .collect();
    for chunk in records.chunks(500) {
        index.upsert(chunk).await.expect("upsert");
    }
    wait_for_graphs(&index);
    assert_eq!(index.graph_state(tenant), Some(GraphState::Ready));
    let cases = [
        // Selective: 20 of 2000 match.
        (MetadataFilter::exact("tool:helm", "1"), 10),
        (MetadataFilter::exact("tool:helm", "1"), 20),
        // Broad: half match (the graph with a predicate).
        (MetadataFilter::exact(meta::ERROR_CLASS, "net"), 10),
        (
            MetadataFilter::And(vec![
                MetadataFilter::exact(meta::ERROR_CLASS, "disk"),
                MetadataFilter::Range {
                    key: meta::CAPTURED_AT.into(),
                    bound: RangeBound::Gte,
                    value: "10000".into(),
                },
            ]),
            25,
        ),
        (
            MetadataFilter::Not(Box::new(MetadataFilter::exact("tool:helm", "1"))),
            15,
        ),
    ];
    let mut overlap = 0usize;
    let mut total = 0usize;
    let mut paths = HashSet::new();
    for (filter, k) in cases {
        for qi in 0..10 {
            let q_emb = random_embedding(&mut rng, DIM);
            let q = VectorQuery {
                filter: Some(filter.clone()),
                ..query(tenant, &q_emb, k)
            };
            let out = index.search_detailed(&q).expect("search");
            paths.insert(format!("{:?}", out.path));
            let hits = out.hits;
            assert_eq!(hits.len(), k, "filter {filter:?} query {qi}");
            for h in &hits {
                assert!(filter.matches(&h.metadata));
            }
            let want = brute_force(&records, &q_emb, k, Some(&filter));
            let got: HashSet<_> = hits.iter().map(|h| h.id).collect();
            overlap += want.iter().filter(|id| got.contains(id)).count();
            total += k;
        }
    }
    let recall = overlap as f64 / total as f64;
    eprintln!("filtered recall {recall}, paths {paths:?}");
    assert!(recall >= 0.95, "filtered recall {recall}");
    assert!(
        paths.contains("Exact") && paths.contains("AnnFiltered"),
        "{paths:?}"
    );
    // Fewer matches than k: all of them, and only them.
    let q = VectorQuery {
        filter: Some(MetadataFilter::exact("tool:helm", "1")),
        ..query(tenant, &records[0].embedding, 100)
    };
    assert_eq!(index.search(&q).await.expect("search").len(), 20);
}

#[tokio::test]
async fn min_score_cuts_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("open");
    let mut rng = StdRng::seed_from_u64(5);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..300)
        .map(|_| record(tenant, random_embedding(&mut rng, DIM), &[]))
        .collect();
    index.upsert(&records).await.expect("upsert");
    let target = &records[17];
    let q = VectorQuery {
        min_score: Some(0.999),
        ..query(tenant, &target.embedding, 10)
    };
    let hits = index.search(&q).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, target.id);
    let q = VectorQuery {
        min_score: Some(0.2),
        ..query(tenant, &target.embedding, 1000)
    };
    let hits = index.search(&q).await.expect("search");
    let expected = records
        .iter()
        .filter(|r| r.embedding.cosine(&target.embedding) >= 0.2)
        .count();
    assert_eq!(hits.len(), expected);
    assert!(hits.iter().all(|h| h.score >= 0.2));
}

#[tokio::test]
async fn invalid_requests_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("open");
    let mut rng = StdRng::seed_from_u64(6);
    let tenant = TenantId::new();
    let e = random_embedding(&mut rng, DIM);
    for k in [0, 1001] {
        assert!(matches!(
            index.search(&query(tenant, &e, k)).await,
            Err(VectorStoreError::InvalidArgument(_))
        ));
    }
    let wrong = random_embedding(&mut rng, DIM + 1);
    assert_eq!(
        index.search(&query(tenant, &wrong, 5)).await,
        Err(VectorStoreError::DimensionMismatch {
            expected: DIM,
            actual: DIM + 1
        })
    );
    assert!(matches!(
        index.upsert(&[record(tenant, wrong, &[])]).await,
        Err(VectorStoreError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        index
            .upsert(&[record(tenant, e.clone(), &[("__tenant_id__", "x")])])
            .await,
        Err(VectorStoreError::InvalidArgument(_))
    ));
    let other = TenantId::new().to_string();
    assert!(matches!(
        index
            .upsert(&[record(tenant, e, &[(meta::TENANT, other.as_str())])])
            .await,
        Err(VectorStoreError::InvalidArgument(_))
    ));
    assert_eq!(
        index.tenant_len(tenant),
        0,
        "nothing of a rejected batch is written"
    );
}

#[tokio::test]
async fn delete_and_delete_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = EmbeddedIndex::open_with(dir.path(), DIM, ann_config(64)).expect("open");
    let mut rng = StdRng::seed_from_u64(7);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..100)
        .map(|_| record(tenant, random_embedding(&mut rng, DIM), &[]))
        .collect();
    index.upsert(&records).await.expect("upsert");
    let missing = VectorId::try_from(12345u64).expect("id");
    let ids = [records[0].id, records[1].id, missing];
    assert_eq!(index.delete(tenant, &ids).await, Ok(2));
    assert_eq!(index.delete(tenant, &ids).await, Ok(0), "idempotent");
    assert_eq!(index.get(tenant, records[0].id).await, Ok(None));
    let hits = index
        .search(&query(tenant, &records[0].embedding, 100))
        .await
        .expect("search");
    assert_eq!(hits.len(), 98);
    assert!(
        hits.iter()
            .all(|h| h.id != records[0].id && h.id != records[1].id)
    );
    assert_eq!(index.delete_tenant(tenant).await, Ok(98));
    assert_eq!(index.delete_tenant(tenant).await, Ok(0));
    assert!(
        index
            .search(&query(tenant, &records[5].embedding, 10))
            .await
            .expect("search")
            .is_empty()
    );
    // The tenant can come back.
    index.upsert(&records[..3]).await.expect("upsert");
    assert_eq!(index.tenant_len(tenant), 3);
    drop(index);
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("reopen");
    assert_eq!(index.tenant_len(tenant), 3);
    assert_eq!(index.get(tenant, records[3].id).await, Ok(None));
}

#[tokio::test]
async fn reopen_after_drop_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(8);
    let (a, b) = (TenantId::new(), TenantId::new());
    let records: Vec<_> = (0..600)
        .map(|i| {
            let t = if i % 3 == 0 { b } else { a };
            record(t, random_embedding(&mut rng, DIM), &[("i", &i.to_string())])
        })
        .collect();
    {
        let index = EmbeddedIndex::open_with(dir.path(), DIM, ann_config(128)).expect("open");
        index.upsert(&records).await.expect("upsert");
        index.delete(a, &[records[1].id]).await.expect("delete");
        // One handle per directory.
        assert!(matches!(
            EmbeddedIndex::open(dir.path(), DIM),
            Err(IndexError::AlreadyOpen(_))
        ));
    }
    let index = EmbeddedIndex::open_with(dir.path(), DIM, ann_config(128)).expect("reopen");
    // Served (exactly) while the graphs are built in the background.
    let early = index
        .search(&query(a, &records[2].embedding, 5))
        .await
        .expect("search");
    assert_eq!(early[0].id, records[2].id);
    wait_for_graphs(&index);
    assert_eq!(index.health().await, Ok(StoreHealth::Healthy));
    assert_eq!(index.tenant_len(a), 399);
    assert_eq!(index.tenant_len(b), 200);
    assert_eq!(index.get(a, records[1].id).await, Ok(None));
    for r in records.iter().filter(|r| r.id != records[1].id) {
        let got = index
            .get(r.tenant, r.id)
            .await
            .expect("get")
            .expect("present");
        assert_same_record(&got, r);
    }
    let out = index
        .search_detailed(&query(a, &records[2].embedding, 5))
        .expect("search");
    assert_eq!(out.path, SearchPath::Ann, "graph rebuilt at open");
    // The graph is approximate (and built concurrently, so not the same graph every run):
    // the stored vector itself is among the top hits, not necessarily first. The exact
    // path above checks the first place.
    assert!(
        out.hits.iter().any(|h| h.id == records[2].id),
        "{:?}",
        out.hits
    );
    drop(index);
    assert!(matches!(
        EmbeddedIndex::open(dir.path(), DIM + 1),
        Err(IndexError::DimensionMismatch { .. })
    ));
}

const CRASH_ENV: &str = "EMBEDDED_INDEX_CRASH_DIR";

fn crash_record(i: u64) -> VectorRecord {
    let tenant = TenantId::from_uuid(uuid::Uuid::from_u128(7));
    let episode = EpisodeId::from_uuid(uuid::Uuid::from_u128(u128::from(i) + 1));
    let mut rng = StdRng::seed_from_u64(i);
    VectorRecord {
        id: VectorId::for_episode(tenant, episode),
        tenant,
        episode,
        embedding: random_embedding(&mut rng, DIM),
        metadata: [("n".to_owned(), i.to_string())].into(),
    }
}

/// The child half of `acknowledged_upserts_survive_sigkill`: upserts one record at a time and
/// reports each acknowledgement on stdout until it is killed. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let index = EmbeddedIndex::open(&dir, DIM).expect("child open");
    let mut out = std::io::stdout();
    for i in 0.. {
        index
            .upsert_blocking(&[crash_record(i)])
            .expect("child upsert");
        writeln!(out, "acked {i}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn acknowledged_upserts_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut last_acked = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            let n: u64 = n.parse().expect("ack number");
            last_acked = Some(n);
            if n >= 40 {
                // SIGKILL right after an acknowledgement; the child is already writing the next.
                child.kill().expect("kill child");
                break;
            }
        }
    }
    child.wait().expect("reap child");
    let last = last_acked.expect("child acknowledged something");
    let index = EmbeddedIndex::open(dir.path(), DIM).expect("reopen after crash");
    for i in 0..=last {
        let r = crash_record(i);
        let got = index
            .get_blocking(r.tenant, r.id)
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged record {i} lost"));
        assert_same_record(&got, &r);
    }
    let len = index.tenant_len(crash_record(0).tenant) as u64;
    // The child may have committed a few more before the signal landed.
    assert!(len > last, "len {len}, last acked {last}");
}

#[tokio::test]
async fn ann_recall_against_exact_with_churn_during_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dim = 64;
    let index = EmbeddedIndex::open_with(dir.path(), dim, ann_config(1000)).expect("open");
    let mut rng = StdRng::seed_from_u64(9);
    let tenant = TenantId::new();
    let mut records: Vec<_> = (0..4000)
        .map(|_| record(tenant, random_embedding(&mut rng, dim), &[]))
        .collect();
    // Batches cross the graph threshold: a background build starts from a snapshot.
    for chunk in records.chunks(250) {
        index.upsert(chunk).await.expect("upsert");
    }
    // Churn while it (likely) still builds: replace 10% of vectors, delete 5%; the build
    // journals these and replays them when it is installed.
    for r in records.iter_mut().step_by(10) {
        r.embedding = random_embedding(&mut rng, dim);
    }
    let replaced: Vec<_> = records.iter().step_by(10).cloned().collect();
    index.upsert(&replaced).await.expect("replace");
    let deleted: Vec<_> = records.iter().skip(3).step_by(20).map(|r| r.id).collect();
    assert_eq!(
        index.delete(tenant, &deleted).await,
        Ok(deleted.len() as u64)
    );
    let deleted: HashSet<_> = deleted.into_iter().collect();
    records.retain(|r| !deleted.contains(&r.id));
    wait_for_graphs(&index);
    assert_eq!(index.graph_state(tenant), Some(GraphState::Ready));

    // Replaced vectors are found by their new embedding, deleted ones never.
    for r in replaced
        .iter()
        .filter(|r| !deleted.contains(&r.id))
        .take(50)
    {
        let out = index
            .search_detailed(&query(tenant, &r.embedding, 10))
            .expect("search");
        assert_eq!(out.path, SearchPath::Ann);
        assert_eq!(out.hits[0].id, r.id);
        assert!(out.hits.iter().all(|h| !deleted.contains(&h.id)));
    }
    let k = 10;
    let mut found = 0;
    for _ in 0..100 {
        let q = random_embedding(&mut rng, dim);
        let out = index
            .search_detailed(&query(tenant, &q, k))
            .expect("search");
        assert_eq!(out.path, SearchPath::Ann);
        assert!(out.hits.iter().all(|h| !deleted.contains(&h.id)));
        let want = brute_force(&records, &q, k, None);
        let got: HashSet<_> = out.hits.iter().map(|h| h.id).collect();
        found += want.iter().filter(|id| got.contains(id)).count();
    }
    let recall = found as f64 / (100 * k) as f64;
    eprintln!("recall@10 {recall}");
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_searches_and_writes_stay_correct() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One graph thread context: most concurrent searches fall back to exact scans.
    let config = IndexConfig {
        ann_threads: 1,
        ..ann_config(200)
    };
    let index = EmbeddedIndex::open_with(dir.path(), DIM, config).expect("open");
    let mut rng = StdRng::seed_from_u64(10);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..500)
        .map(|_| record(tenant, random_embedding(&mut rng, DIM), &[]))
        .collect();
    index.upsert(&records).await.expect("upsert");
    let mut tasks = Vec::new();
    for (t, r) in records.iter().take(16).enumerate() {
        let index = index.clone();
        let r = r.clone();
        let extra = record(tenant, random_embedding(&mut rng, DIM), &[]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let hits = index.search(&query(tenant, &r.embedding, 5)).await?;
                assert_eq!(hits[0].id, r.id);
                assert_eq!(hits.len(), 5);
            }
            if t % 2 == 0 {
                index.upsert(&[extra]).await?;
            }
            Ok::<_, VectorStoreError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("task");
    }
    assert_eq!(index.tenant_len(tenant), 508);
}

/// Rows (tenant 0/1, category 0..4, vector), query, k, filter kind, min score tenths.
type Case = (Vec<(u8, u8, Vec<f32>)>, Vec<f32>, usize, u8, Option<u8>);

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            (0u8..2, 0u8..4, prop::collection::vec(-1.0f32..1.0, 8)),
            1..80,
        ),
        prop::collection::vec(-1.0f32..1.0, 8),
        1usize..30,
        0u8..4,
        prop::option::of(0u8..10),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn search_results_are_sorted_bounded_scoped_and_filtered(
        (rows, q, k, filter_kind, min_score) in arb_case()
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        // The graph kicks in at 24 rows, so both paths are exercised.
        let config = IndexConfig { ann_min_vectors: 24, filter_exact_below: 8, ..IndexConfig::default() };
        let index = EmbeddedIndex::open_with(dir.path(), 8, config).expect("open");
        let tenants = [TenantId::new(), TenantId::new()];
        let records: Vec<VectorRecord> = rows
            .iter()
            .filter_map(|(t, c, v)| {
                let e = Embedding::new(v.clone()).ok()?;
                Some(record(tenants[usize::from(*t)], e, &[("c", &c.to_string())]))
            })
            .collect();
        index.upsert_blocking(&records).expect("upsert");
        prop_assert!(index.wait_for_graphs(Duration::from_secs(60)));
        let Ok(q) = Embedding::new(q) else { return Ok(()) };
        let filter = match filter_kind {
            0 => None,
            1 => Some(MetadataFilter::exact("c", "1")),
            2 => Some(MetadataFilter::In { key: "c".into(), values: vec!["0".into(), "3".into()] }),
            _ => Some(MetadataFilter::Not(Box::new(MetadataFilter::exact("c", "2")))),
        };
        let min_score = min_score.map(|m| f32::from(m) / 10.0 - 0.5);
        let tenant = tenants[0];
        let vq = VectorQuery { tenant, embedding: q.clone(), k, min_score, filter: filter.clone() };
        let hits = index.search_blocking(&vq).expect("search");
        prop_assert!(hits.len() <= k);
        prop_assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        let own: BTreeMap<VectorId, &VectorRecord> =
            records.iter().filter(|r| r.tenant == tenant).map(|r| (r.id, r)).collect();
        for h in &hits {
            prop_assert!(own.contains_key(&h.id), "hit outside the tenant");
            prop_assert_eq!(h.metadata.get(meta::TENANT), Some(&tenant.to_string()));
            if let Some(f) = &filter {
                prop_assert!(f.matches(&h.metadata));
            }
            if let Some(m) = min_score {
                prop_assert!(h.score >= m);
            }
        }
        if min_score.is_none() {
            let matching = own
                .values()
                .filter(|r| filter.as_ref().is_none_or(|f| f.matches(&stored_metadata(r))))
                .count();
            prop_assert_eq!(hits.len(), k.min(matching));
        }
    }
}
