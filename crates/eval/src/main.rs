//! `em-eval` (`make eval`): starts a fresh embedded instance (the standalone composition,
//! in this process, on a temporary data directory and a free port), creates a tenant, loads
//! an evaluation set's episodes through the public API, waits until they are stored, runs
//! its search queries and gate probes through `POST /api/v1/search` and
//! `POST /api/v1/reflect`, and reports the scores (format: the set's README).
//!
//! Ranking and gate settings come from the usual `EM_STANDALONE__RETRIEVAL__*` variables,
//! so a setting can be tried without rebuilding.

mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Confusion, DECISIONS, QueryOutcome};

#[derive(Parser)]
#[command(about = "Score search and the gate on an evaluation set")]
struct Cli {
    /// The set's directory (episodes.jsonl, search_queries.jsonl, gate_probes.jsonl).
    #[arg(long, default_value = "../shared/eval/dev")]
    set: PathBuf,
    /// Write the full report (markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The no-result threshold reported as the production τ (the recommended
    /// `min_similarity`, docs/RETRIEVAL.md).
    #[arg(long, default_value_t = 0.30)]
    tau: f32,
    /// Write every probe's answer (JSON Lines: id, expected, predicted, reply) here.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Concurrent requests while loading and querying.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(Deserialize)]
struct Query {
    id: String,
    query: String,
    #[serde(default)]
    filters: serde_json::Map<String, Value>,
    relevant: Vec<String>,
    kind: String,
}

#[derive(Deserialize)]
struct Probe {
    id: String,
    proposed_action: String,
    #[serde(default)]
    goal: String,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    context: String,
    #[serde(default)]
    current_state: serde_json::Map<String, Value>,
    expected: String,
    #[serde(default)]
    because: Vec<String>,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        for attempt in 0..5 {
            let res = self
                .http
                .post(format!("{}{path}", self.base))
                .header("X-API-Key", &self.key)
                .json(body)
                .send()
                .await?;
            let status = res.status();
            let value: Value = res.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(value);
            }
            if status.as_u16() == 503 || status.as_u16() == 504 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                continue;
            }
            bail!("POST {path}: {status} {value}");
        }
        bail!("POST {path}: still unavailable after retries")
    }

    async fn status(&self, episode_id: &str) -> anyhow::Result<String> {
        let res = self
            .http
            .get(format!("{}/api/v1/episodes/{episode_id}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await?;
        let v: Value = res.json().await?;
        Ok(v["status"].as_str().unwrap_or("unknown").to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let episodes: Vec<serde_json::Map<String, Value>> =
        read_jsonl(&cli.set.join("episodes.jsonl"))?;
    let queries: Vec<Query> = read_jsonl(&cli.set.join("search_queries.jsonl"))?;
    let probes: Vec<Probe> = read_jsonl(&cli.set.join("gate_probes.jsonl"))?;
    eprintln!(
        "em-eval: {} episodes, {} queries, {} probes from {}",
        episodes.len(),
        queries.len(),
        probes.len(),
        cli.set.display()
    );

    // A fresh embedded instance.
    let data = tempfile::tempdir()?;
    let mut settings: standalone::Settings = common::settings::load("standalone", None)?;
    settings.data_dir = data.path().to_owned();
    settings.http.addr = "127.0.0.1:0".to_owned();
    let db = standalone::open_db(&settings.data_dir).await?;
    let tenant = gateway::admin::create_tenant(&db, "eval")
        .await
        .map_err(|e| anyhow::anyhow!("creating the tenant: {e}"))?;
    let model_settings = settings.model.clone().with_env_fallbacks();
    let models = tokio::task::spawn_blocking(move || model_settings.load())
        .await?
        .context("loading the embedding model (run `make model`)")?;
    let app = standalone::Standalone::build(&settings, models).await?;
    let base = format!("http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let api = Api {
        http: reqwest::Client::new(),
        base,
        key: tenant.api_key.expose_secret().to_owned(),
    };

    // Load the episodes (annotation fields stay out).
    let started = Instant::now();
    let loaded: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(episodes.iter())
        .map(|e| {
            let api = &api;
            async move {
                let id = e["id"].as_str().context("episode without id")?.to_owned();
                let mut body = e.clone();
                for annotation in ["id", "pii", "cluster"] {
                    body.remove(annotation);
                }
                let reply = api.post("/api/v1/capture", &Value::Object(body)).await?;
                let episode_id = reply["episode_id"]
                    .as_str()
                    .context("capture reply without episode_id")?
                    .to_owned();
                Ok((id, episode_id))
            }
        })
        .buffer_unordered(cli.concurrency)
        .collect()
        .await;
    let mut to_service = HashMap::new();
    for r in loaded {
        let (id, episode_id) = r?;
        to_service.insert(id, episode_id);
    }
    let to_dataset: HashMap<String, String> = to_service
        .iter()
        .map(|(k, v)| (v.clone(), k.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    for episode_id in to_service.values() {
        while api.status(episode_id).await? != "stored" {
            if Instant::now() > deadline {
                bail!("episode {episode_id} not stored after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "em-eval: {} episodes stored in {load_secs:.1} s",
        to_service.len()
    );

    // Search.
    let started = Instant::now();
    let outcomes: Vec<anyhow::Result<QueryOutcome>> = futures::stream::iter(queries.iter())
        .map(|q| {
            let (api, to_dataset) = (&api, &to_dataset);
            async move {
                let reply = api
                    .post(
                        "/api/v1/search",
                        &json!({"query": q.query, "k": 10, "filters": q.filters}),
                    )
                    .await
                    .with_context(|| format!("query {}", q.id))?;
                let results = reply["results"].as_array().cloned().unwrap_or_default();
                let returned = results
                    .iter()
                    .filter_map(|r| r["episode_id"].as_str())
                    .map(|id| to_dataset.get(id).cloned().unwrap_or_else(|| id.to_owned()))
                    .collect();
                let top_similarity = results
                    .iter()
                    .filter_map(|r| r["parts"]["similarity"].as_f64())
                    .fold(0.0f64, f64::max) as f32;
                Ok(QueryOutcome {
                    kind: q.kind.clone(),
                    filtered: !q.filters.is_empty(),
                    relevant: q.relevant.clone(),
                    returned,
                    top_similarity,
                })
            }
        })
        .buffered(cli.concurrency)
        .collect()
        .await;
    let outcomes: Vec<QueryOutcome> = outcomes.into_iter().collect::<anyhow::Result<_>>()?;
    let search_secs = started.elapsed().as_secs_f64();

    // Gate.
    let started = Instant::now();
    let decisions: Vec<anyhow::Result<(String, String, bool, Value)>> =
        futures::stream::iter(probes.iter())
            .map(|p| {
                let (api, to_service) = (&api, &to_service);
                async move {
                    let mut body = json!({
                        "proposed_action": p.proposed_action,
                        "goal": p.goal,
                        "context": p.context,
                        "current_state": p.current_state,
                    });
                    if let Some(tool) = &p.tool {
                        body["tool"] = json!(tool);
                    }
                    let reply = api
                        .post("/api/v1/reflect", &body)
                        .await
                        .with_context(|| format!("probe {}", p.id))?;
                    let predicted = reply["recommendation"].as_str().unwrap_or("?").to_owned();
                    // Evidence: the rationale cites a `because` episode.
                    let rationale = reply["rationale"].as_str().unwrap_or_default();
                    let cited = p.because.iter().any(|b| {
                        to_service
                            .get(b)
                            .is_some_and(|service_id| rationale.contains(service_id.as_str()))
                    });
                    Ok((p.expected.clone(), predicted, cited, reply))
                }
            })
            .buffered(cli.concurrency)
            .collect()
            .await;
    let decisions: Vec<(String, String, bool, Value)> =
        decisions.into_iter().collect::<anyhow::Result<_>>()?;
    let gate_secs = started.elapsed().as_secs_f64();
    if let Some(path) = &cli.dump {
        let mut out = String::new();
        for (p, (expected, predicted, _, reply)) in probes.iter().zip(&decisions) {
            let because: Vec<&str> = p
                .because
                .iter()
                .map(|b| to_service.get(b).map_or(b.as_str(), String::as_str))
                .collect();
            let line = json!({"id": p.id, "expected": expected, "predicted": predicted,
                "because": because, "action": p.proposed_action, "reply": reply});
            let _ = writeln!(out, "{line}");
        }
        std::fs::write(path, out)?;
    }
    shutdown.cancel();
    let _ = server.await;

    let report = report(
        &cli,
        &outcomes,
        &probes,
        &decisions,
        (load_secs, search_secs, gate_secs),
    );
    if let Some(out) = &cli.out {
        std::fs::write(out, &report.markdown)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("em-eval: wrote {}", out.display());
    }
    eprint!("{}", report.summary);
    #[allow(clippy::print_stdout)]
    {
        println!("{}", report.line);
    }
    Ok(())
}

struct Report {
    markdown: String,
    summary: String,
    line: String,
}

fn report(
    cli: &Cli,
    qs: &[QueryOutcome],
    probes: &[Probe],
    decisions: &[(String, String, bool, Value)],
    (load, search, gate): (f64, f64, f64),
) -> Report {
    let (recall, mrr, answerable) = metrics::search_scores(qs, |_| true);
    let (nr_precision, nr_recall, nr_answer_recall) = metrics::no_result(qs, cli.tau);
    let mut confusion = Confusion::default();
    for (expected, predicted, _, _) in decisions {
        confusion.add(expected, predicted);
    }
    let non_proceed: Vec<&(String, String, bool, Value)> =
        decisions.iter().filter(|d| d.0 != "proceed").collect();
    let evidence =
        non_proceed.iter().filter(|d| d.2).count() as f64 / non_proceed.len().max(1) as f64;
    let line = format!(
        "recall@5={recall:.3} mrr@10={mrr:.3} no_result_precision={nr_precision:.3} gate_accuracy={:.3} false_block={:.3} missed_block={:.3}",
        confusion.accuracy(),
        confusion.false_block(),
        confusion.missed_block()
    );

    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation\n");
    let _ = writeln!(
        md,
        "Generated by `make eval` (`em-eval`) on the set `{}`: every episode captured into a fresh tenant of a fresh embedded instance through `POST /api/v1/capture`, then every query through `POST /api/v1/search` (k = 10, the query's filters) and every probe through `POST /api/v1/reflect`. Definitions: the set's README. Settings: the defaults (docs/RETRIEVAL.md).\n",
        cli.set.display()
    );
    let _ = writeln!(md, "```text\n{line}\n```\n");
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(
        md,
        "| target (issue 3) | value | |\n|---|---:|---|\n| recall@5 ≥ 0.92 | {recall:.3} | {} |\n| MRR@10 ≥ 0.90 | {mrr:.3} | {} |\n| gate accuracy ≥ 0.85 | {:.3} | {} |\n| false block ≤ 0.03 | {:.3} | {} |\n| missed block ≤ 0.05 | {:.3} | {} |\n\nThe reference point of the set's README, a plain TF-IDF ranker, scores recall@5 0.80 and MRR@10 0.83. Why the gate falls short, and what would close the gap: [RETRIEVAL.md](RETRIEVAL.md#the-gate-reflect).\n",
        verdict(recall >= 0.92),
        verdict(mrr >= 0.90),
        confusion.accuracy(),
        verdict(confusion.accuracy() >= 0.85),
        confusion.false_block(),
        verdict(confusion.false_block() <= 0.03),
        confusion.missed_block(),
        verdict(confusion.missed_block() <= 0.05),
    );
    let _ = writeln!(md, "## Search\n");
    let _ = writeln!(
        md,
        "| slice | queries | recall@5 | MRR@10 |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        md,
        "| all answerable | {answerable} | {recall:.3} | {mrr:.3} |"
    );
    let mut kinds: Vec<&str> = qs.iter().map(|q| q.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let (r, m, n) = metrics::search_scores(qs, |q| q.kind == kind);
        if n > 0 {
            let _ = writeln!(md, "| kind `{kind}` | {n} | {r:.3} | {m:.3} |");
        }
    }
    for (label, filtered) in [("filtered", true), ("unfiltered", false)] {
        let (r, m, n) = metrics::search_scores(qs, |q| q.filtered == filtered);
        let _ = writeln!(md, "| {label} | {n} | {r:.3} | {m:.3} |");
    }
    let _ = writeln!(
        md,
        "\n### No-result behaviour\n\nA query returns no result when no hit has similarity ≥ τ. Production τ = {:.2} (the recommended `min_similarity`).\n",
        cli.tau
    );
    let _ = writeln!(
        md,
        "| τ | no-result precision | no-result recall | recall@5 of answerable |\n|---:|---:|---:|---:|"
    );
    let mut taus: Vec<f32> = (6..=13).map(|i| i as f32 * 0.05).collect();
    taus.push(cli.tau);
    taus.sort_by(f32::total_cmp);
    taus.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    for tau in taus {
        let (p, r, a) = metrics::no_result(qs, tau);
        let mark = if (tau - cli.tau).abs() < 1e-6 {
            " **(production)**"
        } else {
            ""
        };
        let _ = writeln!(md, "| {tau:.2}{mark} | {p:.3} | {r:.3} | {a:.3} |");
    }
    let _ = writeln!(md, "\n## Gate\n");
    let _ = writeln!(
        md,
        "| metric | value |\n|---|---:|\n| probes | {} |\n| accuracy | {:.3} |\n| false block (block or rewrite where proceed was expected) | {:.3} |\n| false block, README definition (block where proceed or hint was expected) | {:.3} |\n| missed block (proceed where block was expected) | {:.3} |\n| mean cost (README cost matrix) | {:.3} |\n| evidence: non-proceed probes whose rationale cites a `because` episode | {:.3} |",
        confusion.total(),
        confusion.accuracy(),
        confusion.false_block(),
        confusion.false_block_readme(),
        confusion.missed_block(),
        confusion.mean_cost(),
        evidence
    );
    let _ = writeln!(
        md,
        "\nConfusion matrix (rows expected, columns predicted):\n\n| expected \\ predicted | block | rewrite | hint | proceed |\n|---|---:|---:|---:|---:|"
    );
    for e in DECISIONS {
        let _ = writeln!(
            md,
            "| **{e}** | {} | {} | {} | {} |",
            confusion.get(e, "block"),
            confusion.get(e, "rewrite"),
            confusion.get(e, "hint"),
            confusion.get(e, "proceed")
        );
    }
    let _ = writeln!(
        md,
        "\nWall time: loading {load:.1} s (capture → stored), {} searches {search:.1} s, {} gate calls {gate:.1} s (concurrency {}).",
        qs.len(),
        probes.len(),
        cli.concurrency
    );
    let mut misses: BTreeMap<String, usize> = BTreeMap::new();
    for (e, p, _, _) in decisions {
        if e != p {
            *misses.entry(format!("{e}→{p}")).or_default() += 1;
        }
    }
    let summary = format!(
        "search: recall@5 {recall:.3}, MRR@10 {mrr:.3}; no-result at τ={:.2}: precision {nr_precision:.3}, recall {nr_recall:.3}, answerable recall@5 {nr_answer_recall:.3}\ngate: accuracy {:.3}, false block {:.3}, missed block {:.3}, evidence {evidence:.3}; errors {misses:?}\n",
        cli.tau,
        confusion.accuracy(),
        confusion.false_block(),
        confusion.missed_block()
    );
    Report {
        markdown: md,
        summary,
        line,
    }
}
