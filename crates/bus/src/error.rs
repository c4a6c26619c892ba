use std::time::Duration;

/// Everything that can go wrong on the bus.
///
/// One mapping per protocol lives at the edges (gateway: HTTP status; consume loop: nak/term);
/// [`BusError::is_transient`] says whether retrying later can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached right now (NATS down or reconnecting, embedded bus closed).
    /// Retry later; the gateway answers 503 + Retry-After.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
    /// No answer (PubAck, reply, ack confirmation) within this time. The operation may or may
    /// not have taken effect; retrying with the same message id is safe.
    #[error("message bus operation timed out after {0:?}")]
    Timeout(Duration),
    /// The message (payload plus headers) is larger than the bus accepts.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    /// Nobody listens on the subject: no responder for a request, or no stream captures a
    /// published subject.
    #[error("no responders on subject {0}")]
    NoResponders(String),
    /// A stream or consumer does not exist (call `ensure_*` first).
    #[error("not found: {0}")]
    NotFound(String),
    /// The embedded bus's storage failed (SQLite error, disk full).
    #[error("message store error: {0}")]
    Storage(String),
    /// The server or the caller broke the protocol (invalid subject or header, bad config,
    /// unexpected server answer). Retrying the same thing will not help.
    #[error("message bus protocol error: {0}")]
    Protocol(String),
}

impl BusError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BusError::Unavailable(_)
            | BusError::Timeout(_)
            | BusError::NoResponders(_)
            | BusError::Storage(_) => true,
            BusError::PayloadTooLarge { .. } | BusError::NotFound(_) | BusError::Protocol(_) => {
                false
            }
        }
    }
}
