//! The one generic consume loop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::events::{ConsumerSpec, Topology, headers};
use futures::future::join_all;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{Bus, Delivery, OutboundMessage, Subscription};
use crate::error::BusError;

/// `episodic_consumer_messages_total{consumer, outcome}`; outcome is one of `processed`
/// (fetched), `acked`, `naked` (retry later), `dead_lettered`, `settle_failed` (the
/// ack/nak/term itself failed; the message will be redelivered).
pub const CONSUMER_MESSAGES_TOTAL: &str = "episodic_consumer_messages_total";
/// `episodic_consumer_batch_messages{consumer}`: histogram of messages per fetched batch.
pub const CONSUMER_BATCH_SIZE: &str = "episodic_consumer_batch_messages";
/// `episodic_consumer_handle_seconds{consumer}`: histogram of batch handler run time.
pub const CONSUMER_HANDLE_SECONDS: &str = "episodic_consumer_handle_seconds";

/// How long one fetch waits for messages before the loop checks again.
const FETCH_WAIT: Duration = Duration::from_secs(5);
const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After this many failed fetches in a row the subscription is bound afresh.
const RESUBSCRIBE_AFTER: u32 = 5;
/// Longest dead-letter reason kept in the header.
const MAX_REASON_LEN: usize = 512;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, and its effect is durable: ack.
    Ack,
    /// Transient failure: nak with the consumer's backoff; dead-lettered once
    /// `delivered >= max_deliver`.
    Retry(String),
    /// Poison (will never succeed): dead-letter and term.
    Reject(String),
}

impl Outcome {
    /// The outcome of a handler whose last step publishes its result event: a message too
    /// large for the bus will never fit (dead-letter), anything else may pass on retry.
    pub fn after_publish(result: Result<crate::PublishAck, BusError>, what: &str) -> Outcome {
        match result {
            Ok(_) => Outcome::Ack,
            Err(e @ BusError::PayloadTooLarge { .. }) => Outcome::Reject(format!("{what}: {e}")),
            Err(e) => Outcome::Retry(format!("{what}: {e}")),
        }
    }
}

/// One decoded message handed to a [`BatchHandler`].
#[derive(Debug, Clone)]
pub struct Incoming<E> {
    pub event: E,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    /// 1 on the first delivery.
    pub delivered: u32,
    pub stream_sequence: u64,
}

impl<E> Incoming<E> {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Handles decoded batches. Must be idempotent: a message can be delivered more than once.
#[async_trait]
pub trait BatchHandler: Send + Sync {
    type Event: DeserializeOwned + Send + 'static;

    /// Returns one [`Outcome`] per input, in the same order. Returns `Ack` only after the
    /// work is durable.
    async fn handle(&self, batch: Vec<Incoming<Self::Event>>) -> Vec<Outcome>;
}

/// Consumes `spec` until `shutdown` is cancelled.
///
/// Fetches batches of at most `spec.max_batch`, decodes each payload as JSON `H::Event`
/// (undecodable → dead-letter + term), calls the handler (in its own task, so a panic only
/// naks the batch) while sending progress acks every `ack_wait / 3`, then settles every
/// message by its [`Outcome`]. A message delivered more than `spec.max_deliver` times
/// (its handler never finished, e.g. the process crashed) is dead-lettered without calling
/// the handler. Dead letters go to `topology.dead_letter_subject(consumer, subject)` with
/// the original subject, reason and delivery count in headers; the message is termed only
/// after the dead letter is durable (otherwise it is naked, never lost).
///
/// Fetch errors (bus restarting) are logged and retried with backoff; the loop only returns
/// on shutdown, after settling the batch in hand.
pub async fn run_consumer<H>(
    bus: Arc<dyn Bus>,
    topology: &Topology,
    spec: &ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError>
where
    H: BatchHandler + 'static,
{
    let consumer = spec.durable_name.clone();
    let max_batch = spec.max_batch.max(1);
    let progress_every = (spec.ack_wait / 3).max(Duration::from_millis(50));
    let mut backoff = ErrorBackoff::default();
    info!(consumer = %consumer, stream = %spec.stream, "consumer started");

    let Some(mut subscription) = bind(&*bus, spec, &shutdown, &mut backoff).await else {
        info!(consumer = %consumer, "consumer stopped before binding");
        return Ok(());
    };
    let mut failures_in_a_row = 0u32;

    loop {
        let fetched = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = subscription.fetch(max_batch, FETCH_WAIT) => r,
        };
        let batch = match fetched {
            Ok(batch) => {
                failures_in_a_row = 0;
                backoff.reset();
                batch
            }
            Err(err) => {
                failures_in_a_row += 1;
                warn!(consumer = %consumer, error = %err, failures_in_a_row, "fetch failed; backing off");
                if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                    break;
                }
                if failures_in_a_row >= RESUBSCRIBE_AFTER {
                    failures_in_a_row = 0;
                    match bind(&*bus, spec, &shutdown, &mut backoff).await {
                        Some(s) => subscription = s,
                        None => break,
                    }
                }
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        process_batch(
            &*bus,
            topology,
            spec,
            &handler,
            batch,
            progress_every,
            &consumer,
        )
        .await;
    }
    info!(consumer = %consumer, "consumer stopped");
    Ok(())
}

/// Subscribes, retrying with backoff (and creating the consumer if it is missing).
/// `None` on shutdown.
async fn bind(
    bus: &dyn Bus,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
    backoff: &mut ErrorBackoff,
) -> Option<Box<dyn Subscription>> {
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match bus.subscribe(spec).await {
            Ok(s) => return Some(s),
            Err(BusError::NotFound(what)) => {
                warn!(consumer = %spec.durable_name, missing = %what, "consumer missing; creating it");
                if let Err(err) = bus.ensure_consumer(spec).await {
                    warn!(consumer = %spec.durable_name, error = %err, "cannot create consumer");
                }
            }
            Err(err) => {
                warn!(consumer = %spec.durable_name, error = %err, "cannot bind consumer; backing off");
            }
        }
        if !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
            return None;
        }
    }
}

