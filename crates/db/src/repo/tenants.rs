//! Tenants (customers).

use common::TenantId;
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
    pub created_at: OffsetDateTime,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct TenantRow {
    id: String,
    name: String,
    created_at: i64,
}

impl From<&Tenant> for TenantRow {
    fn from(t: &Tenant) -> Self {
        TenantRow {
            id: t.id.to_string(),
            name: t.name.clone(),
            created_at: micros(t.created_at),
        }
    }
}

impl TryFrom<TenantRow> for Tenant {
    type Error = DbError;
    fn try_from(row: TenantRow) -> Result<Self, DbError> {
        Ok(Tenant {
            id: parse_col("tenants", "id", &row.id)?,
            name: row.name,
            created_at: from_micros(row.created_at),
        })
    }
}

impl Db {
    /// Creates a tenant with a fresh id.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, DbError> {
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.to_owned(),
            created_at: common::time_util::now_micros(),
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
}
