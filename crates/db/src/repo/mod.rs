//! Repository functions: domain types in, domain types out.

pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod captures;
pub(crate) mod deletions;
pub(crate) mod episodes;
pub(crate) mod feedback;
pub(crate) mod tenants;
pub(crate) mod usage;

use std::str::FromStr;

use time::OffsetDateTime;

use crate::DbError;

/// The result of an idempotent insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row was written.
    Inserted,
    /// A row with the same primary key already existed; nothing was changed.
    AlreadyExists,
}

impl InsertOutcome {
    fn from_rows(rows: usize) -> Self {
        if rows == 0 {
            InsertOutcome::AlreadyExists
        } else {
            InsertOutcome::Inserted
        }
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    common::time_util::to_unix_micros(t)
}

fn from_micros(m: i64) -> OffsetDateTime {
    common::time_util::from_unix_micros(m)
}

/// Parses a stored id (or any `FromStr` value), reporting a corrupt row on failure.
fn parse_col<T>(table: &'static str, column: &str, value: &str) -> Result<T, DbError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| DbError::corrupt(table, format!("{column}: {e}")))
}
