//! The one error type of the system of record.

use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};

/// A boxed cause, kept for the log line at the boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong talking to the database.
///
/// Only [`DbError::Unavailable`] is transient ([`DbError::is_transient`]): a NATS handler naks
/// and retries it, an HTTP handler answers 503. Everything else is permanent for that input.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot serve the request right now: connection refused or lost, pool
    /// exhausted, connect/acquire timeout, lock contention, serialization failure, shutdown.
    #[error("database unavailable: {0}")]
    Unavailable(BoxError),
    /// A uniqueness or foreign-key constraint rejected the write (e.g. a duplicate API key id
    /// or a key for an unknown tenant).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The configuration is unusable (unknown URL scheme, bad pool size).
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// Migrations could not be applied.
    #[error("database migration failed")]
    Migration(#[source] BoxError),
    /// A stored row does not parse back into its domain type.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// Anything else: a bug or an unexpected database answer.
    #[error("internal database error")]
    Internal(#[source] BoxError),
}

impl DbError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Conflict(_)
            | DbError::Config(_)
            | DbError::Migration(_)
            | DbError::Corrupt { .. }
            | DbError::Internal(_) => false,
        }
    }

    pub(crate) fn corrupt(table: &'static str, reason: impl ToString) -> Self {
        DbError::Corrupt {
            table,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        DbError::Unavailable(message.into().into())
    }
}

/// Messages of errors that diesel reports as `DatabaseErrorKind::Unknown` but that are worth
/// retrying: SQLite lock contention, PostgreSQL shutdown/restart/overload and deadlocks.
const TRANSIENT_MESSAGES: [&str; 8] = [
    "database is locked",
    "database table is locked",
    "terminating connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "too many clients",
    "deadlock detected",
];

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(kind, info) => match kind {
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::ForeignKeyViolation => {
                    DbError::Conflict(info.message().to_owned())
                }
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ReadOnlyTransaction => {
                    DbError::Unavailable(info.message().to_owned().into())
                }
                _ if TRANSIENT_MESSAGES
                    .iter()
                    .any(|m| info.message().contains(m)) =>
                {
                    DbError::Unavailable(info.message().to_owned().into())
                }
                _ => DbError::Internal(info.message().to_owned().into()),
            },
            other => DbError::Internal(other.into()),
        }
    }
}

impl From<ConnectionError> for DbError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::InvalidConnectionUrl(m) => DbError::Config(m),
            other => DbError::Unavailable(other.into()),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for DbError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        use deadpool::managed::PoolError;
        use diesel_async::pooled_connection::PoolError as ManagerError;
        match e {
            PoolError::Backend(ManagerError::ConnectionError(c)) => c.into(),
            PoolError::Backend(ManagerError::QueryError(q)) => match DbError::from(q) {
                DbError::Internal(cause) => DbError::Unavailable(cause),
                other => other,
            },
            PoolError::Timeout(kind) => {
                DbError::unavailable(format!("timed out waiting for a connection ({kind:?})"))
            }
            PoolError::Closed => DbError::unavailable("the connection pool is closed"),
            PoolError::PostCreateHook(h) => DbError::Unavailable(h.to_string().into()),
            PoolError::NoRuntimeSpecified => {
                DbError::Internal("the connection pool has no runtime".into())
            }
        }
    }
}
