//! `POST /api/v1/search` and `POST /api/v1/reflect`: parse and validate, then ask the
//! retriever (docs/API.md, docs/RETRIEVAL.md).

use actix_web::{HttpRequest, HttpResponse, web};
use common::query::{GateFields, GateRequest, SearchFields, SearchRequest};
use common::tenancy::Scope;
use db::UsageKind;

use super::{read_json, tenant};
use crate::AppState;
use crate::error::ApiError;

/// Search and gate bodies are small; anything larger is refused before it is read.
const QUERY_BODY_LIMIT: usize = 64 * 1024;

pub async fn search(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::Search).await?;
    let fields: SearchFields = read_json(&req, payload, QUERY_BODY_LIMIT).await?;
    let request = SearchRequest::parse(fields).map_err(ApiError::Validation)?;
    let results = state.retriever.search(tenant, request).await?;
    state.usage.count(tenant, UsageKind::Search);
    Ok(json_body(results))
}

pub async fn reflect(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::Reflect).await?;
    let fields: GateFields = read_json(&req, payload, QUERY_BODY_LIMIT).await?;
    let request = GateRequest::parse(fields).map_err(ApiError::Validation)?;
    let decision = state.retriever.reflect(tenant, request).await?;
    state.usage.count(tenant, UsageKind::Gate);
    Ok(json_body(decision))
}

fn json_body(raw: Box<serde_json::value::RawValue>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(String::from(Box::<str>::from(raw)))
}
