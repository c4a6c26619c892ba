//! Tenants, i.e. customers: who they are, their tier and whether they may use the service.

use common::TenantId;
use common::tenancy::{CustomerStatus, Tier};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use super::{InsertOutcome, from_micros, micros, parse_col};
use crate::pool::with_conn;
use crate::schema::tenants;
use crate::{Db, DbError};

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub contact_email: Option<String>,
    pub tier: Tier,
    pub status: CustomerStatus,
    /// Where the customer's data lives (free-form, e.g. `eu-west-1`).
    pub region: String,
    pub billing_customer_id: Option<String>,
    pub billing_subscription_id: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A customer to create (the id and times are assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub name: String,
    pub contact_email: Option<String>,
    pub tier: Tier,
    pub region: String,
    pub billing_customer_id: Option<String>,
    pub billing_subscription_id: Option<String>,
}

impl NewTenant {
    /// A customer with only a name (enterprise tier: no quota), as the single-user
    /// standalone install and tests create them.
    pub fn named(name: &str) -> Self {
        NewTenant {
            name: name.to_owned(),
            contact_email: None,
            tier: Tier::Enterprise,
            region: "default".to_owned(),
            billing_customer_id: None,
            billing_subscription_id: None,
        }
    }
}

/// Changes to a customer; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub contact_email: Option<Option<String>>,
    pub tier: Option<Tier>,
    pub status: Option<CustomerStatus>,
    pub region: Option<String>,
    pub billing_customer_id: Option<Option<String>>,
    pub billing_subscription_id: Option<Option<String>>,
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = tenants, treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct TenantRow {
    id: String,
    name: String,
    created_at: i64,
    contact_email: Option<String>,
    tier: String,
    status: String,
    region: String,
    billing_customer_id: Option<String>,
    billing_subscription_id: Option<String>,
    updated_at: i64,
}

impl From<&Tenant> for TenantRow {
    fn from(t: &Tenant) -> Self {
        TenantRow {
            id: t.id.to_string(),
            name: t.name.clone(),
            created_at: micros(t.created_at),
            contact_email: t.contact_email.clone(),
            tier: t.tier.as_str().to_owned(),
            status: t.status.as_str().to_owned(),
            region: t.region.clone(),
            billing_customer_id: t.billing_customer_id.clone(),
            billing_subscription_id: t.billing_subscription_id.clone(),
            updated_at: micros(t.updated_at),
        }
    }
}

impl TryFrom<TenantRow> for Tenant {
    type Error = DbError;
    fn try_from(row: TenantRow) -> Result<Self, DbError> {
        Ok(Tenant {
            id: parse_col("tenants", "id", &row.id)?,
            tier: parse_col("tenants", "tier", &row.tier)?,
            status: parse_col("tenants", "status", &row.status)?,
            name: row.name,
            contact_email: row.contact_email,
            region: row.region,
            billing_customer_id: row.billing_customer_id,
            billing_subscription_id: row.billing_subscription_id,
            created_at: from_micros(row.created_at),
            updated_at: from_micros(row.updated_at.max(row.created_at)),
        })
    }
}

impl Db {
    /// Creates a tenant with a fresh id and no quota (see [`NewTenant::named`]).
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, DbError> {
        self.create_customer(NewTenant::named(name)).await
    }

    /// Creates a customer with a fresh id, active.
    pub async fn create_customer(&self, new: NewTenant) -> Result<Tenant, DbError> {
        let now = common::time_util::now_micros();
        let tenant = Tenant {
            id: TenantId::new(),
            name: new.name,
            contact_email: new.contact_email,
            tier: new.tier,
            status: CustomerStatus::Active,
            region: new.region,
            billing_customer_id: new.billing_customer_id,
            billing_subscription_id: new.billing_subscription_id,
            created_at: now,
            updated_at: now,
        };
        match self.insert_tenant(&tenant).await? {
            InsertOutcome::Inserted => Ok(tenant),
            InsertOutcome::AlreadyExists => Err(DbError::Conflict(format!(
                "tenant {} already exists",
                tenant.id
            ))),
        }
    }

    /// Inserts a tenant with a chosen id (e.g. the standalone default tenant); idempotent.
    pub async fn insert_tenant(&self, tenant: &Tenant) -> Result<InsertOutcome, DbError> {
        let row = TenantRow::from(tenant);
        let rows = with_conn!(self, |conn| {
            diesel::insert_into(tenants::table)
                .values(&row)
                .on_conflict(tenants::id)
                .do_nothing()
                .execute(conn)
                .await
        })?;
        Ok(InsertOutcome::from_rows(rows))
    }

    pub async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, DbError> {
        let id = id.to_string();
        let row = with_conn!(self, |conn| {
            tenants::table
                .find(&id)
                .select(TenantRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(Tenant::try_from).transpose()
    }

    /// Customers in id order (ids are time-ordered), after `after`, at most `limit`,
    /// optionally only those with `status`.
    pub async fn list_customers(
        &self,
        after: Option<TenantId>,
        limit: i64,
        status: Option<CustomerStatus>,
    ) -> Result<Vec<Tenant>, DbError> {
        let after = after.map(|a| a.to_string());
        let status = status.map(|s| s.as_str().to_owned());
        let rows = with_conn!(self, |conn| {
            let mut q = tenants::table
                .select(TenantRow::as_select())
                .order(tenants::id.asc())
                .limit(limit)
                .into_boxed();
            if let Some(after) = &after {
                q = q.filter(tenants::id.gt(after.clone()));
            }
            if let Some(status) = &status {
                q = q.filter(tenants::status.eq(status.clone()));
            }
            q.load::<TenantRow>(conn).await
        })?;
        rows.into_iter().map(Tenant::try_from).collect()
    }

    /// Applies `patch`; returns the updated customer, or `None` if there is none.
    pub async fn update_customer(
        &self,
        id: TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, DbError> {
        let Some(mut tenant) = self.get_tenant(id).await? else {
            return Ok(None);
        };
        if let Some(name) = &patch.name {
            tenant.name.clone_from(name);
        }
        if let Some(email) = &patch.contact_email {
            tenant.contact_email.clone_from(email);
        }
        if let Some(tier) = patch.tier {
            tenant.tier = tier;
        }
        if let Some(status) = patch.status {
            tenant.status = status;
        }
        if let Some(region) = &patch.region {
            tenant.region.clone_from(region);
        }
        if let Some(b) = &patch.billing_customer_id {
            tenant.billing_customer_id.clone_from(b);
        }
        if let Some(b) = &patch.billing_subscription_id {
            tenant.billing_subscription_id.clone_from(b);
        }
        tenant.updated_at = common::time_util::now_micros();
        let row = TenantRow::from(&tenant);
        let key = id.to_string();
        let rows = with_conn!(self, |conn| {
            diesel::update(tenants::table.find(&key))
                .set(&row)
                .execute(conn)
                .await
        })?;
        Ok((rows > 0).then_some(tenant))
    }
}
