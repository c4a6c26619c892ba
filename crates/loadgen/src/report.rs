//! `loadgen report`: renders docs/BENCHMARKS.md from one run's results directory.
//!
//! Inputs: `<results>/<mode>.<scenario>.json` (summaries of `loadgen capture`),
//! `<results>/commands.txt` (what run.sh ran), `<results>/model.json` (`loadgen model`,
//! keys `model_episodes.…`), criterion's estimates of the embedder's
//! `embed` bench, and a hand-written interpretation (markdown) in which `{{key}}` is
//! replaced by a measured value: `<mode>.<scenario>.<json path>` (e.g.
//! `{{standalone.burst.stored.drain_eps}}`), `model.threads<T>.batch<B>` (texts/s),
//! `machine.<field>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directory with `<mode>.<scenario>.json` summaries and `commands.txt`.
    #[arg(long)]
    pub results: PathBuf,
    /// criterion's output directory (`target/criterion`).
    #[arg(long)]
    pub criterion: PathBuf,
    /// Interpretation (markdown with `{{key}}` placeholders).
    #[arg(long)]
    pub notes: PathBuf,
    /// The markdown file to (re)write.
    #[arg(long)]
    pub out: PathBuf,
    /// Machine facts, `key=value` (date, cpu, nproc, loadavg, memory, git, elapsed, ...).
    #[arg(long = "machine", value_parser = parse_pair)]
    pub machine: Vec<(String, String)>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

const MODES: [(&str, &str); 2] = [
    (
        "standalone",
        "standalone (1 process: SQLite, embedded bus, embedded index)",
    ),
    (
        "services",
        "services (gateway + embedder + ingest-writer; NATS, PostgreSQL, fake KyroDB)",
    ),
];
const THREADS: [u32; 2] = [1, 2];
const BATCHES: [u32; 3] = [1, 8, 32];

struct Scenario {
    mode: String,
    name: String,
    data: Value,
}

impl Scenario {
    fn f(&self, pointer: &str) -> Option<f64> {
        self.data.pointer(pointer).and_then(Value::as_f64)
    }

    fn cell(&self, pointer: &str) -> String {
        self.f(pointer).map_or_else(|| "–".to_owned(), num)
    }

    fn load(&self) -> String {
        match self.data["mode"].as_str() {
            Some("open_loop") => {
                let rate = self.f("/offered_rate_rps").unwrap_or(0.0);
                let requests = self.f("/requests").unwrap_or(0.0);
                format!(
                    "open loop {} req/s × {} s",
                    num(rate),
                    num(requests / rate.max(1e-9))
                )
            }
            _ => format!(
                "closed loop, {} in flight, {} requests",
                self.cell("/concurrency"),
                self.cell("/requests")
            ),
        }
    }

    fn title(&self) -> String {
        format!("{} / {}", self.mode, self.name)
    }

    fn is_burst(&self) -> bool {
        self.data["mode"].as_str() == Some("closed_loop")
    }

    fn sort_key(&self) -> (usize, u8, i64, String) {
        let mode = MODES
            .iter()
            .position(|(m, _)| *m == self.mode)
            .unwrap_or(MODES.len());
        let open = u8::from(self.data["mode"].as_str() != Some("open_loop"));
        let rate = self.f("/offered_rate_rps").unwrap_or(0.0) as i64;
        (mode, open, rate, self.name.clone())
    }
}

/// 3 significant-ish digits: 1234, 123, 12.3, 1.23.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || a == a.trunc() {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn load_scenarios(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let Some((mode, name)) = stem.split_once('.') else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let data: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        out.push(Scenario {
            mode: mode.to_owned(),
            name: name.to_owned(),
            data,
        });
    }
    out.sort_by_cached_key(Scenario::sort_key);
    Ok(out)
}

/// texts/s of the criterion `embed` bench, by (threads, batch).
fn model_throughput(criterion: &Path) -> BTreeMap<(u32, u32), f64> {
    let mut out = BTreeMap::new();
    for t in THREADS {
        for b in BATCHES {
            let path = criterion
                .join("embed")
                .join(format!("threads{t}"))
                .join(b.to_string())
                .join("new")
                .join("estimates.json");
            let ns = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| v.pointer("/mean/point_estimate").and_then(Value::as_f64));
            if let Some(ns) = ns.filter(|ns| *ns > 0.0) {
                out.insert((t, b), f64::from(b) / (ns / 1e9));
            }
        }
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Number(n) => {
            out.insert(prefix.to_owned(), n.as_f64().map_or_else(String::new, num));
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        _ => {}
    }
}

