//! The episode resource:
//! - `GET /api/v1/episodes/{id}`: the stored episode with its processing status, or
//!   `status: "processing"` while it is still in the pipeline;
//! - `GET /api/v1/episodes`: the tenant's stored episodes, newest first, filtered, in pages;
//! - `DELETE /api/v1/episodes/{id}`: delete it everywhere (idempotent).

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::events::{ImageStatus, RedactionCount};
use common::{EpisodeId, ErrorClass, FieldError};
use db::{EpisodeCursor, EpisodeFilter, ListedEpisode, StoredEpisode};
use serde::Serialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;
use crate::routes::tenant;
use common::tenancy::Scope;

/// The public view of a stored episode (docs/API.md).
#[derive(Serialize)]
pub struct EpisodeView {
    pub episode_id: String,
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub stored_at: OffsetDateTime,
    pub episode_type: &'static str,
    pub goal: String,
    pub actions_taken: Vec<String>,
    pub error_trace: String,
    pub error_class: &'static str,
    pub tool_chain: Vec<String>,
    pub environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_state_diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<ScreenshotView>,
    pub processing: ProcessingView,
}

#[derive(Serialize)]
pub struct ScreenshotView {
    pub media_type: &'static str,
    pub size_bytes: usize,
}

#[derive(Serialize)]
pub struct ProcessingView {
    pub text_embedding: EmbeddingStatusView,
    pub image_embedding: EmbeddingStatusView,
    /// What redaction removed, by kind (never the removed text).
    pub redactions: Vec<RedactionCount>,
}

#[derive(Serialize)]
pub struct EmbeddingStatusView {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<usize>,
}

#[derive(Serialize)]
struct ProcessingBody {
    episode_id: String,
    status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    accepted_at: OffsetDateTime,
}

impl From<StoredEpisode> for EpisodeView {
    fn from(s: StoredEpisode) -> Self {
        let e = &s.episode;
        EpisodeView {
            episode_id: s.id.to_string(),
            status: "stored",
            captured_at: s.captured_at,
            stored_at: s.stored_at,
            episode_type: "failure",
            goal: e.goal().to_owned(),
            actions_taken: e.actions_taken().to_vec(),
            error_trace: e.error_trace().to_owned(),
            error_class: e.error_class().as_str(),
            tool_chain: e.tool_chain().to_vec(),
            environment: e.environment().clone(),
            resolution: e.resolution().map(str::to_owned),
            tags: e.tags().to_vec(),
            code_state_diff: e.code_state_diff().map(str::to_owned),
            screenshot: e.screenshot().map(|shot| ScreenshotView {
                media_type: shot.format().media_type(),
                size_bytes: shot.bytes().len(),
            }),
            processing: ProcessingView {
                text_embedding: EmbeddingStatusView {
                    status: "embedded",
                    dimension: Some(s.text_embedding.dim()),
                    model: Some(s.text_model.clone()),
                },
                image_embedding: EmbeddingStatusView {
                    status: s.image_status.as_str(),
                    dimension: s.image_embedding.as_ref().map(common::Embedding::dim),
                    model: match s.image_status {
                        ImageStatus::Embedded => s.image_model.clone(),
                        _ => None,
                    },
                },
                redactions: s.redactions.clone(),
            },
        }
    }
}

impl From<ListedEpisode> for EpisodeView {
    /// The same view as for a stored episode; the screenshot is described from the listing
    /// (which does not read its bytes).
    fn from(listed: ListedEpisode) -> Self {
        let mut view = EpisodeView::from(listed.stored);
        view.screenshot = listed.screenshot.map(|shot| ScreenshotView {
            media_type: shot.format.media_type(),
            size_bytes: shot.size_bytes,
        });
        view
    }
}

/// Parses the `{id}` path segment.
pub fn episode_id(path: &str) -> Result<EpisodeId, ApiError> {
    path.parse()
        .map_err(|_| ApiError::validation("id", "invalid_format", "episode id must be a UUID"))
}

pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::EpisodesRead).await?;
    let id = episode_id(&path)?;
    if let Some(stored) = state.db.get_episode(tenant, id).await? {
        return Ok(HttpResponse::Ok().json(EpisodeView::from(stored)));
    }
    // The capture record outlives a deletion (it keeps the Idempotency-Key bound).
    if state.db.is_episode_deleted(tenant, id).await? {
        return Err(ApiError::NotFound(format!("episode {id} not found")));
    }
    match state.db.get_capture(tenant, id).await? {
        Some(capture) => Ok(HttpResponse::Ok().json(ProcessingBody {
            episode_id: id.to_string(),
            status: "processing",
            accepted_at: capture.accepted_at,
        })),
        None => Err(ApiError::NotFound(format!("episode {id} not found"))),
    }
}

/// `DELETE /api/v1/episodes/{id}`: 204, also when it was deleted before.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::EpisodesWrite).await?;
    let id = episode_id(&path)?;
    state.lifecycle.delete(tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Page size of `GET /api/v1/episodes`.
pub mod limits {
    pub const LIMIT_MIN: usize = 1;
    pub const LIMIT_MAX: usize = 100;
    pub const LIMIT_DEFAULT: usize = 20;
}

/// The query of `GET /api/v1/episodes`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: EpisodeFilter,
    pub after: Option<EpisodeCursor>,
    pub limit: usize,
}

const CURSOR_VERSION: &str = "v1";

/// The opaque `next_cursor`: base64url (no padding) of `v1:<captured_at µs>:<episode id>`.
pub fn encode_cursor(cursor: EpisodeCursor) -> String {
    let micros = common::time_util::to_unix_micros(cursor.captured_at);
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}:{micros}:{}", cursor.id))
}

/// The inverse of [`encode_cursor`]; `None` for anything it did not produce.
pub fn decode_cursor(raw: &str) -> Option<EpisodeCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, ':');
    if parts.next()? != CURSOR_VERSION {
        return None;
    }
    let micros: i64 = parts.next()?.parse().ok()?;
    let id: EpisodeId = parts.next()?.parse().ok()?;
    Some(EpisodeCursor {
        captured_at: common::time_util::from_unix_micros(micros),
        id,
    })
}

fn invalid(field: &str, code: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, code, message)
}

/// A tool or tag filter: trimmed, lower-cased (as stored), 1..=`max` bytes, no NUL.
fn label(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    let value = raw.trim().to_lowercase();
    if value.is_empty() {
        Err(invalid(field, "empty", "must not be empty"))
    } else if value.contains('\0') {
        Err(invalid(field, "nul_byte", "must not contain NUL bytes"))
    } else if value.len() > max {
        Err(invalid(
            field,
            "too_long",
            format!("must be at most {max} bytes"),
        ))
    } else {
        Ok(value)
    }
}

fn timestamp(field: &str, raw: &str) -> Result<OffsetDateTime, FieldError> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).map_err(|_| {
        invalid(
            field,
            "invalid_format",
            "must be an RFC 3339 timestamp, e.g. 2026-01-31T09:00:00Z",
        )
    })
}