/// Sleeps unless shut down first; false on shutdown.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

fn count(consumer: &str, outcome: &'static str, n: usize) {
    metrics::counter!(CONSUMER_MESSAGES_TOTAL, "consumer" => consumer.to_owned(), "outcome" => outcome)
        .increment(n as u64);
}

async fn process_batch<H>(
    bus: &dyn Bus,
    topology: &Topology,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    batch: Vec<Delivery>,
    progress_every: Duration,
    consumer: &str,
) where
    H: BatchHandler + 'static,
{
    metrics::histogram!(CONSUMER_BATCH_SIZE, "consumer" => consumer.to_owned())
        .record(batch.len() as f64);
    count(consumer, "processed", batch.len());

    let mut deliveries = Vec::with_capacity(batch.len());
    let mut incoming = Vec::with_capacity(batch.len());
    let mut rejected = Vec::new();
    for delivery in batch {
        if delivery.delivered > spec.max_deliver {
            let reason = format!(
                "delivered {} times without being settled (max_deliver {})",
                delivery.delivered, spec.max_deliver
            );
            rejected.push((delivery, reason));
            continue;
        }
        match serde_json::from_slice::<H::Event>(&delivery.payload) {
            Ok(event) => {
                incoming.push(Incoming {
                    event,
                    subject: delivery.subject.clone(),
                    headers: delivery.headers.clone(),
                    delivered: delivery.delivered,
                    stream_sequence: delivery.stream_sequence,
                });
                deliveries.push(delivery);
            }
            Err(err) => {
                // The serde message may quote payload text: it goes to the DLQ header only.
                warn!(consumer, subject = %delivery.subject, seq = delivery.stream_sequence,
                      category = ?err.classify(), line = err.line(), column = err.column(),
                      "undecodable message; dead-lettering");
                rejected.push((delivery, format!("undecodable payload: {err}")));
            }
        }
    }
    join_all(
        rejected
            .into_iter()
            .map(|(d, reason)| dead_letter(bus, topology, spec, d, reason, consumer)),
    )
    .await;
    if deliveries.is_empty() {
        return;
    }

    let n = deliveries.len();
    let started = std::time::Instant::now();
    let task_handler = Arc::clone(handler);
    let mut task = tokio::spawn(async move { task_handler.handle(incoming).await });
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    let joined = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = progress.tick() => {
                let results = join_all(deliveries.iter().map(Delivery::in_progress)).await;
                if let Some(Err(err)) = results.into_iter().find(Result::is_err) {
                    debug!(consumer, error = %err, "progress ack failed");
                }
            }
        }
    };
    metrics::histogram!(CONSUMER_HANDLE_SECONDS, "consumer" => consumer.to_owned())
        .record(started.elapsed().as_secs_f64());
    let mut outcomes = match joined {
        Ok(outcomes) => outcomes,
        Err(err) => {
            error!(consumer, error = %err, "batch handler panicked; retrying the batch");
            vec![Outcome::Retry("handler panicked".to_owned()); n]
        }
    };
    if outcomes.len() != n {
        error!(
            consumer,
            expected = n,
            got = outcomes.len(),
            "handler returned the wrong number of outcomes; retrying the missing ones"
        );
        outcomes.resize(n, Outcome::Retry("handler returned no outcome".to_owned()));
    }

    join_all(
        deliveries
            .into_iter()
            .zip(outcomes)
            .map(|(d, outcome)| settle(bus, topology, spec, d, outcome, consumer)),
    )
    .await;
}

