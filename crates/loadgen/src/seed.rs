//! `loadgen seed`: fills one tenant with `--count` stored episodes for the search and gate
//! benchmarks, straight into the system of record and the vector store (the capture
//! pipeline would need ~10 minutes of embedding for 10,000 episodes on this machine, and
//! what search costs depends on how many vectors there are, not on how they got there).
//!
//! The episodes are the evaluation set's, cycled, each copy's goal numbered; the vectors are
//! the real all-MiniLM-L6-v2 embeddings of the originals with seeded Gaussian noise
//! (σ = `--noise` per component before normalising), so copies form realistic clusters
//! around real episodes rather than uniform noise.
//!
//! Standalone: write into the data directory while the server is stopped
//! (`--sqlite-dir`). Services: PostgreSQL and KyroDB (`--db-url`, `--kyrodb-url`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use common::events::ImageStatus;
use common::vector::{VectorRecord, VectorStore, episode_metadata};
use common::{Embedding, Episode, EpisodeFields, EpisodeId, TEXT_DIM, TenantId, VectorId};
use db::{Db, DbConfig, StoredEpisode};
use embedder::compose::episode_text;
use embedder::model::{TextModel, TextModelConfig};
use rand::{Rng as _, SeedableRng as _};
use time::OffsetDateTime;

use crate::dataset::Dataset;

#[derive(Args, Debug)]
pub struct SeedArgs {
    #[arg(long)]
    pub tenant: TenantId,
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// JSON Lines evaluation set (the episodes to copy).
    #[arg(long, env = "LOADGEN_DATASET")]
    pub dataset: PathBuf,
    #[arg(long, env = "EM_MODEL_DIR")]
    pub model_dir: PathBuf,
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: PathBuf,
    /// Standalone data directory (SQLite + embedded index; the server must be stopped).
    #[arg(long, conflicts_with_all = ["db_url", "kyrodb_url"])]
    pub data_dir: Option<PathBuf>,
    #[arg(long, requires = "kyrodb_url")]
    pub db_url: Option<String>,
    #[arg(long, requires = "db_url")]
    pub kyrodb_url: Option<String>,
    /// Per-component noise added to the original embedding of each copy.
    #[arg(long, default_value_t = 0.02)]
    pub noise: f32,
}

pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.dataset)?;
    let mut originals = Vec::new();
    for i in 0..dataset.len() {
        let fields: EpisodeFields = serde_json::from_slice(&dataset.body("seed", i as u64))?;
        if let Ok(e) = Episode::parse(fields) {
            originals.push(e);
        }
    }
    let texts: Vec<String> = originals.iter().map(episode_text).collect();
    let (model_dir, ort) = (args.model_dir.clone(), args.ort_dylib.clone());
    let vectors: Vec<Vec<f32>> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let model = TextModel::load(&TextModelConfig {
            model_dir,
            ort_dylib: Some(ort),
            intra_threads: 2,
            max_tokens: 256,
            sessions: 1,
        })?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        for chunk in refs.chunks(32) {
            out.extend(model.embed(chunk)?);
        }
        Ok(out)
    })
    .await??;

    let (db, store): (Db, Arc<dyn VectorStore>) =
        match (&args.data_dir, &args.db_url, &args.kyrodb_url) {
            (Some(dir), None, None) => {
                let db = Db::connect(&DbConfig::new(format!(
                    "sqlite://{}",
                    dir.join("episodic.db").display()
                )))
                .await?;
                db.migrate().await?;
                let index =
                    embedded_index::EmbeddedIndex::open(dir.join("index").join("text"), TEXT_DIM)?;
                (db, Arc::new(index))
            }
            (None, Some(db_url), Some(kyrodb_url)) => {
                let db = Db::connect(&DbConfig::new(db_url.clone())).await?;
                let config = kyrodb_client::KyroDbConfig {
                    url: kyrodb_url.clone(),
                    ..kyrodb_client::KyroDbConfig::default()
                };
                let store = kyrodb_client::KyroDbStore::connect(config)
                    .await
                    .context("connecting to KyroDB")?;
                (db, Arc::new(store))
            }
            _ => anyhow::bail!("give --data-dir, or --db-url and --kyrodb-url"),
        };

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let started = std::time::Instant::now();
    let now = OffsetDateTime::now_utc();
    let mut records = Vec::with_capacity(500);
    for n in 0..args.count {
        let original = &originals[n % originals.len()];
        let mut fields = EpisodeFields::from(original.clone());
        fields.goal = fields.goal.map(|g| format!("{g} (copy {n})"));
        let episode = Episode::parse(fields).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut v = vectors[n % vectors.len()].clone();
        if n >= originals.len() {
            for x in &mut v {
                // Box-Muller.
                let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                *x += args.noise * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
        let embedding = Embedding::new(v).map_err(|e| anyhow::anyhow!("{e}"))?;
        let id = EpisodeId::new();
        let captured_at = now - time::Duration::minutes(n as i64);
        let vector_id = VectorId::for_episode(args.tenant, id);
        records.push(VectorRecord {
            id: vector_id,
            tenant: args.tenant,
            episode: id,
            embedding: embedding.clone(),
            metadata: episode_metadata(&episode, captured_at),
        });
        db.insert_episode(&StoredEpisode {
            id,
            tenant_id: args.tenant,
            vector_id,
            episode,
            text_embedding: embedding,
            text_model: "all-MiniLM-L6-v2".to_owned(),
            image_status: ImageStatus::None,
            image_embedding: None,
            image_model: None,
            redactions: Vec::new(),
            captured_at,
            stored_at: now,
        })
        .await?;
        if records.len() == 500 || n + 1 == args.count {
            store.upsert(&records).await?;
            records.clear();
            eprintln!("loadgen seed: {} episodes", n + 1);
        }
    }
    eprintln!(
        "loadgen seed: {} episodes for tenant {} in {:.1} s",
        args.count,
        args.tenant,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
