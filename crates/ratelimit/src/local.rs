//! GCRA in process: the standalone mode's limiter and the gateway's fallback when Redis is
//! unreachable. Same algorithm ([`crate::gcra::decide`]) on the monotonic clock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{Decision, Endpoint, Quota, TenantId, gcra};

/// How often buckets that are full again (equivalent to absent) are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
const SWEEP_EVERY_US: u64 = SWEEP_EVERY.as_secs() * 1_000_000;

/// Rate limits of this process only.
#[derive(Debug)]
pub struct LocalLimiter {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// TAT per bucket, in microseconds since `epoch`.
    buckets: HashMap<(TenantId, Endpoint), u64>,
    next_sweep: u64,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// One request of `tenant` on `endpoint` under `quota`.
    pub fn check(&self, tenant: TenantId, endpoint: Endpoint, quota: Quota) -> Decision {
        self.check_at(Instant::now(), tenant, endpoint, quota)
    }

    /// As [`check`](Self::check), at `now` (not before the limiter was created).
    pub(crate) fn check_at(
        &self,
        now: Instant,
        tenant: TenantId,
        endpoint: Endpoint,
        quota: Quota,
    ) -> Decision {
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX);
        // Nothing below can panic, so a poisoned lock still holds consistent buckets.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now >= state.next_sweep {
            state.buckets.retain(|_, tat| *tat > now);
            state.next_sweep = now.saturating_add(SWEEP_EVERY_US);
        }
        let key = (tenant, endpoint);
        let (decision, new_tat) = gcra::decide(now, state.buckets.get(&key).copied(), &quota);
        if let Some(tat) = new_tat {
            state.buckets.insert(key, tat);
        }
        decision
    }

    /// Buckets currently held (full buckets are dropped every 10 s).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn buckets_are_per_tenant_and_endpoint_and_expire() {
        let limiter = LocalLimiter::new();
        let q = Quota::new(
            NonZeroU32::new(2).expect("non-zero"),
            Duration::from_secs(1),
        );
        let (a, b) = (TenantId::new(), TenantId::new());
        let t0 = limiter.epoch;
        let allowed =
            |t: Instant, tenant, endpoint| limiter.check_at(t, tenant, endpoint, q).allowed;
        assert!(allowed(t0, a, Endpoint::Search));
        assert!(allowed(t0, a, Endpoint::Search));
        assert!(!allowed(t0, a, Endpoint::Search));
        assert!(allowed(t0, a, Endpoint::Capture), "another endpoint");
        assert!(allowed(t0, b, Endpoint::Search), "another tenant");
        assert_eq!(limiter.len(), 3);
        assert!(allowed(
            t0 + Duration::from_millis(500),
            a,
            Endpoint::Search
        ));
        // Past every TAT and past the sweep interval: all buckets are full, so dropped.
        let later = t0 + SWEEP_EVERY + Duration::from_secs(1);
        assert_eq!(limiter.check_at(later, b, Endpoint::Admin, q).remaining, 1);
        assert_eq!(limiter.len(), 1);
    }
}
