//! API keys. The gateway looks a key up by its public id and verifies the secret against the
//! stored argon2id PHC string itself; this module never sees a plaintext secret.

use common::TenantId;
use common::tenancy::Scopes;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use super::{from_micros, micros, parse_col};
use crate::pool::with_conn;
use crate::schema::api_keys;
use crate::{Db, DbError};

/// A key to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The public part of the key (what a look-up is by).
    pub key_id: String,
    pub tenant_id: TenantId,
    /// argon2id PHC string of the secret part.
    pub secret_hash: String,
    /// Human label ("ci", "laptop").
    pub name: String,
    /// What the key may do.
    pub scopes: Scopes,
    pub created_at: OffsetDateTime,
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub tenant_id: TenantId,
    pub secret_hash: String,
    pub name: String,
    pub scopes: Scopes,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    /// Set once the key is revoked; a revoked key must be refused.
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct ApiKeyRow {
    key_id: String,
    tenant_id: String,
    secret_hash: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    scopes: String,
}

impl TryFrom<ApiKeyRow> for ApiKeyRecord {
    type Error = DbError;
    fn try_from(row: ApiKeyRow) -> Result<Self, DbError> {
        Ok(ApiKeyRecord {
            tenant_id: parse_col("api_keys", "tenant_id", &row.tenant_id)?,
            scopes: Scopes::parse_stored(&row.scopes)
                .map_err(|e| DbError::corrupt("api_keys", format!("scopes: {e}")))?,
            key_id: row.key_id,
            secret_hash: row.secret_hash,
            name: row.name,
            created_at: from_micros(row.created_at),
            last_used_at: row.last_used_at.map(from_micros),
            revoked_at: row.revoked_at.map(from_micros),
        })
    }
}

impl Db {
    /// Stores a new key. A duplicate `key_id` or an unknown tenant is a [`DbError::Conflict`].
    pub async fn insert_api_key(&self, key: &NewApiKey) -> Result<(), DbError> {
        let row = ApiKeyRow {
            key_id: key.key_id.clone(),
            tenant_id: key.tenant_id.to_string(),
            secret_hash: key.secret_hash.clone(),
            name: key.name.clone(),
            created_at: micros(key.created_at),
            last_used_at: None,
            revoked_at: None,
            scopes: key.scopes.to_stored(),
        };
        with_conn!(self, |conn| {
            diesel::insert_into(api_keys::table)
                .values(&row)
                .execute(conn)
                .await
        })?;
        Ok(())
    }

    /// The key with this public id, revoked or not.
    pub async fn find_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, DbError> {
        let row = with_conn!(self, |conn| {
            api_keys::table
                .find(key_id)
                .select(ApiKeyRow::as_select())
                .first(conn)
                .await
                .optional()
        })?;
        row.map(ApiKeyRecord::try_from).transpose()
    }

    /// A tenant's keys, newest first, revoked ones included.
    pub async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyRecord>, DbError> {
        let tenant = tenant.to_string();
        let rows = with_conn!(self, |conn| {
            api_keys::table
                .filter(api_keys::tenant_id.eq(&tenant))
                .select(ApiKeyRow::as_select())
                .order(api_keys::created_at.desc())
                .load::<ApiKeyRow>(conn)
                .await
        })?;
        rows.into_iter().map(ApiKeyRecord::try_from).collect()
    }

    /// Records a use of the key. Returns whether the key exists.
    pub async fn touch_api_key(&self, key_id: &str, at: OffsetDateTime) -> Result<bool, DbError> {
        let at = micros(at);
        let rows = with_conn!(self, |conn| {
            diesel::update(api_keys::table.find(key_id))
                .set(api_keys::last_used_at.eq(Some(at)))
                .execute(conn)
                .await
        })?;
        Ok(rows > 0)
    }

    /// Revokes the key. Returns whether this call revoked it (false if unknown or already
    /// revoked; the first revocation time is kept).
    pub async fn revoke_api_key(&self, key_id: &str, at: OffsetDateTime) -> Result<bool, DbError> {
        let at = micros(at);
        let rows = with_conn!(self, |conn| {
            diesel::update(
                api_keys::table
                    .find(key_id)
                    .filter(api_keys::revoked_at.is_null()),
            )
            .set(api_keys::revoked_at.eq(Some(at)))
            .execute(conn)
            .await
        })?;
        Ok(rows > 0)
    }
}
