//! `embedder` — computes episode and query embeddings (NATS in, NATS out).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use embedder::{EmbedderDeps, Settings};

#[derive(Parser)]
#[command(version, about = "EpisodicMemory embedder")]
struct Cli {
    /// Optional TOML settings file; env vars EM_EMBEDDER__* override it.
    #[arg(long, env = "EM_EMBEDDER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("embedder", common::telemetry::LogFormat::Json);
    let cli = Cli::parse();
    let settings: Settings = common::settings::load("embedder", cli.config.as_deref())?;
    let model_settings = settings.model.clone().with_env_fallbacks();
    let models = tokio::task::spawn_blocking(move || model_settings.load())
        .await?
        .context("loading the embedding model (run `make model`)")?;
    let topology = settings.events.build()?;
    let bus = Arc::new(bus::NatsBus::connect(settings.nats.clone()).await?);
    bus::ensure_topology(bus.as_ref(), &topology).await?;
    tracing::info!(image_model = models.image.is_some(), "embedder ready");
    let deps = EmbedderDeps {
        bus,
        topology,
        models,
    };
    embedder::run(deps, &settings.query_batch, common::shutdown::on_signal()).await?;
    Ok(())
}
