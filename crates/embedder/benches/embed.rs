//! Text embedding throughput (texts/s) for batch sizes 1, 8, 32 with ~30-token
//! texts, for 1 and 2 intra-op threads; and 32 concurrent single-text query requests,
//! each its own model call (as before query batching) or through the `QueryBatcher`.
//!
//! Needs `make model`. Run: `cargo bench -p embedder --bench embed`
//! (`EM_BENCH_THREADS=1` to measure one thread count only; `-- query_batch` for the
//! query-batching case only).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use embedder::batch::QueryBatcher;
use embedder::model::{TextModel, TextModelConfig};
use embedder::{Models, QueryBatchSettings};
use futures::future::join_all;

fn path_from(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(default)
        });
    assert!(
        p.exists(),
        "{} missing: run `make model` or set {var}",
        p.display()
    );
    p
}

/// ~30-token, error-trace-like texts (all different).
fn texts(n: usize) -> Vec<String> {
    let templates = [
        "error[E0308]: mismatched types expected `u32`, found `i64` in src/handler.rs line {i} column 17",
        "Traceback: File app/main.py line {i}, in run: KeyError: 'user_id' while parsing the request body",
        "npm ERR! ERESOLVE could not resolve peer dependency react@{i} required by @scope/widget package",
        "panic at runtime: index out of range [{i}] with length 3 in goroutine 7 worker.go:88 +0x1d",
    ];
    (0..n)
        .map(|i| templates[i % templates.len()].replace("{i}", &i.to_string()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let model_dir = path_from("EM_MODEL_DIR", ".cache/models/all-MiniLM-L6-v2");
    let dylib = path_from("ORT_DYLIB_PATH", ".cache/onnxruntime/lib/libonnxruntime.so");
    let threads: Vec<usize> = std::env::var("EM_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let corpus = texts(32);
    let mut group = c.benchmark_group("embed");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    for &t in &threads {
        let model = TextModel::load(&TextModelConfig {
            model_dir: model_dir.clone(),
            ort_dylib: Some(dylib.clone()),
            intra_threads: t,
            max_tokens: 256,
            sessions: 1,
        })
        .unwrap();
        let tokens = model.token_count(&corpus[0]).unwrap();
        println!("intra_threads={t}; example text has {tokens} tokens");
        for batch in [1usize, 8, 32] {
            let refs: Vec<&str> = corpus[..batch].iter().map(String::as_str).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("threads{t}"), batch),
                &refs,
                |b, refs| {
                    b.iter(|| black_box(model.embed(black_box(refs)).unwrap()));
                },
            );
        }
    }
    group.finish();
}

/// 32 concurrent single-text requests on one session with every core (the embedder's
/// defaults): one model call each, queued on the session (what the responder did before
/// query batching), against the `QueryBatcher`.
fn query_batch(c: &mut Criterion) {
    let model = Arc::new(
        TextModel::load(&TextModelConfig {
            model_dir: path_from("EM_MODEL_DIR", ".cache/models/all-MiniLM-L6-v2"),
            ort_dylib: Some(path_from(
                "ORT_DYLIB_PATH",
                ".cache/onnxruntime/lib/libonnxruntime.so",
            )),
            intra_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_tokens: 256,
            sessions: 1,
        })
        .unwrap(),
    );
    let models = Models {
        text: Arc::clone(&model),
        image: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let batcher =
        runtime.block_on(async { QueryBatcher::start(model, &QueryBatchSettings::default()) });
    let queries = texts(32);
    let mut group = c.benchmark_group("query_batch");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(queries.len() as u64));
    group.bench_function("32_concurrent_unbatched", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let calls = queries.iter().map(|q| models.embed_texts(vec![q.clone()]));
                for r in join_all(calls).await {
                    black_box(r.unwrap());
                }
            });
        });
    });
    group.bench_function("32_concurrent_batched", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let calls = queries.iter().map(|q| batcher.embed(vec![q.clone()]));
                for r in join_all(calls).await {
                    black_box(r.unwrap());
                }
            });
        });
    });
    group.finish();
    println!("query batcher: {:?}", batcher.stats());
}

criterion_group!(benches, bench, query_batch);
criterion_main!(benches);
