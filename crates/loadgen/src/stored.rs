//! Capture→stored: read accepted episodes back (`GET /api/v1/episodes/{id}`) and compare
//! their `stored_at` with the moment the capture request started. Client and services run
//! on the same machine, so they share one clock.
//!
//! Reading back costs the gateway some CPU, so loadgen first polls only the last accepted
//! episode until it is stored (the pipeline is then drained, give or take reordering inside
//! a batch), and reads all the others once, afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::load::round3;
use crate::stats::{Latencies, Summary};

/// Concurrent read-back requests.
const READERS: usize = 8;

/// One accepted capture, on the wall clock.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub episode_id: String,
    /// When the request started (its scheduled start in open loop).
    pub started: OffsetDateTime,
    /// When the 202 arrived.
    pub answered: OffsetDateTime,
}

/// The timestamps of a stored episode.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub stored_at: OffsetDateTime,
}

pub struct Reader {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Reader {
    pub fn new(client: reqwest::Client, base: &str, key: &str) -> Self {
        Self {
            client,
            base: base.to_owned(),
            key: key.to_owned(),
        }
    }

    /// `Some` once the episode is stored, `None` while it is processing.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<Stored>> {
        #[derive(Deserialize)]
        struct View {
            status: String,
            #[serde(default, with = "time::serde::rfc3339::option")]
            stored_at: Option<OffsetDateTime>,
        }
        let response = self
            .client
            .get(format!("{}/api/v1/episodes/{id}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .with_context(|| format!("reading episode {id}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("reading episode {id}: HTTP {status}");
        }
        let view: View = response
            .json()
            .await
            .with_context(|| format!("decoding episode {id}"))?;
        match (view.status.as_str(), view.stored_at) {
            ("stored", Some(stored_at)) => Ok(Some(Stored { stored_at })),
            ("processing", _) => Ok(None),
            (other, _) => bail!("episode {id}: unexpected status {other:?}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StoredReport {
    pub expected: usize,
    pub stored: usize,
    pub missing: usize,
    /// From the start of the capture request to `stored_at`.
    pub capture_to_stored: Summary,
    /// From the 202 to `stored_at`: the asynchronous part.
    pub accepted_to_stored: Summary,
    /// From the first 202 to the last `stored_at`.
    pub first_accept_to_last_stored_s: f64,
    /// Stored episodes per second over that span: the pipeline's throughput under load.
    pub pipeline_eps: f64,
    /// Episodes stored after the last 202 (the backlog the load left behind).
    pub drain_episodes: usize,
    /// From the last 202 to the last `stored_at`.
    pub drain_s: f64,
    /// `drain_episodes / drain_s`: the pipeline's throughput with the gateway idle
    /// (`null` when there was no backlog worth measuring).
    pub drain_eps: Option<f64>,
}

fn micros_between(later: OffsetDateTime, earlier: OffsetDateTime) -> Duration {
    let micros = (later - earlier).whole_microseconds().max(0);
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// Waits until every accepted episode is stored (or `timeout`), then measures. `snapshot`
/// is called once, when the last accepted episode is stored (the end of the drain).
pub async fn wait_and_measure<S>(
    reader: &Reader,
    mut accepted: Vec<Accepted>,
    timeout: Duration,
    snapshot: impl FnOnce() -> S,
) -> anyhow::Result<(StoredReport, Option<S>)> {
    let deadline = Instant::now() + timeout;
    accepted.sort_by_key(|a| a.answered);
    let mut drained = None;
    if let Some(last) = accepted.last() {
        while Instant::now() < deadline {
            if matches!(reader.get(&last.episode_id).await, Ok(Some(_))) {
                drained = Some(snapshot());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut results: Vec<Option<Stored>> = vec![None; accepted.len()];
    loop {
        let pending: Vec<usize> = (0..accepted.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        let accepted = &accepted;
        let fetched: Vec<(usize, Option<Stored>)> = futures::stream::iter(pending)
            .map(|i| async move { (i, reader.get(&accepted[i].episode_id).await.ok().flatten()) })
            .buffer_unordered(READERS)
            .collect()
            .await;
        let mut progress = false;
        for (i, stored) in fetched {
            progress |= stored.is_some();
            results[i] = stored;
        }
        if !progress {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let mut capture_to_stored = Latencies::new();
    let mut accepted_to_stored = Latencies::new();
    let mut last_stored: Option<OffsetDateTime> = None;
    let last_answered = accepted.last().map(|a| a.answered);
    let mut drain_episodes = 0;
    for (a, s) in accepted.iter().zip(&results) {
        let Some(s) = s else { continue };
        capture_to_stored.record(micros_between(s.stored_at, a.started));
        accepted_to_stored.record(micros_between(s.stored_at, a.answered));
        last_stored = Some(last_stored.map_or(s.stored_at, |l| l.max(s.stored_at)));
        if last_answered.is_some_and(|l| s.stored_at > l) {
            drain_episodes += 1;
        }
    }
    let stored = results.iter().filter(|r| r.is_some()).count();
    let span = |from: Option<OffsetDateTime>| match (from, last_stored) {
        (Some(from), Some(to)) => micros_between(to, from).as_secs_f64(),
        _ => 0.0,
    };
    let pipeline_s = span(accepted.first().map(|a| a.answered));
    let drain_s = span(last_answered);
    let report = StoredReport {
        expected: accepted.len(),
        stored,
        missing: accepted.len() - stored,
        capture_to_stored: capture_to_stored.summary(),
        accepted_to_stored: accepted_to_stored.summary(),
        first_accept_to_last_stored_s: round3(pipeline_s),
        pipeline_eps: round3(stored as f64 / pipeline_s.max(1e-9)),
        drain_episodes,
        drain_s: round3(drain_s),
        drain_eps: (drain_s >= 1.0 && drain_episodes >= 20)
            .then(|| round3(drain_episodes as f64 / drain_s)),
    };
    Ok((report, drained))
}
