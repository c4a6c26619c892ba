//! Shared domain types of EpisodicMemory.
//!
//! This crate is the vocabulary every service speaks: identifiers ([`ids`]), the validated
//! failure episode ([`episode`]), embeddings ([`embedding`]), the vector-store contract
//! ([`vector`]) and the versioned NATS event contract ([`events`]).
//!
//! Invariant: `common` depends on no IO framework (no tokio, no actix, no NATS, no diesel).
//! Everything here is plain data and pure functions, so every service and test can use it.

pub mod embedding;
pub mod episode;
pub mod events;
pub mod ids;
pub mod query;
pub mod settings;
#[cfg(feature = "runtime")]
pub mod shutdown;
pub mod telemetry;
pub mod tenancy;
pub mod time_util;
pub mod vector;

pub use embedding::{Embedding, EmbeddingError, IMAGE_DIM, TEXT_DIM};

pub use episode::{Episode, EpisodeFields, ErrorClass, FieldError, Screenshot, ScreenshotFormat};
pub use ids::{EpisodeId, TenantId, VectorId};
