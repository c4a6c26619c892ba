//! `loadgen capture`: offered load against `POST /api/v1/capture`.
//!
//! Open loop (`--rate R --duration D`): request `i` is scheduled at `t0 + i/R` and sent then
//! whatever happened to earlier ones (each on its own task); its latency is measured from
//! the *scheduled* time, so a stall of the server (or of this client) shows up in the
//! percentiles instead of silently lowering the offered rate. `service_time` is measured
//! from the actual send, for comparison.
//!
//! Closed loop (`--concurrency C --count N`): C workers each send the next request as
//! soon as their previous one is answered — a burst that saturates the pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;
use time::OffsetDateTime;

use crate::dataset::Dataset;
use crate::procstat::{self, CpuUse, Watched};
use crate::stats::{Latencies, Summary, parse_duration};
use crate::stored::{self, Accepted, StoredReport};

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Base URL of the gateway, e.g. http://127.0.0.1:8080
    #[arg(long, env = "LOADGEN_URL")]
    pub url: String,
    /// API key sent as `X-API-Key`.
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    pub key: String,
    /// JSON Lines evaluation set; only the capture fields are sent.
    #[arg(long, env = "LOADGEN_DATASET")]
    pub dataset: PathBuf,
    /// Open loop: requests per second offered on a fixed schedule.
    #[arg(long, requires = "duration", conflicts_with_all = ["concurrency", "count"])]
    pub rate: Option<f64>,
    /// Open loop: how long to offer `--rate` (30s, 2m, ...).
    #[arg(long, value_parser = parse_duration, requires = "rate")]
    pub duration: Option<Duration>,
    /// Closed loop: parallel workers, each with one request in flight.
    #[arg(long, requires = "count")]
    pub concurrency: Option<usize>,
    /// Closed loop: total requests.
    #[arg(long, requires = "concurrency")]
    pub count: Option<u64>,
    /// Requests sent one by one before the measurement; the run starts only once they are
    /// stored (so the whole pipeline is known to be up and the API key cache is warm).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// After the load, read every accepted episode back and report capture→stored latency
    /// and pipeline throughput.
    #[arg(long)]
    pub wait_stored: bool,
    /// Give up waiting for stored episodes (and for the warm-up) after this long.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub stored_timeout: Duration,
    /// Client-side timeout of one capture request.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// Processes whose CPU time to report, as `name=pid` (repeatable; `self` = loadgen).
    #[arg(long = "watch")]
    pub watch: Vec<Watched>,
    /// Name of the scenario in the summary.
    #[arg(long, default_value = "capture")]
    pub label: String,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one request came to.
enum Outcome {
    Accepted(String),
    Status(u16),
    Transport(String),
}

struct Sample {
    scheduled: Instant,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
pub struct CaptureReport {
    pub label: String,
    /// `open_loop` or `closed_loop`.
    pub mode: &'static str,
    pub offered_rate_rps: Option<f64>,
    pub concurrency: Option<usize>,
    pub requests: u64,
    pub accepted: u64,
    /// Failed requests by `status_<code>` or `transport`.
    pub errors: BTreeMap<String, u64>,
    /// From the first scheduled start to the last response.
    pub wall_s: f64,
    /// Accepted requests per second of `wall_s`.
    pub throughput_rps: f64,
    /// Response time of accepted requests, from the scheduled start (open loop) or the
    /// send (closed loop).
    pub latency: Summary,
    /// Response time of accepted requests from the actual send.
    pub service_time: Summary,
    pub stored: Option<StoredReport>,
    /// CPU used by each watched process while the load was offered.
    pub cpu_load: BTreeMap<String, CpuUse>,
    /// CPU used from the last response until the pipeline had stored everything.
    pub cpu_drain: BTreeMap<String, CpuUse>,
    /// Peak resident memory of each watched process at the end (MiB).
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub dataset_episodes: usize,
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    capture_url: String,
    key: String,
}

impl Target {
    async fn capture(&self, body: Vec<u8>) -> Outcome {
        let sent = self
            .client
            .post(&self.capture_url)
            .header("X-API-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(e.to_string()),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Outcome::Transport(e.to_string()),
        };
        if status != 202 {
            return Outcome::Status(status);
        }
        #[derive(serde::Deserialize)]
        struct AcceptedBody {
            episode_id: String,
        }
        match serde_json::from_slice::<AcceptedBody>(&bytes) {
            Ok(b) => Outcome::Accepted(b.episode_id),
            Err(e) => Outcome::Transport(format!("202 with an unexpected body: {e}")),
        }
    }
}

pub async fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let dataset = Arc::new(Dataset::load(&args.dataset)?);
    let client = reqwest::Client::builder()
        .timeout(args.request_timeout)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let base = args.url.trim_end_matches('/').to_owned();
    let target = Target {
        client: client.clone(),
        capture_url: format!("{base}/api/v1/capture"),
        key: args.key.clone(),
    };
    let run_id = format!(
        "{}-{}",
        args.label,
        OffsetDateTime::now_utc().unix_timestamp()
    );
    let reader = stored::Reader::new(client, &base, &args.key);

    if args.warmup > 0 {
        warm_up(&target, &reader, &dataset, &run_id, &args).await?;
    }

