//! The one mapping from gateway failures to HTTP: status code, `Retry-After`, and the
//! documented JSON error envelope (docs/API.md):
//!
//! ```json
//! {"error": {"code": "validation_failed", "message": "...", "field": "goal",
//!            "details": [{"field": "...", "code": "...", "message": "..."}],
//!            "request_id": "..."}}
//! ```
//!
//! 5xx bodies never carry internals; the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use common::FieldError;
use serde::Serialize;

/// Seconds a client should wait before retrying when a dependency is unavailable.
pub const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (syntax error, truncated, not UTF-8).
    #[error("request body is not valid JSON: {message}")]
    InvalidJson {
        message: String,
        field: Option<String>,
    },
    /// The JSON is well-formed but a field is missing, of the wrong type, unknown or out of
    /// its documented limits.
    #[error("validation failed: {}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Validation(Vec<FieldError>),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    #[error("missing X-API-Key header")]
    MissingApiKey,
    #[error("invalid API key")]
    InvalidApiKey,
    /// The customer is suspended: every request with its keys is refused.
    #[error("this account is suspended; contact support")]
    Suspended,
    /// The key lacks the scope the endpoint needs.
    #[error("this API key lacks the `{}` scope", .0.as_str())]
    InsufficientScope(common::tenancy::Scope),
    /// `/admin/v1` without a valid admin credential (a tenant key never is one).
    #[error("missing or invalid admin credential (Authorization: Bearer <admin token>)")]
    InvalidAdminCredential,
    #[error("{0}")]
    NotFound(String),
    /// An `Idempotency-Key` was reused with a different request body.
    #[error("Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    /// An `Idempotency-Key` was reused for an episode that has since been deleted.
    #[error(
        "the episode captured with this Idempotency-Key ({0}) was deleted; send a new key to capture it again"
    )]
    EpisodeDeleted(common::EpisodeId),
    /// The month's capture quota (plus any overage allowance) is spent.
    #[error("the monthly capture quota is spent ({used} captured, quota {limit}); it resets at {}", .resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())]
    QuotaExceeded {
        limit: u64,
        hard_limit: u64,
        used: u64,
        resets_at: time::OffsetDateTime,
    },
    /// A dependency (NATS, the database) is unreachable; retry later.
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    /// A dependency did not answer within the request's deadline (the retriever).
    #[error("upstream timed out: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, code, message)])
    }

    /// Machine-readable error code (part of the public API).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::Validation(_) => "validation_failed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MissingApiKey => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::Suspended => "account_suspended",
            ApiError::InsufficientScope(_) => "insufficient_scope",
            ApiError::InvalidAdminCredential => "invalid_admin_credential",
            ApiError::NotFound(_) => "not_found",
            ApiError::IdempotencyMismatch => "idempotency_key_mismatch",
            ApiError::EpisodeDeleted(_) => "episode_deleted",
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::Timeout(_) => "upstream_timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<serde_json::Value>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::IdempotencyMismatch => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingApiKey
            | ApiError::InvalidApiKey
            | ApiError::InvalidAdminCredential => StatusCode::UNAUTHORIZED,
            ApiError::Suspended | ApiError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::EpisodeDeleted(_) => StatusCode::CONFLICT,
            ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (message, field, details): (String, Option<&str>, &[FieldError]) = match self {
            ApiError::Unavailable(cause) => {
                tracing::warn!(error.code = self.code(), cause = %cause, "dependency unavailable");
                (
                    "a dependency is temporarily unavailable; retry later".to_owned(),
                    None,
                    &[],
                )
            }
            ApiError::Timeout(cause) => {
                tracing::warn!(error.code = self.code(), cause = %cause, "dependency timed out");
                (
                    "the request was not answered in time; retry later".to_owned(),
                    None,
                    &[],
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(error.code = self.code(), cause = %cause, "internal error");
                ("internal error".to_owned(), None, &[])
            }
            ApiError::InvalidJson { field, .. } => (self.to_string(), field.as_deref(), &[]),
            ApiError::Validation(errors) => (
                self.to_string(),
                errors.first().map(|e| e.field.as_str()),
                errors.as_slice(),
            ),
            _ => (self.to_string(), None, &[]),
        };
        let mut builder = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT {
            builder.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        if matches!(self, ApiError::InvalidAdminCredential) {
            builder.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"admin\""),
            ));
        } else if status == StatusCode::UNAUTHORIZED {
            builder.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey header=\"X-API-Key\""),
            ));
        }
        let mut quota = None;
        if let ApiError::QuotaExceeded {
            limit,
            hard_limit,
            used,
            resets_at,
        } = self
        {
            let wait = (*resets_at - time::OffsetDateTime::now_utc())
                .whole_seconds()
                .max(1);
            builder.insert_header((header::RETRY_AFTER, HeaderValue::from(wait)));
            quota = Some(serde_json::json!({
                "limit": limit,
                "hard_limit": hard_limit,
                "used": used,
                "resets_at": resets_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }));
        }
        builder.json(Envelope {
            error: Body {
                code: self.code(),
                message,
                field,
                details,
                quota,
            },
        })
    }
}

impl From<db::DbError> for ApiError {
    fn from(e: db::DbError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(format!("database: {e}"))
        } else {
            ApiError::Internal(format!("database: {e}"))
        }
    }
}

impl From<bus::BusError> for ApiError {
    fn from(e: bus::BusError) -> Self {
        match e {
            bus::BusError::PayloadTooLarge { max, .. } => ApiError::PayloadTooLarge { limit: max },
            other => ApiError::Unavailable(format!("event bus: {other}")),
        }
    }
}
