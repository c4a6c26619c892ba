//! `/admin/v1`: customers, keys, usage and the audit log, for operators. Authenticated by
//! the admin token (`Authorization: Bearer …`, setting `auth.admin_token`), never by a
//! tenant key. Documented in docs/API.md.

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use common::TenantId;
use common::tenancy::{CustomerStatus, Scopes, Tier, UsageMonth};
use db::{ApiKeyRecord, AuditEntry, Tenant, TenantPatch};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

use super::read_json;
use crate::admin::{Actor, CreatedKey, CustomerFields};
use crate::error::ApiError;
use crate::{AppState, RequestId};

/// Admin bodies are small.
const ADMIN_BODY_LIMIT: usize = 16 * 1024;
/// Page size bounds of the list endpoints.
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;

/// Checks the admin token in constant time (on SHA-256 digests, so length leaks nothing).
fn admin(req: &HttpRequest, state: &AppState) -> Result<Actor, ApiError> {
    let expected = state
        .admin_token
        .as_ref()
        .ok_or(ApiError::InvalidAdminCredential)?;
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::InvalidAdminCredential)?;
    let a = Sha256::digest(presented.trim().as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    if !bool::from(a.as_slice().ct_eq(b.as_slice())) {
        return Err(ApiError::InvalidAdminCredential);
    }
    Ok(Actor {
        name: "admin".to_owned(),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct CustomerView {
    id: TenantId,
    name: String,
    contact_email: Option<String>,
    tier: Tier,
    status: CustomerStatus,
    region: String,
    billing_customer_id: Option<String>,
    billing_subscription_id: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Tenant> for CustomerView {
    fn from(t: Tenant) -> Self {
        CustomerView {
            id: t.id,
            name: t.name,
            contact_email: t.contact_email,
            tier: t.tier,
            status: t.status,
            region: t.region,
            billing_customer_id: t.billing_customer_id,
            billing_subscription_id: t.billing_subscription_id,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
        }
    }
}

#[derive(Serialize)]
pub struct KeyView {
    key_id: String,
    customer_id: TenantId,
    name: String,
    scopes: Vec<&'static str>,
    created_at: String,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(k: ApiKeyRecord) -> Self {
        KeyView {
            key_id: k.key_id,
            customer_id: k.tenant_id,
            name: k.name,
            scopes: k.scopes.iter().map(|s| s.as_str()).collect(),
            created_at: rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
        }
    }
}

/// A new key: the only response that ever carries the secret.
#[derive(Serialize)]
struct NewKeyView {
    #[serde(flatten)]
    key: KeyView,
    api_key: String,
}

impl From<CreatedKey> for NewKeyView {
    fn from(k: CreatedKey) -> Self {
        NewKeyView {
            api_key: k.api_key.expose_secret().to_owned(),
            key: k.record.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomerBody {
    name: String,
    contact_email: Option<String>,
    tier: Option<Tier>,
    region: Option<String>,
    billing_customer_id: Option<String>,
    billing_subscription_id: Option<String>,
}

/// `POST /admin/v1/customers` → 201 with the customer and its first key (shown once).
pub async fn create_customer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, &state)?;
    let body: NewCustomerBody = read_json(&req, payload, ADMIN_BODY_LIMIT).await?;
    let new = CustomerFields {
        name: body.name,
        contact_email: body.contact_email,
        tier: body.tier,
        region: body.region,
        billing_customer_id: body.billing_customer_id,
        billing_subscription_id: body.billing_subscription_id,
    }
    .parse()?;
    let created = state.admin.create_customer(&actor, new).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "customer": CustomerView::from(created.customer),
        "key": NewKeyView::from(created.key),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<CustomerStatus>,
    after: Option<TenantId>,
    limit: Option<i64>,
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(PAGE_DEFAULT),
        Some(l) if (1..=PAGE_MAX).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::validation(
            "limit",
            "out_of_range",
            format!("limit must be 1..={PAGE_MAX}"),
        )),
    }
}

/// Parses the query string strictly, naming the offending parameter.
fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    let de =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(req.query_string().as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let field = if path == "." || path.is_empty() {
            message.split('`').nth(1).unwrap_or("query").to_owned()
        } else {
            path
        };
        ApiError::validation(field, "invalid_value", message)
    })
}

/// `GET /admin/v1/customers?status=&after=&limit=`.
pub async fn list_customers(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let q: ListQuery = query(&req)?;
    let limit = page_limit(q.limit)?;
    let customers = state.admin.list_customers(q.after, limit, q.status).await?;
    let next = (customers.len() as i64 == limit)
        .then(|| customers.last().map(|c| c.id))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "customers": customers.into_iter().map(CustomerView::from).collect::<Vec<_>>(),
        "next_after": next,
    })))
}

fn customer_id(path: &str) -> Result<TenantId, ApiError> {
    path.parse()
        .map_err(|_| ApiError::NotFound(format!("customer {path} not found")))
}

/// `GET /admin/v1/customers/{id}`.
pub async fn get_customer(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let customer = state.admin.get_customer(customer_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(CustomerView::from(customer)))
}