    let mut watched = args.watch.clone();
    watched.push(Watched {
        name: "loadgen".to_owned(),
        pid: "self".to_owned(),
    });
    let before = procstat::snapshot(&watched);
    let wall_t0 = SystemTime::now();
    let t0 = Instant::now();
    let (mode, samples) = match (args.rate, args.duration, args.concurrency, args.count) {
        (Some(rate), Some(duration), None, None) => {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be positive");
            }
            let total = (rate * duration.as_secs_f64()).round() as u64;
            let samples = open_loop(&target, &dataset, &run_id, t0, rate, total).await;
            ("open_loop", samples)
        }
        (None, None, Some(concurrency), Some(count)) => {
            if concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let samples = closed_loop(&target, &dataset, &run_id, concurrency, count).await;
            ("closed_loop", samples)
        }
        _ => bail!("give either --rate and --duration, or --concurrency and --count"),
    };
    let after_load = procstat::snapshot(&watched);

    let to_wall = |at: Instant| OffsetDateTime::from(wall_t0 + at.saturating_duration_since(t0));
    let mut latency = Latencies::new();
    let mut service = Latencies::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut last_done = t0;
    for s in &samples {
        last_done = last_done.max(s.done);
        match &s.outcome {
            Outcome::Accepted(id) => {
                latency.record(s.done.duration_since(s.scheduled));
                service.record(s.done.duration_since(s.sent));
                accepted.push(Accepted {
                    episode_id: id.clone(),
                    started: to_wall(s.scheduled),
                    answered: to_wall(s.done),
                });
            }
            Outcome::Status(code) => *errors.entry(format!("status_{code}")).or_default() += 1,
            Outcome::Transport(e) => {
                *errors.entry("transport".to_owned()).or_default() += 1;
                eprintln!("loadgen: transport error: {e}");
            }
        }
    }
    let wall_s = last_done.duration_since(t0).as_secs_f64();
    let accepted_count = accepted.len() as u64;

    let (stored, cpu_drain) = if args.wait_stored && !accepted.is_empty() {
        let report = stored::wait_and_measure(&reader, accepted, args.stored_timeout, || {
            procstat::snapshot(&watched)
        })
        .await?;
        let drain = report
            .1
            .as_ref()
            .map(|drained| procstat::between(&after_load, drained))
            .unwrap_or_default();
        (Some(report.0), drain)
    } else {
        (None, BTreeMap::new())
    };

    let report = CaptureReport {
        label: args.label.clone(),
        mode,
        offered_rate_rps: args.rate,
        concurrency: args.concurrency,
        requests: samples.len() as u64,
        accepted: accepted_count,
        errors,
        wall_s: round3(wall_s),
        throughput_rps: round3(accepted_count as f64 / wall_s.max(1e-9)),
        latency: latency.summary(),
        service_time: service.summary(),
        stored,
        cpu_load: procstat::between(&before, &after_load),
        cpu_drain,
        peak_rss_mib: watched
            .iter()
            .filter_map(|w| Some((w.name.clone(), procstat::peak_rss_mib(&w.pid)?)))
            .collect(),
        dataset_episodes: dataset.len(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    print_json(&json);
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_json(json: &str) {
    println!("{json}");
}

pub fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

/// Sends `args.warmup` captures one at a time and waits until they are stored.
async fn warm_up(
    target: &Target,
    reader: &stored::Reader,
    dataset: &Dataset,
    run_id: &str,
    args: &CaptureArgs,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.stored_timeout;
    let warmup_run = format!("{run_id}-warmup");
    let mut ids = Vec::new();
    while (ids.len() as u64) < args.warmup {
        match target
            .capture(dataset.body(&warmup_run, ids.len() as u64))
            .await
        {
            Outcome::Accepted(id) => ids.push(id),
            // The services may still be starting.
            Outcome::Status(_) | Outcome::Transport(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Outcome::Status(code) => bail!("warm-up capture failed with HTTP {code}"),
            Outcome::Transport(e) => bail!("warm-up capture failed: {e}"),
        }
    }
    for id in &ids {
        loop {
            if reader.get(id).await?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("warm-up episode {id} was not stored within the timeout");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn open_loop(
    target: &Target,
    dataset: &Arc<Dataset>,
    run_id: &str,
    t0: Instant,
    rate: f64,
    total: u64,
) -> Vec<Sample> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let scheduled = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let body = dataset.body(run_id, i);
        let target = target.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = target.capture(body).await;
            Sample {
                scheduled,
                sent,
                done: Instant::now(),
                outcome,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            samples.extend(done.ok());
        }
    }
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.ok());
    }
    samples
}

async fn closed_loop(
    target: &Target,
    dataset: &Arc<Dataset>,
    run_id: &str,
    concurrency: usize,
    count: u64,
) -> Vec<Sample> {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, dataset, next) = (target.clone(), dataset.clone(), next.clone());
            let run_id = run_id.to_owned();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let body = dataset.body(&run_id, i);
                    let sent = Instant::now();
                    let outcome = target.capture(body).await;
                    mine.push(Sample {
                        scheduled: sent,
                        sent,
                        done: Instant::now(),
                        outcome,
                    });
                }
                mine
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in futures::future::join_all(workers).await {
        samples.extend(w.unwrap_or_default());
    }
    samples
}
