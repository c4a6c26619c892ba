//! The system of record (customer database) of EpisodicMemory.
//!
//! One schema, one set of embedded migrations and one copy of every query serve two backends:
//! PostgreSQL in production (diesel-async over tokio-postgres, so no libpq) and SQLite for the
//! embedded default (bundled, one writer connection, WAL). [`Db`] is the handle; every
//! repository function is a method on it, taking and returning domain types from `common`
//! (diesel row structs stay private).
//!
//! Storage conventions: ids are TEXT (hyphenated UUIDs), timestamps BIGINT microseconds since
//! the Unix epoch (so values built with `common::time_util::now_micros` round-trip exactly),
//! JSON and binary data TEXT (JSON, standard base64).

mod config;
mod error;
mod migrate;
mod pool;
mod repo;
mod schema;

pub use config::DbConfig;
pub use error::{BoxError, DbError};
pub use migrate::MIGRATIONS;
pub use pool::{Backend, Db};
pub use repo::InsertOutcome;
pub use repo::api_keys::{ApiKeyRecord, NewApiKey};
pub use repo::audit::AuditEntry;
pub use repo::captures::{CaptureRecord, NewCapture, Reservation};
pub use repo::deletions::{Deletion, Tombstone};
pub use repo::episodes::{
    EpisodeCursor, EpisodeFilter, EpisodePage, ListedEpisode, ScreenshotInfo, StoredEpisode,
};
pub use repo::feedback::{FeedbackCounts, NewFeedback};
pub use repo::tenants::{NewTenant, Tenant, TenantPatch};
pub use repo::usage::{Admission, Usage, UsageKind};
