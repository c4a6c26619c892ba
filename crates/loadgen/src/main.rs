//! `loadgen` — the benchmark driver behind `make bench` (scripts/bench/run.sh).
//!
//! * `loadgen capture` offers capture load to a running gateway, open loop (`--rate` for
//!   `--duration`: requests leave on a fixed schedule whatever the server does, and latency
//!   is measured from the scheduled start, so coordinated omission cannot hide a stall) or
//!   closed loop (`--concurrency` workers for `--count` requests). With `--wait-stored` it
//!   then reads every accepted episode back and reports capture→stored latency and the
//!   pipeline's throughput. Prints one JSON summary.
//! * `loadgen infra` holds the per-run external state of the separate-services mode: a
//!   fresh PostgreSQL database and the fake KyroDB (test-support, real gRPC over a real
//!   socket); on SIGTERM it drops the database and deletes the run's NATS streams.
//! * `loadgen model` measures the text model alone on the texts the embedder really embeds.
//! * `loadgen seed` fills a tenant with 10,000 stored episodes (real embeddings of the dev
//!   set's episodes, with noise) straight into the system of record and the vector store;
//!   `loadgen query` offers open-loop search or gate load at a list of rates, with every
//!   request distinct (no cache help) or repeated.
//! * `loadgen report` renders docs/BENCHMARKS.md from a results directory.

mod dataset;
mod infra;
mod load;
mod model;
mod procstat;
mod query;
mod report;
mod seed;
mod stats;
mod stored;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "EpisodicMemory benchmark driver (see docs/BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offer capture load to a gateway and print a JSON summary.
    Capture(load::CaptureArgs),
    /// Create a fresh PostgreSQL database and serve a fake KyroDB until SIGTERM.
    Infra(infra::InfraArgs),
    /// Raw text-model throughput on the dev set's composed episode texts.
    Model(model::ModelArgs),
    /// Open-loop search or gate load at a list of rates; writes a JSON summary.
    Query(query::QueryArgs),
    /// Fill a tenant with stored episodes (system of record + vector store) for `query`.
    Seed(seed::SeedArgs),
    /// Render docs/BENCHMARKS.md from a results directory.
    Report(report::ReportArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Capture(args) => load::run(args).await,
        Command::Infra(args) => infra::run(args).await,
        Command::Model(args) => tokio::task::spawn_blocking(move || model::run(&args)).await?,
        Command::Query(args) => query::run(args).await,
        Command::Seed(args) => seed::run(args).await,
        Command::Report(args) => report::run(&args),
    }
}
