//! What a tenant does with its episodes after capturing them: delete them, and say whether
//! one helped.
//!
//! Deletion (docs/ARCHITECTURE.md, "Deletion"):
//! 1. in one transaction, the episode row and its feedback are deleted and a tombstone is
//!    written (an episode still in the pipeline gets its tombstone too; the ingest-writer
//!    will not store it);
//! 2. `episode.deleted` is published with `Nats-Msg-Id = <episode>.deleted` and we wait
//!    for the PubAck — the ingest-writer then removes the vectors;
//! 3. answer 204.
//!
//! A repeat finds the tombstone and publishes the same event again (the first publish may
//! have failed after the commit), so retrying a failed DELETE until it answers 204 always
//! completes the deletion.

use std::sync::Arc;

use bus::{OutboundMessage, Publisher};
use common::events::{Envelope, EpisodeDeleted, Topology};
use common::{EpisodeId, TenantId};
use db::{Db, Deletion, FeedbackCounts, NewFeedback};

use crate::error::ApiError;

/// Longest feedback note, in characters.
pub const NOTE_MAX_CHARS: usize = 1_000;

/// Deletes episodes and records feedback on them.
#[derive(Clone)]
pub struct Lifecycle {
    db: Db,
    bus: Arc<dyn Publisher>,
    topology: Topology,
}

impl Lifecycle {
    pub fn new(db: Db, bus: Arc<dyn Publisher>, topology: Topology) -> Self {
        Self { db, bus, topology }
    }

    /// Deletes the tenant's episode (stored or still processing) everywhere; idempotent.
    /// `NotFound` for an id the tenant never captured, whoever else did.
    pub async fn delete(&self, tenant: TenantId, id: EpisodeId) -> Result<(), ApiError> {
        let (tombstone, first) = match self.db.delete_episode(tenant, id).await? {
            Deletion::Deleted(t) => (t, true),
            Deletion::AlreadyDeleted(t) => (t, false),
            Deletion::NotFound => return Err(not_found(id)),
        };
        let envelope = Envelope::new(
            tenant,
            EpisodeDeleted {
                episode_id: id,
                deleted_at: tombstone.deleted_at,
                text_vector_id: tombstone.text_vector_id,
                image_vector_id: tombstone.image_vector_id,
            },
            // The tombstone's time, so that a repeated announcement is the same event.
            tombstone.deleted_at,
        );
        let message = OutboundMessage::episode_event(&self.topology, &envelope)
            .map_err(|e| ApiError::Internal(format!("encode event: {e}")))?;
        self.bus.publish(message).await?;
        tracing::info!(episode_id = %id, first, "episode deleted");
        Ok(())
    }

    /// Records feedback on the tenant's episode and returns its counts. `NotFound` for an
    /// unknown, deleted or other tenant's episode. The note is redacted before it is stored.
    pub async fn feedback(
        &self,
        tenant: TenantId,
        id: EpisodeId,
        helpful: bool,
        note: Option<&str>,
    ) -> Result<FeedbackCounts, ApiError> {
        let feedback = NewFeedback {
            helpful,
            note: note.map(|n| redact::redact(n).text.into_owned()),
        };
        self.db
            .record_feedback(tenant, id, &feedback)
            .await?
            .ok_or_else(|| not_found(id))
    }
}

fn not_found(id: EpisodeId) -> ApiError {
    ApiError::NotFound(format!("episode {id} not found"))
}
