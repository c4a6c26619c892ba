//! KyroDB client: the production [`common::vector::VectorStore`].
//!
//! One [`KyroDbStore`] talks to one KyroDB server (one index, one [`common::vector::VectorSpace`])
//! over gRPC (tonic, rustls). This is the only crate that sees the generated prost types;
//! everything it exposes to services is in `common::vector` terms.
//!
//! Invariants this crate keeps:
//! - every data RPC carries a non-empty namespace (the tenant id) — KyroDB reads an empty
//!   namespace as "all namespaces";
//! - every read also carries a `tenant_id` filter, and every returned hit or record is checked
//!   against the tenant again before it is handed out;
//! - every search sends `ef_search > 0`, so KyroDB never answers from its semantic query
//!   cache with another query's scores;
//! - every call has a deadline, goes through the circuit breaker, and only transient failures
//!   are retried.

mod breaker;
mod config;
mod convert;
mod error;
mod store;

/// The generated KyroDB wire types, client and server. Public only so that the test fake in
/// `test-support` can implement the server; services use [`KyroDbStore`] instead.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    missing_docs,
    rust_2018_idioms
)]
pub mod proto {
    tonic::include_proto!("kyrodb.v1");
}

pub use breaker::BreakerState;
pub use config::{
    BreakerConfig, KyroDbConfig, MAX_BATCH, MAX_EF_SEARCH, MAX_K, RetryConfig, TlsConfig,
};
pub use error::{ConnectError, map_status};
pub use store::{KyroDbStore, ServerInfo};
