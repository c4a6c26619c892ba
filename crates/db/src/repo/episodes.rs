//! Stored episodes: the redacted document, its screenshot and its embeddings, kept so that the
//! vector index can be rebuilt from here at any time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::events::{ImageStatus, RedactionCount};
use common::{
    Embedding, Episode, EpisodeFields, EpisodeId, ErrorClass, ScreenshotFormat, TenantId, VectorId,
};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use diesel_async::{AsyncConnection as _, RunQueryDsl};
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
    /// Tools and tags as membership keys ([`label_keys`]); NULL on rows not yet back-filled.
    label_keys: Option<String>,
}

/// What a membership key names.
#[derive(Debug, Clone, Copy)]
enum Label {
    Tool,
    Tag,
}

impl Label {
    fn prefix(self) -> &'static str {
        match self {
            Label::Tool => "tool:",
            Label::Tag => "tag:",
        }
    }
}

/// Tools and tags as one column for exact membership tests on both backends: each value as
/// `tool:<hex>` / `tag:<hex>` between `|` delimiters (`|tool:6b75626563746c|tag:72626163|`),
/// so that "has tool `kubectl`" is `LIKE '%|tool:6b75626563746c|%'` — a key can contain
/// neither the delimiter nor a LIKE wildcard, whatever characters the value has. No labels
/// is `|`.
fn label_keys<'a>(
    tools: impl IntoIterator<Item = &'a String>,
    tags: impl IntoIterator<Item = &'a String>,
) -> String {
    let mut keys = String::from("|");
    let labelled = tools
        .into_iter()
        .map(|t| (Label::Tool, t))
        .chain(tags.into_iter().map(|t| (Label::Tag, t)));
    for (label, value) in labelled {
        keys.push_str(label.prefix());
        keys.push_str(&hex(value));
        keys.push('|');
    }
    keys
}

/// The `LIKE` pattern matching rows whose [`label_keys`] contain this label.
fn label_pattern(label: Label, value: &str) -> String {
    format!("%|{}{}|%", label.prefix(), hex(value))
}

fn hex(value: &str) -> String {
    use std::fmt::Write as _;
    value.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Tools and tags are stored trimmed and lower-cased (`Episode::parse`); filters are too.
fn normalise_label(value: &str) -> String {
    value.trim().to_lowercase()
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
            label_keys: Some(label_keys(e.episode.tool_chain(), e.episode.tags())),
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

/// Filters of [`Db::list_episodes`]; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    pub error_class: Option<ErrorClass>,
    /// The episode's tool chain contains this tool (compared trimmed and lower-cased).
    pub tool: Option<String>,
    /// The episode carries this tag (compared trimmed and lower-cased).
    pub tag: Option<String>,
    /// Captured at or after this time (inclusive).
    pub created_after: Option<OffsetDateTime>,
    /// Captured before this time (exclusive).
    pub created_before: Option<OffsetDateTime>,
}

/// A position in the newest-first order of [`Db::list_episodes`]: the last episode of the
/// previous page. Stable under concurrent inserts and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpisodeCursor {
    /// Microsecond precision, like every stored time.
    pub captured_at: OffsetDateTime,
    pub id: EpisodeId,
}

/// A screenshot described without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenshotInfo {
    pub format: ScreenshotFormat,
    /// Size of the decoded image.
    pub size_bytes: usize,
}

/// An episode as [`Db::list_episodes`] returns it: the screenshot bytes are not read.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedEpisode {
    /// The stored episode; `stored.episode` has no screenshot.
    pub stored: StoredEpisode,
    /// The screenshot it has in the system of record, if any.
    pub screenshot: Option<ScreenshotInfo>,
}

/// One page of [`Db::list_episodes`].
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodePage {
    /// At most `limit` episodes, newest first (`captured_at` desc, then `id` desc).
    pub episodes: Vec<ListedEpisode>,
    /// Where the next page starts; `None` when this page is the last one (a page is never
    /// short unless it is the last).
    pub next: Option<EpisodeCursor>,
}

diesel::define_sql_function! {
    /// Characters in a string (`length` on PostgreSQL and SQLite).
    fn length(x: Nullable<Text>) -> Nullable<Integer>;
}

diesel::define_sql_function! {
    /// `x` without trailing `characters` (`rtrim` on PostgreSQL and SQLite).
    fn rtrim(x: Nullable<Text>, characters: Text) -> Nullable<Text>;
}

