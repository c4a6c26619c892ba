//! Feedback on episodes: was a retrieved episode helpful? Counts per episode (upserted
//! atomically, read in batches by the retriever for its usage score) and a log of every
//! feedback with its note. Deleting the episode deletes both.

use std::collections::HashMap;

use common::{EpisodeId, TenantId};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection as _, RunQueryDsl};

use super::{micros, parse_col};
use crate::pool::with_conn;
use crate::schema::{captures, deleted_episodes, episode_feedback, episode_feedback_log, episodes};
use crate::{Db, DbError};

const TABLE: &str = "episode_feedback";

/// One piece of feedback on an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeedback {
    pub helpful: bool,
    /// Free text, already redacted and bounded by the caller.
    pub note: Option<String>,
}

/// How often an episode was found helpful and unhelpful.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedbackCounts {
    pub helpful: u64,
    pub unhelpful: u64,
}

#[derive(Insertable)]
#[diesel(table_name = episode_feedback)]
struct CountsRow {
    tenant_id: String,
    episode_id: String,
    helpful_count: i64,
    unhelpful_count: i64,
    updated_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = episode_feedback_log)]
struct LogRow {
    id: String,
    tenant_id: String,
    episode_id: String,
    helpful: i64,
    note: Option<String>,
    created_at: i64,
}

fn count(column: &str, value: i64) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|e| DbError::corrupt(TABLE, format!("{column}: {e}")))
}

impl Db {
    /// Records feedback on the tenant's episode (stored or still processing) and returns
    /// its new counts; `None` (nothing recorded) when the tenant has no such episode or
    /// deleted it. One transaction: the counts are incremented with an upsert, so
    /// concurrent feedback is never lost.
    pub async fn record_feedback(
        &self,
        tenant: TenantId,
        id: EpisodeId,
        feedback: &NewFeedback,
    ) -> Result<Option<FeedbackCounts>, DbError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let now = micros(common::time_util::now_micros());
        let counts = CountsRow {
            tenant_id: tenant.clone(),
            episode_id: id.clone(),
            helpful_count: i64::from(feedback.helpful),
            unhelpful_count: i64::from(!feedback.helpful),
            updated_at: now,
        };
        let log = LogRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant.clone(),
            episode_id: id.clone(),
            helpful: i64::from(feedback.helpful),
            note: feedback.note.clone(),
            created_at: now,
        };
        let totals: Option<(i64, i64)> = with_conn!(self, |conn| {
            conn.transaction(async |conn| {
                let stored: i64 = episodes::table
                    .find(&id)
                    .filter(episodes::tenant_id.eq(&tenant))
                    .count()
                    .get_result(conn)
                    .await?;
                let known = stored > 0
                    || captures::table
                        .find(&id)
                        .filter(captures::tenant_id.eq(&tenant))
                        .count()
                        .get_result::<i64>(conn)
                        .await?
                        > 0;
                // After the episode: a deletion committing in between is seen here.
                let deleted: i64 = deleted_episodes::table
                    .find((&tenant, &id))
                    .count()
                    .get_result(conn)
                    .await?;
                if !known || deleted > 0 {
                    return Ok(None);
                }
                diesel::insert_into(episode_feedback::table)
                    .values(&counts)
                    .on_conflict((episode_feedback::tenant_id, episode_feedback::episode_id))
                    .do_update()
                    .set((
                        episode_feedback::helpful_count.eq(episode_feedback::helpful_count
                            + excluded(episode_feedback::helpful_count)),
                        episode_feedback::unhelpful_count.eq(episode_feedback::unhelpful_count
                            + excluded(episode_feedback::unhelpful_count)),
                        episode_feedback::updated_at.eq(excluded(episode_feedback::updated_at)),
                    ))
                    .execute(conn)
                    .await?;
                diesel::insert_into(episode_feedback_log::table)
                    .values(&log)
                    .execute(conn)
                    .await?;
                let totals = episode_feedback::table
                    .find((&tenant, &id))
                    .select((
                        episode_feedback::helpful_count,
                        episode_feedback::unhelpful_count,
                    ))
                    .first(conn)
                    .await?;
                Ok::<_, diesel::result::Error>(Some(totals))
            })
            .await
        })?;
        totals
            .map(|(helpful, unhelpful)| {
                Ok(FeedbackCounts {
                    helpful: count("helpful_count", helpful)?,
                    unhelpful: count("unhelpful_count", unhelpful)?,
                })
            })
            .transpose()
    }

    /// The feedback counts `(helpful, unhelpful)` of the tenant's episodes among `ids`, in
    /// one indexed query. Episodes without feedback — and unknown, deleted or other
    /// tenants' ids — are absent from the map: read a missing entry as `(0, 0)`.
    pub async fn feedback_counts(
        &self,
        tenant: TenantId,
        ids: &[EpisodeId],
    ) -> Result<HashMap<EpisodeId, (u64, u64)>, DbError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let tenant = tenant.to_string();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows: Vec<(String, i64, i64)> = with_conn!(self, |conn| {
            episode_feedback::table
                .filter(episode_feedback::tenant_id.eq(&tenant))
                .filter(episode_feedback::episode_id.eq_any(&ids))
                // Feedback that raced the deletion of its episode is never counted.
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    deleted_episodes::table
                        .filter(deleted_episodes::tenant_id.eq(episode_feedback::tenant_id))
                        .filter(deleted_episodes::episode_id.eq(episode_feedback::episode_id)),
                )))
                .select((
                    episode_feedback::episode_id,
                    episode_feedback::helpful_count,
                    episode_feedback::unhelpful_count,
                ))
                .load(conn)
                .await
        })?;
        rows.into_iter()
            .map(|(id, helpful, unhelpful)| {
                Ok((
                    parse_col(TABLE, "episode_id", &id)?,
                    (
                        count("helpful_count", helpful)?,
                        count("unhelpful_count", unhelpful)?,
                    ),
                ))
            })
            .collect()
    }
}
