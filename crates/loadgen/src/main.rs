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
//! * `loadgen report` renders docs/BENCHMARKS.md from a results directory.

mod dataset;
mod infra;
mod load;
mod model;
mod procstat;
mod report;
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
    /// Render docs/BENCHMARKS.md from a results directory.
    Report(report::ReportArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Capture(args) => load::run(args).await,
        Command::Infra(args) => infra::run(args).await,
        Command::Model(args) => tokio::task::spawn_blocking(move || model::run(&args)).await?,
        Command::Report(args) => report::run(&args),
    }
}
