//! Connection settings.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::DbError;

/// How to reach the database.
///
/// `url` is `postgres://user:pass@host:5432/db` (also `postgresql://`), or for the embedded
/// default `sqlite:///absolute/path/file.db`, `sqlite://relative/file.db` or `sqlite::memory:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    pub url: SecretString,
    /// Pool size for PostgreSQL. SQLite always uses a single connection (one writer), which is
    /// what makes concurrent writes from many tasks safe.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bound on establishing a connection and on waiting for a pooled one.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_max_connections() -> usize {
    10
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for DbConfig {
    /// A local PostgreSQL database named `episodic`.
    fn default() -> Self {
        Self::new("postgres://postgres@127.0.0.1:5432/episodic")
    }
}

impl DbConfig {
    /// A configuration with default pool size and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// A parsed database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Postgres,
    /// A file path, or `:memory:`.
    Sqlite(String),
}

impl Target {
    pub(crate) fn parse(url: &SecretString) -> Result<Self, DbError> {
        let url = url.expose_secret();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                // Never echo the URL: it may carry a password.
                DbError::Config(
                    "database url must start with postgres://, postgresql:// or sqlite:".into(),
                )
            })?;
        if path.is_empty() {
            return Err(DbError::Config("sqlite url has no path".into()));
        }
        Ok(Target::Sqlite(path.to_owned()))
    }

    /// The directory that must exist for a SQLite file, if any.
    pub(crate) fn sqlite_parent(path: &str) -> Option<PathBuf> {
        if path == ":memory:" || path.starts_with("file:") {
            return None;
        }
        PathBuf::from(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, DbError> {
        Target::parse(&SecretString::from(url.to_owned()))
    }

    #[test]
    fn urls_parse_into_targets() {
        assert_eq!(parse("postgres://u:p@h/db").ok(), Some(Target::Postgres));
        assert_eq!(parse("postgresql://h/db").ok(), Some(Target::Postgres));
        assert_eq!(
            parse("sqlite:///var/lib/em/db.sqlite").ok(),
            Some(Target::Sqlite("/var/lib/em/db.sqlite".into()))
        );
        assert_eq!(
            parse("sqlite://data/em.db").ok(),
            Some(Target::Sqlite("data/em.db".into()))
        );
        assert_eq!(
            parse("sqlite::memory:").ok(),
            Some(Target::Sqlite(":memory:".into()))
        );
        assert!(matches!(parse("mysql://x"), Err(DbError::Config(_))));
        assert!(matches!(parse("sqlite://"), Err(DbError::Config(_))));
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let c: DbConfig =
            serde_json::from_str(r#"{"url":"sqlite::memory:","connect_timeout":"2s"}"#)
                .expect("valid config");
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<DbConfig>(r#"{"url":"x","nope":1}"#).is_err());
    }

    #[test]
    fn sqlite_parent_dirs() {
        assert_eq!(Target::sqlite_parent(":memory:"), None);
        assert_eq!(Target::sqlite_parent("x.db"), None);
        assert_eq!(
            Target::sqlite_parent("/a/b/x.db"),
            Some(PathBuf::from("/a/b"))
        );
    }
}
