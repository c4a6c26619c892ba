//! Per-customer, per-endpoint rate limits for the gateway.
//!
//! The algorithm is GCRA (the generic cell rate algorithm): a quota of `N` requests per
//! period `P` admits a burst of `N` requests and then one request every `P / N`; it stores
//! one number per bucket, the theoretical arrival time (TAT). See [`gcra`] for the exact
//! guarantee.
//!
//! - [`RedisLimiter`] keeps the TAT in Redis (`<prefix>:rl:<tenant>:<endpoint>`) and decides
//!   atomically in one Lua script on the Redis clock, so every gateway replica agrees.
//! - [`LocalLimiter`] is the same algorithm in process (standalone mode, and the fallback).
//! - [`Limiter`] is what the gateway uses: built from [`RateLimitSettings`], it resolves the
//!   quota of a tier and endpoint and asks Redis or the local limiter. When Redis is
//!   unreachable or slow it fails open onto the local limiter; it never returns an error.
//!
//! [`Decision::headers`] renders the `RateLimit-Policy` / `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers-09, the older `RateLimit-Limit` / `-Remaining` /
//! `-Reset` trio and `Retry-After`, as plain name/value pairs.

pub mod gcra;
mod limiter;
mod local;
mod redis_limiter;
mod settings;

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use common::TenantId;
pub use common::tenancy::Tier;
pub use limiter::{FALLBACK_TOTAL, Limiter, REJECTED_TOTAL};
pub use local::LocalLimiter;
pub use redis_limiter::{RedisCheckError, RedisLimiter};
pub use settings::{EndpointLimits, EndpointOverrides, RateLimitSettings, TierOverrides};

/// The settings cannot make a limiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("rate_limits.window must be a whole number of seconds, at least 1s (got {0:?})")]
    Window(Duration),
    #[error("rate_limits.timeout must be more than zero")]
    ZeroTimeout,
    #[error("rate_limits.redis_url is not a usable Redis URL: {0}")]
    RedisUrl(String),
    #[error("the Redis rate limiter must be built inside a Tokio runtime")]
    NoRuntime,
}

/// A group of routes sharing one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /capture`.
    Capture,
    /// `POST /search`.
    Search,
    /// `POST /reflect`.
    Reflect,
    /// Reading, listing and deleting episodes, feedback.
    Episodes,
    /// The admin API (`/admin/v1`).
    Admin,
    /// Account export and erasure.
    Account,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Capture,
        Endpoint::Search,
        Endpoint::Reflect,
        Endpoint::Episodes,
        Endpoint::Admin,
        Endpoint::Account,
    ];

    /// The name in settings, Redis keys, metrics labels and the headers' policy name.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Capture => "capture",
            Endpoint::Search => "search",
            Endpoint::Reflect => "reflect",
            Endpoint::Episodes => "episodes",
            Endpoint::Admin => "admin",
            Endpoint::Account => "account",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown endpoint {0:?}; expected one of: capture, search, reflect, episodes, admin, account"
)]
pub struct UnknownEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = UnknownEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.as_str() == s.trim())
            .ok_or_else(|| UnknownEndpoint(s.to_owned()))
    }
}

/// `limit` requests per `period`, with a burst of `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period: Duration,
}

