//! Deleted episodes: the row goes, a tombstone stays.
//!
//! A tombstone is written in the same transaction that deletes the episode row (and its
//! feedback) and is never removed, so that nothing brings the episode back: the ingest-writer
//! skips (and cleans up after) an episode that has one, and a capture replayed with the same
//! `Idempotency-Key` is refused. It also keeps the vector ids, so a repeated DELETE can
//! announce the deletion again.

use std::collections::HashSet;

use common::{EpisodeId, TenantId, VectorId};
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use time::OffsetDateTime;

use super::{from_micros, micros, parse_col};
use crate::pool::with_conn;
use crate::schema::{captures, deleted_episodes, episode_feedback, episode_feedback_log, episodes};
use crate::{Db, DbError};

const TABLE: &str = "deleted_episodes";

/// Deletes the episode row and its feedback on `$conn`, inside the caller's transaction
/// (a macro, so that it expands once per backend like `with_conn!`).
macro_rules! remove_episode_rows {
    ($conn:ident, $tenant:expr, $id:expr) => {{
        diesel::delete(
            episodes::table
                .find($id)
                .filter(episodes::tenant_id.eq($tenant)),
        )
        .execute($conn)
        .await?;
        diesel::delete(
            episode_feedback::table
                .filter(episode_feedback::tenant_id.eq($tenant))
                .filter(episode_feedback::episode_id.eq($id)),
        )
        .execute($conn)
        .await?;
        diesel::delete(
            episode_feedback_log::table
                .filter(episode_feedback_log::tenant_id.eq($tenant))
                .filter(episode_feedback_log::episode_id.eq($id)),
        )
        .execute($conn)
        .await?;
    }};
}

/// The record of a deleted episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub tenant_id: TenantId,
    pub episode_id: EpisodeId,
    /// The episode's vector in the text index.
    pub text_vector_id: VectorId,
    /// Its vector in the image index: set when the stored episode had an image embedding,
    /// and when it was deleted while still processing (it might have got one).
    pub image_vector_id: Option<VectorId>,
    /// Microsecond precision.
    pub deleted_at: OffsetDateTime,
}

/// The outcome of [`Db::delete_episode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// This call deleted the episode (stored or still processing).
    Deleted(Tombstone),
    /// It had been deleted before; nothing changed.
    AlreadyDeleted(Tombstone),
    /// The tenant never captured an episode with this id (it may be another tenant's).
    NotFound,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = deleted_episodes)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct TombstoneRow {
    tenant_id: String,
    episode_id: String,
    text_vector_id: i64,
    image_vector_id: Option<i64>,
    deleted_at: i64,
}

fn vector_id(column: &str, value: i64) -> Result<VectorId, DbError> {
    VectorId::try_from(value).map_err(|e| DbError::corrupt(TABLE, format!("{column}: {e}")))
}

impl TombstoneRow {
    fn into_domain(self) -> Result<Tombstone, DbError> {
        Ok(Tombstone {
            tenant_id: parse_col(TABLE, "tenant_id", &self.tenant_id)?,
            episode_id: parse_col(TABLE, "episode_id", &self.episode_id)?,
            text_vector_id: vector_id("text_vector_id", self.text_vector_id)?,
            image_vector_id: self
                .image_vector_id
                .map(|v| vector_id("image_vector_id", v))
                .transpose()?,
            deleted_at: from_micros(self.deleted_at),
        })
    }
}

/// What the delete transaction found.
enum Found {
    Deleted(TombstoneRow),
    AlreadyDeleted(TombstoneRow),
    /// The tenant never captured it.
    Unknown,
}

