//! Monthly capture quotas per tier. Only captures count against a quota; search and gate
//! keep working when it is spent.
//!
//! A capture is admitted by one atomic conditional update of the month's counter against
//! the *hard* limit (the quota plus the tier's overage allowance), so any number of gateway
//! replicas never admit more. At `warn_at` (80 %) and at 100 % of the quota, responses carry
//! a `Quota-Warning` header and a `quota.warning` event is published once per level and
//! month; past the hard limit a capture is answered 429 with the limit and the reset time.

use common::TenantId;
use common::events::{Envelope, QuotaWarning, TenantEventKind, Topology};
use common::tenancy::{Tier, UsageMonth};
use db::Db;
use serde::Deserialize;
use std::sync::Arc;
use time::OffsetDateTime;

use crate::error::ApiError;

/// Quotas (`EM_GATEWAY__QUOTAS__*`): captured episodes per calendar month (UTC); `0` means
/// unlimited. `*_overage` is the fraction above the quota still accepted, with a warning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    pub free: u64,
    pub pro: u64,
    pub enterprise: u64,
    pub free_overage: f64,
    pub pro_overage: f64,
    pub enterprise_overage: f64,
    /// Fraction of the quota at which the first warning is given.
    pub warn_at: f64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            free: 100,
            pro: 10_000,
            enterprise: 0,
            free_overage: 0.0,
            pro_overage: 0.2,
            enterprise_overage: 0.0,
            warn_at: 0.8,
        }
    }
}

/// The quota that applies to one tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `None`: unlimited.
    pub limit: Option<u64>,
    /// The most admitted (limit plus overage).
    pub hard_limit: Option<u64>,
    pub warn_at: f64,
}

impl QuotaSettings {
    pub fn policy(&self, tier: Tier) -> Policy {
        let (limit, overage) = match tier {
            Tier::Free => (self.free, self.free_overage),
            Tier::Pro => (self.pro, self.pro_overage),
            Tier::Enterprise => (self.enterprise, self.enterprise_overage),
        };
        if limit == 0 {
            return Policy {
                limit: None,
                hard_limit: None,
                warn_at: self.warn_at,
            };
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let extra = (limit as f64 * overage.max(0.0)).floor() as u64;
        Policy {
            limit: Some(limit),
            hard_limit: Some(limit + extra),
            warn_at: self.warn_at.clamp(0.0, 1.0),
        }
    }
}

/// Where a customer stands after an admitted capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaState {
    pub used: u64,
    pub limit: u64,
    pub hard_limit: u64,
    pub resets_at: OffsetDateTime,
    /// 0, 80 or 100: the warning level reached.
    pub level: u32,
}

impl QuotaState {
    /// The `Quota-Warning` header value, when a warning is due.
    pub fn warning(&self) -> Option<String> {
        let reset = self
            .resets_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match self.level {
            0 => None,
            l if self.used > self.limit => Some(format!(
                "overage; used={}; limit={}; hard-limit={}; reset={reset}; level={l}",
                self.used, self.limit, self.hard_limit
            )),
            l => Some(format!(
                "approaching; used={}; limit={}; reset={reset}; level={l}",
                self.used, self.limit
            )),
        }
    }
}

/// Admits captures against the quota and announces warnings.
#[derive(Clone)]
pub struct Quotas {
    db: Db,
    bus: Arc<dyn bus::Publisher>,
    topology: Topology,
    settings: QuotaSettings,
}

impl Quotas {
    pub fn new(
        db: Db,
        bus: Arc<dyn bus::Publisher>,
        topology: Topology,
        settings: QuotaSettings,
    ) -> Self {
        Self {
            db,
            bus,
            topology,
            settings,
        }
    }

    /// Counts one capture for `tenant` this month, or refuses it (429) past the hard limit.
    /// `None` when the tier is unlimited (the capture is still counted).
    pub async fn admit(
        &self,
        tenant: TenantId,
        tier: Tier,
    ) -> Result<Option<QuotaState>, ApiError> {
        let now = common::time_util::now_micros();
        let month = UsageMonth::of(now);
        let policy = self.settings.policy(tier);
        #[allow(clippy::cast_possible_wrap)]
        let hard = policy.hard_limit.map(|h| h as i64);
        let admission = self.db.admit_capture(tenant, month, hard).await?;
        let (Some(limit), Some(hard_limit)) = (policy.limit, policy.hard_limit) else {
            return Ok(None);
        };
        #[allow(clippy::cast_sign_loss)]
        let used = admission.count.max(0) as u64;
        let resets_at = month.next_start();
        if !admission.admitted {
            return Err(ApiError::QuotaExceeded {
                limit,
                hard_limit,
                used,
                resets_at,
            });
        }
        #[allow(clippy::cast_precision_loss)]
        let level = if used >= limit {
            100
        } else if used as f64 >= limit as f64 * policy.warn_at {
            80
        } else {
            0
        };
        let state = QuotaState {
            used,
            limit,
            hard_limit,
            resets_at,
            level,
        };
        if level > 0 {
            self.announce(tenant, month, &state).await;
        }
        Ok(Some(state))
    }

    /// Gives a capture back (it was admitted but then not accepted).
    pub async fn release(&self, tenant: TenantId) {
        let month = UsageMonth::of(common::time_util::now_micros());
        if let Err(e) = self.db.release_capture(tenant, month).await {
            tracing::warn!(error = %e, %tenant, "could not release a quota unit");
        }
    }

    /// Publishes `quota.warning` once per level and month (best effort: a failure is
    /// logged and retried by the next capture, since the level is raised only after the
    /// event is out).
    async fn announce(&self, tenant: TenantId, month: UsageMonth, state: &QuotaState) {
        let Ok(true) = self
            .db
            .raise_quota_warning(tenant, month, i64::from(state.level))
            .await
        else {
            return;
        };
        let now = common::time_util::now_micros();
        let envelope = Envelope {
            id: format!("{tenant}.{month}.quota.{}", state.level),
            event_type: TenantEventKind::QuotaWarning.event_type().to_owned(),
            version: 1,
            time: now,
            tenant_id: tenant,
            data: QuotaWarning {
                month: month.to_string(),
                level: state.level,
                used: state.used,
                limit: state.limit,
                hard_limit: state.hard_limit,
                resets_at: state.resets_at,
            },
        };
        let sent = match bus::OutboundMessage::tenant_event(
            &self.topology,
            TenantEventKind::QuotaWarning,
            &envelope,
        ) {
            Ok(message) => self
                .bus
                .publish(message)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, %tenant, level = state.level, "could not publish quota.warning; will retry");
            // Lower the level again so the next capture retries the announcement.
            let _ = self
                .db
                .lower_quota_warning(tenant, month, i64::from(state.level))
                .await;
        }
    }
}
