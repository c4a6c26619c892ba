use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::events::{ConsumerSpec, Envelope, EpisodeEvent, StreamSpec, Topology, headers};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::BusError;
use crate::subject::is_valid_publish_subject;

/// A message to publish durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub subject: String,
    /// De-duplication id (`Nats-Msg-Id`): a repeat within the stream's duplicate window is
    /// not stored again. Empty means "no de-duplication".
    pub msg_id: String,
    /// Extra headers (event type, traceparent, ...). `Nats-Msg-Id` is set from `msg_id`.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl OutboundMessage {
    pub fn new(subject: impl Into<String>, msg_id: impl Into<String>, payload: Bytes) -> Self {
        Self {
            subject: subject.into(),
            msg_id: msg_id.into(),
            headers: Vec::new(),
            payload,
        }
    }

    /// An episode event on its stage's subject for the envelope's tenant, de-duplicated by
    /// the envelope id, with the event type and version headers.
    pub fn episode_event<T: EpisodeEvent>(
        topology: &Topology,
        envelope: &Envelope<T>,
    ) -> Result<Self, serde_json::Error> {
        let payload = serde_json::to_vec(envelope)?;
        Ok(Self::new(
            topology.episode_subject(T::STAGE, envelope.tenant_id),
            envelope.id.clone(),
            payload.into(),
        )
        .with_header(headers::EVENT_TYPE, envelope.event_type.clone())
        .with_header(headers::EVENT_VERSION, envelope.version.to_string()))
    }

    /// A customer-level event on `<prefix>.v1.tenants.<kind>.<tenant>`.
    pub fn tenant_event<T: serde::Serialize>(
        topology: &Topology,
        kind: common::events::TenantEventKind,
        envelope: &Envelope<T>,
    ) -> Result<Self, serde_json::Error> {
        let payload = serde_json::to_vec(envelope)?;
        Ok(Self::new(
            topology.tenant_subject(kind, envelope.tenant_id),
            envelope.id.clone(),
            payload.into(),
        )
        .with_header(headers::EVENT_TYPE, envelope.event_type.clone())
        .with_header(headers::EVENT_VERSION, envelope.version.to_string()))
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Approximate size on the wire (payload + headers), compared with `max_payload`.
    pub fn wire_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + if self.msg_id.is_empty() {
                0
            } else {
                headers::MSG_ID.len() + self.msg_id.len() + 4
            };
        // "NATS/1.0\r\n" ... "\r\n"
        let preamble = if headers > 0 { 12 } else { 0 };
        self.payload.len() + headers + preamble
    }

    /// Checks subject, headers and size; both implementations reject the same messages.
    pub(crate) fn validate(&self, max_payload: usize) -> Result<(), BusError> {
        if !is_valid_publish_subject(&self.subject) {
            return Err(BusError::Protocol(format!(
                "invalid publish subject {:?}",
                self.subject
            )));
        }
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        validate_header(headers::MSG_ID, &self.msg_id)?;
        let size = self.wire_size();
        if size > max_payload {
            return Err(BusError::PayloadTooLarge {
                size,
                max: max_payload,
            });
        }
        Ok(())
    }
}

fn validate_header(name: &str, value: &str) -> Result<(), BusError> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b' ');
    if !name_ok {
        return Err(BusError::Protocol(format!("invalid header name {name:?}")));
    }
    if value.contains(['\r', '\n']) {
        return Err(BusError::Protocol(format!(
            "header {name} has a line break in its value"
        )));
    }
    Ok(())
}

/// The answer to a durable publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored (or had already stored) the message.
    pub stream: String,
    /// Its sequence in the stream (of the original message when `duplicate`).
    pub sequence: u64,
    /// The msg id was seen within the duplicate window: nothing new was stored.
    pub duplicate: bool,
}

/// Durable publishing.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Returns only after the message is durable (JetStream PubAck / local commit). A repeated
    /// msg_id within the stream's duplicate window is not stored twice and returns
    /// `duplicate = true`. Bounded by the configured publish timeout: with the bus down this
    /// fails with `Unavailable` or `Timeout` quickly, never hangs.
    async fn publish(&self, msg: OutboundMessage) -> Result<PublishAck, BusError>;

    /// Largest message (payload plus headers) `publish` accepts.
    fn max_payload(&self) -> usize;
}

