//! `POST /api/v1/capture`

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use common::tenancy::Scope;
use common::{Episode, EpisodeFields};
use serde::Serialize;

use crate::AppState;
use crate::capture::IdempotencyKey;
use crate::error::ApiError;
use crate::routes::{parse_json, principal, read_body, require_json};

#[derive(Serialize)]
struct AcceptedBody {
    episode_id: String,
    status: &'static str,
}

pub async fn capture(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = principal(&req, &state, Scope::Capture).await?;
    let tenant = principal.tenant;
    require_json(&req)?;
    let idempotency_key = req
        .headers()
        .get(IdempotencyKey::HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| {
                    ApiError::validation(
                        IdempotencyKey::HEADER,
                        "invalid_format",
                        "must be visible ASCII",
                    )
                })
                .and_then(IdempotencyKey::parse)
        })
        .transpose()?;
    let body = read_body(&req, payload, state.body_limit).await?;
    let fields: EpisodeFields = parse_json(&body)?;
    let episode = Episode::parse(fields).map_err(|e| ApiError::Validation(e.0))?;
    let accepted = state
        .capture
        .capture(tenant, principal.tier, episode, idempotency_key)
        .await?;
    let id = accepted.episode_id.to_string();
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/api/v1/episodes/{id}")));
    if accepted.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    if let Some(quota) = &accepted.quota {
        response.insert_header(("Quota-Limit", quota.limit.to_string()));
        response.insert_header(("Quota-Used", quota.used.to_string()));
        if let Some(warning) = quota.warning() {
            response.insert_header(("Quota-Warning", warning));
        }
    }
    Ok(response.json(AcceptedBody {
        episode_id: id,
        status: "accepted",
    }))
}
