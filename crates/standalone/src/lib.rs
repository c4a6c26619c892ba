//! EpisodicMemory in one process, with no servers to install: the gateway, the embedder,
//! the ingest-writer and the retriever — the same libraries the separate services run — composed over
//! SQLite (system of record), the embedded vector index and the embedded durable bus, all
//! under one data directory:
//!
//! ```text
//! <data_dir>/episodic.db     customer DB + system of record (SQLite, same migrations as PostgreSQL)
//! <data_dir>/bus.db          the durable event bus (SQLite, WAL, synchronous=FULL)
//! <data_dir>/index/text/     384-dim embedded vector index
//! <data_dir>/index/image/    512-dim embedded vector index
//! ```
//!
//! A capture is durable in `bus.db` before the gateway answers 202, so it survives a crash
//! of the process; on restart the pipeline picks it up where it stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bus::{Bus, EmbeddedBus, EmbeddedBusConfig};
use common::events::{Topology, TopologySettings};
use common::vector::VectorStore;
use common::{IMAGE_DIM, TEXT_DIM};
use db::{Db, DbConfig};
use embedded_index::EmbeddedIndex;
use embedder::{EmbedderDeps, ModelSettings, Models, QueryBatchSettings};
use gateway::{AuthSettings, Gateway, GatewayDeps, HttpSettings};
use ingest_writer::IngestDeps;
use retriever::{RetrievalSettings, RetrieverDeps};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Settings of the standalone binary (`EM_STANDALONE__<SECTION>__<KEY>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where every file lives.
    pub data_dir: PathBuf,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub model: ModelSettings,
    /// Micro-batching of query embeddings (docs/EMBEDDING.md).
    pub query_batch: QueryBatchSettings,
    pub events: TopologySettings,
    /// Search and gate tuning (ranking weights, gate thresholds, caches).
    pub retrieval: RetrievalSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            http: HttpSettings {
                addr: "127.0.0.1:8080".to_owned(),
                ..HttpSettings::default()
            },
            auth: AuthSettings::default(),
            model: ModelSettings::default(),
            query_batch: QueryBatchSettings::default(),
            events: TopologySettings::default(),
            retrieval: RetrievalSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("event bus: {0}")]
    Bus(#[from] bus::BusError),
    #[error("vector index: {0}")]
    Index(#[from] embedded_index::IndexError),
    #[error("settings: {0}")]
    Settings(String),
    #[error("http listener: {0}")]
    Http(#[from] std::io::Error),
    #[error("start-up task: {0}")]
    Task(String),
}

/// The database of a data directory (also used by the CLI's admin commands).
pub async fn open_db(data_dir: &Path) -> Result<Db, StartError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let url = format!("sqlite://{}", data_dir.join("episodic.db").display());
    let db = Db::connect(&DbConfig::new(url)).await?;
    db.migrate().await?;
    Ok(db)
}

async fn open_index(dir: PathBuf, dim: usize) -> Result<EmbeddedIndex, StartError> {
    tokio::task::spawn_blocking(move || EmbeddedIndex::open(dir, dim))
        .await
        .map_err(|e| StartError::Task(e.to_string()))?
        .map_err(StartError::from)
}

/// The whole product, built and listening.
pub struct Standalone {
    gateway: Gateway,
    embedder: EmbedderDeps,
    query_batch: QueryBatchSettings,
    ingest: IngestDeps,
    retriever: RetrieverDeps,
    retrieval: RetrievalSettings,
}

impl Standalone {
    /// Opens every store under `settings.data_dir` and binds the HTTP listener.
    pub async fn build(settings: &Settings, models: Models) -> Result<Self, StartError> {
        let data_dir = &settings.data_dir;
        let db = open_db(data_dir).await?;
        let topology: Topology = settings
            .events
            .build()
            .map_err(|e| StartError::Settings(e.to_string()))?;
        let bus: Arc<dyn Bus> = Arc::new(
            EmbeddedBus::open(data_dir.join("bus.db"), EmbeddedBusConfig::default()).await?,
        );
        bus::ensure_topology(bus.as_ref(), &topology).await?;
        let text_store: Arc<dyn VectorStore> =
            Arc::new(open_index(data_dir.join("index").join("text"), TEXT_DIM).await?);
        let image_store: Arc<dyn VectorStore> =
            Arc::new(open_index(data_dir.join("index").join("image"), IMAGE_DIM).await?);
        let gateway = Gateway::build(
            &settings.http,
            &settings.auth,
            GatewayDeps {
                db: db.clone(),
                bus: bus.clone(),
                topology: topology.clone(),
            },
        )?;
        Ok(Self {
            gateway,
            embedder: EmbedderDeps {
                bus: bus.clone(),
                topology: topology.clone(),
                models,
            },
            query_batch: settings.query_batch.clone(),
            retriever: RetrieverDeps {
                bus: bus.clone(),
                topology: topology.clone(),
                db: db.clone(),
                text_store: text_store.clone(),
            },
            retrieval: settings.retrieval.clone(),
            ingest: IngestDeps {
                db,
                bus,
                topology,
                text_store,
                image_store: Some(image_store),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    /// Runs every component until `shutdown`; the first component to fail stops the rest.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop = shutdown.clone();
        let guard = |name: &'static str, stop: CancellationToken| {
            move |r: anyhow::Result<()>| {
                if let Err(e) = &r {
                    tracing::error!(component = name, error = %e, "component failed; stopping");
                    stop.cancel();
                }
                r
            }
        };
        let (g, e, i, r) = tokio::join!(
            async {
                let r = self.gateway.run_until_stopped(shutdown.clone()).await;
                guard("gateway", stop.clone())(r.map_err(anyhow::Error::from))
            },
            async {
                let r = embedder::run(self.embedder, &self.query_batch, shutdown.clone()).await;
                guard("embedder", stop.clone())(r.map_err(anyhow::Error::from))
            },
            async {
                let r = ingest_writer::run(self.ingest, shutdown.clone()).await;
                guard("ingest-writer", stop.clone())(r.map_err(anyhow::Error::from))
            },
            async {
                let r = retriever::run(self.retriever, &self.retrieval, shutdown.clone()).await;
                guard("retriever", stop.clone())(r.map_err(anyhow::Error::from))
            },
        );
        g.and(e).and(i).and(r)
    }
}

/// Rebuilds the embedded indexes of a data directory from its system of record (run it
/// while the server is stopped: the index files belong to one process at a time).
pub async fn reindex(
    db: &Db,
    data_dir: &Path,
) -> Result<ingest_writer::ReindexReport, anyhow::Error> {
    let text = open_index(data_dir.join("index").join("text"), TEXT_DIM).await?;
    let image = open_index(data_dir.join("index").join("image"), IMAGE_DIM).await?;
    Ok(ingest_writer::reindex(db, &text, Some(&image), 500).await?)
}