impl ListQuery {
    /// Parses decoded query pairs. Unknown and repeated parameters and bad values are
    /// errors naming the parameter; every error is reported.
    pub fn parse(pairs: &[(String, String)]) -> Result<ListQuery, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let mut query = ListQuery {
            filter: EpisodeFilter::default(),
            after: None,
            limit: limits::LIMIT_DEFAULT,
        };
        for (key, value) in pairs {
            if seen.contains(&key.as_str()) {
                errors.push(invalid(key, "invalid_value", "must be given at most once"));
                continue;
            }
            seen.push(key);
            let parsed: Result<(), FieldError> = match key.as_str() {
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (limits::LIMIT_MIN..=limits::LIMIT_MAX).contains(&n) => {
                        query.limit = n;
                        Ok(())
                    }
                    _ => Err(invalid(
                        key,
                        "out_of_range",
                        format!(
                            "must be an integer between {} and {}",
                            limits::LIMIT_MIN,
                            limits::LIMIT_MAX
                        ),
                    )),
                },
                "cursor" => match decode_cursor(value) {
                    Some(c) => {
                        query.after = Some(c);
                        Ok(())
                    }
                    None => Err(invalid(
                        key,
                        "invalid_format",
                        "not a cursor returned by this endpoint (next_cursor)",
                    )),
                },
                "error_class" => match value.parse::<ErrorClass>() {
                    Ok(class) => {
                        query.filter.error_class = Some(class);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                "tool" => label(key, value, common::episode::limits::TOOL_BYTES).map(|t| {
                    query.filter.tool = Some(t);
                }),
                "tag" => label(key, value, common::episode::limits::TAG_BYTES).map(|t| {
                    query.filter.tag = Some(t);
                }),
                "created_after" => timestamp(key, value).map(|t| {
                    query.filter.created_after = Some(t);
                }),
                "created_before" => timestamp(key, value).map(|t| {
                    query.filter.created_before = Some(t);
                }),
                _ => Err(invalid(
                    key,
                    "invalid_value",
                    "unknown query parameter; expected limit, cursor, error_class, tool, tag, \
                     created_after or created_before",
                )),
            };
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
        if let (Some(after), Some(before)) =
            (query.filter.created_after, query.filter.created_before)
            && after >= before
        {
            errors.push(invalid(
                "created_before",
                "invalid_value",
                "must be later than created_after",
            ));
        }
        if errors.is_empty() {
            Ok(query)
        } else {
            Err(errors)
        }
    }
}

#[derive(Serialize)]
struct ListBody {
    episodes: Vec<EpisodeView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/v1/episodes`
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::EpisodesRead).await?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::validation("query", "invalid_format", e.to_string()))?
        .into_inner();
    let query = ListQuery::parse(&pairs).map_err(ApiError::Validation)?;
    let page = state
        .db
        .list_episodes(tenant, &query.filter, query.after, query.limit)
        .await?;
    Ok(HttpResponse::Ok().json(ListBody {
        episodes: page.episodes.into_iter().map(EpisodeView::from).collect(),
        next_cursor: page.next.map(encode_cursor),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn first_field(raw: &[(&str, &str)]) -> Option<String> {
        ListQuery::parse(&pairs(raw))
            .err()
            .and_then(|e| e.first().map(|f| f.field.clone()))
    }

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        let cursor = EpisodeCursor {
            captured_at: common::time_util::now_micros(),
            id: EpisodeId::new(),
        };
        let encoded = encode_cursor(cursor);
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_cursor(&encoded), Some(cursor));
        for bad in [
            "",
            "!!",
            "djE6MTox",
            &URL_SAFE_NO_PAD.encode("v2:1:x"),
            &encoded[1..],
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_query_parses_and_names_bad_fields() {
        let q = ListQuery::parse(&pairs(&[
            ("limit", "5"),
            ("error_class", "network_error"),
            ("tool", " Kubectl "),
            ("tag", "rbac"),
            ("created_after", "2026-01-01T00:00:00Z"),
            ("created_before", "2026-02-01T00:00:00+01:00"),
        ]))
        .expect("valid");
        assert_eq!(q.limit, 5);
        assert_eq!(q.filter.error_class, Some(ErrorClass::NetworkError));
        assert_eq!(q.filter.tool.as_deref(), Some("kubectl"));
        assert_eq!(ListQuery::parse(&[]).map(|q| q.limit), Ok(20));

        assert_eq!(first_field(&[("limit", "0")]).as_deref(), Some("limit"));
        assert_eq!(first_field(&[("limit", "101")]).as_deref(), Some("limit"));
        assert_eq!(first_field(&[("limit", "ten")]).as_deref(), Some("limit"));
        assert_eq!(
            first_field(&[("cursor", "nope")]).as_deref(),
            Some("cursor")
        );
        assert_eq!(
            first_field(&[("error_class", "x")]).as_deref(),
            Some("error_class")
        );
        assert_eq!(first_field(&[("tool", " ")]).as_deref(), Some("tool"));
        assert_eq!(
            first_field(&[("tag", &"t".repeat(65))]).as_deref(),
            Some("tag")
        );
        assert_eq!(
            first_field(&[("created_after", "yesterday")]).as_deref(),
            Some("created_after")
        );
        assert_eq!(
            first_field(&[("created_before", "2026-01-01")]).as_deref(),
            Some("created_before")
        );
        assert_eq!(
            first_field(&[
                ("created_after", "2026-01-02T00:00:00Z"),
                ("created_before", "2026-01-01T00:00:00Z")
            ])
            .as_deref(),
            Some("created_before")
        );
        assert_eq!(first_field(&[("sort", "asc")]).as_deref(), Some("sort"));
        assert_eq!(
            first_field(&[("tag", "a"), ("tag", "b")]).as_deref(),
            Some("tag")
        );
    }
}
