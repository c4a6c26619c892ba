//! Micro-batching of query embeddings.
//!
//! Search queries arrive one text at a time, and one model call per text wastes most of
//! the model's time on per-call overhead. [`QueryBatcher`] queues requests in a bounded
//! channel; one worker task per ONNX session takes the first waiting request, adds every
//! request already queued behind it (up to `max_batch` texts and `max_batch_bytes`, waiting
//! `linger` for more if configured), embeds the whole batch in one [`TextModel::embed`]
//! call on the blocking pool and answers each caller with its own vectors. So batches form
//! only when requests queue up, and cost nothing when they do not.
//!
//! Load is bounded, never queued without limit: a full queue is answered
//! [`BatchError::Overloaded`] at once, and a request that waited longer than
//! `max_queue_wait` is answered [`BatchError::Shed`] instead of being embedded (its caller
//! has given up by then). A failed batch answers every caller with the error; if the
//! workers are gone, callers get [`BatchError::Stopped`], never a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Embedding, TEXT_DIM};
use serde::Deserialize;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use crate::model::TextModel;
use crate::service::EmbedError;

/// How query embeddings are batched (`EM_EMBEDDER__QUERY_BATCH__*`, standalone:
/// `EM_STANDALONE__QUERY_BATCH__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryBatchSettings {
    /// Most texts embedded in one model call. A request is never split: one carrying more
    /// texts than this runs as a batch of its own.
    pub max_batch: usize,
    /// Most bytes of text in one batch (the first request of a batch is always taken).
    pub max_batch_bytes: usize,
    /// How long a worker waits for more requests after the first one before it runs a
    /// batch that is not full (0s: it runs at once with whatever is already queued).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// A request that waited longer than this in the queue is answered `unavailable`
    /// without being embedded: its caller has given up (the retriever waits 2s). 0s: never.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// Requests that may wait for a worker; beyond it, requests are answered
    /// `unavailable` at once.
    pub queue_capacity: usize,
}

impl Default for QueryBatchSettings {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_batch_bytes: 64 * 1024,
            linger: Duration::ZERO,
            max_queue_wait: Duration::from_secs(2),
            queue_capacity: 1024,
        }
    }
}

/// Why a query could not be embedded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The queue is full.
    #[error("overloaded: {capacity} query embeddings are already waiting")]
    Overloaded { capacity: usize },
    /// The request waited in the queue longer than `max_queue_wait`.
    #[error("shed after waiting {waited:?} in the queue (limit {limit:?})")]
    Shed { waited: Duration, limit: Duration },
    /// The workers have stopped (shutdown).
    #[error("the query embedding workers have stopped")]
    Stopped,
    /// The model failed on the batch, or produced an invalid vector for this request.
    #[error(transparent)]
    Embed(Arc<EmbedError>),
}

/// Counters since the batcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Model calls (batches) made.
    pub batches: u64,
    /// Requests that went into a batch.
    pub requests: u64,
    /// Texts that went into a batch.
    pub texts: u64,
    /// Most requests in one batch.
    pub largest_batch: u64,
    /// Requests answered with an error by the model (or its task).
    pub failed: u64,
    /// Requests shed because they waited longer than `max_queue_wait`.
    pub shed: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Requests dropped unanswered because their caller had already gone.
    pub abandoned: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    texts: AtomicU64,
    largest_batch: AtomicU64,
    failed: AtomicU64,
    shed: AtomicU64,
    overloaded: AtomicU64,
    abandoned: AtomicU64,
    /// Milliseconds after `started` of the last "overloaded" warning (rate-limits it).
    last_overload_log_ms: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BatchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BatchStats {
            batches: get(&self.batches),
            requests: get(&self.requests),
            texts: get(&self.texts),
            largest_batch: get(&self.largest_batch),
            failed: get(&self.failed),
            shed: get(&self.shed),
            overloaded: get(&self.overloaded),
            abandoned: get(&self.abandoned),
        }
    }
}

type Reply = Result<Vec<Embedding>, BatchError>;

