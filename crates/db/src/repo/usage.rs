//! Monthly usage per tenant: captured episodes (the quota), searches and gates. Counters
//! move by single conditional `UPDATE`s, so any number of gateways sharing the database
//! never admit a capture past a quota.

use common::TenantId;
use common::tenancy::UsageMonth;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::parse_col;
use crate::pool::with_conn;
use crate::schema::usage_monthly;
use crate::{Db, DbError};

/// A tenant's counters for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub tenant_id: TenantId,
    pub month: UsageMonth,
    pub episodes_captured: i64,
    pub searches: i64,
    pub gates: i64,
}

/// What is counted besides captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    Search,
    Gate,
}

/// The outcome of [`Db::admit_capture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the capture was counted (false: the limit was already reached).
    pub admitted: bool,
    /// Captures counted this month, after this one if admitted.
    pub count: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = usage_monthly)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct UsageRow {
    tenant_id: String,
    month: String,
    episodes_captured: i64,
    searches: i64,
    gates: i64,
    quota_warned: i64,
    updated_at: i64,
}

impl TryFrom<UsageRow> for Usage {
    type Error = DbError;
    fn try_from(row: UsageRow) -> Result<Self, DbError> {
        Ok(Usage {
            tenant_id: parse_col("usage_monthly", "tenant_id", &row.tenant_id)?,
            month: parse_col("usage_monthly", "month", &row.month)?,
            episodes_captured: row.episodes_captured,
            searches: row.searches,
            gates: row.gates,
        })
    }
}

fn now() -> i64 {
    common::time_util::to_unix_micros(common::time_util::now_micros())
}

impl Db {
    /// Makes sure the month's row exists (idempotent).
    async fn ensure_usage_row(&self, tenant: &str, month: &str) -> Result<(), DbError> {
        let row = UsageRow {
            tenant_id: tenant.to_owned(),
            month: month.to_owned(),
            episodes_captured: 0,
            searches: 0,
            gates: 0,
            quota_warned: 0,
            updated_at: now(),
        };
        with_conn!(self, |conn| {
            diesel::insert_into(usage_monthly::table)
                .values(&row)
                .on_conflict((usage_monthly::tenant_id, usage_monthly::month))
                .do_nothing()
                .execute(conn)
                .await
        })?;
        Ok(())
    }

    /// Counts one captured episode unless the month already holds `limit` (no limit:
    /// always counted). Atomic across connections and processes.
    pub async fn admit_capture(
        &self,
        tenant: TenantId,
        month: UsageMonth,
        limit: Option<i64>,
    ) -> Result<Admission, DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        self.ensure_usage_row(&t, &m).await?;
        let ceiling = limit.unwrap_or(i64::MAX);
        let at = now();
        let rows = with_conn!(self, |conn| {
            diesel::update(
                usage_monthly::table
                    .find((&t, &m))
                    .filter(usage_monthly::episodes_captured.lt(ceiling)),
            )
            .set((
                usage_monthly::episodes_captured.eq(usage_monthly::episodes_captured + 1),
                usage_monthly::updated_at.eq(at),
            ))
            .execute(conn)
            .await
        })?;
        let count = self
            .usage(tenant, month)
            .await?
            .map_or(0, |u| u.episodes_captured);
        Ok(Admission {
            admitted: rows > 0,
            count,
        })
    }

    /// Gives back a capture counted by [`Db::admit_capture`] that was then not accepted.
    pub async fn release_capture(
        &self,
        tenant: TenantId,
        month: UsageMonth,
    ) -> Result<(), DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        with_conn!(self, |conn| {
            diesel::update(
                usage_monthly::table
                    .find((&t, &m))
                    .filter(usage_monthly::episodes_captured.gt(0)),
            )
            .set(usage_monthly::episodes_captured.eq(usage_monthly::episodes_captured - 1))
            .execute(conn)
            .await
        })?;
        Ok(())
    }

    /// Adds counted searches and gates (the gateway buffers them and adds them in bulk).
    pub async fn add_usage(
        &self,
        tenant: TenantId,
        month: UsageMonth,
        searches: i64,
        gates: i64,
    ) -> Result<(), DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        self.ensure_usage_row(&t, &m).await?;
        let at = now();
        with_conn!(self, |conn| {
            diesel::update(usage_monthly::table.find((&t, &m)))
                .set((
                    usage_monthly::searches.eq(usage_monthly::searches + searches),
                    usage_monthly::gates.eq(usage_monthly::gates + gates),
                    usage_monthly::updated_at.eq(at),
                ))
                .execute(conn)
                .await
        })?;
        Ok(())
    }

    /// Raises the month's quota-warning level to `level` (e.g. 80, 100); returns whether
    /// this call raised it, so each warning is announced once per month.
    pub async fn raise_quota_warning(
        &self,
        tenant: TenantId,
        month: UsageMonth,
        level: i64,
    ) -> Result<bool, DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        self.ensure_usage_row(&t, &m).await?;
        let rows = with_conn!(self, |conn| {
            diesel::update(
                usage_monthly::table
                    .find((&t, &m))
                    .filter(usage_monthly::quota_warned.lt(level)),
            )
            .set(usage_monthly::quota_warned.eq(level))
            .execute(conn)
            .await
        })?;
        Ok(rows > 0)
    }

    /// Undoes [`Db::raise_quota_warning`] to `level` (its announcement failed), so the next
    /// capture announces it again.
    pub async fn lower_quota_warning(
        &self,
        tenant: TenantId,
        month: UsageMonth,
        level: i64,
    ) -> Result<(), DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        with_conn!(self, |conn| {
            diesel::update(
                usage_monthly::table
                    .find((&t, &m))
                    .filter(usage_monthly::quota_warned.eq(level)),
            )
            .set(usage_monthly::quota_warned.eq(level - 1))
            .execute(conn)
            .await
        })?;
        Ok(())
    }

    /// The tenant's counters for `month`, if anything was counted.
    pub async fn usage(
        &self,
        tenant: TenantId,
        month: UsageMonth,
    ) -> Result<Option<Usage>, DbError> {
        let (t, m) = (tenant.to_string(), month.to_string());
        let row = with_conn!(self, |conn| {
            usage_monthly::table
                .find((&t, &m))
                .select(UsageRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(Usage::try_from).transpose()
    }

    /// Every month of the tenant's usage, newest first.
    pub async fn usage_history(&self, tenant: TenantId) -> Result<Vec<Usage>, DbError> {
        let t = tenant.to_string();
        let rows = with_conn!(self, |conn| {
            usage_monthly::table
                .filter(usage_monthly::tenant_id.eq(&t))
                .select(UsageRow::as_select())
                .order(usage_monthly::month.desc())
                .load::<UsageRow>(conn)
                .await
        })?;
        rows.into_iter().map(Usage::try_from).collect()
    }
}
