//! One messaging abstraction with two implementations.
//!
//! * [`NatsBus`]: NATS JetStream (production; every service is its own process).
//! * [`EmbeddedBus`]: a durable bus in one SQLite file (standalone mode; no servers).
//!
//! Both implement [`Bus`]: durable publish with de-duplication ([`Publisher`]), durable pull
//! consumers with explicit acks ([`Subscription`], [`Delivery`]) and request-reply
//! ([`Bus::request`], [`Bus::serve`]). On top of that, [`run_consumer`] is the one generic
//! consume loop every pipeline stage uses: bounded batches, poison → dead-letter + term,
//! ack only after the handler made its work durable, nak with backoff on transient failure,
//! progress acks on long work, graceful shutdown.
//!
//! Subjects, streams and consumers are defined in [`common::events`]; this crate never
//! invents names of its own.

mod api;
mod consume;
mod embedded;
mod error;
mod nats;
mod subject;

pub use api::{
    AckHandle, Bus, Delivery, NoticeHandler, OutboundMessage, PublishAck, Publisher,
    RequestHandler, Subscription, ensure_topology,
};
pub use consume::{
    BatchHandler, CONSUMER_BATCH_SIZE, CONSUMER_HANDLE_SECONDS, CONSUMER_MESSAGES_TOTAL, Incoming,
    Outcome, run_consumer,
};
pub use embedded::{DEFAULT_MAX_PAYLOAD, EmbeddedBus, EmbeddedBusConfig};
pub use error::BusError;
pub use nats::{NatsBus, NatsConfig, NatsCredentials};
pub use subject::{subject_matches, subjects_overlap};