/// Replaces every `{{key}}`; unknown keys become `?` (and are reported on stderr).
fn render_notes(template: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        match values.get(key) {
            Some(v) => out.push_str(v),
            None => {
                eprintln!("loadgen report: no value for {{{{{key}}}}}");
                out.push('?');
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn cpu_cell(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return "–".to_owned();
    };
    if map.is_empty() {
        return "–".to_owned();
    }
    map.iter()
        .map(|(name, u)| {
            format!(
                "{name} {}",
                u.get("cores")
                    .and_then(Value::as_f64)
                    .map_or("–".into(), num)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let scenarios = load_scenarios(&args.results)?;
    let model = model_throughput(&args.criterion);
    let machine: BTreeMap<String, String> = args.machine.iter().cloned().collect();
    let m = |k: &str| machine.get(k).cloned().unwrap_or_else(|| "?".to_owned());

    let mut values = BTreeMap::new();
    for s in &scenarios {
        flatten(&format!("{}.{}", s.mode, s.name), &s.data, &mut values);
    }
    for ((t, b), tps) in &model {
        values.insert(format!("model.threads{t}.batch{b}"), num(*tps));
    }
    let episode_model: Option<Value> = std::fs::read_to_string(args.results.join("model.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if let Some(v) = &episode_model {
        flatten("model_episodes", v, &mut values);
        if let Some(share) = v["truncated_share"].as_f64() {
            values.insert(
                "model_episodes.truncated_percent".to_owned(),
                format!("{} %", num(share * 100.0)),
            );
        }
    }
    for (k, v) in &machine {
        values.insert(format!("machine.{k}"), v.clone());
    }

    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "Measured by `make bench` (`scripts/bench/run.sh`, driver `crates/loadgen`) on {}. \
         This file is rewritten by every run; edit `scripts/bench/interpretation.md` for the \
         prose at the end.",
        m("date")
    )?;
    writeln!(w)?;
    writeln!(w, "## Machine")?;
    writeln!(w)?;
    writeln!(
        w,
        "| cores (`nproc`) | CPU | memory | load average at start (1/5/15 min) | git | bench wall time |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- |")?;
    writeln!(
        w,
        "| {} | {} | {} | {} | `{}` | {} |",
        m("nproc"),
        m("cpu"),
        m("memory"),
        m("loadavg"),
        m("git"),
        m("elapsed")
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "Everything runs on this one machine: the load generator, the services, NATS and \
         PostgreSQL share its cores, so these are numbers for *this box*, not for a cluster."
    )?;

    writeln!(w)?;
    writeln!(
        w,
        "## 1. Gateway capture latency (`POST /api/v1/capture` → 202)"
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "Open loop: requests leave on a fixed schedule and latency counts from the *scheduled* \
         start (no coordinated omission). Closed loop: a fixed number of requests in flight. \
         Bodies: the dev eval set's capture fields, a different episode per request."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode / scenario | load | sent | 202 | errors | achieved req/s | P50 ms | P90 ms | P99 ms | max ms |"
    )?;
    writeln!(
        w,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    for s in &scenarios {
        let errors = s.data["errors"]
            .as_object()
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "0".to_owned());
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.title(),
            s.load(),
            s.cell("/requests"),
            s.cell("/accepted"),
            errors,
            s.cell("/throughput_rps"),
            s.cell("/latency/p50_ms"),
            s.cell("/latency/p90_ms"),
            s.cell("/latency/p99_ms"),
            s.cell("/latency/max_ms"),
        )?;
    }

    writeln!(w)?;
    writeln!(w, "## 2. Capture → stored latency")?;
    writeln!(w)?;
    writeln!(
        w,
        "From the start of the capture request to the episode's `stored_at` (read back with \
         `GET /api/v1/episodes/{{id}}` after the run; one machine, one clock). \
         \"202 → stored\" is the asynchronous part only."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode / scenario | load | stored / accepted | P50 ms | P90 ms | P99 ms | max ms | 202 → stored P50 ms | 202 → stored P99 ms |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for s in scenarios.iter().filter(|s| s.data["stored"].is_object()) {
        writeln!(
            w,
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            s.title(),
            s.load(),
            s.cell("/stored/stored"),
            s.cell("/stored/expected"),
            s.cell("/stored/capture_to_stored/p50_ms"),
            s.cell("/stored/capture_to_stored/p90_ms"),
            s.cell("/stored/capture_to_stored/p99_ms"),
            s.cell("/stored/capture_to_stored/max_ms"),
            s.cell("/stored/accepted_to_stored/p50_ms"),
            s.cell("/stored/accepted_to_stored/p99_ms"),
        )?;
    }

    writeln!(w)?;
    writeln!(w, "## 3. Pipeline (embedder) throughput under saturation")?;
    writeln!(w)?;
    writeln!(
        w,
        "\"first 202 → last stored\" spans the whole load, while the gateway competes for the \
         cores; \"drain\" is the backlog stored after the last 202, with the gateway idle."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode / scenario | load | first 202 → last stored s | episodes/s | drain: episodes | drain s | drain episodes/s |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- | --- |")?;
    for s in scenarios
        .iter()
        .filter(|s| s.is_burst() && s.data["stored"].is_object())
    {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.title(),
            s.load(),
            s.cell("/stored/first_accept_to_last_stored_s"),
            s.cell("/stored/pipeline_eps"),
            s.cell("/stored/drain_episodes"),
            s.cell("/stored/drain_s"),
            s.cell("/stored/drain_eps"),
        )?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "Raw model throughput (criterion, `cargo bench -p embedder --bench embed`: \
         all-MiniLM-L6-v2 on ONNX Runtime, ~30-token texts, one session), texts/s:"
    )?;
    writeln!(w)?;
    writeln!(w, "| intra-op threads | batch 1 | batch 8 | batch 32 |")?;
    writeln!(w, "| --- | --- | --- | --- |")?;
    for t in THREADS {
        let cells: Vec<String> = BATCHES
            .iter()
            .map(|b| {
                model
                    .get(&(t, *b))
                    .map_or_else(|| "–".to_owned(), |v| num(*v))
            })
            .collect();
        writeln!(w, "| {t} | {} |", cells.join(" | "))?;
    }
    if let Some(episodes) = &episode_model {
        writeln!(w)?;
        writeln!(
            w,
            "The same model on what the embedder really embeds (`loadgen model`): the {} dev-set \
             episodes composed by `embedder::compose::episode_text`, mean {} tokens, {}% at the \
             256-token limit, in batches of {}:",
            episodes["episodes"],
            episodes["mean_tokens"].as_f64().map_or("?".into(), num),
            episodes["truncated_share"]
                .as_f64()
                .map_or("?".into(), |x| num(x * 100.0)),
            episodes["batch"],
        )?;
        writeln!(w)?;
        writeln!(w, "| intra-op threads | texts/s |")?;
        writeln!(w, "| --- | --- |")?;
        if let Some(threads) = episodes["threads"].as_object() {
            for (t, m) in threads {
                writeln!(
                    w,
                    "| {t} | {} |",
                    m["texts_per_s"].as_f64().map_or("–".into(), num)
                )?;
            }
        }
    }

    writeln!(w)?;
    writeln!(w, "## 4. Where the CPU went")?;
    writeln!(w)?;
    writeln!(
        w,
        "Cores kept busy per process (CPU seconds / wall seconds, from `/proc`), while the load \
         was offered and while the backlog drained."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| mode / scenario | load | during load | during drain | peak RSS MiB |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- |")?;
    for s in &scenarios {
        let rss = s.data["peak_rss_mib"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {}", v.as_f64().map_or("–".into(), num)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            s.title(),
            s.load(),
            cpu_cell(&s.data["cpu_load"]),
            cpu_cell(&s.data["cpu_drain"]),
            rss
        )?;
    }

    query_section(w, &args.results.join("query"))?;

    writeln!(w)?;
    writeln!(w, "## How it was measured")?;
    writeln!(w)?;
    for (mode, what) in MODES {
        if scenarios.iter().any(|s| s.mode == mode) {
            writeln!(w, "- `{mode}`: {what}.")?;
        }
    }
    writeln!(w)?;
    writeln!(w, "Commands, as run by `scripts/bench/run.sh`:")?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    let commands = std::fs::read_to_string(args.results.join("commands.txt")).unwrap_or_default();
    write!(w, "{commands}")?;
    if !commands.ends_with('\n') {
        writeln!(w)?;
    }
    writeln!(w, "```")?;

    writeln!(w)?;
    let notes = std::fs::read_to_string(&args.notes)
        .with_context(|| format!("reading {}", args.notes.display()))?;
    md.push_str(&render_notes(&notes, &values));
    if !md.ends_with('\n') {
        md.push('\n');
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("loadgen report: wrote {}", args.out.display());
    Ok(())
}

/// "Search and gate": one table per mode from `<results>/query/<mode>.<endpoint>.<kind>.json`
/// (`loadgen query`), with the highest rate whose P99 stayed within 20 ms.
fn query_section(w: &mut String, dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut files: Vec<(String, Value)> = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let data: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        files.push((stem, data));
    }
    if files.is_empty() {
        return Ok(());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    writeln!(w)?;
    writeln!(w, "## 5. Search and gate (`reflect`) through the gateway")?;
    writeln!(w)?;
    writeln!(
        w,
        "A tenant holding 10,000 stored episodes (`BENCH_QUERY_EPISODES`; `loadgen seed`: the dev set's episodes \
         copied with real embeddings plus noise), open-loop load for the given time per rate; \
         latency from the scheduled send to the full response. *distinct*: every request's text \
         is unique, so every request pays for a query embedding; *repeated*: 20 requests cycled, \
         as an agent re-asks the gate before retrying an action. Target on this machine: \
         distinct P99 ≤ 20 ms at 100 req/s, repeated ≥ 1,000 req/s."
    )?;
    for (mode, _) in MODES {
        let rows: Vec<&(String, Value)> = files
            .iter()
            .filter(|(stem, _)| stem.split('.').next() == Some(mode))
            .collect();
        if rows.is_empty() {
            continue;
        }
        writeln!(w)?;
        writeln!(w, "**{mode}**")?;
        writeln!(w)?;
        writeln!(
            w,
            "| endpoint | requests | offered req/s | achieved req/s | ok / sent | P50 ms | P99 ms | max ms |"
        )?;
        writeln!(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        for (_, data) in &rows {
            let endpoint = data["endpoint"].as_str().unwrap_or("?");
            let kind = data["mode"].as_str().unwrap_or("?");
            let mut best: Option<f64> = None;
            for r in data["rates"].as_array().into_iter().flatten() {
                let rate = r["rate"].as_f64().unwrap_or(0.0);
                let p99 = r["latency"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
                let all_ok = r["ok"].as_u64() == r["sent"].as_u64();
                if all_ok && p99 <= 20.0 {
                    best = Some(best.map_or(rate, |b: f64| b.max(rate)));
                }
                writeln!(
                    w,
                    "| {endpoint} | {kind} | {} | {} | {} / {} | {} | {} | {} |",
                    num(rate),
                    num(r["achieved_rps"].as_f64().unwrap_or(0.0)),
                    r["ok"].as_u64().unwrap_or(0),
                    r["sent"].as_u64().unwrap_or(0),
                    num(r["latency"]["p50_ms"].as_f64().unwrap_or(0.0)),
                    num(r["latency"]["p99_ms"].as_f64().unwrap_or(0.0)),
                    num(r["latency"]["max_ms"].as_f64().unwrap_or(0.0)),
                )?;
            }
            writeln!(
                w,
                "| {endpoint} | {kind} | **highest rate with P99 ≤ 20 ms and no errors: {}** | | | | | |",
                best.map_or("none measured".to_owned(), |b| format!("{} req/s", num(b)))
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(1234.56), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(50.0), "50");
    }

    #[test]
    fn placeholders_are_replaced() {
        let mut values = BTreeMap::new();
        flatten(
            "standalone.burst",
            &serde_json::json!({"stored": {"drain_eps": 61.234}}),
            &mut values,
        );
        assert_eq!(
            render_notes(
                "x {{ standalone.burst.stored.drain_eps }} y {{nope}}",
                &values
            ),
            "x 61.2 y ?"
        );
    }
}