/// Settles one delivery; implemented by each bus.
#[async_trait]
pub trait AckHandle: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;
    async fn term(&self) -> Result<(), BusError>;
    async fn in_progress(&self) -> Result<(), BusError>;
}

/// One delivery of a stored message to a durable consumer. Settle it exactly once with
/// [`ack`](Delivery::ack), [`nak`](Delivery::nak) or [`term`](Delivery::term); unsettled,
/// it is redelivered after the consumer's `ack_wait`.
pub struct Delivery {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub delivered: u32,
    /// The message's sequence in its stream.
    pub stream_sequence: u64,
    handle: Box<dyn AckHandle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("delivered", &self.delivered)
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// For bus implementations (and test fakes).
    pub fn new(
        subject: String,
        headers: Vec<(String, String)>,
        payload: Bytes,
        delivered: u32,
        stream_sequence: u64,
        handle: Box<dyn AckHandle>,
    ) -> Self {
        Self {
            subject,
            headers,
            payload,
            delivered,
            stream_sequence,
            handle,
        }
    }

    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The publisher's de-duplication id, if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.header(headers::MSG_ID).filter(|v| !v.is_empty())
    }

    /// Done: never deliver again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.handle.ack().await
    }

    /// Failed transiently: redeliver after `delay`.
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.handle.nak(delay).await
    }

    /// Poison: never deliver again (dead-letter it first).
    pub async fn term(self) -> Result<(), BusError> {
        self.handle.term().await
    }

    /// Still working on it: restart the `ack_wait` clock.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.handle.in_progress().await
    }
}

/// A bound durable pull consumer.
#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` deliveries. Waits at most `wait` for the first one and returns as soon as
    /// some are available; an empty vector means nothing arrived in time.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
}

/// Answers requests on a subject (see [`Bus::serve`]).
#[async_trait]
pub trait RequestHandler: Send + Sync {
    async fn handle(&self, payload: Bytes) -> Bytes;
}

/// Receives notices (see [`Bus::listen`]).
#[async_trait]
pub trait NoticeHandler: Send + Sync {
    async fn notice(&self, subject: &str, payload: Bytes);
}

/// The whole messaging abstraction.
#[async_trait]
pub trait Bus: Publisher {
    /// Creates the stream or updates its settings; idempotent.
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError>;

    /// Creates or updates a durable pull consumer (explicit ack, deliver all); idempotent.
    /// The stream must exist.
    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError>;

    /// Binds to an existing durable consumer. Several subscriptions to the same consumer
    /// share its messages (competing consumers).
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BusError>;

    /// Sends a request and waits for the first reply.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError>;

    /// Answers requests on `subject` (as a member of `queue_group`), each from its own task,
    /// until `shutdown` is cancelled; the returned task ends after in-flight requests have
    /// been answered.
    async fn serve(
        &self,
        subject: &str,
        queue_group: &str,
        handler: Arc<dyn RequestHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError>;

    /// Sends a notice to every current listener of `subject` (fan-out, not persisted: a
    /// listener that is not connected misses it). For cache invalidation across replicas.
    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Calls `handler` with every notice on `subject` (a pattern; `>` and `*` allowed)
    /// until `shutdown` is cancelled. Every listener gets every notice.
    async fn listen(
        &self,
        subject: &str,
        handler: Arc<dyn NoticeHandler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError>;

    /// Ok when the bus is usable right now (readiness).
    async fn health(&self) -> Result<(), BusError>;
}

/// Creates or updates the episodes and dead-letter streams and the embedder and
/// ingest-writer consumers (embedded episodes and deletions).
pub async fn ensure_topology(bus: &dyn Bus, topology: &Topology) -> Result<(), BusError> {
    bus.ensure_stream(&topology.episodes_stream()).await?;
    bus.ensure_stream(&topology.dead_letter_stream()).await?;
    bus.ensure_stream(&topology.tenants_stream()).await?;
    bus.ensure_consumer(&topology.embedder_consumer()).await?;
    bus.ensure_consumer(&topology.ingest_writer_consumer())
        .await?;
    bus.ensure_consumer(&topology.ingest_writer_deletions_consumer())
        .await?;
    Ok(())
}
