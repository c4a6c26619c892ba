//! `loadgen infra`: the external state of one benchmark run of the separate services.
//!
//! Creates a fresh, migrated PostgreSQL database (`test_support::db::TestDb`) and serves the
//! fake KyroDB (`test_support::kyrodb_fake`, the real gRPC protocol on a real socket —
//! KyroDB itself cannot be installed here), writes their URLs to `--env-file` as shell
//! assignments, and waits for SIGTERM/SIGINT. Then it deletes the run's NATS streams (when
//! `--nats-prefix` is given), drops the database and stops the fake.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use common::events::Topology;
use test_support::db::TestDb;
use test_support::kyrodb_fake::{self, FakeKyroDbOptions};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Args, Debug)]
pub struct InfraArgs {
    /// Where to write `EM_BENCH_DB_URL=…` and `EM_BENCH_KYRODB_URL=…` (written atomically,
    /// once everything is up). The PostgreSQL admin URL is `$EM_TEST_PG_ADMIN_URL`, or
    /// postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long)]
    pub env_file: PathBuf,
    /// Subject prefix of the run: its JetStream streams are deleted on exit.
    #[arg(long)]
    pub nats_prefix: Option<String>,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

pub async fn run(args: InfraArgs) -> anyhow::Result<()> {
    let topology = args
        .nats_prefix
        .as_deref()
        .map(Topology::new)
        .transpose()
        .context("--nats-prefix")?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let db = TestDb::postgres().await;
    let kyrodb = kyrodb_fake::spawn(FakeKyroDbOptions::default())
        .await
        .context("starting the fake KyroDB")?;
    let tmp = args.env_file.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(
            "EM_BENCH_DB_URL={}\nEM_BENCH_KYRODB_URL={}\n",
            db.url,
            kyrodb.url()
        ),
    )?;
    std::fs::rename(&tmp, &args.env_file)?;
    eprintln!(
        "loadgen infra: database {} and fake KyroDB {} ready",
        db.url,
        kyrodb.url()
    );

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }

    eprintln!(
        "loadgen infra: stopping; the fake KyroDB holds {} vectors",
        kyrodb.len()
    );
    if let Some(topology) = topology
        && let Err(e) = delete_streams(&args.nats_url, &topology).await
    {
        eprintln!("loadgen infra: could not delete the NATS streams: {e:#}");
    }
    kyrodb.shutdown().await;
    drop(db);
    let _ = std::fs::remove_file(&args.env_file);
    Ok(())
}

async fn delete_streams(url: &str, topology: &Topology) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    for name in [
        topology.episodes_stream().name,
        topology.dead_letter_stream().name,
    ] {
        match js.delete_stream(&name).await {
            Ok(_) => eprintln!("loadgen infra: deleted stream {name}"),
            Err(e) => eprintln!("loadgen infra: stream {name}: {e}"),
        }
    }
    Ok(())
}
