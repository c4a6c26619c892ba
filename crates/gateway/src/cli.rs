//! The operator CLI's `admin` commands, shared by `gateway admin …` and
//! `episodic-memory admin …`: the admin API's operations against the database directly.
//! Output is JSON (one document per command), so scripts can read it; a new key's secret
//! appears once, in that output.

use clap::Subcommand;
use common::TenantId;
use common::tenancy::{CustomerStatus, Scopes, Tier, UsageMonth};
use db::TenantPatch;
use secrecy::ExposeSecret as _;

use crate::admin::{Actor, Admin, CustomerFields};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a customer and its first API key (shown once).
    CreateCustomer {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// free, pro or enterprise.
        #[arg(long, default_value = "free")]
        tier: Tier,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        billing_customer_id: Option<String>,
    },
    /// List customers.
    ListCustomers {
        #[arg(long)]
        status: Option<CustomerStatus>,
        #[arg(long)]
        after: Option<TenantId>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one customer.
    ShowCustomer { id: TenantId },
    /// Change a customer's tier.
    SetTier { id: TenantId, tier: Tier },
    /// Suspend a customer: every request with its keys gets 403.
    Suspend { id: TenantId },
    /// Reactivate a suspended customer.
    Reactivate { id: TenantId },
    /// Issue an API key (shown once).
    CreateKey {
        customer: TenantId,
        #[arg(long, default_value = "default")]
        name: String,
        /// Space- or comma-separated scopes, `*` for all.
        #[arg(long, default_value = "*")]
        scopes: String,
    },
    /// List a customer's keys.
    ListKeys { customer: TenantId },
    /// Replace a key by a new one (shown once) and revoke the old one.
    RotateKey { key_id: String },
    /// Revoke a key.
    RevokeKey { key_id: String },
    /// A customer's usage (this month unless --month YYYY-MM).
    Usage {
        customer: TenantId,
        #[arg(long)]
        month: Option<UsageMonth>,
    },
    /// The audit log, oldest first.
    Audit {
        #[arg(long)]
        customer: Option<TenantId>,
        #[arg(long)]
        after: Option<uuid::Uuid>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

fn customer_json(t: &db::Tenant) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "name": t.name, "contact_email": t.contact_email, "tier": t.tier,
        "status": t.status, "region": t.region, "billing_customer_id": t.billing_customer_id,
        "billing_subscription_id": t.billing_subscription_id,
    })
}

fn key_json(k: &db::ApiKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "key_id": k.key_id, "customer_id": k.tenant_id, "name": k.name,
        "scopes": k.scopes.to_stored(), "revoked": k.revoked_at.is_some(),
    })
}

fn new_key_json(k: &crate::admin::CreatedKey) -> serde_json::Value {
    let mut v = key_json(&k.record);
    v["api_key"] = serde_json::Value::String(k.api_key.expose_secret().to_owned());
    v
}

/// Runs one admin command and prints its result as JSON.
pub async fn run(admin: &Admin, command: AdminCommand) -> anyhow::Result<()> {
    let actor = Actor::cli();
    let out = match command {
        AdminCommand::CreateCustomer {
            name,
            email,
            tier,
            region,
            billing_customer_id,
        } => {
            let new = CustomerFields {
                name,
                contact_email: email,
                tier: Some(tier),
                region,
                billing_customer_id,
                billing_subscription_id: None,
            }
            .parse()?;
            let created = admin.create_customer(&actor, new).await?;
            serde_json::json!({
                "customer": customer_json(&created.customer),
                "key": new_key_json(&created.key),
                "note": "the api_key is shown once; store it now",
            })
        }
        AdminCommand::ListCustomers {
            status,
            after,
            limit,
        } => {
            let list = admin
                .list_customers(after, limit.clamp(1, 10_000), status)
                .await?;
            serde_json::Value::Array(list.iter().map(customer_json).collect())
        }
        AdminCommand::ShowCustomer { id } => customer_json(&admin.get_customer(id).await?),
        AdminCommand::SetTier { id, tier } => {
            let patch = TenantPatch {
                tier: Some(tier),
                ..TenantPatch::default()
            };
            customer_json(&admin.update_customer(&actor, id, patch).await?)
        }
        AdminCommand::Suspend { id } => customer_json(
            &admin
                .set_status(&actor, id, CustomerStatus::Suspended)
                .await?,
        ),
        AdminCommand::Reactivate { id } => {
            customer_json(&admin.set_status(&actor, id, CustomerStatus::Active).await?)
        }
        AdminCommand::CreateKey {
            customer,
            name,
            scopes,
        } => {
            let scopes = Scopes::parse_stored(&scopes)?;
            new_key_json(&admin.create_key(&actor, customer, &name, scopes).await?)
        }
        AdminCommand::ListKeys { customer } => serde_json::Value::Array(
            admin
                .list_keys(customer)
                .await?
                .iter()
                .map(key_json)
                .collect(),
        ),
        AdminCommand::RotateKey { key_id } => {
            new_key_json(&admin.rotate_key(&actor, &key_id).await?)
        }
        AdminCommand::RevokeKey { key_id } => key_json(&admin.revoke_key(&actor, &key_id).await?),
        AdminCommand::Usage { customer, month } => {
            let r = admin.usage(customer, month).await?;
            serde_json::json!({
                "customer_id": customer, "month": r.month.to_string(),
                "episodes_captured": r.usage.episodes_captured,
                "searches": r.usage.searches, "gates": r.usage.gates,
            })
        }
        AdminCommand::Audit {
            customer,
            after,
            limit,
        } => serde_json::Value::Array(
            admin
                .audit_log(customer, after, limit.clamp(1, 10_000))
                .await?
                .into_iter()
                .map(|e| {
                    serde_json::json!({
                        "id": e.id, "customer_id": e.tenant_id, "actor": e.actor,
                        "action": e.action, "target": e.target, "outcome": e.outcome,
                        "request_id": e.request_id, "details": e.details,
                        "at": e.created_at.unix_timestamp(),
                    })
                })
                .collect(),
        ),
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
