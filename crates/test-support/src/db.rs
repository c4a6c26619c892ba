//! A fresh, migrated database per test: a uniquely named PostgreSQL database (dropped again
//! when the [`TestDb`] is dropped) or a SQLite file in a temporary directory.
//!
//! PostgreSQL is reached at `postgres://postgres@127.0.0.1:5432/postgres` unless
//! `EM_TEST_PG_ADMIN_URL` says otherwise. Databases are created and dropped with diesel-async
//! (tokio-postgres), so neither libpq nor `psql` is needed.

use std::time::Duration;

use db::{Db, DbConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// Environment variable naming the PostgreSQL admin URL tests create databases with.
pub const PG_ADMIN_URL_ENV: &str = "EM_TEST_PG_ADMIN_URL";
const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that lives as long as this value.
pub struct TestDb {
    /// A connected, migrated handle.
    pub db: Db,
    /// The URL of the database (`postgres://…/em_test_…` or `sqlite:///tmp/…/test.db`).
    pub url: String,
    // Declared after `db`, so the pool is dropped before the database is.
    _cleanup: Cleanup,
}

/// Held for its `Drop`: drops the PostgreSQL database or deletes the SQLite directory.
#[allow(dead_code, reason = "the values are held only for their Drop")]
enum Cleanup {
    Postgres(DropDatabase),
    Sqlite(tempfile::TempDir),
}

/// Drops a PostgreSQL test database (best effort, `WITH (FORCE)`) when dropped.
struct DropDatabase {
    admin_url: String,
    name: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("url", &self.url).finish()
    }
}

impl TestDb {
    /// Creates `em_test_<uuid>` on the admin server, connects and migrates it.
    ///
    /// # Panics
    /// If PostgreSQL cannot be reached or the database cannot be created: tests need it.
    pub async fn postgres() -> TestDb {
        let admin_url =
            std::env::var(PG_ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned());
        let name = format!("em_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach PostgreSQL for tests (set {PG_ADMIN_URL_ENV}): {e}")
            });
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        drop(admin);
        let url = with_database(&admin_url, &name);
        // Built before connecting, so a failure (panic) below still drops the database.
        let cleanup = Cleanup::Postgres(DropDatabase { admin_url, name });
        let db = connect_and_migrate(&url).await;
        TestDb {
            db,
            url,
            _cleanup: cleanup,
        }
    }

    /// A SQLite database in a fresh temporary directory, connected and migrated.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let db = connect_and_migrate(&url).await;
        TestDb {
            db,
            url,
            _cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A configuration for this database, e.g. to hand to a service under test.
    pub fn config(&self) -> DbConfig {
        DbConfig {
            connect_timeout: Duration::from_secs(10),
            ..DbConfig::new(self.url.clone())
        }
    }
}

async fn connect_and_migrate(url: &str) -> Db {
    let config = DbConfig {
        connect_timeout: Duration::from_secs(10),
        ..DbConfig::new(url)
    };
    let db = Db::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test database: {e:?}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("cannot migrate test database: {e:?}"));
    db
}

/// `admin_url` with its database name replaced by `name` (query parameters kept).
fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await, and may run inside a runtime: use a thread with its own.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let drop_it = async {
                    let mut admin = AsyncPgConnection::establish(&admin_url).await.ok()?;
                    admin.batch_execute(&sql).await.ok()
                };
                // Best effort: never hang a test run on cleanup.
                let _ = tokio::time::timeout(Duration::from_secs(10), drop_it).await;
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
