//! Rate limiting against the real Redis (`redis://127.0.0.1:6379`, or `EM_TEST_REDIS_URL`).
//! Every test uses a key prefix of its own; its keys expire within the quota's period.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratelimit::{
    Decision, Endpoint, FALLBACK_TOTAL, Limiter, LocalLimiter, Quota, REJECTED_TOTAL,
    RateLimitSettings, RedisLimiter, TenantId, Tier,
};

const REDIS_URL_ENV: &str = "EM_TEST_REDIS_URL";
/// Generous: a slow CI machine must not turn into a failed Redis call.
const TEST_TIMEOUT: Duration = Duration::from_secs(2);

fn redis_url() -> String {
    std::env::var(REDIS_URL_ENV).unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn quota(n: u32, period: Duration) -> Quota {
    Quota::new(NonZeroU32::new(n).expect("non-zero"), period)
}

fn redis_limiter(prefix: &str) -> RedisLimiter {
    RedisLimiter::new(&redis_url(), prefix, TEST_TIMEOUT).expect("valid redis url")
}

async fn redis_check(limiter: &RedisLimiter, tenant: TenantId, quota: Quota) -> Decision {
    limiter
        .check(tenant, Endpoint::Capture, quota)
        .await
        .expect("redis answers")
}

#[tokio::test]
async fn exactly_n_of_n_plus_k_sequential_requests_are_admitted() {
    let limiter = redis_limiter(&unique_prefix());
    let tenant = TenantId::new();
    let q = quota(20, Duration::from_secs(60));
    let mut decisions = Vec::new();
    for _ in 0..25 {
        decisions.push(redis_check(&limiter, tenant, q).await);
    }
    for (i, d) in decisions[..20].iter().enumerate() {
        assert!(d.allowed, "request {i}");
        assert_eq!(d.limit, 20);
        assert_eq!(d.remaining, 19 - i as u32, "request {i}");
        assert_eq!(d.retry_after, None);
        assert!(d.reset_after <= Duration::from_secs(60));
    }
    for d in &decisions[20..] {
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        let retry = d.retry_after.expect("refusals say when to retry");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(3),
            "{retry:?}"
        );
        assert!(
            d.reset_after > Duration::from_secs(50),
            "{:?}",
            d.reset_after
        );
        let headers = d.headers("capture");
        assert!(headers.contains(&("ratelimit-policy", "\"capture\";q=20;w=60".to_owned())));
        assert!(headers.contains(&("ratelimit-remaining", "0".to_owned())));
        assert!(
            headers.contains(&("retry-after", "3".to_owned())),
            "{headers:?}"
        );
    }

    // The key layout, and an expiry no later than when the bucket is full again.
    let key = limiter.key(tenant, Endpoint::Capture);
    assert!(key.ends_with(&format!(":rl:{tenant}:capture")), "{key}");
    let client = redis::Client::open(redis_url()).expect("valid url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(pttl > 50_000 && pttl <= 60_000, "pttl {pttl}");
}

#[tokio::test]
async fn two_gateways_sharing_a_prefix_admit_n_together() {
    let prefix = unique_prefix();
    let (a, b) = (redis_limiter(&prefix), redis_limiter(&prefix));
    let tenant = TenantId::new();
    let q = quota(15, Duration::from_secs(60));
    let mut allowed = 0;
    for i in 0..40 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        if redis_check(limiter, tenant, q).await.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 15);
    // Another tenant, and another prefix, have buckets of their own.
    assert!(redis_check(&a, TenantId::new(), q).await.allowed);
    assert!(
        redis_check(&redis_limiter(&unique_prefix()), tenant, q)
            .await
            .allowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_admit_exactly_n() {
    let prefix = unique_prefix();
    let limiters = [
        Arc::new(redis_limiter(&prefix)),
        Arc::new(redis_limiter(&prefix)),
    ];
    let tenant = TenantId::new();
    let q = quota(20, Duration::from_secs(60));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let limiter = limiters[i % 2].clone();
        tasks.spawn(async move { redis_check(&limiter, tenant, q).await });
    }
    let mut admitted = 0;
    let mut remaining = Vec::new();
    while let Some(d) = tasks.join_next().await {
        let d = d.expect("task completes");
        if d.allowed {
            admitted += 1;
            remaining.push(d.remaining);
        }
    }
    assert_eq!(admitted, 20);
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..20).collect::<Vec<u32>>(),
        "each admission saw its own state"
    );
}

#[tokio::test]
async fn the_bucket_refills_at_the_rate() {
    let limiter = redis_limiter(&unique_prefix());
    let tenant = TenantId::new();
    let q = quota(10, Duration::from_secs(1));
    let mut last = None;
    for _ in 0..10 {
        let d = redis_check(&limiter, tenant, q).await;
        assert!(d.allowed);
        last = Some(d);
    }
    let refused = redis_check(&limiter, tenant, q).await;
    assert!(!refused.allowed);
    let retry = refused.retry_after.expect("refused");
    assert!(retry <= Duration::from_millis(100), "{retry:?}");

    // One interval (period / N) later, one more request is admitted.
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    assert!(redis_check(&limiter, tenant, q).await.allowed);

    // After the last reset_after the bucket is full again: N - 1 remain after one request.
    let reset = last.map_or(Duration::from_secs(1), |d| d.reset_after);
    tokio::time::sleep(reset + Duration::from_millis(150)).await;
    let d = redis_check(&limiter, tenant, q).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 9);
}

