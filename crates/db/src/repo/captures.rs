//! The gateway's record of every accepted capture: idempotency, and a "processing" status for
//! episodes that are accepted but not stored yet.

use common::{EpisodeId, TenantId};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use super::{from_micros, parse_col};
use crate::pool::with_conn;
use crate::schema::captures;
use crate::{Db, DbError};

/// A capture the gateway is about to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCapture {
    pub tenant_id: TenantId,
    pub episode_id: EpisodeId,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// Hash of the request body, to tell a retry from a reuse of the key for another body.
    pub request_hash: String,
}

/// The outcome of [`Db::reserve_capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// This call recorded the capture: go on and publish it.
    Reserved,
    /// The tenant already used this idempotency key (or this episode id): answer with the
    /// earlier episode (if `request_hash` matches) instead of capturing again.
    Existing {
        episode_id: EpisodeId,
        request_hash: String,
    },
}

/// A recorded capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    pub episode_id: EpisodeId,
    pub tenant_id: TenantId,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub accepted_at: OffsetDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = captures)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct CaptureRow {
    episode_id: String,
    tenant_id: String,
    idempotency_key: Option<String>,
    request_hash: String,
    accepted_at: i64,
}

impl TryFrom<CaptureRow> for CaptureRecord {
    type Error = DbError;
    fn try_from(row: CaptureRow) -> Result<Self, DbError> {
        Ok(CaptureRecord {
            episode_id: parse_col("captures", "episode_id", &row.episode_id)?,
            tenant_id: parse_col("captures", "tenant_id", &row.tenant_id)?,
            idempotency_key: row.idempotency_key,
            request_hash: row.request_hash,
            accepted_at: from_micros(row.accepted_at),
        })
    }
}

impl Db {
    /// Records a capture, race-free: of any number of concurrent calls with the same
    /// (tenant, idempotency key), exactly one gets [`Reservation::Reserved`] and the others
    /// [`Reservation::Existing`] with the winner's episode id.
    ///
    /// It is one `INSERT … ON CONFLICT DO NOTHING` (the unique constraint decides the race,
    /// in both backends) followed, if nothing was inserted, by reading the committed winner.
    /// Without a key, a repeated call with the same episode id is `Existing` too.
    pub async fn reserve_capture(&self, capture: &NewCapture) -> Result<Reservation, DbError> {
        let row = CaptureRow {
            episode_id: capture.episode_id.to_string(),
            tenant_id: capture.tenant_id.to_string(),
            idempotency_key: capture.idempotency_key.clone(),
            request_hash: capture.request_hash.clone(),
            accepted_at: common::time_util::to_unix_micros(common::time_util::now_micros()),
        };
        let inserted = with_conn!(self, |conn| {
            diesel::insert_into(captures::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await
        })?;
        if inserted > 0 {
            return Ok(Reservation::Reserved);
        }
        let winner = match &capture.idempotency_key {
            Some(key) => with_conn!(self, |conn| {
                captures::table
                    .filter(captures::tenant_id.eq(&row.tenant_id))
                    .filter(captures::idempotency_key.eq(key))
                    .select(CaptureRow::as_select())
                    .first(conn)
                    .await
                    .optional()
            })?,
            None => None,
        };
        let winner = match winner {
            Some(w) => Some(w),
            // No key, or the conflict was on the episode id itself.
            None => with_conn!(self, |conn| {
                captures::table
                    .find(&row.episode_id)
                    .filter(captures::tenant_id.eq(&row.tenant_id))
                    .select(CaptureRow::as_select())
                    .first(conn)
                    .await
                    .optional()
            })?,
        };
        match winner {
            Some(w) => Ok(Reservation::Existing {
                episode_id: parse_col("captures", "episode_id", &w.episode_id)?,
                request_hash: w.request_hash,
            }),
            None => Err(DbError::Conflict(format!(
                "episode id {} is already recorded for another capture",
                capture.episode_id
            ))),
        }
    }

    /// The capture of this episode, if the tenant made it.
    pub async fn get_capture(
        &self,
        tenant: TenantId,
        episode_id: EpisodeId,
    ) -> Result<Option<CaptureRecord>, DbError> {
        let (tenant, id) = (tenant.to_string(), episode_id.to_string());
        let row = with_conn!(self, |conn| {
            captures::table
                .find(&id)
                .filter(captures::tenant_id.eq(&tenant))
                .select(CaptureRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(CaptureRecord::try_from).transpose()
    }

    /// Forgets a reservation that was refused before anything was published (the quota was
    /// spent), so the same `Idempotency-Key` can be used again later.
    pub async fn unreserve_capture(
        &self,
        tenant: TenantId,
        episode_id: EpisodeId,
    ) -> Result<(), DbError> {
        let (tenant, id) = (tenant.to_string(), episode_id.to_string());
        with_conn!(self, |conn| {
            diesel::delete(
                captures::table
                    .find(&id)
                    .filter(captures::tenant_id.eq(&tenant)),
            )
            .execute(conn)
            .await
        })?;
        Ok(())
    }
}