impl Db {
    /// Deletes the tenant's episode, stored or still processing: in one transaction, the
    /// episode row and its feedback go and a tombstone is written. Idempotent (a repeat is
    /// [`Deletion::AlreadyDeleted`] with the first tombstone) and race-free (of concurrent
    /// calls, one deletes). An id the tenant never captured — including another tenant's
    /// episode — is [`Deletion::NotFound`] and changes nothing.
    ///
    /// The capture record stays: it keeps the `Idempotency-Key` bound to the deleted id.
    pub async fn delete_episode(
        &self,
        tenant: TenantId,
        id: EpisodeId,
    ) -> Result<Deletion, DbError> {
        let default_vector = VectorId::for_episode(tenant, id).as_i64();
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let now = micros(common::time_util::now_micros());
        let found = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                // The row before the tombstone: a concurrent deletion that commits between
                // the two reads is then seen by the second (read committed takes a snapshot
                // per statement), never missed by both.
                let stored: Option<(i64, bool)> = episodes::table
                    .find(&id)
                    .filter(episodes::tenant_id.eq(&tenant))
                    .select((episodes::vector_id, episodes::image_embedding.is_not_null()))
                    .first(conn)
                    .await
                    .optional()?;
                let earlier = deleted_episodes::table
                    .find((&tenant, &id))
                    .select(TombstoneRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                if let Some(row) = earlier {
                    return Ok(Found::AlreadyDeleted(row));
                }
                let (text_vector_id, image_vector_id) = match stored {
                    Some((vector, has_image)) => (vector, has_image.then_some(vector)),
                    None => {
                        let captured: i64 = captures::table
                            .find(&id)
                            .filter(captures::tenant_id.eq(&tenant))
                            .count()
                            .get_result(conn)
                            .await?;
                        if captured == 0 {
                            return Ok(Found::Unknown);
                        }
                        // Still processing: it may yet get an image vector.
                        (default_vector, Some(default_vector))
                    }
                };
                let row = TombstoneRow {
                    tenant_id: tenant.clone(),
                    episode_id: id.clone(),
                    text_vector_id,
                    image_vector_id,
                    deleted_at: now,
                };
                let inserted = diesel::insert_into(deleted_episodes::table)
                    .values(&row)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 0 {
                    // A concurrent DELETE committed first.
                    let winner = deleted_episodes::table
                        .find((&tenant, &id))
                        .select(TombstoneRow::as_select())
                        .first(conn)
                        .await?;
                    return Ok(Found::AlreadyDeleted(winner));
                }
                remove_episode_rows!(conn, &tenant, &id);
                Ok::<_, diesel::result::Error>(Found::Deleted(row))
            })
            .await
        })?;
        Ok(match found {
            Found::Deleted(row) => Deletion::Deleted(row.into_domain()?),
            Found::AlreadyDeleted(row) => Deletion::AlreadyDeleted(row.into_domain()?),
            Found::Unknown => Deletion::NotFound,
        })
    }

    /// The tombstone of the tenant's episode, if it was deleted.
    pub async fn get_tombstone(
        &self,
        tenant: TenantId,
        id: EpisodeId,
    ) -> Result<Option<Tombstone>, DbError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let row = with_conn!(self, |conn| {
            deleted_episodes::table
                .find((&tenant, &id))
                .select(TombstoneRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(TombstoneRow::into_domain).transpose()
    }

    /// Whether the tenant deleted this episode (it has a tombstone). One indexed query.
    pub async fn is_episode_deleted(
        &self,
        tenant: TenantId,
        id: EpisodeId,
    ) -> Result<bool, DbError> {
        Ok(self.deleted_episode_ids(tenant, &[id]).await?.contains(&id))
    }

    /// Which of `ids` the tenant deleted. One indexed query.
    pub async fn deleted_episode_ids(
        &self,
        tenant: TenantId,
        ids: &[EpisodeId],
    ) -> Result<HashSet<EpisodeId>, DbError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let tenant = tenant.to_string();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let found: Vec<String> = with_conn!(self, |conn| {
            deleted_episodes::table
                .filter(deleted_episodes::tenant_id.eq(&tenant))
                .filter(deleted_episodes::episode_id.eq_any(&ids))
                .select(deleted_episodes::episode_id)
                .load(conn)
                .await
        })?;
        found
            .iter()
            .map(|id| parse_col(TABLE, "episode_id", id))
            .collect()
    }

    /// Removes whatever of a deleted episode is left in the system of record: an episode
    /// row that a pipeline redelivery wrote while the deletion was committing, and feedback
    /// given concurrently with it. Does nothing unless the episode has a tombstone; returns
    /// whether it has one. Idempotent.
    pub async fn purge_deleted_episode(
        &self,
        tenant: TenantId,
        id: EpisodeId,
    ) -> Result<bool, DbError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Ok(with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let tombstones: i64 = deleted_episodes::table
                    .find((&tenant, &id))
                    .count()
                    .get_result(conn)
                    .await?;
                if tombstones == 0 {
                    return Ok(false);
                }
                remove_episode_rows!(conn, &tenant, &id);
                Ok::<_, diesel::result::Error>(true)
            })
            .await
        })?)
    }
}