/// One caller's request, waiting for a worker.
struct Job {
    texts: Vec<String>,
    bytes: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The receiving end, shared by the workers: one of them at a time collects a batch.
struct Queue {
    rx: mpsc::Receiver<Job>,
    /// A request taken from the channel that did not fit into the last batch: it starts
    /// the next one.
    held: Option<Job>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_batch: usize,
    max_batch_bytes: usize,
    linger: Duration,
    /// `None`: never shed.
    max_queue_wait: Option<Duration>,
}

/// Batches concurrent query embeddings (see the module docs). Cheap to clone; the workers
/// run until every clone is dropped and the queue is empty.
#[derive(Clone)]
pub struct QueryBatcher {
    tx: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    started: Instant,
}

impl std::fmt::Debug for QueryBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryBatcher")
            .field("queued", &self.queued())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl QueryBatcher {
    /// Starts one worker per session of `model`. Must be called inside a tokio runtime.
    pub fn start(model: Arc<TextModel>, settings: &QueryBatchSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let queue = Arc::new(Mutex::new(Queue { rx, held: None }));
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            max_batch: settings.max_batch.max(1),
            max_batch_bytes: settings.max_batch_bytes,
            linger: settings.linger,
            max_queue_wait: (!settings.max_queue_wait.is_zero()).then_some(settings.max_queue_wait),
        };
        for _ in 0..model.sessions().max(1) {
            tokio::spawn(worker(
                Arc::clone(&model),
                Arc::clone(&queue),
                limits,
                Arc::clone(&counters),
            ));
        }
        Self {
            tx,
            counters,
            started: Instant::now(),
        }
    }

    /// Embeds `texts` (one unit vector per text, in order) as part of a batch. Answers at
    /// once with [`BatchError::Overloaded`] when the queue is full.
    pub async fn embed(&self, texts: Vec<String>) -> Reply {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            bytes: texts.iter().map(String::len).sum(),
            texts,
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.overloaded();
                return Err(BatchError::Overloaded {
                    capacity: self.tx.max_capacity(),
                });
            }
            Err(TrySendError::Closed(_)) => return Err(BatchError::Stopped),
        }
        // A worker that stops drops the request's sender: the caller learns it here.
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }

    /// Requests waiting for a worker right now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Counters since the batcher started.
    pub fn stats(&self) -> BatchStats {
        self.counters.snapshot()
    }

    fn overloaded(&self) {
        let total = self.counters.overloaded.fetch_add(1, Ordering::Relaxed) + 1;
        // At most one warning a second.
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.counters.last_overload_log_ms.load(Ordering::Relaxed);
        if (total == 1 || now_ms.saturating_sub(last) >= 1000)
            && self
                .counters
                .last_overload_log_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                capacity = self.tx.max_capacity(),
                overloaded_total = total,
                "query embedding queue full; answering unavailable"
            );
        }
    }
}

/// Collects batches and runs them until the channel is closed and drained.
async fn worker(
    model: Arc<TextModel>,
    queue: Arc<Mutex<Queue>>,
    limits: Limits,
    counters: Arc<Counters>,
) {
    while let Some(batch) = collect(&queue, limits, &counters).await {
        run_batch(&model, batch, &counters).await;
    }
}

/// Waits for the first live request, then adds what is already queued (or arrives within
/// `linger`) while it fits. `None` once the channel is closed and empty.
async fn collect(queue: &Mutex<Queue>, limits: Limits, counters: &Counters) -> Option<Vec<Job>> {
    let mut queue = queue.lock().await;
    let mut shed = 0usize;
    let first = loop {
        let job = match queue.held.take() {
            Some(job) => job,
            None => match queue.rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    // Report what was shed before waiting for the next request.
                    report_shed(&mut shed, limits);
                    queue.rx.recv().await?
                }
            },
        };
        match admit(job, limits, counters) {
            Admit::Live(job) => break job,
            Admit::Shed => shed += 1,
            Admit::Abandoned => {}
        }
    };
    let mut texts = first.texts.len();
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    let linger_until = (!limits.linger.is_zero()).then(|| Instant::now() + limits.linger);
    while texts < limits.max_batch {
        let job = match queue.rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => match linger_until {
                None => break,
                Some(until) => match tokio::time::timeout_at(until, queue.rx.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
            },
        };
        let job = match admit(job, limits, counters) {
            Admit::Live(job) => job,
            Admit::Shed => {
                shed += 1;
                continue;
            }
            Admit::Abandoned => continue,
        };
        if texts + job.texts.len() > limits.max_batch || bytes + job.bytes > limits.max_batch_bytes
        {
            queue.held = Some(job);
            break;
        }
        texts += job.texts.len();
        bytes += job.bytes;
        batch.push(job);
    }
    report_shed(&mut shed, limits);
    Some(batch)
}

