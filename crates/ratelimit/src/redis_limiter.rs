//! GCRA in Redis: one Lua script per decision (EVALSHA, loading the script on NOSCRIPT),
//! on the Redis server's clock, one key per bucket with an expiry at its TAT.

use std::fmt;
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{BuildError, Decision, Endpoint, Quota, TenantId, gcra};

const SCRIPT: &str = include_str!("gcra.lua");

/// Why Redis gave no decision. [`crate::Limiter`] answers these from the local limiter.
#[derive(Debug, thiserror::Error)]
pub enum RedisCheckError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the rate-limit script: {0}")]
    Reply(String),
}

/// Rate limits kept in Redis, shared by every gateway replica using the same key prefix.
/// Cheap to share (`Arc`); one multiplexed connection that reconnects by itself.
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisLimiter {
    // Not the connection: its client holds the URL, which may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://[:password@]host:port[/db]`, or `rediss://`
    /// for TLS) under `<key_prefix>:rl:`. Every call is bounded by `timeout`.
    ///
    /// Must be called inside a Tokio runtime. It does not wait for Redis: the connection
    /// (and the script) are set up in the background, so an unreachable Redis is not an
    /// error here but on each [`check`](Self::check).
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<Self, BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        let client = redis::Client::open(url).map_err(|e| BuildError::RedisUrl(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BuildError::RedisUrl(e.to_string()))?;
        let script = Script::new(SCRIPT);
        // Connect (and load the script) now, driven by a task of its own: a lazy connection
        // only progresses while a request waits on it, and requests give up after `timeout`.
        let warm_conn = conn.clone();
        let warm_script = script.clone();
        tokio::spawn(async move {
            let mut conn = warm_conn;
            let load = warm_script.load_async(&mut conn);
            match tokio::time::timeout(Duration::from_secs(5), load).await {
                Ok(Ok(_)) => tracing::debug!("rate-limit script loaded into redis"),
                Ok(Err(e)) => tracing::debug!(error = %e, "redis not reachable yet"),
                Err(_) => tracing::debug!("redis not reachable yet (connect timed out)"),
            }
        });
        Ok(Self {
            conn,
            script,
            prefix: key_prefix.to_owned(),
            timeout,
        })
    }

    /// The bucket's key: `<prefix>:rl:<tenant>:<endpoint>`.
    pub fn key(&self, tenant: TenantId, endpoint: Endpoint) -> String {
        format!("{}:rl:{tenant}:{}", self.prefix, endpoint.as_str())
    }

    /// One request of `tenant` on `endpoint` under `quota`, decided atomically in Redis.
    pub async fn check(
        &self,
        tenant: TenantId,
        endpoint: Endpoint,
        quota: Quota,
    ) -> Result<Decision, RedisCheckError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(self.key(tenant, endpoint));
        invocation.arg(gcra::interval_us(&quota)).arg(quota.limit());
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| RedisCheckError::Timeout(self.timeout))??;
        decision_from_reply(&reply, quota)
    }
}

/// `{allowed, remaining, reset_after µs, retry_after µs}` from `gcra.lua`.
fn decision_from_reply(reply: &[i64], quota: Quota) -> Result<Decision, RedisCheckError> {
    let &[allowed, remaining, reset_us, retry_us] = reply else {
        return Err(RedisCheckError::Reply(format!("{reply:?}")));
    };
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let allowed = match allowed {
        1 => true,
        0 => false,
        _ => return Err(RedisCheckError::Reply(format!("{reply:?}"))),
    };
    Ok(Decision {
        allowed,
        limit: quota.limit(),
        window: quota.period(),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset_after: micros(reset_us),
        retry_after: (!allowed).then(|| micros(retry_us)),
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn replies_map_to_decisions() {
        let q = Quota::per_minute(NonZeroU32::new(100).expect("non-zero"));
        let d = decision_from_reply(&[1, 99, 600_000, 0], q).expect("valid");
        assert!(d.allowed && d.retry_after.is_none());
        assert_eq!((d.limit, d.remaining), (100, 99));
        assert_eq!(d.reset_after, Duration::from_millis(600));
        let d = decision_from_reply(&[0, 0, 60_000_000, 250], q).expect("valid");
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_micros(250)));
        assert!(decision_from_reply(&[1, 2, 3], q).is_err());
        assert!(decision_from_reply(&[2, 0, 0, 0], q).is_err());
    }
}
