//! The crate's error type and its one mapping onto [`VectorStoreError`].

use std::path::PathBuf;

use common::vector::VectorStoreError;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file system refused (permissions, disk full, ...).
    #[error("index I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded database failed.
    #[error("index storage failed: {0}")]
    Storage(#[from] redb::Error),
    /// Another process (or another handle in this one) holds the index open.
    #[error("the index at {} is already open", .0.display())]
    AlreadyOpen(PathBuf),
    /// A vector (or the index on disk) has a different dimension than this index.
    #[error("index holds {expected}-dimensional vectors, got {actual}")]
    DimensionMismatch { expected: usize, actual: usize },
    /// A stored record could not be decoded.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: String, reason: String },
    /// The request itself is malformed (bad `k`, reserved metadata key, ...).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The HNSW graph library reported an error.
    #[error("ANN graph error: {0}")]
    Ann(String),
    /// A blocking task died (panicked or was cancelled).
    #[error("index worker task failed: {0}")]
    Task(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Storage(e.into())
            }
        }
    )*};
}

storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<IndexError> for VectorStoreError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Io(e) => VectorStoreError::Unavailable(e.to_string()),
            IndexError::Storage(e) => match e {
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen => {
                    VectorStoreError::Unavailable(e.to_string())
                }
                other => VectorStoreError::Internal(other.to_string()),
            },
            IndexError::AlreadyOpen(_) => VectorStoreError::Unavailable(e.to_string()),
            IndexError::DimensionMismatch { expected, actual } => {
                VectorStoreError::DimensionMismatch { expected, actual }
            }
            IndexError::Corrupt { .. } | IndexError::Ann(_) | IndexError::Task(_) => {
                VectorStoreError::Internal(e.to_string())
            }
            IndexError::InvalidArgument(msg) => VectorStoreError::InvalidArgument(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_contract() {
        let io = IndexError::Io(std::io::Error::other("disk full"));
        assert!(matches!(
            VectorStoreError::from(io),
            VectorStoreError::Unavailable(_)
        ));
        assert_eq!(
            VectorStoreError::from(IndexError::DimensionMismatch {
                expected: 384,
                actual: 512
            }),
            VectorStoreError::DimensionMismatch {
                expected: 384,
                actual: 512
            }
        );
        assert!(matches!(
            VectorStoreError::from(IndexError::InvalidArgument("k".into())),
            VectorStoreError::InvalidArgument(_)
        ));
        assert!(matches!(
            VectorStoreError::from(IndexError::Storage(redb::Error::Corrupted("x".into()))),
            VectorStoreError::Internal(_)
        ));
    }
}
