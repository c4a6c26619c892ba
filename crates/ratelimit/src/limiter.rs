//! The gateway's limiter: quotas from the settings, Redis when configured, and failing open
//! onto the in-process limiter when Redis is unreachable or slow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use crate::{
    BuildError, Decision, Endpoint, LocalLimiter, Quota, RateLimitSettings, RedisLimiter, TenantId,
    Tier,
};

/// Counter: decisions the local limiter made because Redis was unreachable, slow or
/// answered nonsense.
pub const FALLBACK_TOTAL: &str = "episodic_ratelimit_redis_fallback_total";
/// Counter: refused requests, label `endpoint`.
pub const REJECTED_TOTAL: &str = "episodic_ratelimit_rejected_total";

/// At most one warning about Redis per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// After a failed Redis call, decide locally without trying Redis for this long, so an
/// outage does not add the Redis timeout to every request.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Per-customer, per-endpoint rate limits. Share it (`Arc`, `web::Data`); every method takes
/// `&self`.
#[derive(Debug)]
pub struct Limiter {
    settings: RateLimitSettings,
    local: LocalLimiter,
    redis: Option<RedisBackend>,
}

impl Limiter {
    /// Checks the settings and, with a `redis_url`, sets up the Redis connection in the
    /// background (so it must run inside a Tokio runtime). An unreachable Redis is not an
    /// error: requests are then limited per process until it is back.
    pub fn new(settings: &RateLimitSettings) -> Result<Self, BuildError> {
        let window = settings.window;
        if window < Duration::from_secs(1) || window.subsec_nanos() != 0 {
            return Err(BuildError::Window(window));
        }
        if settings.timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }
        let redis = match &settings.redis_url {
            None => None,
            Some(url) => Some(RedisBackend::new(RedisLimiter::new(
                url.expose_secret(),
                &settings.key_prefix,
                settings.timeout,
            )?)),
        };
        Ok(Self {
            settings: settings.clone(),
            local: LocalLimiter::new(),
            redis,
        })
    }

    /// The quota of `tier` on `endpoint`.
    pub fn quota(&self, tier: Tier, endpoint: Endpoint) -> Quota {
        Quota::new(self.settings.limit(tier, endpoint), self.settings.window)
    }

    /// Whether buckets are shared through Redis (otherwise: this process only).
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Decides one request of `tenant` (on plan `tier`) on `endpoint`. Never fails: when
    /// Redis cannot answer within the timeout, the local limiter decides.
    pub async fn check(&self, tenant: TenantId, tier: Tier, endpoint: Endpoint) -> Decision {
        let quota = self.quota(tier, endpoint);
        let decision = match &self.redis {
            None => self.local.check(tenant, endpoint, quota),
            Some(redis) => match redis.check(tenant, endpoint, quota).await {
                Some(decision) => decision,
                None => {
                    metrics::counter!(FALLBACK_TOTAL).increment(1);
                    self.local.check(tenant, endpoint, quota)
                }
            },
        };
        if !decision.allowed {
            metrics::counter!(REJECTED_TOTAL, "endpoint" => endpoint.as_str()).increment(1);
        }
        decision
    }
}

/// Redis plus the state of the fail-open policy.
#[derive(Debug)]
struct RedisBackend {
    limiter: RedisLimiter,
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not tried; 0: try it.
    retry_at_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one; 0: never warned.
    warned_at_ms: AtomicU64,
}

impl RedisBackend {
    fn new(limiter: RedisLimiter) -> Self {
        Self {
            limiter,
            epoch: Instant::now(),
            retry_at_ms: AtomicU64::new(0),
            warned_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Redis's decision, or `None` when it has none to give.
    async fn check(&self, tenant: TenantId, endpoint: Endpoint, quota: Quota) -> Option<Decision> {
        let retry_at = self.retry_at_ms.load(Ordering::Relaxed);
        if retry_at != 0 && self.now_ms() < retry_at {
            return None;
        }
        match self.limiter.check(tenant, endpoint, quota).await {
            Ok(decision) => {
                if retry_at != 0 && self.retry_at_ms.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!("redis answers again; rate limits are shared again");
                }
                Some(decision)
            }
            Err(error) => {
                let now = self.now_ms();
                self.retry_at_ms.store(
                    now.saturating_add(REDIS_RETRY_AFTER.as_millis() as u64),
                    Ordering::Relaxed,
                );
                if should_warn(&self.warned_at_ms, now) {
                    tracing::warn!(
                        %error,
                        "rate limits fall back to this process (redis unreachable or slow)"
                    );
                }
                None
            }
        }
    }
}

/// Whether to warn at `now_ms`, given the cell holding the last warning's time plus one.
fn should_warn(warned_at_ms: &AtomicU64, now_ms: u64) -> bool {
    let last = warned_at_ms.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last - 1) < WARN_EVERY.as_millis() as u64 {
        return false;
    }
    warned_at_ms
        .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_is_shareable_across_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let limiter = Limiter::new(&RateLimitSettings::default()).expect("valid");
        send_sync(&limiter);
        send(&limiter.check(TenantId::new(), Tier::Free, Endpoint::Search));
    }

    #[test]
    fn warnings_are_rate_limited() {
        let cell = AtomicU64::new(0);
        assert!(should_warn(&cell, 0));
        assert!(!should_warn(&cell, 1));
        assert!(!should_warn(&cell, 9_999));
        assert!(should_warn(&cell, 10_000));
        assert!(!should_warn(&cell, 15_000));
        assert!(should_warn(&cell, 20_001));
    }

    #[test]
    fn settings_are_checked() {
        let mut s = RateLimitSettings {
            window: Duration::from_millis(1500),
            ..RateLimitSettings::default()
        };
        assert!(matches!(Limiter::new(&s), Err(BuildError::Window(_))));
        s.window = Duration::from_secs(30);
        s.timeout = Duration::ZERO;
        assert!(matches!(Limiter::new(&s), Err(BuildError::ZeroTimeout)));
        s.timeout = Duration::from_millis(50);
        s.redis_url = Some("redis://127.0.0.1:6379".into());
        assert!(
            matches!(Limiter::new(&s), Err(BuildError::NoRuntime)),
            "outside a runtime"
        );
        s.redis_url = Some("http://nope".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        assert!(matches!(Limiter::new(&s), Err(BuildError::RedisUrl(_))));
    }

    #[test]
    fn quotas_follow_tier_overrides() {
        let mut s = RateLimitSettings::default();
        s.tiers.pro.search = std::num::NonZeroU32::new(2_000);
        let limiter = Limiter::new(&s).expect("valid");
        assert!(!limiter.uses_redis());
        assert_eq!(limiter.quota(Tier::Pro, Endpoint::Search).limit(), 2_000);
        assert_eq!(limiter.quota(Tier::Free, Endpoint::Search).limit(), 500);
        assert_eq!(
            limiter.quota(Tier::Enterprise, Endpoint::Account).period(),
            Duration::from_secs(60)
        );
    }
}