/// A row of the listing: everything but the screenshot bytes, and instead the length of
/// the screenshot's base64 without padding.
#[derive(Queryable)]
struct ListRow {
    id: String,
    tenant_id: String,
    vector_id: i64,
    document: String,
    screenshot_format: Option<String>,
    screenshot_chars: Option<i32>,
    text_embedding: String,
    text_model: String,
    image_embedding: Option<String>,
    image_model: Option<String>,
    image_status: String,
    redactions: String,
    captured_at: i64,
    stored_at: i64,
}

impl ListRow {
    fn into_domain(self) -> Result<ListedEpisode, DbError> {
        let screenshot = match (self.screenshot_format.as_deref(), self.screenshot_chars) {
            (None, _) => None,
            (Some(format), chars) => {
                let format = match format {
                    "png" => ScreenshotFormat::Png,
                    "jpeg" => ScreenshotFormat::Jpeg,
                    other => {
                        return Err(DbError::corrupt(
                            TABLE,
                            format!("screenshot_format: unknown {other:?}"),
                        ));
                    }
                };
                // Unpadded base64 of n bytes has ceil(4n/3) characters.
                let chars = usize::try_from(chars.unwrap_or(0)).unwrap_or(0);
                Some(ScreenshotInfo {
                    format,
                    size_bytes: chars * 3 / 4,
                })
            }
        };
        let stored = EpisodeRow {
            id: self.id,
            tenant_id: self.tenant_id,
            vector_id: self.vector_id,
            document: self.document,
            error_class: String::new(),
            screenshot_format: None,
            screenshot: None,
            text_embedding: self.text_embedding,
            text_model: self.text_model,
            image_embedding: self.image_embedding,
            image_model: self.image_model,
            image_status: self.image_status,
            redactions: self.redactions,
            captured_at: self.captured_at,
            stored_at: self.stored_at,
            label_keys: None,
        }
        .into_domain()?;
        Ok(ListedEpisode { stored, screenshot })
    }
}