impl Quota {
    /// `limit` requests per `period`. A zero period is treated as one microsecond.
    pub const fn new(limit: NonZeroU32, period: Duration) -> Self {
        Self { limit, period }
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: NonZeroU32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    pub fn period(&self) -> Duration {
        self.period
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed (otherwise: 429).
    pub allowed: bool,
    /// The quota: requests per `window`.
    pub limit: u32,
    /// The length of the quota's window.
    pub window: Duration,
    /// Requests that would still be admitted right now (after this one, if allowed).
    pub remaining: u32,
    /// Until the bucket is full again (`remaining` back at `limit`) if no request comes.
    pub reset_after: Duration,
    /// When refused: until the next request can be admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// The response header fields for this decision under the policy `policy` (the gateway
    /// uses [`Endpoint::as_str`]):
    ///
    /// ```text
    /// ratelimit-policy: "search";q=500;w=60
    /// ratelimit: "search";r=499;t=1
    /// ratelimit-limit: 500
    /// ratelimit-remaining: 499
    /// ratelimit-reset: 1
    /// retry-after: 1              (only when refused)
    /// ```
    ///
    /// Seconds are rounded up; `Retry-After` is at least 1. Names are lower-case, so they
    /// can be given to `HeaderName::from_static`; characters of `policy` outside printable
    /// ASCII become `_`.
    pub fn headers(&self, policy: &str) -> Vec<(&'static str, String)> {
        let name = sf_string(policy);
        let window = ceil_secs(self.window).max(1);
        let reset = ceil_secs(self.reset_after);
        let mut out = vec![
            (
                "ratelimit-policy",
                format!("{name};q={};w={window}", self.limit),
            ),
            (
                "ratelimit",
                format!("{name};r={};t={reset}", self.remaining),
            ),
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", reset.to_string()),
        ];
        if !self.allowed {
            let retry = self.retry_after.unwrap_or(self.reset_after);
            out.push(("retry-after", ceil_secs(retry).max(1).to_string()));
        }
        out
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A structured-field sf-string (RFC 8941 §3.3.3): quoted, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    fn decision(allowed: bool, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 100,
            window: Duration::from_secs(60),
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn headers_when_allowed() {
        let h = decision(true, 42, 34_800, None).headers("capture");
        assert_eq!(
            h,
            vec![
                ("ratelimit-policy", "\"capture\";q=100;w=60".to_owned()),
                ("ratelimit", "\"capture\";r=42;t=35".to_owned()),
                ("ratelimit-limit", "100".to_owned()),
                ("ratelimit-remaining", "42".to_owned()),
                ("ratelimit-reset", "35".to_owned()),
            ]
        );
    }

    #[test]
    fn headers_when_refused_carry_retry_after_rounded_up_and_at_least_one() {
        let h = decision(false, 0, 60_000, Some(600)).headers("search");
        assert_eq!(h.last(), Some(&("retry-after", "1".to_owned())));
        assert!(h.contains(&("ratelimit", "\"search\";r=0;t=60".to_owned())));
        let h = decision(false, 0, 60_000, Some(0)).headers("search");
        assert_eq!(h.last(), Some(&("retry-after", "1".to_owned())));
        let h = decision(false, 0, 60_000, Some(1_001)).headers("search");
        assert_eq!(h.last(), Some(&("retry-after", "2".to_owned())));
        let h = decision(false, 0, 60_000, Some(2_000)).headers("search");
        assert_eq!(h.last(), Some(&("retry-after", "2".to_owned())));
    }

    #[test]
    fn header_names_are_lower_case_tokens() {
        for (name, value) in decision(false, 0, 1, Some(1)).headers("a") {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
            assert!(value.bytes().all(|b| (b' '..=b'~').contains(&b)), "{value}");
        }
    }

    #[test]
    fn policy_names_are_escaped() {
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("é\n"), "\"__\"");
    }

    #[test]
    fn sub_second_windows_render_as_at_least_one_second() {
        let mut d = decision(true, 9, 100, None);
        d.window = Duration::from_millis(500);
        assert!(
            d.headers("x")
                .contains(&("ratelimit-policy", "\"x\";q=100;w=1".to_owned()))
        );
        assert_eq!(Quota::per_minute(nz(5)).period(), Duration::from_secs(60));
    }

    #[test]
    fn endpoint_names_round_trip() {
        use serde::de::IntoDeserializer as _;
        use serde::de::value::Error;
        for e in Endpoint::ALL {
            assert_eq!(e.as_str().parse::<Endpoint>(), Ok(e));
            assert_eq!(e.to_string(), e.as_str());
            let parsed = Endpoint::deserialize(e.as_str().into_deserializer());
            assert_eq!(parsed, Ok::<_, Error>(e));
        }
        assert!("Capture".parse::<Endpoint>().is_err());
        assert!("upload".parse::<Endpoint>().is_err());
    }
}
