//! `GET /api/v1/episodes/{id}`: the stored episode with its processing status, or
//! `status: "processing"` while it is still in the pipeline.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use common::EpisodeId;
use common::events::{ImageStatus, RedactionCount};
use db::StoredEpisode;
use serde::Serialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;
use crate::routes::tenant;

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

pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state).await?;
    let id: EpisodeId = path
        .parse()
        .map_err(|_| ApiError::validation("id", "invalid_format", "episode id must be a UUID"))?;
    if let Some(stored) = state.db.get_episode(tenant, id).await? {
        return Ok(HttpResponse::Ok().json(EpisodeView::from(stored)));
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
