//! The generic cell rate algorithm, in integer microseconds. No IO: [`decide`] is the whole
//! algorithm, and `gcra.lua` is the same function in Redis (keep the two in step).
//!
//! A quota of `N` per `P` has an emission interval `T = ⌈P / N⌉` and a tolerance `τ = N·T`.
//! A bucket is one number, the theoretical arrival time `TAT` (absent = in the past). At
//! time `now` a request is admitted iff `max(TAT, now) + T − τ ≤ now`; if so
//! `TAT := max(TAT, now) + T`. Consequences:
//!
//! - an idle bucket admits a burst of exactly `N`, then one request every `T`;
//! - over any interval of length `W` at most `N + ⌊W / T⌋` requests are admitted, so the
//!   long-run rate is `N / P`, but a client that waited for a full bucket can get up to
//!   `2N − 1` through in one window `P` (the burst, then the refill). It is a token bucket,
//!   not a fixed or sliding window;
//! - a refused request changes nothing, so hammering does not extend the wait;
//! - a bucket whose `TAT ≤ now` equals an absent one, so it can be dropped (Redis expires it
//!   at `TAT`).

use std::time::Duration;

use crate::{Decision, Quota};

/// Emission interval `T` in microseconds (at least 1).
pub fn interval_us(quota: &Quota) -> u64 {
    let period = u64::try_from(quota.period().as_micros()).unwrap_or(u64::MAX);
    period.div_ceil(u64::from(quota.limit())).max(1)
}

/// The decision at `now` for a bucket whose stored TAT is `tat` (both in microseconds on the
/// same clock), and the TAT to store if the request is admitted.
pub fn decide(now: u64, tat: Option<u64>, quota: &Quota) -> (Decision, Option<u64>) {
    let interval = interval_us(quota);
    let tolerance = interval.saturating_mul(u64::from(quota.limit()));
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval);
    // Admitted iff new_tat - tolerance <= now, i.e. the bucket is not more than full.
    let ahead = new_tat - now;
    if ahead <= tolerance {
        let remaining = (tolerance - ahead) / interval;
        let decision = Decision {
            allowed: true,
            limit: quota.limit(),
            window: quota.period(),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_after: Duration::from_micros(ahead),
            retry_after: None,
        };
        (decision, Some(new_tat))
    } else {
        let decision = Decision {
            allowed: false,
            limit: quota.limit(),
            window: quota.period(),
            remaining: 0,
            reset_after: Duration::from_micros(tat - now),
            retry_after: Some(Duration::from_micros(ahead - tolerance)),
        };
        (decision, None)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(n: u32, period: Duration) -> Quota {
        Quota::new(NonZeroU32::new(n).expect("non-zero"), period)
    }

    /// Runs requests at the given times against one bucket; returns the decisions.
    fn run(quota: &Quota, times: &[u64]) -> Vec<Decision> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| {
                let (d, new_tat) = decide(now, tat, quota);
                if new_tat.is_some() {
                    tat = new_tat;
                }
                d
            })
            .collect()
    }

    #[test]
    fn an_idle_bucket_admits_exactly_the_burst() {
        let q = quota(100, Duration::from_secs(60));
        assert_eq!(interval_us(&q), 600_000);
        let ds = run(&q, &[1_000_000; 103]);
        let allowed: Vec<_> = ds.iter().filter(|d| d.allowed).collect();
        assert_eq!(allowed.len(), 100);
        assert!(ds[..100].iter().all(|d| d.allowed));
        for (i, d) in ds[..100].iter().enumerate() {
            assert_eq!(d.remaining, 99 - i as u32);
            assert_eq!(
                d.reset_after,
                Duration::from_micros(600_000 * (i as u64 + 1))
            );
            assert_eq!(d.retry_after, None);
        }
        for d in &ds[100..] {
            assert!(!d.allowed);
            assert_eq!(d.remaining, 0);
            assert_eq!(d.reset_after, Duration::from_secs(60));
            assert_eq!(d.retry_after, Some(Duration::from_millis(600)));
        }
    }

    #[test]
    fn refill_admits_one_request_per_interval() {
        let q = quota(10, Duration::from_secs(1));
        let mut times = vec![0; 10];
        times.extend([1, 99_999, 100_000, 100_001, 250_000, 300_000]);
        let allowed: Vec<bool> = run(&q, &times).iter().map(|d| d.allowed).collect();
        assert_eq!(
            &allowed[10..],
            &[false, false, true, false, true, true],
            "one more every 100 ms"
        );
    }

    #[test]
    fn a_full_bucket_after_reset_after() {
        let q = quota(10, Duration::from_secs(1));
        let ds = run(&q, &[0, 0, 0]);
        let reset = u64::try_from(ds[2].reset_after.as_micros()).expect("small");
        let (d, _) = decide(reset, Some(reset), &q);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn refusals_do_not_move_the_bucket() {
        let q = quota(2, Duration::from_secs(2));
        let (_, tat) = decide(0, None, &q);
        let (_, tat) = decide(0, tat, &q);
        let tat = tat.expect("admitted");
        for now in [1, 10, 500_000, 999_999] {
            let (d, store) = decide(now, Some(tat), &q);
            assert!(!d.allowed && store.is_none());
            assert_eq!(d.retry_after, Some(Duration::from_micros(1_000_000 - now)));
        }
        assert!(decide(1_000_000, Some(tat), &q).0.allowed);
    }

    #[test]
    fn uneven_periods_round_the_interval_up_and_keep_the_burst() {
        let q = quota(7, Duration::from_secs(60));
        assert_eq!(interval_us(&q), 8_571_429);
        assert_eq!(run(&q, &[5; 9]).iter().filter(|d| d.allowed).count(), 7);
        let tiny = quota(1000, Duration::ZERO);
        assert_eq!(interval_us(&tiny), 1);
    }

    /// Over any interval of length `W`, at most `N + ⌊W / T⌋` requests are admitted.
    #[test]
    fn admissions_in_any_interval_are_bounded() {
        let q = quota(5, Duration::from_millis(500));
        let t = interval_us(&q);
        // A deterministic, irregular arrival pattern.
        let mut now = 0u64;
        let mut times = Vec::new();
        for i in 0..2_000u64 {
            now += (i * 7_919) % 37_000;
            times.push(now);
        }
        let admitted: Vec<u64> = run(&q, &times)
            .iter()
            .zip(&times)
            .filter(|(d, _)| d.allowed)
            .map(|(_, &t)| t)
            .collect();
        for (i, &start) in admitted.iter().enumerate() {
            for w in [0, t / 2, t, 3 * t, 500_000, 1_000_000] {
                let n = admitted[i..]
                    .iter()
                    .take_while(|&&x| x <= start + w)
                    .count() as u64;
                assert!(n <= 5 + w / t, "{n} admitted in {w} µs from {start}");
            }
        }
    }
}