async fn settle(
    bus: &dyn Bus,
    topology: &Topology,
    spec: &ConsumerSpec,
    delivery: Delivery,
    outcome: Outcome,
    consumer: &str,
) {
    match outcome {
        Outcome::Ack => match delivery.ack().await {
            Ok(()) => count(consumer, "acked", 1),
            Err(err) => {
                count(consumer, "settle_failed", 1);
                warn!(consumer, error = %err, "ack failed; the message will be redelivered");
            }
        },
        Outcome::Retry(reason) if delivery.delivered >= spec.max_deliver => {
            let reason = format!("gave up after {} deliveries: {reason}", delivery.delivered);
            dead_letter(bus, topology, spec, delivery, reason, consumer).await;
        }
        Outcome::Retry(reason) => {
            let delay = spec.backoff_for(delivery.delivered);
            debug!(consumer, subject = %delivery.subject, delivered = delivery.delivered,
                   ?delay, reason = %reason, "retrying later");
            nak(delivery, delay, consumer).await;
        }
        Outcome::Reject(reason) => {
            dead_letter(bus, topology, spec, delivery, reason, consumer).await;
        }
    }
}

async fn nak(delivery: Delivery, delay: Duration, consumer: &str) {
    match delivery.nak(delay).await {
        Ok(()) => count(consumer, "naked", 1),
        Err(err) => {
            count(consumer, "settle_failed", 1);
            warn!(consumer, error = %err, "nak failed; the message will be redelivered after ack_wait");
        }
    }
}

/// Publishes the message to the dead-letter subject, then terms it; if the dead letter
/// cannot be published, naks it instead so it is not lost.
async fn dead_letter(
    bus: &dyn Bus,
    topology: &Topology,
    spec: &ConsumerSpec,
    delivery: Delivery,
    reason: String,
    consumer: &str,
) {
    let reason = sanitize_reason(&reason);
    let original_id = delivery
        .msg_id()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}.{}", spec.stream, delivery.stream_sequence));
    let mut msg = OutboundMessage::new(
        topology.dead_letter_subject(&spec.durable_name, &delivery.subject),
        format!("dlq.{}.{original_id}", spec.durable_name),
        delivery.payload.clone(),
    );
    msg.headers = delivery
        .headers
        .iter()
        .filter(|(k, _)| {
            ![
                headers::MSG_ID,
                headers::DLQ_ORIGINAL_SUBJECT,
                headers::DLQ_REASON,
                headers::DLQ_DELIVERIES,
            ]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
        })
        .cloned()
        .collect();
    msg.headers.extend([
        (
            headers::DLQ_ORIGINAL_SUBJECT.to_owned(),
            delivery.subject.clone(),
        ),
        (headers::DLQ_REASON.to_owned(), reason.clone()),
        (
            headers::DLQ_DELIVERIES.to_owned(),
            delivery.delivered.to_string(),
        ),
    ]);
    match bus.publish(msg).await {
        Ok(_) => {
            warn!(consumer, subject = %delivery.subject, seq = delivery.stream_sequence,
                  delivered = delivery.delivered, "message dead-lettered");
            match delivery.term().await {
                Ok(()) => count(consumer, "dead_lettered", 1),
                Err(err) => {
                    // Redelivered later; the dead letter is de-duplicated by its msg id.
                    count(consumer, "settle_failed", 1);
                    warn!(consumer, error = %err, "term after dead-lettering failed");
                }
            }
        }
        Err(err) => {
            error!(consumer, error = %err, "cannot publish dead letter; naking instead");
            let delay = spec.backoff_for(delivery.delivered);
            nak(delivery, delay, consumer).await;
        }
    }
}

/// One header-safe line, bounded in length.
fn sanitize_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Exponential backoff for errors of the bus itself.
#[derive(Debug)]
struct ErrorBackoff {
    next: Duration,
}

impl Default for ErrorBackoff {
    fn default() -> Self {
        Self {
            next: ERROR_BACKOFF_MIN,
        }
    }
}

impl ErrorBackoff {
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(ERROR_BACKOFF_MAX);
        d
    }

    fn reset(&mut self) {
        self.next = ERROR_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_single_line_and_bounded() {
        assert_eq!(sanitize_reason("a\r\nb"), "a  b");
        let long = "é".repeat(1000);
        let s = sanitize_reason(&long);
        assert!(s.len() <= MAX_REASON_LEN);
        assert!(s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn error_backoff_grows_and_resets() {
        let mut b = ErrorBackoff::default();
        assert_eq!(b.next_delay(), ERROR_BACKOFF_MIN);
        assert_eq!(b.next_delay(), ERROR_BACKOFF_MIN * 2);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), ERROR_BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), ERROR_BACKOFF_MIN);
    }
}
