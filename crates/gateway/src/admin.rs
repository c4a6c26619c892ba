//! Operator commands shared by the gateway and standalone CLIs: create a tenant and issue
//! an API key. (The full admin API arrives with tenancy management.)

use common::TenantId;
use db::{Db, NewApiKey};
use secrecy::SecretString;

use crate::auth::generate_key;
use crate::error::ApiError;

/// A new tenant with its first API key. `api_key` is shown once and stored nowhere.
pub struct CreatedTenant {
    pub tenant_id: TenantId,
    pub key_id: String,
    pub api_key: SecretString,
}

/// Creates a tenant and its first key.
pub async fn create_tenant(db: &Db, name: &str) -> Result<CreatedTenant, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::validation(
            "name",
            "invalid_value",
            "tenant name must be 1-200 bytes",
        ));
    }
    let tenant = db.create_tenant(name).await?;
    let (key_id, api_key) = create_api_key(db, tenant.id, "default").await?;
    Ok(CreatedTenant {
        tenant_id: tenant.id,
        key_id,
        api_key,
    })
}

/// Issues another key for an existing tenant; returns (key id, full key).
pub async fn create_api_key(
    db: &Db,
    tenant: TenantId,
    name: &str,
) -> Result<(String, SecretString), ApiError> {
    if db.get_tenant(tenant).await?.is_none() {
        return Err(ApiError::NotFound(format!("tenant {tenant} not found")));
    }
    let key = tokio::task::spawn_blocking(generate_key)
        .await
        .map_err(|e| ApiError::Internal(format!("key generation task: {e}")))??;
    db.insert_api_key(&NewApiKey {
        key_id: key.key_id.clone(),
        tenant_id: tenant,
        secret_hash: key.secret_hash,
        name: name.to_owned(),
        created_at: common::time_util::now_micros(),
    })
    .await?;
    Ok((key.key_id, key.full_key))
}
