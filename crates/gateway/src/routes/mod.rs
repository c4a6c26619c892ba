//! HTTP edge: parse requests into domain types, call the service, map results out.

pub mod admin;
pub mod capture;
pub mod episodes;
pub mod feedback;
pub mod health;
pub mod query;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use common::TenantId;
use common::tenancy::Scope;
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

/// Header carrying the tenant's API key.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// Authenticates the request (before anything else is looked at) and checks that the key
/// may do `scope`.
pub async fn principal(
    req: &HttpRequest,
    state: &AppState,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let header = match req.headers().get(API_KEY_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| ApiError::InvalidApiKey)?),
    };
    let principal = state.auth.authenticate(header).await?;
    principal.require(scope)?;
    Ok(principal)
}

/// [`principal`], when only the tenant matters.
pub async fn tenant(
    req: &HttpRequest,
    state: &AppState,
    scope: Scope,
) -> Result<TenantId, ApiError> {
    Ok(principal(req, state, scope).await?.tenant)
}

/// Rejects explicit non-JSON content types (a missing Content-Type is accepted as JSON).
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidJson {
            message: format!("could not read the request body: {e}"),
            field: None,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A JSON request body: the content type checked, at most `limit` bytes read, then parsed
/// strictly ([`parse_json`]).
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    require_json(req)?;
    let body = read_body(req, payload, limit).await?;
    parse_json(&body)
}

/// Strict JSON parsing that names the offending field: syntax errors (including invalid
/// UTF-8) are 400 `invalid_json`; wrong types, unknown fields and bad values are 422
/// `validation_failed`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would accept a JSON array as a struct, positionally; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::validation(
            "body",
            "invalid_value",
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at_root = path == "." || path.is_empty();
        match inner.classify() {
            Category::Data => {
                let message = inner.to_string();
                // The path already ends at an unknown field; at the root, name it from
                // the message.
                let field = if at_root {
                    unknown_field(&message).unwrap_or("body").to_owned()
                } else {
                    path
                };
                ApiError::validation(field, "invalid_value", strip_position(&message))
            }
            Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson {
                message: inner.to_string(),
                field: (!at_root).then_some(path),
            },
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidJson {
        message: e.to_string(),
        field: None,
    })?;
    Ok(value)
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde_json appends " at line X column Y" to data errors; keep the message short.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    fn field_of(body: &[u8]) -> (u16, Option<String>) {
        match parse_json::<EpisodeFields>(body) {
            Ok(_) => (200, None),
            Err(ApiError::InvalidJson { field, .. }) => (400, field),
            Err(ApiError::Validation(errors)) => (422, errors.first().map(|e| e.field.clone())),
            Err(_) => (500, None),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of(br#"{"goal": "x"}"#), (200, None));
        assert_eq!(field_of(br#"{"goal": "x""#).0, 400);
        assert_eq!(field_of(b"not json").0, 400);
        assert_eq!(field_of(br#"{"goal": 5}"#), (422, Some("goal".into())));
        assert_eq!(
            field_of(br#"{"goal": "x", "actions_taken": ["a", 1]}"#),
            (422, Some("actions_taken[1]".into()))
        );
        assert_eq!(
            field_of(br#"{"goal": "x", "bogus": 1}"#),
            (422, Some("bogus".into()))
        );
        assert_eq!(
            field_of(br#"{"goal": "x", "environment": {"os": [3]}}"#),
            (422, Some("environment.os".into()))
        );
        assert_eq!(field_of(br#"[1,2]"#), (422, Some("body".into())));
        assert_eq!(field_of(br#"{"goal": "x"} trailing"#).0, 400);
        let non_utf8 = b"{\"goal\": \"\xff\xfe\"}";
        assert_eq!(field_of(non_utf8), (400, Some("goal".into())));
    }
}