/// `PATCH /admin/v1/customers/{id}`: `null` clears an optional field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    name: Option<String>,
    #[serde(default, with = "serde_with_null")]
    contact_email: Option<Option<String>>,
    tier: Option<Tier>,
    status: Option<CustomerStatus>,
    region: Option<String>,
    #[serde(default, with = "serde_with_null")]
    billing_customer_id: Option<Option<String>>,
    #[serde(default, with = "serde_with_null")]
    billing_subscription_id: Option<Option<String>>,
}

/// Tells "absent" (`None`) from `null` (`Some(None)`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

pub async fn update_customer(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, &state)?;
    let id = customer_id(&path)?;
    let body: PatchBody = read_json(&req, payload, ADMIN_BODY_LIMIT).await?;
    let patch = TenantPatch {
        name: body.name,
        contact_email: body.contact_email,
        tier: body.tier,
        status: body.status,
        region: body.region,
        billing_customer_id: body.billing_customer_id,
        billing_subscription_id: body.billing_subscription_id,
    };
    let customer = state.admin.update_customer(&actor, id, patch).await?;
    Ok(HttpResponse::Ok().json(CustomerView::from(customer)))
}

/// `POST /admin/v1/customers/{id}/suspend`.
pub async fn suspend(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_status(req, &path, &state, CustomerStatus::Suspended).await
}

/// `POST /admin/v1/customers/{id}/reactivate`.
pub async fn reactivate(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    set_status(req, &path, &state, CustomerStatus::Active).await
}

async fn set_status(
    req: HttpRequest,
    path: &str,
    state: &AppState,
    status: CustomerStatus,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, state)?;
    let customer = state
        .admin
        .set_status(&actor, customer_id(path)?, status)
        .await?;
    Ok(HttpResponse::Ok().json(CustomerView::from(customer)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    name: String,
    /// Scope names; default every scope.
    scopes: Option<Vec<String>>,
}

/// `GET /admin/v1/customers/{id}/keys`.
pub async fn list_keys(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let keys = state.admin.list_keys(customer_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "keys": keys.into_iter().map(KeyView::from).collect::<Vec<_>>(),
    })))
}

/// `POST /admin/v1/customers/{id}/keys` → 201 with the key (shown once).
pub async fn create_key(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, &state)?;
    let id = customer_id(&path)?;
    let body: NewKeyBody = read_json(&req, payload, ADMIN_BODY_LIMIT).await?;
    let scopes = match body.scopes {
        None => Scopes::ALL,
        Some(list) => Scopes::parse_stored(&list.join(" "))
            .map_err(|e| ApiError::validation("scopes", "invalid_value", e.to_string()))?,
    };
    let created = state
        .admin
        .create_key(&actor, id, &body.name, scopes)
        .await?;
    Ok(HttpResponse::Created().json(NewKeyView::from(created)))
}

/// `POST /admin/v1/keys/{key_id}/rotate` → 201 with the replacement (shown once).
pub async fn rotate_key(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, &state)?;
    let created = state.admin.rotate_key(&actor, &path).await?;
    Ok(HttpResponse::Created().json(NewKeyView::from(created)))
}

/// `DELETE /admin/v1/keys/{key_id}`: revoke (idempotent).
pub async fn revoke_key(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req, &state)?;
    let key = state.admin.revoke_key(&actor, &path).await?;
    Ok(HttpResponse::Ok().json(KeyView::from(key)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    month: Option<String>,
}

/// `GET /admin/v1/customers/{id}/usage?month=YYYY-MM`.
pub async fn usage(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let q: UsageQuery = query(&req)?;
    let month = q
        .month
        .as_deref()
        .map(|m| {
            m.parse::<UsageMonth>()
                .map_err(|e| ApiError::validation("month", "invalid_value", e.to_string()))
        })
        .transpose()?;
    let report = state.admin.usage(customer_id(&path)?, month).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "customer_id": report.usage.tenant_id,
        "month": report.month.to_string(),
        "episodes_captured": report.usage.episodes_captured,
        "searches": report.usage.searches,
        "gates": report.usage.gates,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    customer: Option<TenantId>,
    after: Option<uuid::Uuid>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct AuditView {
    id: uuid::Uuid,
    customer_id: Option<TenantId>,
    actor: String,
    action: String,
    target: String,
    request_id: Option<String>,
    outcome: String,
    details: Option<serde_json::Value>,
    at: String,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        AuditView {
            id: e.id,
            customer_id: e.tenant_id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            outcome: e.outcome,
            details: e.details,
            at: rfc3339(e.created_at),
        }
    }
}

/// `GET /admin/v1/audit?customer=&after=&limit=`: oldest first, paged by id.
pub async fn audit(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&req, &state)?;
    let q: AuditQuery = query(&req)?;
    let limit = page_limit(q.limit)?;
    let entries = state.admin.audit_log(q.customer, q.after, limit).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "entries": entries.into_iter().map(AuditView::from).collect::<Vec<_>>(),
        "next_after": next,
    })))
}