#[tokio::test]
async fn the_local_limiter_decides_like_redis() {
    let redis = redis_limiter(&unique_prefix());
    let local = LocalLimiter::new();
    let tenant = TenantId::new();
    for q in [
        quota(6, Duration::from_secs(60)),
        quota(3, Duration::from_secs(7)),
    ] {
        for endpoint in [Endpoint::Search, Endpoint::Account] {
            for i in 0..9 {
                let r = redis
                    .check(tenant, endpoint, q)
                    .await
                    .expect("redis answers");
                let l = local.check(tenant, endpoint, q);
                assert_eq!(
                    (r.allowed, r.limit, r.window, r.remaining),
                    (l.allowed, l.limit, l.window, l.remaining),
                    "request {i} on {endpoint} under {q:?}"
                );
                assert_eq!(r.retry_after.is_some(), l.retry_after.is_some());
                let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_secs(1);
                assert!(close(r.reset_after, l.reset_after), "{r:?} vs {l:?}");
                assert!(close(
                    r.retry_after.unwrap_or_default(),
                    l.retry_after.unwrap_or_default()
                ));
            }
        }
    }
}

/// A recorder of counters only, for one thread (`metrics::with_local_recorder`).
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .expect("not poisoned")
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut name = key.name().to_owned();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        let counter = self
            .0
            .lock()
            .expect("not poisoned")
            .entry(name)
            .or_default()
            .clone();
        metrics::Counter::from_arc(counter)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Runs `f` on a current-thread runtime with `counters` as this thread's recorder.
fn with_counters<F: std::future::Future<Output = ()>>(counters: &Counters, f: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(counters, || rt.block_on(f()));
}

fn settings(redis_url: Option<String>, capture_per_minute: u32) -> RateLimitSettings {
    let mut s = RateLimitSettings {
        redis_url: redis_url.map(Into::into),
        key_prefix: unique_prefix(),
        ..RateLimitSettings::default()
    };
    s.limits.capture = NonZeroU32::new(capture_per_minute).expect("non-zero");
    s
}

#[test]
fn an_unreachable_redis_falls_back_to_the_local_limiter_within_the_timeout() {
    let counters = Counters::default();
    with_counters(&counters, || async {
        // Nothing listens on port 1.
        let limiter = Limiter::new(&settings(Some("redis://127.0.0.1:1".to_owned()), 5))
            .expect("valid settings");
        assert!(limiter.uses_redis());
        let tenant = TenantId::new();
        let mut allowed = 0;
        for i in 0..12 {
            let started = Instant::now();
            let d = limiter.check(tenant, Tier::Free, Endpoint::Capture).await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
            assert_eq!(d.limit, 5);
            if d.allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "the local limiter enforces the same quota");
    });
    assert_eq!(counters.get(FALLBACK_TOTAL), 12);
    assert_eq!(
        counters.get(&format!("{REJECTED_TOTAL}{{endpoint=capture}}")),
        7
    );
}

#[test]
fn limiters_on_one_redis_share_buckets_and_do_not_fall_back() {
    let counters = Counters::default();
    with_counters(&counters, || async {
        let s = settings(Some(redis_url()), 8);
        let s = RateLimitSettings {
            timeout: TEST_TIMEOUT,
            ..s
        };
        let (a, b) = (
            Limiter::new(&s).expect("valid settings"),
            Limiter::new(&s).expect("valid settings"),
        );
        let tenant = TenantId::new();
        let mut allowed = 0;
        for i in 0..20 {
            let limiter = if i % 2 == 0 { &a } else { &b };
            if limiter
                .check(tenant, Tier::Pro, Endpoint::Capture)
                .await
                .allowed
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 8);
    });
    assert_eq!(counters.get(FALLBACK_TOTAL), 0);
    assert_eq!(
        counters.get(&format!("{REJECTED_TOTAL}{{endpoint=capture}}")),
        12
    );
}

#[tokio::test]
async fn local_mode_limits_without_redis() {
    let limiter = Limiter::new(&settings(None, 3)).expect("valid settings");
    assert!(!limiter.uses_redis());
    let tenant = TenantId::new();
    let mut allowed = 0;
    for _ in 0..5 {
        if limiter
            .check(tenant, Tier::Enterprise, Endpoint::Capture)
            .await
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3);
    let other = limiter
        .check(tenant, Tier::Enterprise, Endpoint::Search)
        .await;
    assert!(other.allowed);
    assert_eq!((other.limit, other.remaining), (500, 499));
}
