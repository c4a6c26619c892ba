//! Settings of one KyroDB connection (one server = one index = one [`VectorSpace`]).

use std::path::PathBuf;
use std::time::Duration;

use common::vector::VectorSpace;
use secrecy::SecretString;
use serde::Deserialize;

use crate::error::ConnectError;

/// KyroDB rejects `ef_search` above this.
pub const MAX_EF_SEARCH: u32 = 10_000;
/// KyroDB rejects `k` above this.
pub const MAX_K: usize = 1_000;
/// KyroDB accepts at most this many documents per bulk stream / batch delete.
pub const MAX_BATCH: usize = 10_000;

/// How to reach one KyroDB server and how to behave when it misbehaves.
///
/// Durations are human-readable in files and env vars (`"250ms"`, `"5s"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KyroDbConfig {
    /// `http://host:50051` (plaintext) or `https://host:50051` (requires `tls`).
    pub url: String,
    /// Which index this server holds; used in logs and spans.
    pub space: VectorSpace,
    /// The dimension our embeddings have. `connect` refuses a server with another.
    pub expected_dimension: usize,
    /// Sent as `x-api-key` metadata on every call when set.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// TLS (and optionally mTLS). Required for an `https` URL.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one RPC attempt (also sent as `grpc-timeout`).
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// HNSW search breadth sent with every search. Must be > 0: with 0 KyroDB may answer from
    /// its semantic query cache, i.e. with the ids and scores of an earlier, merely similar
    /// query, which would corrupt score-based gating.
    #[serde(default = "defaults::ef_search")]
    pub ef_search: u32,
    /// KyroDB applies metadata filters after the ANN step, so a filtered search can return
    /// fewer than k hits. We ask for `k * search_oversample` (at most 1000) and truncate.
    #[serde(default = "defaults::search_oversample")]
    pub search_oversample: u32,
}

/// TLS settings. Without `ca_cert_pem` the bundled WebPKI roots are trusted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that sign the server's certificate.
    #[serde(default)]
    pub ca_cert_pem: Option<PathBuf>,
    /// PEM client certificate for mTLS (requires `client_key_pem`).
    #[serde(default)]
    pub client_cert_pem: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_pem: Option<PathBuf>,
    /// Name to verify the server certificate against, when it differs from the URL's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// Retries of transient failures (UNAVAILABLE, RESOURCE_EXHAUSTED) with exponential backoff.
/// Timeouts are not retried: the deadline is the caller's budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per call including the first; 1 disables retries.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::base_backoff", with = "humantime_serde")]
    pub base_backoff: Duration,
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Fraction (0..=1) of each backoff that is randomised away, to spread retries.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
}

/// Circuit breaker around every call: after `failure_threshold` consecutive server-side
/// failures it opens and fails fast with `CircuitOpen` for `open_for`, then lets one probe
/// through (half-open); the probe's outcome closes or re-opens it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "defaults::open_for", with = "humantime_serde")]
    pub open_for: Duration,
}

mod defaults {
    use std::time::Duration;

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn ef_search() -> u32 {
        96
    }
    pub fn search_oversample() -> u32 {
        4
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn base_backoff() -> Duration {
        Duration::from_millis(50)
    }
    pub fn max_backoff() -> Duration {
        Duration::from_secs(2)
    }
    pub fn jitter() -> f64 {
        0.5
    }
    pub fn failure_threshold() -> u32 {
        5
    }
    pub fn open_for() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            base_backoff: defaults::base_backoff(),
            max_backoff: defaults::max_backoff(),
            jitter: defaults::jitter(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: defaults::failure_threshold(),
            open_for: defaults::open_for(),
        }
    }
}

impl Default for KyroDbConfig {
    /// The seed deployment's text instance: `http://127.0.0.1:50051`, 384 dimensions.
    fn default() -> Self {
        Self::new(
            "http://127.0.0.1:50051",
            VectorSpace::Text,
            common::TEXT_DIM,
        )
    }
}

impl KyroDbConfig {
    /// A config with every optional setting at its default.
    pub fn new(url: impl Into<String>, space: VectorSpace, expected_dimension: usize) -> Self {
        Self {
            url: url.into(),
            space,
            expected_dimension,
            api_key: None,
            tls: None,
            connect_timeout: defaults::connect_timeout(),
            request_timeout: defaults::request_timeout(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            ef_search: defaults::ef_search(),
            search_oversample: defaults::search_oversample(),
        }
    }

    /// Checks every invariant `connect` relies on.
    pub fn validate(&self) -> Result<(), ConnectError> {
        let bad = |msg: String| Err(ConnectError::InvalidConfig(msg));
        let https = self.url.starts_with("https://");
        if !https && !self.url.starts_with("http://") {
            return bad(format!(
                "url must start with http:// or https://, got {:?}",
                self.url
            ));
        }
        if https && self.tls.is_none() {
            return bad("an https url needs a [tls] section".into());
        }
        if !https && self.tls.is_some() {
            return bad("tls is configured but the url is http://; use https://".into());
        }
        if let Some(tls) = &self.tls
            && tls.client_cert_pem.is_some() != tls.client_key_pem.is_some()
        {
            return bad("mTLS needs both client_cert_pem and client_key_pem".into());
        }
        if self.expected_dimension == 0 {
            return bad("expected_dimension must be > 0".into());
        }
        if self.ef_search == 0 || self.ef_search > MAX_EF_SEARCH {
            return bad(format!(
                "ef_search must be in 1..={MAX_EF_SEARCH} (0 lets KyroDB answer from its \
                 semantic cache), got {}",
                self.ef_search
            ));
        }
        if self.search_oversample == 0 {
            return bad("search_oversample must be >= 1".into());
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("connect_timeout and request_timeout must be > 0".into());
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts must be >= 1".into());
        }
        if self.retry.base_backoff > self.retry.max_backoff {
            return bad("retry.base_backoff must not exceed retry.max_backoff".into());
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return bad(format!(
                "retry.jitter must be in 0..=1, got {}",
                self.retry.jitter
            ));
        }
        if self.breaker.failure_threshold == 0 {
            return bad("breaker.failure_threshold must be >= 1".into());
        }
        if self.breaker.open_for.is_zero() {
            return bad("breaker.open_for must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserialises_with_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let cfg: KyroDbConfig = serde_json::from_str(
            r#"{"url": "http://127.0.0.1:50051", "space": "text", "expected_dimension": 384,
                "request_timeout": "750ms", "retry": {"max_attempts": 5}}"#,
        )?;
        assert_eq!(cfg.request_timeout, Duration::from_millis(750));
        assert_eq!(cfg.retry.max_attempts, 5);
        assert_eq!(cfg.retry.base_backoff, Duration::from_millis(50));
        assert_eq!(cfg.ef_search, 96);
        assert!(cfg.api_key.is_none());
        cfg.validate()?;
        Ok(())
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(
            serde_json::from_str::<KyroDbConfig>(
                r#"{"url": "http://x:1", "space": "text", "expected_dimension": 3, "nope": 1}"#
            )
            .is_err()
        );
        let base = KyroDbConfig::new("http://127.0.0.1:1", VectorSpace::Text, 384);
        assert!(base.validate().is_ok());
        let mut c = base.clone();
        c.ef_search = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.url = "https://127.0.0.1:1".into();
        assert!(c.validate().is_err());
        c.tls = Some(TlsConfig::default());
        assert!(c.validate().is_ok());
        let mut c = base.clone();
        c.retry.jitter = 1.5;
        assert!(c.validate().is_err());
        let mut c = base;
        c.url = "127.0.0.1:1".into();
        assert!(c.validate().is_err());
    }
}
