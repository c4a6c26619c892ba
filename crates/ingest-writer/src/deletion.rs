//! `episode.deleted`: removes a deleted episode's vectors from the vector stores, and
//! whatever of it is left in the system of record (a row or feedback that raced the
//! deletion), then acks. Idempotent: deleting a missing vector or row succeeds.

use async_trait::async_trait;
use bus::{BatchHandler, Incoming, Outcome};
use common::events::{Envelope, EpisodeDeleted};
use common::{EpisodeId, TenantId, VectorId};
use db::DbError;

use crate::{IngestDeps, to_outcome};

/// The `episode.deleted` handler (durable consumer `ingest-writer-deletions`).
pub struct DeletionHandler {
    deps: IngestDeps,
}

impl DeletionHandler {
    pub fn new(deps: IngestDeps) -> Self {
        Self { deps }
    }

    async fn delete_one(&self, env: &Envelope<EpisodeDeleted>) -> Outcome {
        if let Err(reason) = env.check() {
            return Outcome::Reject(reason);
        }
        let data = &env.data;
        // First the system of record, so that a readable episode stays a searchable one.
        match self
            .deps
            .db
            .purge_deleted_episode(env.tenant_id, data.episode_id)
            .await
        {
            Ok(true) => {}
            // Only the gateway announces deletions, after committing the tombstone.
            Ok(false) => {
                return Outcome::Reject(format!(
                    "episode {} has no tombstone; refusing to delete its vectors",
                    data.episode_id
                ));
            }
            Err(e) => return db_outcome("purge deleted episode", &e),
        }
        delete_vectors(
            &self.deps,
            env.tenant_id,
            data.text_vector_id,
            data.image_vector_id,
        )
        .await
    }
}

#[async_trait]
impl BatchHandler for DeletionHandler {
    type Event = Envelope<EpisodeDeleted>;

    async fn handle(&self, batch: Vec<Incoming<Self::Event>>) -> Vec<Outcome> {
        let work = batch
            .iter()
            .map(|incoming| self.delete_one(&incoming.event));
        futures::future::join_all(work).await
    }
}

/// Removes the vectors from the text store and, when one is configured, the image store.
async fn delete_vectors(
    deps: &IngestDeps,
    tenant: TenantId,
    text: VectorId,
    image: Option<VectorId>,
) -> Outcome {
    if let Err(e) = deps.text_store.delete(tenant, &[text]).await {
        return to_outcome(&e);
    }
    if let (Some(store), Some(id)) = (&deps.image_store, image)
        && let Err(e) = store.delete(tenant, &[id]).await
    {
        return to_outcome(&e);
    }
    Outcome::Ack
}

/// Undoes what the embedded-episode handler may have written for a deleted episode (the
/// row, its vectors in both spaces) instead of storing it.
pub(crate) async fn discard(
    deps: &IngestDeps,
    tenant: TenantId,
    episode: EpisodeId,
    vector: VectorId,
) -> Outcome {
    if let Err(e) = deps.db.purge_deleted_episode(tenant, episode).await {
        return db_outcome("purge deleted episode", &e);
    }
    delete_vectors(deps, tenant, vector, Some(vector)).await
}

pub(crate) fn db_outcome(what: &str, e: &DbError) -> Outcome {
    if e.is_transient() {
        Outcome::Retry(format!("{what}: {e}"))
    } else {
        Outcome::Reject(format!("{what}: {e}"))
    }
}
