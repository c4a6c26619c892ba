//! `POST /api/v1/episodes/{id}/feedback`: was this episode helpful?

use actix_web::{HttpRequest, HttpResponse, web};
use common::FieldError;
use common::tenancy::Scope;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::lifecycle::NOTE_MAX_CHARS;
use crate::routes::episodes::episode_id;
use crate::routes::{read_json, tenant};

/// Largest feedback body (a 1,000-character note is at most 4,000 bytes of UTF-8, or
/// 6,000 as JSON escapes).
const BODY_LIMIT: usize = 16 * 1024;

/// The body, strict: unknown fields are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackFields {
    #[serde(default)]
    helpful: Option<bool>,
    #[serde(default)]
    note: Option<String>,
}

/// Validated feedback.
#[derive(Debug, PartialEq, Eq)]
struct Feedback {
    helpful: bool,
    /// Absent when empty or blank.
    note: Option<String>,
}

impl Feedback {
    fn parse(fields: FeedbackFields) -> Result<Feedback, ApiError> {
        let mut errors = Vec::new();
        if fields.helpful.is_none() {
            errors.push(FieldError::new(
                "helpful",
                "required",
                "helpful (true or false) is required",
            ));
        }
        let note = fields.note.filter(|n| !n.trim().is_empty());
        if let Some(n) = &note {
            if n.contains('\0') {
                errors.push(FieldError::new(
                    "note",
                    "nul_byte",
                    "must not contain NUL bytes",
                ));
            } else if n.chars().count() > NOTE_MAX_CHARS {
                errors.push(FieldError::new(
                    "note",
                    "too_long",
                    format!("must be at most {NOTE_MAX_CHARS} characters"),
                ));
            }
        }
        match (fields.helpful, errors.is_empty()) {
            (Some(helpful), true) => Ok(Feedback { helpful, note }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[derive(Serialize)]
struct CountsBody {
    episode_id: String,
    helpful_count: u64,
    unhelpful_count: u64,
}

pub async fn feedback(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req, &state, Scope::EpisodesWrite).await?;
    let id = episode_id(&path)?;
    let feedback = Feedback::parse(read_json(&req, payload, BODY_LIMIT).await?)?;
    let counts = state
        .lifecycle
        .feedback(tenant, id, feedback.helpful, feedback.note.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(CountsBody {
        episode_id: id.to_string(),
        helpful_count: counts.helpful,
        unhelpful_count: counts.unhelpful,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::parse_json;

    fn field(body: &str) -> Option<String> {
        match parse_json::<FeedbackFields>(body.as_bytes()).and_then(Feedback::parse) {
            Ok(_) => None,
            Err(ApiError::Validation(errors)) => errors.first().map(|e| e.field.clone()),
            Err(other) => Some(format!("unexpected {other:?}")),
        }
    }

    #[test]
    fn feedback_is_strict() {
        assert_eq!(field(r#"{"helpful": true}"#), None);
        assert_eq!(field(r#"{"helpful": false, "note": "stale advice"}"#), None);
        assert_eq!(field(r#"{"helpful": false, "note": null}"#), None);
        assert_eq!(field(r#"{}"#).as_deref(), Some("helpful"));
        assert_eq!(field(r#"{"helpful": "yes"}"#).as_deref(), Some("helpful"));
        assert_eq!(
            field(r#"{"helpful": true, "score": 5}"#).as_deref(),
            Some("score")
        );
        let long = format!(r#"{{"helpful": true, "note": "{}"}}"#, "é".repeat(1001));
        assert_eq!(field(&long).as_deref(), Some("note"));
        let at_limit = format!(r#"{{"helpful": true, "note": "{}"}}"#, "é".repeat(1000));
        assert_eq!(field(&at_limit), None);
        let blank = parse_json::<FeedbackFields>(br#"{"helpful": true, "note": "  "}"#)
            .and_then(Feedback::parse)
            .ok();
        assert_eq!(blank.and_then(|f| f.note), None);
    }
}
