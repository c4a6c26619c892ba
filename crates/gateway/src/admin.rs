//! Customer and key administration, shared by the admin API (`/admin/v1`,
//! [`crate::routes::admin`]) and the operator CLIs (`gateway admin …`,
//! `episodic-memory admin …`). Every change is written to the audit log, and revocations
//! and customer changes are announced to every gateway replica ([`AuthNotifier`]).

use std::sync::Arc;

use common::TenantId;
use common::events::AuthNotice;
use common::tenancy::{CustomerStatus, Scopes, Tier, UsageMonth};
use db::{ApiKeyRecord, AuditEntry, Db, NewApiKey, NewTenant, Tenant, TenantPatch, Usage};
use secrecy::SecretString;

use crate::auth::{Authenticator, generate_key};
use crate::error::ApiError;

/// Longest customer or key name.
pub const NAME_MAX: usize = 200;

/// Who performs an administrative action, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `admin` (the admin API), `cli`, or `key:<key id>` (a customer acting on itself).
    pub name: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn cli() -> Self {
        Actor {
            name: "cli".to_owned(),
            request_id: None,
        }
    }
}

/// Tells every gateway replica to forget cached verifications: applied to this process's
/// authenticator at once and published on the bus for the others.
#[derive(Clone, Default)]
pub struct AuthNotifier {
    local: Option<Authenticator>,
    bus: Option<(Arc<dyn bus::Bus>, String)>,
}

impl AuthNotifier {
    pub fn new(local: Option<Authenticator>, bus: Option<(Arc<dyn bus::Bus>, String)>) -> Self {
        Self { local, bus }
    }

    /// Applies and publishes `notice`. A bus failure is logged, not returned: the change
    /// is already durable, and other replicas forget it at their cache TTL at the latest.
    pub async fn send(&self, notice: AuthNotice) {
        if let Some(auth) = &self.local {
            auth.apply(&notice).await;
        }
        if let Some((bus, subject)) = &self.bus {
            match serde_json::to_vec(&notice) {
                Ok(payload) => {
                    if let Err(e) = bus.notify(subject, payload.into()).await {
                        tracing::warn!(error = %e, ?notice, "could not announce an auth change to other gateways");
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not encode an auth notice"),
            }
        }
    }
}

/// A new customer with its first API key. `api_key` is shown once and stored nowhere.
pub struct CreatedCustomer {
    pub customer: Tenant,
    pub key: CreatedKey,
}

/// A new key. `api_key` is shown once and stored nowhere.
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub api_key: SecretString,
}

/// A customer's usage for a month, with the quota that applies.
pub struct UsageReport {
    pub month: UsageMonth,
    pub usage: Usage,
}

/// The administrative operations.
#[derive(Clone)]
pub struct Admin {
    db: Db,
    notifier: AuthNotifier,
}

fn check_name(field: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "invalid_value",
            format!("must be 1-{NAME_MAX} bytes of text without control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// A plausible e-mail address (one `@`, a dot in the domain, no spaces), at most 254 bytes.
fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(email.to_owned())
    } else {
        Err(ApiError::validation(
            "contact_email",
            "invalid_value",
            "must be an e-mail address",
        ))
    }
}

fn check_token_field(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty()
        || value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(ApiError::validation(
            field,
            "invalid_value",
            "must be 1-128 characters of A-Z a-z 0-9 - _ . : /",
        ));
    }
    Ok(value.to_owned())
}

/// The fields of a new customer, as an operator gives them.
#[derive(Debug, Clone, Default)]
pub struct CustomerFields {
    pub name: String,
    pub contact_email: Option<String>,
    pub tier: Option<Tier>,
    pub region: Option<String>,
    pub billing_customer_id: Option<String>,
    pub billing_subscription_id: Option<String>,
}

impl CustomerFields {
    /// Validates into a [`NewTenant`] (default tier: free).
    pub fn parse(self) -> Result<NewTenant, ApiError> {
        Ok(NewTenant {
            name: check_name("name", &self.name)?,
            contact_email: self.contact_email.as_deref().map(check_email).transpose()?,
            tier: self.tier.unwrap_or(Tier::Free),
            region: match self.region.as_deref() {
                Some(r) => check_token_field("region", r)?,
                None => "default".to_owned(),
            },
            billing_customer_id: self
                .billing_customer_id
                .as_deref()
                .map(|b| check_token_field("billing_customer_id", b))
                .transpose()?,
            billing_subscription_id: self
                .billing_subscription_id
                .as_deref()
                .map(|b| check_token_field("billing_subscription_id", b))
                .transpose()?,
        })
    }
}

