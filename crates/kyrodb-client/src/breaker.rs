//! A consecutive-failure circuit breaker: closed -> open -> half-open (one probe) -> closed.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::config::BreakerConfig;

/// The breaker's state, as reported to logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Permission to make one call. Report its outcome with [`Permit::record`]; a permit dropped
/// without an outcome (the call was cancelled) releases a half-open probe slot.
#[must_use]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

/// How a call ended, from the breaker's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server answered (successfully, or rejecting our request).
    ServerAnswered,
    /// The server is unreachable, slow, overloaded or broken.
    ServerFailed,
}

impl CircuitBreaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is always valid between statements, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// `None` while open (fail fast), or half-open with a probe already in flight.
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() < until => return None,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                tracing::info!("kyrodb circuit breaker half-open: probing");
                true
            }
            State::HalfOpen { probing: true } => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            done: false,
        })
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        let mut state = self.lock();
        match (outcome, &*state) {
            (Outcome::ServerAnswered, State::Open { .. }) if !probe => {
                // A call that started before the breaker opened; leave it open.
            }
            (Outcome::ServerAnswered, _) => {
                if !matches!(*state, State::Closed { failures: 0 }) {
                    if probe {
                        tracing::info!("kyrodb circuit breaker closed: probe succeeded");
                    }
                    *state = State::Closed { failures: 0 };
                }
            }
            (Outcome::ServerFailed, State::Closed { failures }) if !probe => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failure_threshold {
                    tracing::warn!(
                        failures,
                        open_for = ?self.config.open_for,
                        "kyrodb circuit breaker opened"
                    );
                    *state = State::Open {
                        until: Instant::now() + self.config.open_for,
                    };
                } else {
                    *state = State::Closed { failures };
                }
            }
            (Outcome::ServerFailed, State::Open { .. }) if !probe => {}
            (Outcome::ServerFailed, _) => {
                tracing::warn!(open_for = ?self.config.open_for, "kyrodb circuit breaker re-opened");
                *state = State::Open {
                    until: Instant::now() + self.config.open_for,
                };
            }
        }
    }

    fn release_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }
}

impl Permit<'_> {
    pub(crate) fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(threshold: u32, open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            open_for,
        })
    }

    fn fail(b: &CircuitBreaker) {
        if let Some(p) = b.try_acquire() {
            p.record(Outcome::ServerFailed);
        }
    }

    #[test]
    fn opens_after_threshold_and_recovers_through_one_probe() {
        let b = breaker(3, Duration::from_millis(30));
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.try_acquire();
        assert!(probe.is_some());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert!(b.try_acquire().is_none());
        if let Some(p) = probe {
            p.record(Outcome::ServerAnswered);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
        let b = breaker(1, Duration::from_millis(10));
        fail(&b);
        std::thread::sleep(Duration::from_millis(15));
        fail(&b); // the probe fails
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(15));
        drop(b.try_acquire()); // cancelled probe
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = breaker(2, Duration::from_secs(60));
        fail(&b);
        if let Some(p) = b.try_acquire() {
            p.record(Outcome::ServerAnswered);
        }
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
