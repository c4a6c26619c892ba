//! `retriever` — search and gate over NATS request-reply (PostgreSQL + KyroDB).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use common::TEXT_DIM;
use common::vector::VectorSpace;
use kyrodb_client::KyroDbStore;
use retriever::{RetrieverDeps, Settings};

#[derive(Parser)]
#[command(version, about = "EpisodicMemory retriever")]
struct Cli {
    /// Optional TOML settings file; env vars EM_RETRIEVER__* override it.
    #[arg(long, env = "EM_RETRIEVER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("retriever", common::telemetry::LogFormat::Json);
    let cli = Cli::parse();
    let settings: Settings = common::settings::load("retriever", cli.config.as_deref())?;
    if settings.kyrodb.space != VectorSpace::Text || settings.kyrodb.expected_dimension != TEXT_DIM
    {
        bail!(
            "the retriever's KyroDB index must be the text index (space=text, expected_dimension={TEXT_DIM})"
        );
    }
    let db = db::Db::connect(&settings.database)
        .await
        .context("connecting to the database")?;
    let text_store = Arc::new(
        KyroDbStore::connect(settings.kyrodb.clone())
            .await
            .with_context(|| format!("connecting to KyroDB at {}", settings.kyrodb.url))?,
    );
    let topology = settings.events.build()?;
    let bus = Arc::new(bus::NatsBus::connect(settings.nats.clone()).await?);
    let deps = RetrieverDeps {
        bus,
        topology,
        db,
        text_store,
    };
    retriever::run(deps, &settings.retrieval, common::shutdown::on_signal()).await?;
    Ok(())
}