/// Validates a patch's fields (`Some(None)` clears an optional field).
pub fn check_patch(patch: TenantPatch) -> Result<TenantPatch, ApiError> {
    Ok(TenantPatch {
        name: patch
            .name
            .as_deref()
            .map(|n| check_name("name", n))
            .transpose()?,
        contact_email: patch
            .contact_email
            .map(|e| e.as_deref().map(check_email).transpose())
            .transpose()?,
        region: patch
            .region
            .as_deref()
            .map(|r| check_token_field("region", r))
            .transpose()?,
        billing_customer_id: patch
            .billing_customer_id
            .map(|b| {
                b.as_deref()
                    .map(|b| check_token_field("billing_customer_id", b))
                    .transpose()
            })
            .transpose()?,
        billing_subscription_id: patch
            .billing_subscription_id
            .map(|b| {
                b.as_deref()
                    .map(|b| check_token_field("billing_subscription_id", b))
                    .transpose()
            })
            .transpose()?,
        tier: patch.tier,
        status: patch.status,
    })
}

impl Admin {
    pub fn new(db: Db, notifier: AuthNotifier) -> Self {
        Self { db, notifier }
    }

    async fn audit(
        &self,
        actor: &Actor,
        tenant: Option<TenantId>,
        action: &str,
        target: &str,
        outcome: &str,
        details: Option<serde_json::Value>,
    ) -> Result<(), ApiError> {
        let mut entry = AuditEntry::new(tenant, actor.name.clone(), action, target, outcome);
        entry.request_id.clone_from(&actor.request_id);
        entry.details = details;
        self.db.append_audit(&entry).await?;
        Ok(())
    }

