//! The retriever: answers search and gate (`reflect`) requests over request-reply.
//!
//! For each request it embeds the query through the embedder's request-reply (recent query
//! embeddings are cached), searches the tenant's text vectors (KyroDB in production, the
//! embedded index standalone), loads the candidate episodes from the system of record
//! (cached; existence re-checked so a deleted episode never comes back), matches
//! preconditions, ranks (similarity, lexical, preconditions, recency, usage) and, for a
//! gate, decides block / rewrite / hint / proceed. See docs/RETRIEVAL.md.

pub mod engine;
pub mod gate;
pub mod lesson;
pub mod lexical;
pub mod preconditions;
pub mod rank;
pub mod service;
pub mod settings;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use engine::{Engine, RetrieveError, RetrieverDeps, gate_query_text};
pub use settings::{CacheSettings, RetrievalSettings, Settings};

/// Serves search and reflect until `shutdown`; returns after in-flight requests are
/// answered.
pub async fn run(
    deps: RetrieverDeps,
    settings: &RetrievalSettings,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    let topology = deps.topology.clone();
    let bus = deps.bus.clone();
    let engine = Arc::new(Engine::new(
        deps,
        settings.ranking.clone(),
        settings.gate.clone(),
        &settings.cache,
    ));
    let group = topology.retriever_queue_group();
    let search = bus
        .serve(
            &topology.search_subject(),
            &group,
            Arc::new(service::SearchResponder(engine.clone())),
            shutdown.clone(),
        )
        .await?;
    let reflect = bus
        .serve(
            &topology.reflect_subject(),
            &group,
            Arc::new(service::ReflectResponder(engine)),
            shutdown.clone(),
        )
        .await?;
    tracing::info!(subject = %topology.search_subject(), "retriever serving");
    let _ = search.await;
    let _ = reflect.await;
    Ok(())
}
