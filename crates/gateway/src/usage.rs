//! Counting searches and gates per customer and month. Requests only bump in-memory
//! counters; a background task adds them to the database every `flush_every` (and once
//! more at shutdown), so usage tracking costs the hot path nothing. Captures are counted
//! synchronously instead, by the quota check ([`crate::quota`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TenantId;
use common::tenancy::UsageMonth;
use db::{Db, UsageKind};
use tokio_util::sync::CancellationToken;

type Counts = HashMap<(TenantId, UsageMonth), (i64, i64)>;

/// Buffered search and gate counters.
#[derive(Clone, Default)]
pub struct UsageCounter {
    pending: Arc<Mutex<Counts>>,
}

impl UsageCounter {
    /// Counts one search or gate for this month.
    pub fn count(&self, tenant: TenantId, kind: UsageKind) {
        let month = UsageMonth::of(common::time_util::now_micros());
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = pending.entry((tenant, month)).or_default();
        match kind {
            UsageKind::Search => entry.0 += 1,
            UsageKind::Gate => entry.1 += 1,
        }
    }

    fn take(&self) -> Counts {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes the pending counts; what cannot be written is kept for the next flush.
    pub async fn flush(&self, db: &Db) {
        for ((tenant, month), (searches, gates)) in self.take() {
            if let Err(e) = db.add_usage(tenant, month, searches, gates).await {
                tracing::warn!(error = %e, %tenant, "could not record usage; retrying later");
                let mut pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = pending.entry((tenant, month)).or_default();
                entry.0 += searches;
                entry.1 += gates;
            }
        }
    }

    /// Flushes every `every` until `shutdown`, then once more.
    pub async fn run(self, db: Db, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush(&db).await,
            }
        }
        self.flush(&db).await;
    }
}
