//! Rebuilds the vector indexes from the system of record, which keeps every episode's
//! vectors. Safe to run at any time (upserts are idempotent) and resumable by episode id.

use common::EpisodeId;
use common::vector::{VectorRecord, VectorStore, VectorStoreError, episode_metadata};
use db::{Db, DbError};

/// What a re-index did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReindexReport {
    pub episodes: u64,
    pub text_vectors: u64,
    pub image_vectors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("reading the system of record: {0}")]
    Db(#[from] DbError),
    #[error("writing the vector store: {0}")]
    Store(#[from] VectorStoreError),
}

/// Re-upserts every stored episode's vectors, `page` episodes at a time.
pub async fn reindex(
    db: &Db,
    text: &dyn VectorStore,
    image: Option<&dyn VectorStore>,
    page: usize,
) -> Result<ReindexReport, ReindexError> {
    let mut report = ReindexReport::default();
    let mut after: Option<EpisodeId> = None;
    loop {
        let episodes = db.scan_episodes(after, page.max(1)).await?;
        let Some(last) = episodes.last() else { break };
        after = Some(last.id);
        let mut texts = Vec::with_capacity(episodes.len());
        let mut images = Vec::new();
        for e in &episodes {
            let metadata = episode_metadata(&e.episode, e.captured_at);
            if let Some(vector) = &e.image_embedding {
                images.push(VectorRecord {
                    id: e.vector_id,
                    tenant: e.tenant_id,
                    episode: e.id,
                    embedding: vector.clone(),
                    metadata: metadata.clone(),
                });
            }
            texts.push(VectorRecord {
                id: e.vector_id,
                tenant: e.tenant_id,
                episode: e.id,
                embedding: e.text_embedding.clone(),
                metadata,
            });
        }
        text.upsert(&texts).await?;
        report.text_vectors += texts.len() as u64;
        if let Some(image) = image
            && !images.is_empty()
        {
            image.upsert(&images).await?;
            report.image_vectors += images.len() as u64;
        }
        report.episodes += episodes.len() as u64;
        tracing::info!(episodes = report.episodes, "re-index progress");
    }
    Ok(report)
}
