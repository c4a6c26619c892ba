//! The append-only audit log: who did what to which object, and how it ended.

use common::TenantId;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use super::{from_micros, micros, parse_col};
use crate::pool::with_conn;
use crate::schema::audit_log;
use crate::{Db, DbError};

/// One audit record. `id` is a UUIDv7 (time-ordered), so the log pages by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    /// The customer concerned, if any.
    pub tenant_id: Option<TenantId>,
    /// `admin`, `cli`, or `key:<key id>`.
    pub actor: String,
    /// `customer.create`, `key.revoke`, `episode.delete`, `account.export`, …
    pub action: String,
    /// The object acted on (a customer, key or episode id).
    pub target: String,
    pub request_id: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: String,
    /// Extra facts as a JSON object (never secrets).
    pub details: Option<serde_json::Value>,
    pub created_at: OffsetDateTime,
}

impl AuditEntry {
    /// A new entry stamped now.
    pub fn new(
        tenant_id: Option<TenantId>,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        AuditEntry {
            id: uuid::Uuid::now_v7(),
            tenant_id,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            request_id: None,
            outcome: outcome.into(),
            details: None,
            created_at: common::time_util::now_micros(),
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct AuditRow {
    id: String,
    tenant_id: Option<String>,
    actor: String,
    action: String,
    target: String,
    request_id: Option<String>,
    outcome: String,
    details: Option<String>,
    created_at: i64,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = DbError;
    fn try_from(row: AuditRow) -> Result<Self, DbError> {
        Ok(AuditEntry {
            id: parse_col("audit_log", "id", &row.id)?,
            tenant_id: row
                .tenant_id
                .as_deref()
                .map(|t| parse_col("audit_log", "tenant_id", t))
                .transpose()?,
            actor: row.actor,
            action: row.action,
            target: row.target,
            request_id: row.request_id,
            outcome: row.outcome,
            details: row
                .details
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| DbError::corrupt("audit_log", format!("details: {e}")))?,
            created_at: from_micros(row.created_at),
        })
    }
}

impl Db {
    /// Appends an entry.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        let row = AuditRow {
            id: entry.id.to_string(),
            tenant_id: entry.tenant_id.map(|t| t.to_string()),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            request_id: entry.request_id.clone(),
            outcome: entry.outcome.clone(),
            details: entry.details.as_ref().map(ToString::to_string),
            created_at: micros(entry.created_at),
        };
        with_conn!(self, |conn| {
            diesel::insert_into(audit_log::table)
                .values(&row)
                .execute(conn)
                .await
        })?;
        Ok(())
    }

    /// Entries oldest first after `after` (an entry id), at most `limit`; only the
    /// tenant's when `tenant` is given.
    pub async fn list_audit(
        &self,
        tenant: Option<TenantId>,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, DbError> {
        let tenant = tenant.map(|t| t.to_string());
        let after = after.map(|a| a.to_string());
        let rows = with_conn!(self, |conn| {
            let mut q = audit_log::table
                .select(AuditRow::as_select())
                .order(audit_log::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(t) = &tenant {
                q = q.filter(audit_log::tenant_id.eq(t.clone()));
            }
            if let Some(a) = &after {
                q = q.filter(audit_log::id.gt(a.clone()));
            }
            q.load::<AuditRow>(conn).await
        })?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }
}