    async fn customer(&self, id: TenantId) -> Result<Tenant, ApiError> {
        self.db
            .get_tenant(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("customer {id} not found")))
    }

    /// Creates a customer and its first key (`default`, every scope).
    pub async fn create_customer(
        &self,
        actor: &Actor,
        new: NewTenant,
    ) -> Result<CreatedCustomer, ApiError> {
        let customer = self.db.create_customer(new).await?;
        self.audit(
            actor,
            Some(customer.id),
            "customer.create",
            &customer.id.to_string(),
            "success",
            Some(serde_json::json!({"tier": customer.tier, "name": customer.name})),
        )
        .await?;
        let key = self
            .create_key(actor, customer.id, "default", Scopes::ALL)
            .await?;
        Ok(CreatedCustomer { customer, key })
    }

    pub async fn get_customer(&self, id: TenantId) -> Result<Tenant, ApiError> {
        self.customer(id).await
    }

    pub async fn list_customers(
        &self,
        after: Option<TenantId>,
        limit: i64,
        status: Option<CustomerStatus>,
    ) -> Result<Vec<Tenant>, ApiError> {
        Ok(self.db.list_customers(after, limit, status).await?)
    }

    /// Changes a customer (tier, status, contact, billing ids); announced to every replica.
    pub async fn update_customer(
        &self,
        actor: &Actor,
        id: TenantId,
        patch: TenantPatch,
    ) -> Result<Tenant, ApiError> {
        let patch = check_patch(patch)?;
        let before = self.customer(id).await?;
        let after = self
            .db
            .update_customer(id, &patch)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("customer {id} not found")))?;
        let action = match (before.status, after.status) {
            (CustomerStatus::Active, CustomerStatus::Suspended) => "customer.suspend",
            (CustomerStatus::Suspended, CustomerStatus::Active) => "customer.reactivate",
            _ => "customer.update",
        };
        self.audit(
            actor,
            Some(id),
            action,
            &id.to_string(),
            "success",
            Some(serde_json::json!({
                "tier": {"from": before.tier, "to": after.tier},
                "status": {"from": before.status, "to": after.status},
            })),
        )
        .await?;
        self.notifier
            .send(AuthNotice::CustomerChanged { tenant_id: id })
            .await;
        Ok(after)
    }

    pub async fn set_status(
        &self,
        actor: &Actor,
        id: TenantId,
        status: CustomerStatus,
    ) -> Result<Tenant, ApiError> {
        self.update_customer(
            actor,
            id,
            TenantPatch {
                status: Some(status),
                ..TenantPatch::default()
            },
        )
        .await
    }

    /// Issues a key (the secret is returned once).
    pub async fn create_key(
        &self,
        actor: &Actor,
        tenant: TenantId,
        name: &str,
        scopes: Scopes,
    ) -> Result<CreatedKey, ApiError> {
        let name = check_name("name", name)?;
        if scopes.is_empty() {
            return Err(ApiError::validation(
                "scopes",
                "invalid_value",
                "a key needs at least one scope",
            ));
        }
        self.customer(tenant).await?;
        let generated = tokio::task::spawn_blocking(generate_key)
            .await
            .map_err(|e| ApiError::Internal(format!("key generation task: {e}")))??;
        let new = NewApiKey {
            key_id: generated.key_id.clone(),
            tenant_id: tenant,
            secret_hash: generated.secret_hash,
            name,
            scopes,
            created_at: common::time_util::now_micros(),
        };
        self.db.insert_api_key(&new).await?;
        self.audit(
            actor,
            Some(tenant),
            "key.create",
            &new.key_id,
            "success",
            Some(serde_json::json!({"name": new.name, "scopes": scopes.to_stored()})),
        )
        .await?;
        Ok(CreatedKey {
            record: ApiKeyRecord {
                key_id: new.key_id,
                tenant_id: tenant,
                secret_hash: String::new(),
                name: new.name,
                scopes,
                created_at: new.created_at,
                last_used_at: None,
                revoked_at: None,
            },
            api_key: generated.full_key,
        })
    }

    pub async fn list_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyRecord>, ApiError> {
        self.customer(tenant).await?;
        let mut keys = self.db.list_api_keys(tenant).await?;
        for k in &mut keys {
            k.secret_hash.clear();
        }
        Ok(keys)
    }

    async fn key(&self, key_id: &str) -> Result<ApiKeyRecord, ApiError> {
        self.db
            .find_api_key(key_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("key {key_id} not found")))
    }

    /// Revokes a key; idempotent (revoking a revoked key changes nothing and succeeds).
    /// Every replica refuses it as soon as the notice arrives.
    pub async fn revoke_key(&self, actor: &Actor, key_id: &str) -> Result<ApiKeyRecord, ApiError> {
        let key = self.key(key_id).await?;
        let changed = self
            .db
            .revoke_api_key(key_id, common::time_util::now_micros())
            .await?;
        self.notifier
            .send(AuthNotice::KeyRevoked {
                key_id: key_id.to_owned(),
            })
            .await;
        if changed {
            self.audit(
                actor,
                Some(key.tenant_id),
                "key.revoke",
                key_id,
                "success",
                None,
            )
            .await?;
        }
        let mut key = self.key(key_id).await?;
        key.secret_hash.clear();
        Ok(key)
    }

    /// Replaces a key by a new one with the same name and scopes, and revokes the old.
    pub async fn rotate_key(&self, actor: &Actor, key_id: &str) -> Result<CreatedKey, ApiError> {
        let old = self.key(key_id).await?;
        if old.revoked_at.is_some() {
            return Err(ApiError::validation(
                "key_id",
                "revoked",
                format!("key {key_id} is revoked; create a new key instead"),
            ));
        }
        let created = self
            .create_key(actor, old.tenant_id, &old.name, old.scopes)
            .await?;
        self.revoke_key(actor, key_id).await?;
        self.audit(
            actor,
            Some(old.tenant_id),
            "key.rotate",
            key_id,
            "success",
            Some(serde_json::json!({"replaced_by": created.record.key_id})),
        )
        .await?;
        Ok(created)
    }

    /// A month's usage (this month by default), zero when nothing was counted.
    pub async fn usage(
        &self,
        tenant: TenantId,
        month: Option<UsageMonth>,
    ) -> Result<UsageReport, ApiError> {
        self.customer(tenant).await?;
        let month = month.unwrap_or_else(|| UsageMonth::of(common::time_util::now_micros()));
        let usage = self.db.usage(tenant, month).await?.unwrap_or(Usage {
            tenant_id: tenant,
            month,
            episodes_captured: 0,
            searches: 0,
            gates: 0,
        });
        Ok(UsageReport { month, usage })
    }

    pub async fn audit_log(
        &self,
        tenant: Option<TenantId>,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        Ok(self.db.list_audit(tenant, after, limit).await?)
    }
}

/// Creates a customer with a name only (enterprise tier, no quota) and its first key: the
/// single-user standalone install, the evaluation harness and tests.
pub async fn create_tenant(db: &Db, name: &str) -> Result<CreatedTenant, ApiError> {
    let admin = Admin::new(db.clone(), AuthNotifier::default());
    let created = admin
        .create_customer(&Actor::cli(), NewTenant::named(&check_name("name", name)?))
        .await?;
    Ok(CreatedTenant {
        tenant_id: created.customer.id,
        key_id: created.key.record.key_id,
        api_key: created.key.api_key,
    })
}

/// Issues another key (every scope) for an existing tenant; returns (key id, full key).
pub async fn create_api_key(
    db: &Db,
    tenant: TenantId,
    name: &str,
) -> Result<(String, SecretString), ApiError> {
    let admin = Admin::new(db.clone(), AuthNotifier::default());
    let created = admin
        .create_key(&Actor::cli(), tenant, name, Scopes::ALL)
        .await?;
    Ok((created.record.key_id, created.api_key))
}

/// A new tenant with its first API key. `api_key` is shown once and stored nowhere.
pub struct CreatedTenant {
    pub tenant_id: TenantId,
    pub key_id: String,
    pub api_key: SecretString,
}
