//! `loadgen model`: raw text-model throughput on the texts the embedder really embeds —
//! each dev-set episode composed by `embedder::compose::episode_text` (goal, error class,
//! tools, condensed trace, steps, tags), truncated to the model's 256 tokens — in the
//! consumer's chunks of up to 32, for each intra-op thread count. The criterion bench
//! measures short (~30-token) texts; this is the number that bounds the pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use common::{Episode, EpisodeFields};
use embedder::compose::episode_text;
use embedder::model::{TextModel, TextModelConfig};
use serde::Serialize;

use crate::dataset::Dataset;
use crate::load::round3;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// JSON Lines evaluation set.
    #[arg(long, env = "LOADGEN_DATASET")]
    pub dataset: PathBuf,
    /// all-MiniLM-L6-v2 directory (`model.onnx`, `tokenizer.json`).
    #[arg(long, env = "EM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// `libonnxruntime.so`.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: PathBuf,
    /// Intra-op thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Texts per `embed` call (the consumer hands the model up to 64, run in chunks of 32).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Passes over the dataset per thread count.
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Measurement {
    texts: usize,
    seconds: f64,
    texts_per_s: f64,
}

#[derive(Debug, Serialize)]
struct ModelReport {
    episodes: usize,
    batch: usize,
    mean_tokens: f64,
    /// Episodes whose text reached the 256-token limit.
    truncated_share: f64,
    /// By intra-op thread count.
    threads: BTreeMap<String, Measurement>,
}

pub fn run(args: &ModelArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.dataset)?;
    let mut texts = Vec::new();
    for i in 0..dataset.len() {
        let body = dataset.body("model", i as u64);
        let fields: EpisodeFields = serde_json::from_slice(&body)
            .with_context(|| format!("episode {} does not parse", i + 1))?;
        match Episode::parse(fields) {
            Ok(e) => texts.push(episode_text(&e)),
            Err(e) => eprintln!("loadgen model: episode {} skipped: {e:?}", i + 1),
        }
    }
    let mut report = ModelReport {
        episodes: texts.len(),
        batch: args.batch.max(1),
        mean_tokens: 0.0,
        truncated_share: 0.0,
        threads: BTreeMap::new(),
    };
    for &threads in &args.threads {
        let model = TextModel::load(&TextModelConfig {
            model_dir: args.model_dir.clone(),
            ort_dylib: Some(args.ort_dylib.clone()),
            intra_threads: threads.max(1),
            max_tokens: 256,
            sessions: 1,
        })?;
        if report.mean_tokens == 0.0 {
            let counts = texts
                .iter()
                .map(|t| model.token_count(t))
                .collect::<Result<Vec<_>, _>>()?;
            report.mean_tokens =
                round3(counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64);
            report.truncated_share = round3(
                counts.iter().filter(|&&c| c >= model.max_tokens()).count() as f64
                    / counts.len().max(1) as f64,
            );
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // Warm-up: the first runs allocate.
        model.embed(&refs[..refs.len().min(report.batch)])?;
        let started = Instant::now();
        let mut done = 0;
        for _ in 0..args.passes.max(1) {
            for chunk in refs.chunks(report.batch) {
                model.embed(chunk)?;
                done += chunk.len();
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "loadgen model: {threads} thread(s): {done} texts in {seconds:.1} s = {:.1} texts/s",
            done as f64 / seconds
        );
        report.threads.insert(
            threads.to_string(),
            Measurement {
                texts: done,
                seconds: round3(seconds),
                texts_per_s: round3(done as f64 / seconds.max(1e-9)),
            },
        );
    }
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n"))?;
    }
    print_json(&json);
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_json(json: &str) {
    println!("{json}");
}