fn report_shed(shed: &mut usize, limits: Limits) {
    if *shed > 0 {
        tracing::warn!(
            shed = *shed,
            max_queue_wait = ?limits.max_queue_wait,
            "shed query embeddings that waited too long in the queue"
        );
        *shed = 0;
    }
}

enum Admit {
    Live(Job),
    Shed,
    Abandoned,
}

/// Drops requests whose caller is gone and sheds those that waited too long.
fn admit(job: Job, limits: Limits, counters: &Counters) -> Admit {
    if job.reply.is_closed() {
        Counters::add(&counters.abandoned, 1);
        return Admit::Abandoned;
    }
    let waited = job.enqueued.elapsed();
    match limits.max_queue_wait {
        Some(limit) if waited > limit => {
            Counters::add(&counters.shed, 1);
            let _ = job.reply.send(Err(BatchError::Shed { waited, limit }));
            Admit::Shed
        }
        Some(_) | None => Admit::Live(job),
    }
}

/// Embeds every text of the batch in one model call and answers each caller.
async fn run_batch(model: &Arc<TextModel>, batch: Vec<Job>, counters: &Counters) {
    let mut counts = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut texts = Vec::new();
    for job in batch {
        counts.push(job.texts.len());
        replies.push(job.reply);
        texts.extend(job.texts);
    }
    let total = texts.len();
    Counters::add(&counters.batches, 1);
    Counters::add(&counters.requests, replies.len());
    Counters::add(&counters.texts, total);
    counters
        .largest_batch
        .fetch_max(replies.len() as u64, Ordering::Relaxed);
    tracing::debug!(requests = replies.len(), texts = total, "query batch");

    let model = Arc::clone(model);
    let result = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        model.embed(&refs)
    })
    .await;
    let error = match result {
        Ok(Ok(vectors)) if vectors.len() == total => {
            let mut vectors = vectors.into_iter();
            for (reply, n) in replies.into_iter().zip(counts) {
                // Take this caller's vectors first, so an invalid one cannot shift the rest.
                let own: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
                let answer = own
                    .into_iter()
                    .map(|v| {
                        Embedding::with_dim(v, TEXT_DIM).map_err(|e| {
                            BatchError::Embed(Arc::new(EmbedError::Invalid(e.to_string())))
                        })
                    })
                    .collect::<Reply>();
                if answer.is_err() {
                    Counters::add(&counters.failed, 1);
                }
                let _ = reply.send(answer);
            }
            return;
        }
        Ok(Ok(vectors)) => EmbedError::Invalid(format!(
            "the model returned {} vectors for {total} texts",
            vectors.len()
        )),
        Ok(Err(e)) => EmbedError::Model(e),
        Err(e) => EmbedError::Task(e.to_string()),
    };
    tracing::error!(error = %error, requests = replies.len(), "query batch failed");
    Counters::add(&counters.failed, replies.len());
    let error = BatchError::Embed(Arc::new(error));
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_defaults_take_durations_and_reject_unknown_keys() {
        let s: QueryBatchSettings = serde_json::from_str("{}").expect("defaults");
        assert_eq!(s, QueryBatchSettings::default());
        let s: QueryBatchSettings =
            serde_json::from_str(r#"{"linger": "2ms", "max_queue_wait": "0s", "max_batch": 8}"#)
                .expect("settings");
        assert_eq!(
            (s.linger, s.max_queue_wait, s.max_batch),
            (Duration::from_millis(2), Duration::ZERO, 8)
        );
        assert!(serde_json::from_str::<QueryBatchSettings>(r#"{"max_batchh": 8}"#).is_err());
    }
}
