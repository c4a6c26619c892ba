//! Search, upsert and reopen costs for one tenant of 10,000 384-dim vectors.
//!
//! `cargo bench -p embedded-index --bench search`. Besides criterion's estimates it prints
//! search latency percentiles (P50/P99 over many queries), the graph's recall@10 against the
//! exact scan, bulk upsert throughput and reopen time on stderr.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use common::embedding::{Embedding, TEXT_DIM};
use common::ids::{EpisodeId, TenantId, VectorId};
use common::vector::{MetadataFilter, VectorQuery, VectorRecord};
use criterion::{BatchSize, Criterion, Throughput};
use embedded_index::{EmbeddedIndex, IndexConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N: usize = 10_000;
const BATCH: usize = 500;

fn embedding(rng: &mut StdRng) -> Embedding {
    loop {
        let v: Vec<f32> = (0..TEXT_DIM)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        if let Ok(e) = Embedding::new(v) {
            return e;
        }
    }
}

fn record(rng: &mut StdRng, tenant: TenantId, i: usize) -> VectorRecord {
    let episode = EpisodeId::new();
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("error_class".to_owned(), format!("c{}", i % 10)); // 10%
    if i.is_multiple_of(2) {
        metadata.insert("tool:kubectl".to_owned(), "1".to_owned()); // 50%
    }
    if i.is_multiple_of(100) {
        metadata.insert("tag:rare".to_owned(), "1".to_owned()); // 1%
    }
    VectorRecord {
        id: VectorId::for_episode(tenant, episode),
        tenant,
        episode,
        embedding: embedding(rng),
        metadata,
    }
}

fn fill(dir: &Path, config: IndexConfig, records: &[VectorRecord]) -> EmbeddedIndex {
    let index = EmbeddedIndex::open_with(dir, TEXT_DIM, config).expect("open");
    let start = Instant::now();
    for chunk in records.chunks(BATCH) {
        index.upsert_blocking(chunk).expect("upsert");
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "bulk upsert (graph from {} rows): {} vectors in batches of {BATCH}: {:.2} s = {:.0} vectors/s",
        index.config().ann_min_vectors,
        records.len(),
        secs,
        records.len() as f64 / secs
    );
    index
}

fn query(tenant: TenantId, e: &Embedding, k: usize, filter: Option<MetadataFilter>) -> VectorQuery {
    VectorQuery {
        tenant,
        embedding: e.clone(),
        k,
        min_score: None,
        filter,
    }
}

fn filters() -> Vec<(&'static str, Option<MetadataFilter>)> {
    vec![
        ("no_filter", None),
        (
            "filter_50pct",
            Some(MetadataFilter::exact("tool:kubectl", "1")),
        ),
        (
            "filter_10pct",
            Some(MetadataFilter::exact("error_class", "c3")),
        ),
        ("filter_1pct", Some(MetadataFilter::exact("tag:rare", "1"))),
    ]
}

fn percentiles(index: &EmbeddedIndex, queries: &[VectorQuery]) -> (Duration, Duration, Duration) {
    let mut times: Vec<Duration> = queries
        .iter()
        .map(|q| {
            let start = Instant::now();
            black_box(index.search_blocking(q).expect("search"));
            start.elapsed()
        })
        .collect();
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    (at(0.5), at(0.99), at(1.0))
}

/// Embedding-like data: points scattered around a few hundred topic centres.
fn clustered(rng: &mut StdRng, centres: &[Embedding]) -> Embedding {
    let c = &centres[rng.random_range(0..centres.len())];
    loop {
        let v: Vec<f32> = c
            .as_slice()
            .iter()
            .map(|x| x + rng.random_range(-0.06f32..0.06))
            .collect();
        if let Ok(e) = Embedding::new(v) {
            return e;
        }
    }
}

fn recall(
    reference: &EmbeddedIndex,
    index: &EmbeddedIndex,
    tenant: TenantId,
    queries: &[Embedding],
    filter: Option<MetadataFilter>,
) -> f64 {
    let mut found = 0usize;
    let mut total = 0usize;
    for q in queries.iter().take(300) {
        let vq = query(tenant, q, 10, filter.clone());
        let want = reference.search_blocking(&vq).expect("search");
        let got = index.search_blocking(&vq).expect("search");
        let ids: std::collections::HashSet<_> = got.iter().map(|h| h.id).collect();
        found += want.iter().filter(|h| ids.contains(&h.id)).count();
        total += want.len();
    }
    found as f64 / total.max(1) as f64
}

fn report_percentiles(label: &str, index: &EmbeddedIndex, tenant: TenantId, queries: &[Embedding]) {
    for k in [10, 100] {
        for (name, filter) in filters() {
            let qs: Vec<_> = queries
                .iter()
                .map(|q| query(tenant, q, k, filter.clone()))
                .collect();
            let path = index.search_detailed(&qs[0]).expect("search").path;
            let (p50, p99, max) = percentiles(index, &qs);
            eprintln!(
                "search {label} k={k} {name} ({path:?}): p50 {p50:?} p99 {p99:?} max {max:?}"
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let mut rng = StdRng::seed_from_u64(42);
    let tenant = TenantId::new();
    let records: Vec<_> = (0..N).map(|i| record(&mut rng, tenant, i)).collect();
    let queries: Vec<Embedding> = (0..1000).map(|_| embedding(&mut rng)).collect();

    // The default configuration: a 10k tenant is below the graph threshold -> exact scans.
    let default_dir = tempfile::tempdir().expect("tempdir");
    let default = fill(default_dir.path(), IndexConfig::default(), &records);
    // The graph forced on the same data, to compare.
    let ann_config = IndexConfig {
        ann_min_vectors: 1000,
        ..IndexConfig::default()
    };
    let ann_dir = tempfile::tempdir().expect("tempdir");
    let ann = fill(ann_dir.path(), ann_config.clone(), &records);
    let start = Instant::now();
    assert!(ann.wait_for_graphs(Duration::from_secs(600)));
    eprintln!("graph catch-up after bulk load: {:?}", start.elapsed());

    for (name, filter) in filters() {
        eprintln!(
            "recall@10 forced graph, uniform random data, {name}: {:.3}",
            recall(&default, &ann, tenant, &queries, filter)
        );
    }
    report_percentiles("default", &default, tenant, &queries);
    report_percentiles("forced-graph", &ann, tenant, &queries);

    // Embedding-like (clustered) data: where a graph does much better than on uniform noise.
    {
        let centres: Vec<Embedding> = (0..200).map(|_| embedding(&mut rng)).collect();
        let t = TenantId::new();
        let recs: Vec<_> = (0..N)
            .map(|i| VectorRecord {
                embedding: clustered(&mut rng, &centres),
                ..record(&mut rng, t, i)
            })
            .collect();
        let qs: Vec<_> = (0..1000).map(|_| clustered(&mut rng, &centres)).collect();
        let d1 = tempfile::tempdir().expect("tempdir");
        let d2 = tempfile::tempdir().expect("tempdir");
        let exact = fill(d1.path(), IndexConfig::default(), &recs);
        let graph = fill(d2.path(), ann_config.clone(), &recs);
        assert!(graph.wait_for_graphs(Duration::from_secs(600)));
        eprintln!(
            "recall@10 forced graph, clustered data, no_filter: {:.3}",
            recall(&exact, &graph, t, &qs, None)
        );
        let no_filter: Vec<_> = qs.iter().map(|q| query(t, q, 10, None)).collect();
        for (label, index) in [("exact", &exact), ("forced-graph", &graph)] {
            let (p50, p99, max) = percentiles(index, &no_filter);
            eprintln!("search clustered {label} k=10: p50 {p50:?} p99 {p99:?} max {max:?}");
        }
    }

    let mut group = c.benchmark_group("search_10k_k10");
    for (index_name, index) in [("default", &default), ("forced_graph", &ann)] {
        for (name, filter) in filters() {
            let qs: Vec<_> = queries
                .iter()
                .map(|q| query(tenant, q, 10, filter.clone()))
                .collect();
            let mut i = 0;
            group.bench_function(format!("{index_name}/{name}"), |b| {
                b.iter(|| {
                    i = (i + 1) % qs.len();
                    black_box(index.search_blocking(&qs[i]).expect("search"))
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("upsert_into_10k_tenant");
    group.sample_size(20);
    for batch in [100usize, 500] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut i = N;
        group.bench_function(format!("default/batch_{batch}"), |b| {
            b.iter_batched(
                || {
                    let recs: Vec<_> = (0..batch)
                        .map(|j| record(&mut rng, tenant, i + j))
                        .collect();
                    i += batch;
                    recs
                },
                |recs| default.upsert_blocking(&recs).expect("upsert"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    drop(default);
    drop(ann);

    // Reopen a 10k index: read every row back (the graph, if any, builds in the background).
    let reopen_dir = tempfile::tempdir().expect("tempdir");
    drop(fill(reopen_dir.path(), IndexConfig::default(), &records));
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function("reopen_10k_384d", |b| {
        b.iter(|| {
            let index = EmbeddedIndex::open(reopen_dir.path(), TEXT_DIM).expect("open");
            assert_eq!(index.tenant_len(tenant), N);
            drop(index);
        })
    });
    group.finish();
    let start = Instant::now();
    let index = EmbeddedIndex::open_with(reopen_dir.path(), TEXT_DIM, ann_config).expect("open");
    let opened = start.elapsed();
    assert!(index.wait_for_graphs(Duration::from_secs(600)));
    eprintln!(
        "reopen 10k with forced graph: serving after {opened:?}, graph ready after {:?}",
        start.elapsed()
    );
    c.final_summary();
}
