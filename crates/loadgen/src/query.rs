//! `loadgen query`: open-loop search or gate (`reflect`) load against a gateway.
//!
//! Requests leave on a fixed schedule (`--rate` for `--duration`) whatever the server does,
//! and latency is measured from the scheduled start, so a stall cannot hide.
//! `--mode distinct` makes every request's text unique (a numbered suffix), so nothing is
//! answered from the query-embedding cache; `--mode repeated` cycles over 20 requests, the
//! way agents ask the same gate again before retrying an action.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::load::round3;
use crate::stats::{Latencies, Summary, parse_duration};

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Search,
    Reflect,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Distinct,
    Repeated,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    pub key: String,
    /// Evaluation set directory (search_queries.jsonl, gate_probes.jsonl).
    #[arg(long)]
    pub set: PathBuf,
    #[arg(long, value_enum)]
    pub endpoint: Endpoint,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Requests per second, comma-separated: each rate runs for `--duration`.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Requests sent (and discarded) first, to fill caches and warm the model.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Label in the output file name and the report.
    #[arg(long)]
    pub label: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct RateResult {
    rate: f64,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    achieved_rps: f64,
    latency: Summary,
}

#[derive(Debug, Serialize)]
struct QueryReport {
    label: String,
    endpoint: Endpoint,
    mode: Mode,
    duration_s: f64,
    rates: Vec<RateResult>,
}

fn bodies(args: &QueryArgs) -> anyhow::Result<(String, Vec<Value>)> {
    let (file, path) = match args.endpoint {
        Endpoint::Search => ("search_queries.jsonl", "/api/v1/search"),
        Endpoint::Reflect => ("gate_probes.jsonl", "/api/v1/reflect"),
    };
    let text = std::fs::read_to_string(args.set.join(file))
        .with_context(|| format!("reading {}", args.set.join(file).display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        out.push(match args.endpoint {
            Endpoint::Search => json!({"query": v["query"], "filters": v["filters"], "k": 5}),
            Endpoint::Reflect => json!({
                "proposed_action": v["proposed_action"], "goal": v["goal"], "tool": v["tool"],
                "context": v["context"], "current_state": v["current_state"],
            }),
        });
    }
    Ok((path.to_owned(), out))
}

/// The n-th request: distinct ones carry a number in the text that is embedded.
fn nth(bodies: &[Value], mode: Mode, endpoint: Endpoint, n: u64) -> Value {
    match mode {
        Mode::Repeated => bodies[(n as usize) % bodies.len().min(20)].clone(),
        Mode::Distinct => {
            let mut b = bodies[(n as usize) % bodies.len()].clone();
            let field = match endpoint {
                Endpoint::Search => "query",
                Endpoint::Reflect => "context",
            };
            let text = b[field].as_str().unwrap_or_default();
            b[field] = json!(format!("{text} (case {n})"));
            b
        }
    }
}

async fn send(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> Result<(), String> {
    match client
        .post(url)
        .header("X-API-Key", key)
        .json(body)
        .send()
        .await
    {
        Ok(res) if res.status().is_success() => {
            res.bytes().await.map_err(|e| format!("body: {e}"))?;
            Ok(())
        }
        Ok(res) => Err(format!("status_{}", res.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timeout".to_owned()),
        Err(_) => Err("transport".to_owned()),
    }
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let (path, bodies) = bodies(&args)?;
    let bodies = Arc::new(bodies);
    let url: Arc<str> = format!("{}{path}", args.url.trim_end_matches('/')).into();
    let key: Arc<str> = args.key.clone().into();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(512)
        .build()?;
    let mut counter = 0u64;
    // Warm-up: model, caches, connections (repeated mode: the requests it will repeat).
    for _ in 0..args.warmup {
        let body = nth(&bodies, Mode::Repeated, args.endpoint, counter);
        counter += 1;
        if let Err(e) = send(&client, &url, &key, &body).await {
            anyhow::bail!("warm-up request failed: {e}");
        }
    }
    let mut report = QueryReport {
        label: args.label.clone(),
        endpoint: args.endpoint,
        mode: args.mode,
        duration_s: args.duration.as_secs_f64(),
        rates: Vec::new(),
    };
    for &rate in &args.rates {
        let total = (rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(scheduled).await;
            let body = nth(&bodies, args.mode, args.endpoint, counter);
            counter += 1;
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let r = send(&client, &url, &key, &body).await;
                (scheduled, Instant::now(), r)
            }));
        }
        let mut latency = Latencies::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut ok, mut last) = (0u64, t0);
        for t in tasks {
            let (scheduled, done, r) = t.await?;
            last = last.max(done);
            match r {
                Ok(()) => {
                    ok += 1;
                    latency.record(done.duration_since(scheduled));
                }
                Err(e) => *errors.entry(e).or_default() += 1,
            }
        }
        let elapsed = last.duration_since(t0).as_secs_f64().max(1e-9);
        let result = RateResult {
            rate,
            sent: total,
            ok,
            errors,
            achieved_rps: round3(ok as f64 / elapsed),
            latency: latency.summary(),
        };
        eprintln!(
            "loadgen query {}: {rate} req/s → ok {ok}/{total}, p50 {} ms, p99 {} ms",
            args.label, result.latency.p50_ms, result.latency.p99_ms
        );
        report.rates.push(result);
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, format!("{json}\n"))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{json}");
    }
    Ok(())
}
