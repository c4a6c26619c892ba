//! Stored episodes: the redacted document, its screenshot and its embeddings, kept so that the
//! vector index can be rebuilt from here at any time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::events::{ImageStatus, RedactionCount};
use common::{Embedding, Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use super::{InsertOutcome, from_micros, micros, parse_col};
use crate::pool::with_conn;
use crate::schema::episodes;
use crate::{Db, DbError};

const TABLE: &str = "episodes";

/// An episode as the system of record keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEpisode {
    pub id: EpisodeId,
    pub tenant_id: TenantId,
    pub vector_id: VectorId,
    /// The redacted episode, with its screenshot if it had one.
    pub episode: Episode,
    pub text_embedding: Embedding,
    pub text_model: String,
    pub image_status: ImageStatus,
    pub image_embedding: Option<Embedding>,
    pub image_model: Option<String>,
    pub redactions: Vec<RedactionCount>,
    /// Stored with microsecond precision.
    pub captured_at: OffsetDateTime,
    /// Stored with microsecond precision.
    pub stored_at: OffsetDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = episodes)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct EpisodeRow {
    id: String,
    tenant_id: String,
    vector_id: i64,
    /// JSON of the episode without its screenshot.
    document: String,
    error_class: String,
    screenshot_format: Option<String>,
    /// Base64.
    screenshot: Option<String>,
    /// Base64 of little-endian f32s.
    text_embedding: String,
    text_model: String,
    image_embedding: Option<String>,
    image_model: Option<String>,
    image_status: String,
    /// JSON array of redaction counts.
    redactions: String,
    captured_at: i64,
    stored_at: i64,
}

fn encode_embedding(e: &Embedding) -> String {
    BASE64.encode(e.to_le_bytes())
}

fn decode_embedding(column: &str, b64: &str) -> Result<Embedding, DbError> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| DbError::corrupt(TABLE, format!("{column}: {e}")))?;
    Embedding::from_le_bytes(&bytes).map_err(|e| DbError::corrupt(TABLE, format!("{column}: {e}")))
}

fn json_error(column: &str, e: serde_json::Error) -> DbError {
    DbError::corrupt(TABLE, format!("{column}: {e}"))
}

impl EpisodeRow {
    fn from_domain(e: &StoredEpisode) -> Result<Self, DbError> {
        let screenshot = e.episode.screenshot();
        let document = serde_json::to_string(&e.episode.clone().without_screenshot())
            .map_err(|err| DbError::Internal(err.into()))?;
        let redactions =
            serde_json::to_string(&e.redactions).map_err(|err| DbError::Internal(err.into()))?;
        Ok(EpisodeRow {
            id: e.id.to_string(),
            tenant_id: e.tenant_id.to_string(),
            vector_id: e.vector_id.as_i64(),
            document,
            error_class: e.episode.error_class().as_str().to_owned(),
            screenshot_format: screenshot.map(|s| {
                match s.format() {
                    common::ScreenshotFormat::Png => "png",
                    common::ScreenshotFormat::Jpeg => "jpeg",
                }
                .to_owned()
            }),
            screenshot: screenshot.map(common::Screenshot::to_base64),
            text_embedding: encode_embedding(&e.text_embedding),
            text_model: e.text_model.clone(),
            image_embedding: e.image_embedding.as_ref().map(encode_embedding),
            image_model: e.image_model.clone(),
            image_status: e.image_status.as_str().to_owned(),
            redactions,
            captured_at: micros(e.captured_at),
            stored_at: micros(e.stored_at),
        })
    }

    fn into_domain(self) -> Result<StoredEpisode, DbError> {
        let mut fields: EpisodeFields =
            serde_json::from_str(&self.document).map_err(|e| json_error("document", e))?;
        fields.screenshot = self.screenshot;
        let episode = Episode::parse(fields)
            .map_err(|e| DbError::corrupt(TABLE, format!("document: {e}")))?;
        Ok(StoredEpisode {
            id: parse_col(TABLE, "id", &self.id)?,
            tenant_id: parse_col(TABLE, "tenant_id", &self.tenant_id)?,
            vector_id: VectorId::try_from(self.vector_id)
                .map_err(|e| DbError::corrupt(TABLE, format!("vector_id: {e}")))?,
            episode,
            text_embedding: decode_embedding("text_embedding", &self.text_embedding)?,
            text_model: self.text_model,
            image_status: parse_col(TABLE, "image_status", &self.image_status)?,
            image_embedding: self
                .image_embedding
                .as_deref()
                .map(|b64| decode_embedding("image_embedding", b64))
                .transpose()?,
            image_model: self.image_model,
            redactions: serde_json::from_str(&self.redactions)
                .map_err(|e| json_error("redactions", e))?,
            captured_at: from_micros(self.captured_at),
            stored_at: from_micros(self.stored_at),
        })
    }
}

