//! `ingest-writer` — stores embedded episodes (NATS → PostgreSQL + KyroDB).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use common::vector::{VectorSpace, VectorStore};
use common::{IMAGE_DIM, TEXT_DIM};
use ingest_writer::{IngestDeps, Settings};
use kyrodb_client::{KyroDbConfig, KyroDbStore};

#[derive(Parser)]
#[command(version, about = "EpisodicMemory ingest-writer")]
struct Cli {
    /// Optional TOML settings file; env vars EM_INGEST_WRITER__* override it.
    #[arg(long, env = "EM_INGEST_WRITER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume `episode.embedded` (the default).
    Run,
    /// Rebuild the KyroDB indexes from the system of record, then exit.
    Reindex {
        #[arg(long, default_value_t = 500)]
        page: usize,
    },
}

async fn store(
    config: &KyroDbConfig,
    space: VectorSpace,
    dim: usize,
) -> anyhow::Result<Arc<dyn VectorStore>> {
    if config.space != space || config.expected_dimension != dim {
        bail!(
            "KyroDB {} index must be configured with space={} and expected_dimension={dim}",
            space.as_str(),
            space.as_str()
        );
    }
    let store = KyroDbStore::connect(config.clone())
        .await
        .with_context(|| {
            format!(
                "connecting to KyroDB ({}) at {}",
                space.as_str(),
                config.url
            )
        })?;
    Ok(Arc::new(store))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("ingest-writer", common::telemetry::LogFormat::Json);
    let cli = Cli::parse();
    let settings: Settings = common::settings::load("ingest-writer", cli.config.as_deref())?;
    let db = db::Db::connect(&settings.database)
        .await
        .context("connecting to the database")?;
    if settings.run_migrations.unwrap_or(true) {
        db.migrate().await?;
    }
    let text_store = store(&settings.kyrodb.text, VectorSpace::Text, TEXT_DIM).await?;
    let image_store = match &settings.kyrodb.image {
        Some(config) => Some(store(config, VectorSpace::Image, IMAGE_DIM).await?),
        None => None,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Reindex { page } => {
            let report =
                ingest_writer::reindex(&db, text_store.as_ref(), image_store.as_deref(), page)
                    .await?;
            tracing::info!(?report, "re-index complete");
        }
        Command::Run => {
            let topology = settings.events.build()?;
            let bus = Arc::new(bus::NatsBus::connect(settings.nats.clone()).await?);
            bus::ensure_topology(bus.as_ref(), &topology).await?;
            let deps = IngestDeps {
                db,
                bus,
                topology,
                text_store,
                image_store,
            };
            ingest_writer::run(deps, common::shutdown::on_signal()).await?;
        }
    }
    Ok(())
}
