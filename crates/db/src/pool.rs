//! The connection pools and the one place that knows there are two backends.

use std::fmt;
use std::time::Duration;

use deadpool::Runtime;
use diesel::SqliteConnection;
use diesel::sql_types::Integer;
use diesel::{ConnectionError, IntoSql};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use secrecy::{ExposeSecret, SecretString};

use crate::DbError;
use crate::config::{DbConfig, Target};

/// The async face of a SQLite connection: each query runs on the blocking pool.
pub(crate) type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Settings every SQLite connection gets: WAL (readers never block the writer), FULL sync
/// (a committed episode survives power loss), enforced foreign keys, and a busy timeout for
/// the rare second process.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 10000;";

/// How long a task may queue for the single SQLite connection before giving up.
const SQLITE_MIN_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) enum Pools {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite(Pool<SqliteConn>),
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A handle to the system of record: a connection pool for PostgreSQL or SQLite. Cheap to
/// clone (the pools are reference counted). Every repository function is a method on it.
#[derive(Clone)]
pub struct Db {
    pub(crate) pools: Pools,
    pub(crate) url: SecretString,
    pub(crate) connect_timeout: Duration,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Runs the same diesel code against whichever backend `db` uses.
///
/// The body is expanded once per backend, with `$conn` bound to `&mut AsyncPgConnection` in
/// one arm and `&mut SyncConnectionWrapper<SqliteConnection>` in the other, so each query is
/// written once and type-checked against both query builders. The body evaluates to a
/// `QueryResult<T>`; checking out a connection returns early with [`DbError`].
macro_rules! with_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &$db.pools {
            $crate::pool::Pools::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let $conn: &mut ::diesel_async::AsyncPgConnection = &mut pooled;
                $body
            }
            $crate::pool::Pools::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let $conn: &mut $crate::pool::SqliteConn = &mut pooled;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

impl Db {
    /// Builds the pool and checks out one connection, so an unreachable database fails here
    /// with [`DbError::Unavailable`] (within `connect_timeout`) rather than on first use.
    /// Does not run migrations: see [`Db::migrate`].
    pub async fn connect(config: &DbConfig) -> Result<Db, DbError> {
        if config.max_connections == 0 {
            return Err(DbError::Config("max_connections must be at least 1".into()));
        }
        let timeout = config.connect_timeout;
        let pools = match Target::parse(&config.url)? {
            Target::Postgres => {
                let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
                // A broken connection is detected by diesel-async and dropped; callers retry
                // `Unavailable`. Verifying every checkout would double each round trip.
                manager_config.recycling_method = RecyclingMethod::Fast;
                manager_config.custom_setup = Box::new(move |url| {
                    Box::pin(async move {
                        tokio::time::timeout(timeout, AsyncPgConnection::establish(url))
                            .await
                            .map_err(|_| {
                                ConnectionError::BadConnection(format!(
                                    "timed out after {timeout:?} connecting to PostgreSQL"
                                ))
                            })?
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(
                    config.url.expose_secret(),
                    manager_config,
                );
                let pool = Pool::builder(manager)
                    .max_size(config.max_connections)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(timeout))
                    .create_timeout(Some(timeout))
                    .recycle_timeout(Some(timeout))
                    .build()
                    .map_err(|e| DbError::Config(e.to_string()))?;
                Pools::Postgres(pool)
            }
            Target::Sqlite(path) => {
                if let Some(dir) = Target::sqlite_parent(&path) {
                    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                        DbError::Config(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let mut manager_config = ManagerConfig::<SqliteConn>::default();
                manager_config.recycling_method = RecyclingMethod::Fast;
                manager_config.custom_setup = Box::new(|path| {
                    Box::pin(async move {
                        let mut conn = SqliteConn::establish(path).await?;
                        conn.batch_execute(SQLITE_PRAGMAS)
                            .await
                            .map_err(ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(path, manager_config);
                let pool = Pool::builder(manager)
                    // One writer: SQLite serialises writes anyway, and a single connection
                    // means no task ever sees SQLITE_BUSY; tasks queue on the pool instead.
                    .max_size(1)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(timeout.max(SQLITE_MIN_WAIT)))
                    .create_timeout(Some(timeout.max(SQLITE_MIN_WAIT)))
                    .recycle_timeout(Some(timeout))
                    .build()
                    .map_err(|e| DbError::Config(e.to_string()))?;
                Pools::Sqlite(pool)
            }
        };
        let db = Db {
            pools,
            url: config.url.clone(),
            connect_timeout: timeout,
        };
        db.health().await?;
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Postgres(_) => Backend::Postgres,
            Pools::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// A round trip to the database (`SELECT 1`), for readiness probes.
    pub async fn health(&self) -> Result<(), DbError> {
        let one = with_conn!(self, |conn| {
            diesel::select(1_i32.into_sql::<Integer>())
                .get_result::<i32>(conn)
                .await
        })
        .map_err(|e| match DbError::from(e) {
            DbError::Internal(cause) => DbError::Unavailable(cause),
            other => other,
        })?;
        if one == 1 {
            Ok(())
        } else {
            Err(DbError::unavailable(
                "health check returned an unexpected value",
            ))
        }
    }

    /// Closes the pool: pending and future checkouts fail with [`DbError::Unavailable`].
    pub fn close(&self) {
        match &self.pools {
            Pools::Postgres(pool) => pool.close(),
            Pools::Sqlite(pool) => pool.close(),
        }
    }
}
