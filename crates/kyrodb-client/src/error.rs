//! Errors: the one mapping from gRPC status codes to [`VectorStoreError`], and what can go
//! wrong while connecting.

use std::time::Duration;

use common::vector::VectorStoreError;
use tonic::Code;

/// Why [`crate::KyroDbStore::connect`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid KyroDB config: {0}")]
    InvalidConfig(String),
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to KyroDB at {url}: {message}")]
    Transport { url: String, message: String },
    #[error(
        "KyroDB at {url} serves {server}-dimensional vectors but this service is configured for \
         {expected}-dimensional {space} embeddings; refusing to start"
    )]
    DimensionMismatch {
        url: String,
        space: &'static str,
        expected: usize,
        server: u64,
    },
    #[error("KyroDB GetConfig failed: {0}")]
    Store(#[from] VectorStoreError),
}

/// The one mapping from a gRPC status to our error type. Exhaustive on purpose: a new code
/// must be classified, not defaulted.
///
/// `request_timeout` is reported for DEADLINE_EXCEEDED (the deadline we sent).
pub fn map_status(status: &tonic::Status, request_timeout: Duration) -> VectorStoreError {
    let msg = || status.message().to_owned();
    match status.code() {
        // A status of OK carried as an error is a protocol violation.
        Code::Ok => VectorStoreError::Internal(format!("unexpected OK status: {}", msg())),
        // The call was cancelled underneath us (connection dropped, server shutting down).
        Code::Cancelled => VectorStoreError::Unavailable(format!("cancelled: {}", msg())),
        Code::Unknown => VectorStoreError::Internal(format!("unknown: {}", msg())),
        Code::InvalidArgument => VectorStoreError::InvalidArgument(msg()),
        Code::DeadlineExceeded => VectorStoreError::Timeout(request_timeout),
        Code::NotFound => VectorStoreError::InvalidArgument(format!("not found: {}", msg())),
        Code::AlreadyExists => {
            VectorStoreError::InvalidArgument(format!("already exists: {}", msg()))
        }
        Code::PermissionDenied => {
            VectorStoreError::Unauthenticated(format!("permission denied: {}", msg()))
        }
        Code::ResourceExhausted => VectorStoreError::ResourceExhausted(msg()),
        // KyroDB uses it for server states (e.g. persistence disabled); not the caller's fault.
        Code::FailedPrecondition => {
            VectorStoreError::Internal(format!("failed precondition: {}", msg()))
        }
        Code::Aborted => VectorStoreError::Unavailable(format!("aborted: {}", msg())),
        Code::OutOfRange => VectorStoreError::InvalidArgument(format!("out of range: {}", msg())),
        Code::Unimplemented => VectorStoreError::Internal(format!(
            "server does not implement this RPC (version mismatch?): {}",
            msg()
        )),
        Code::Internal => VectorStoreError::Internal(msg()),
        Code::Unavailable => VectorStoreError::Unavailable(msg()),
        Code::DataLoss => VectorStoreError::Internal(format!("data loss: {}", msg())),
        Code::Unauthenticated => VectorStoreError::Unauthenticated(msg()),
    }
}

/// Whether the client itself retries after this error. Only failures where the request
/// certainly or probably did no harm and a later attempt can succeed: the server was
/// unreachable or shed load. Timeouts are not retried (the deadline is the budget), nor are
/// INTERNAL errors (KyroDB uses INTERNAL for bad vectors, which never succeed).
pub fn is_retryable(err: &VectorStoreError) -> bool {
    match err {
        VectorStoreError::Unavailable(_) | VectorStoreError::ResourceExhausted(_) => true,
        VectorStoreError::Timeout(_)
        | VectorStoreError::CircuitOpen
        | VectorStoreError::DimensionMismatch { .. }
        | VectorStoreError::InvalidArgument(_)
        | VectorStoreError::Unauthenticated(_)
        | VectorStoreError::Internal(_) => false,
    }
}

/// Whether this error counts against the circuit breaker: the server is down, slow,
/// overloaded or broken. Caller errors (bad arguments, credentials) do not.
pub fn counts_as_failure(err: &VectorStoreError) -> bool {
    match err {
        VectorStoreError::Unavailable(_)
        | VectorStoreError::Timeout(_)
        | VectorStoreError::ResourceExhausted(_)
        | VectorStoreError::Internal(_) => true,
        VectorStoreError::CircuitOpen
        | VectorStoreError::DimensionMismatch { .. }
        | VectorStoreError::InvalidArgument(_)
        | VectorStoreError::Unauthenticated(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        let t = Duration::from_millis(5);
        let m = |code| map_status(&tonic::Status::new(code, "m"), t);
        assert_eq!(
            m(Code::Unavailable),
            VectorStoreError::Unavailable("m".into())
        );
        assert_eq!(m(Code::DeadlineExceeded), VectorStoreError::Timeout(t));
        assert_eq!(
            m(Code::Unauthenticated),
            VectorStoreError::Unauthenticated("m".into())
        );
        assert_eq!(
            m(Code::InvalidArgument),
            VectorStoreError::InvalidArgument("m".into())
        );
        assert_eq!(
            m(Code::ResourceExhausted),
            VectorStoreError::ResourceExhausted("m".into())
        );
        assert_eq!(m(Code::Internal), VectorStoreError::Internal("m".into()));
        assert!(is_retryable(&m(Code::Unavailable)));
        assert!(is_retryable(&m(Code::Aborted)));
        assert!(!is_retryable(&m(Code::Internal)));
        assert!(!is_retryable(&m(Code::DeadlineExceeded)));
        assert!(counts_as_failure(&m(Code::DeadlineExceeded)));
        assert!(!counts_as_failure(&m(Code::InvalidArgument)));
    }
}