impl Db {
    /// Stores an episode; idempotent on its id (`ON CONFLICT (id) DO NOTHING`): a redelivery
    /// returns [`InsertOutcome::AlreadyExists`] and changes nothing.
    pub async fn insert_episode(&self, episode: &StoredEpisode) -> Result<InsertOutcome, DbError> {
        let row = EpisodeRow::from_domain(episode)?;
        let rows = with_conn!(self, |conn| {
            diesel::insert_into(episodes::table)
                .values(&row)
                .on_conflict(episodes::id)
                .do_nothing()
                .execute(conn)
                .await
        })?;
        Ok(InsertOutcome::from_rows(rows))
    }

    /// The tenant's episode with this id; another tenant's episode is `None`.
    pub async fn get_episode(
        &self,
        tenant: TenantId,
        id: EpisodeId,
    ) -> Result<Option<StoredEpisode>, DbError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let row = with_conn!(self, |conn| {
            episodes::table
                .find(&id)
                .filter(episodes::tenant_id.eq(&tenant))
                .select(EpisodeRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(EpisodeRow::into_domain).transpose()
    }

    /// The tenant's episodes among `ids` (any order; ids of other tenants and unknown or
    /// deleted ids are simply absent). One query.
    pub async fn get_episodes(
        &self,
        tenant: TenantId,
        ids: &[EpisodeId],
    ) -> Result<Vec<StoredEpisode>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = tenant.to_string();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = with_conn!(self, |conn| {
            episodes::table
                .filter(episodes::tenant_id.eq(&tenant))
                .filter(episodes::id.eq_any(&ids))
                .select(EpisodeRow::as_select())
                .load(conn)
                .await
        })?;
        rows.into_iter().map(EpisodeRow::into_domain).collect()
    }

    /// Which of `ids` are the tenant's stored (and not deleted) episodes. One indexed query.
    pub async fn existing_episode_ids(
        &self,
        tenant: TenantId,
        ids: &[EpisodeId],
    ) -> Result<Vec<EpisodeId>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = tenant.to_string();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let found: Vec<String> = with_conn!(self, |conn| {
            episodes::table
                .filter(episodes::tenant_id.eq(&tenant))
                .filter(episodes::id.eq_any(&ids))
                .select(episodes::id)
                .load(conn)
                .await
        })?;
        found.iter().map(|id| parse_col(TABLE, "id", id)).collect()
    }

    pub async fn count_episodes(&self, tenant: TenantId) -> Result<i64, DbError> {
        let tenant = tenant.to_string();
        Ok(with_conn!(self, |conn| {
            episodes::table
                .filter(episodes::tenant_id.eq(&tenant))
                .count()
                .get_result::<i64>(conn)
                .await
        })?)
    }

    pub async fn count_all_episodes(&self) -> Result<i64, DbError> {
        Ok(with_conn!(self, |conn| {
            episodes::table.count().get_result::<i64>(conn).await
        })?)
    }

    /// One page of all tenants' episodes in id order, for re-indexing: pass the last id of the
    /// previous page as `after` (keyset pagination, stable under concurrent inserts).
    pub async fn scan_episodes(
        &self,
        after: Option<EpisodeId>,
        limit: usize,
    ) -> Result<Vec<StoredEpisode>, DbError> {
        let after = after.map(|id| id.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = with_conn!(self, |conn| {
            let mut query = episodes::table
                .select(EpisodeRow::as_select())
                .order(episodes::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = &after {
                query = query.filter(episodes::id.gt(after));
            }
            query.load(conn).await
        })?;
        rows.into_iter().map(EpisodeRow::into_domain).collect()
    }
}
