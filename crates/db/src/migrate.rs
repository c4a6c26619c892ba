//! Embedded migrations, run without libpq: PostgreSQL through diesel-async's
//! `AsyncConnectionWrapper` on the blocking pool, SQLite on its pooled connection.

use diesel::RunQueryDsl as _;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use secrecy::ExposeSecret;

use crate::pool::Pools;
use crate::{Db, DbError};

/// The one set of migrations, in portable SQL, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises concurrent `migrate` calls from several services starting at once.
const PG_MIGRATION_LOCK: i64 = 0x4550_4953_4f44_4943; // "EPISODIC"

impl Db {
    /// Applies pending migrations and returns the versions it applied (none when the schema is
    /// current, so calling it again is a no-op), then fills in derived columns of rows written
    /// before their migration (the episodes' tool and tag keys).
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let applied = match &self.pools {
            Pools::Postgres(_) => {
                let conn = tokio::time::timeout(
                    self.connect_timeout,
                    AsyncPgConnection::establish(self.url.expose_secret()),
                )
                .await
                .map_err(|_| DbError::unavailable("timed out connecting to run migrations"))??;
                tokio::task::spawn_blocking(move || {
                    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
                    diesel::sql_query(format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))
                        .execute(&mut conn)?;
                    let result = run(&mut conn);
                    // Closing the connection releases the lock too; this is belt and braces.
                    let _unlocked = diesel::sql_query(format!(
                        "SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"
                    ))
                    .execute(&mut conn);
                    result
                })
                .await
                .map_err(|e| DbError::Internal(e.into()))??
            }
            Pools::Sqlite(pool) => {
                let mut conn = pool.get().await?;
                conn.spawn_blocking(|conn| Ok(run(conn)))
                    .await
                    .map_err(DbError::from)??
            }
        };
        if !applied.is_empty() {
            tracing::info!(
                backend = self.backend().as_str(),
                ?applied,
                "applied migrations"
            );
        }
        // Data that a migration cannot compute in portable SQL.
        let filled = self.fill_label_keys().await?;
        if filled > 0 {
            tracing::info!(episodes = filled, "filled in tool and tag keys");
        }
        Ok(applied)
    }
}

fn run<C, DB>(conn: &mut C) -> Result<Vec<String>, DbError>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
{
    conn.run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(DbError::Migration)
}