/// Rows back-filled per transaction by [`Db::fill_label_keys`].
const BACKFILL_BATCH: i64 = 500;

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
        // By primary key only: with `tenant_id = ?` in the WHERE clause SQLite prefers the
        // (tenant_id, captured_at, id) index and scans the whole tenant. The tenant is
        // checked on the rows instead.
        let rows = with_conn!(self, |conn| {
            episodes::table
                .filter(episodes::id.eq_any(&ids))
                .select(EpisodeRow::as_select())
                .load(conn)
                .await
        })?;
        rows.into_iter()
            .filter(|r| r.tenant_id == tenant)
            .map(EpisodeRow::into_domain)
            .collect()
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
        // By primary key only (see `get_episodes`); the tenant is checked per row.
        let found: Vec<(String, String)> = with_conn!(self, |conn| {
            episodes::table
                .filter(episodes::id.eq_any(&ids))
                .select((episodes::id, episodes::tenant_id))
                .load(conn)
                .await
        })?;
        found
            .iter()
            .filter(|(_, t)| *t == tenant)
            .map(|(id, _)| parse_col(TABLE, "id", id))
            .collect()
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

    /// One page of the tenant's stored episodes, newest first (`captured_at` desc, `id`
    /// desc), matching `filter`, starting after `after` (keyset pagination: one indexed
    /// query of `limit + 1` rows, so the page is full unless it is the last). Screenshot
    /// bytes are not read ([`ListedEpisode::screenshot`] describes them). Deleted episodes
    /// have no row, so they are never listed.
    pub async fn list_episodes(
        &self,
        tenant: TenantId,
        filter: &EpisodeFilter,
        after: Option<EpisodeCursor>,
        limit: usize,
    ) -> Result<EpisodePage, DbError> {
        let tenant = tenant.to_string();
        let limit = limit.max(1);
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let error_class = filter.error_class.map(ErrorClass::as_str);
        let tool = filter
            .tool
            .as_deref()
            .map(|t| label_pattern(Label::Tool, &normalise_label(t)));
        let tag = filter
            .tag
            .as_deref()
            .map(|t| label_pattern(Label::Tag, &normalise_label(t)));
        let created_after = filter.created_after.map(micros);
        let created_before = filter.created_before.map(micros);
        let after = after.map(|c| (micros(c.captured_at), c.id.to_string()));
        let rows: Vec<ListRow> = with_conn!(self, |conn| {
            let mut query = episodes::table
                .filter(episodes::tenant_id.eq(&tenant))
                .select((
                    episodes::id,
                    episodes::tenant_id,
                    episodes::vector_id,
                    episodes::document,
                    episodes::screenshot_format,
                    length(rtrim(episodes::screenshot, "=")),
                    episodes::text_embedding,
                    episodes::text_model,
                    episodes::image_embedding,
                    episodes::image_model,
                    episodes::image_status,
                    episodes::redactions,
                    episodes::captured_at,
                    episodes::stored_at,
                ))
                .order((episodes::captured_at.desc(), episodes::id.desc()))
                .limit(fetch)
                .into_boxed();
            if let Some(class) = error_class {
                query = query.filter(episodes::error_class.eq(class));
            }
            if let Some(pattern) = &tool {
                query = query.filter(episodes::label_keys.like(pattern));
            }
            if let Some(pattern) = &tag {
                query = query.filter(episodes::label_keys.like(pattern));
            }
            if let Some(t) = created_after {
                query = query.filter(episodes::captured_at.ge(t));
            }
            if let Some(t) = created_before {
                query = query.filter(episodes::captured_at.lt(t));
            }
            if let Some((at, id)) = &after {
                query = query.filter(
                    episodes::captured_at
                        .lt(*at)
                        .or(episodes::captured_at.eq(*at).and(episodes::id.lt(id))),
                );
            }
            query.load(conn).await
        })?;
        let more = rows.len() > limit;
        let episodes = rows
            .into_iter()
            .take(limit)
            .map(ListRow::into_domain)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (more, episodes.last()) {
            (true, Some(last)) => Some(EpisodeCursor {
                captured_at: last.stored.captured_at,
                id: last.stored.id,
            }),
            _ => None,
        };
        Ok(EpisodePage { episodes, next })
    }

    /// Computes the tool and tag keys of rows stored before they existed (run by
    /// [`Db::migrate`]; idempotent, safe to run from several processes at once). Returns how
    /// many rows it filled.
    pub(crate) async fn fill_label_keys(&self) -> Result<u64, DbError> {
        let mut filled = 0u64;
        loop {
            let done = with_conn!(self, |conn| {
                conn.transaction(async |conn| {
                    let rows: Vec<(String, String)> = episodes::table
                        .filter(episodes::label_keys.is_null())
                        .select((episodes::id, episodes::document))
                        .limit(BACKFILL_BATCH)
                        .load(conn)
                        .await?;
                    for (id, document) in &rows {
                        let (tools, tags): (Vec<String>, Vec<String>) =
                            match serde_json::from_str::<EpisodeFields>(document) {
                            Ok(fields) => (
                                fields.tool_chain.iter().map(|t| normalise_label(t)).collect(),
                                fields.tags.iter().map(|t| normalise_label(t)).collect(),
                            ),
                            Err(e) => {
                                tracing::warn!(episode_id = %id, error = %e, "unreadable episode document; stored without tool and tag keys");
                                (Vec::new(), Vec::new())
                            }
                        };
                        diesel::update(episodes::table.find(id))
                            .set(episodes::label_keys.eq(label_keys(&tools, &tags)))
                            .execute(conn)
                            .await?;
                    }
                    Ok::<usize, diesel::result::Error>(rows.len())
                })
                .await
            })?;
            filled += done as u64;
            if done < usize::try_from(BACKFILL_BATCH).unwrap_or(usize::MAX) {
                return Ok(filled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_test_membership_exactly() {
        let tools = vec!["kubectl".to_owned(), "a|b".to_owned(), "x%_".to_owned()];
        let tags = vec!["rbac".to_owned()];
        let keys = label_keys(&tools, &tags);
        assert_eq!(
            keys,
            "|tool:6b75626563746c|tool:617c62|tool:78255f|tag:72626163|"
        );
        assert_eq!(label_keys(&[], &[]), "|");
        let contains = |label: Label, value: &str| {
            let pattern = label_pattern(label, value);
            keys.contains(pattern.trim_matches('%'))
        };
        assert!(contains(Label::Tool, "kubectl"));
        assert!(contains(Label::Tool, "a|b"));
        assert!(contains(Label::Tool, "x%_"));
        assert!(contains(Label::Tag, "rbac"));
        // Neither a part of a value, nor a value spanning a delimiter, nor a tool as a tag.
        assert!(!contains(Label::Tool, "kube"));
        assert!(!contains(Label::Tool, "a"));
        assert!(!contains(Label::Tool, "b"));
        assert!(!contains(Label::Tool, "ctl"));
        assert!(!contains(Label::Tag, "kubectl"));
        assert!(!contains(Label::Tool, "rbac"));
    }
}
