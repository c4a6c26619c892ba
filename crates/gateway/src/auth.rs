//! API keys: format, generation, argon2id hashing and verification.
//!
//! A key looks like `em_live_<key id>_<secret>`: the key id (12 lower-case alphanumerics) is
//! the database look-up key, so verification never scans hashes; the secret is 32 random
//! bytes, base64url, shown once at creation and stored only as an argon2id PHC hash.
//! Verification (tens of milliseconds of CPU by design) runs on the blocking pool, and a
//! successful verification is cached for a few minutes under the SHA-256 of the whole key,
//! so a busy client pays for argon2 once, and concurrent first requests share one check.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use common::TenantId;
use common::events::AuthNotice;
use common::tenancy::{CustomerStatus, Scope, Scopes, Tier};
use db::Db;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Prefix of every live key.
pub const KEY_PREFIX: &str = "em_live_";
const KEY_ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;

/// A key as presented by a client, split into its parts. The secret never appears in
/// `Debug` output.
pub struct PresentedKey {
    key_id: String,
    secret: SecretString,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl PresentedKey {
    /// Parses `em_live_<key id>_<secret>`; anything else is an invalid key.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let rest = raw
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(ApiError::InvalidApiKey)?;
        let (key_id, secret) = rest.split_once('_').ok_or(ApiError::InvalidApiKey)?;
        let id_ok = key_id.len() == KEY_ID_LEN
            && key_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let secret_ok = (32..=128).contains(&secret.len())
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok || !secret_ok {
            return Err(ApiError::InvalidApiKey);
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            secret: SecretString::from(secret.to_owned()),
            fingerprint: Sha256::digest(raw.trim().as_bytes()).into(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// A freshly generated key: the full key is shown to the user once; only `secret_hash` is
/// stored.
pub struct GeneratedKey {
    pub key_id: String,
    pub full_key: SecretString,
    pub secret_hash: String,
}

fn argon2() -> Argon2<'static> {
    // OWASP's recommended argon2id parameters: 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Generates a new key (CPU-heavy: call from a blocking context or a CLI).
pub fn generate_key() -> Result<GeneratedKey, ApiError> {
    let mut rng = rand::rng();
    let key_id: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .map(|c| char::from(c).to_ascii_lowercase())
        .take(KEY_ID_LEN)
        .collect();
    let mut secret_bytes = [0u8; SECRET_BYTES];
    rng.fill(&mut secret_bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let secret_hash = hash_secret(&secret)?;
    Ok(GeneratedKey {
        full_key: SecretString::from(format!("{KEY_PREFIX}{key_id}_{secret}")),
        key_id,
        secret_hash,
    })
}

/// argon2id PHC string of a secret.
pub fn hash_secret(secret: &str) -> Result<String, ApiError> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ApiError::Internal(format!("salt: {e}")))?;
    argon2()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

/// Constant-time verification of a secret against its PHC hash.
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| argon2().verify_password(secret.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// Who is calling: the customer, the key and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub key_id: String,
    pub scopes: Scopes,
    pub tier: Tier,
}

impl Principal {
    /// Refuses the request (403 `insufficient_scope`) unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope(scope))
        }
    }
}

/// A key whose secret was verified.
#[derive(Debug, Clone)]
struct VerifiedKey {
    key_id: String,
    tenant: TenantId,
    scopes: Scopes,
}

/// What a request needs to know about the customer.
#[derive(Debug, Clone, Copy)]
struct CustomerState {
    status: CustomerStatus,
    tier: Tier,
}

/// Authenticates requests against the customer database. Two caches keep argon2 and the
/// database off the hot path: verified keys (by the SHA-256 of the whole key) and customer
/// states (status, tier). A revocation or a customer change clears the affected entries
/// here and, through [`AuthNotice`]s on the bus, on every other gateway replica.
#[derive(Clone)]
pub struct Authenticator {
    db: Db,
    keys: moka::future::Cache<[u8; 32], Arc<VerifiedKey>>,
    customers: moka::future::Cache<TenantId, CustomerState>,
}

impl Authenticator {
    pub fn new(db: Db, cache_ttl: Duration) -> Self {
        Self {
            db,
            keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl)
                .support_invalidation_closures()
                .build(),
            customers: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    /// Resolves the `X-API-Key` header to a principal. A suspended customer is refused
    /// (403), a deleted one is an invalid key.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let raw = header.ok_or(ApiError::MissingApiKey)?;
        let key = Arc::new(PresentedKey::parse(raw)?);
        let fingerprint = key.fingerprint;
        let db = self.db.clone();
        let verified = self
            .keys
            .try_get_with(fingerprint, verify_against_db(db, key))
            .await
            .map_err(unshare)?;
        let db = self.db.clone();
        let tenant = verified.tenant;
        let state = self
            .customers
            .try_get_with(tenant, async move {
                match db.get_tenant(tenant).await? {
                    Some(t) => Ok(CustomerState {
                        status: t.status,
                        tier: t.tier,
                    }),
                    None => Err(ApiError::InvalidApiKey),
                }
            })
            .await
            .map_err(unshare)?;
        if state.status == CustomerStatus::Suspended {
            return Err(ApiError::Suspended);
        }
        Ok(Principal {
            tenant,
            key_id: verified.key_id.clone(),
            scopes: verified.scopes,
            tier: state.tier,
        })
    }

    /// Forgets what a notice says is stale.
    pub async fn apply(&self, notice: &AuthNotice) {
        match notice {
            AuthNotice::KeyRevoked { key_id } => {
                let key_id = key_id.clone();
                let _ = self
                    .keys
                    .invalidate_entries_if(move |_, v| v.key_id == key_id);
            }
            AuthNotice::CustomerChanged { tenant_id } => {
                let tenant = *tenant_id;
                let _ = self
                    .keys
                    .invalidate_entries_if(move |_, v| v.tenant == tenant);
                self.customers.invalidate(&tenant).await;
            }
        }
    }

    /// Drops every cached verification.
    pub fn clear_cache(&self) {
        self.keys.invalidate_all();
        self.customers.invalidate_all();
    }
}

fn unshare(e: Arc<ApiError>) -> ApiError {
    match &*e {
        ApiError::InvalidApiKey => ApiError::InvalidApiKey,
        ApiError::Unavailable(m) => ApiError::Unavailable(m.clone()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Listens for [`AuthNotice`]s from other replicas (and this one) and applies them.
pub struct AuthNoticeListener(pub Authenticator);

#[async_trait::async_trait]
impl bus::NoticeHandler for AuthNoticeListener {
    async fn notice(&self, _subject: &str, payload: bytes::Bytes) {
        match serde_json::from_slice::<AuthNotice>(&payload) {
            Ok(notice) => self.0.apply(&notice).await,
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed auth notice"),
        }
    }
}

async fn verify_against_db(db: Db, key: Arc<PresentedKey>) -> Result<Arc<VerifiedKey>, ApiError> {
    let record = db.find_api_key(key.key_id()).await?;
    let Some(record) = record else {
        // Burn comparable CPU so that unknown key ids are not distinguishable by timing.
        let _ = tokio::task::spawn_blocking(|| verify_secret("x", DUMMY_HASH)).await;
        return Err(ApiError::InvalidApiKey);
    };
    if record.revoked_at.is_some() {
        return Err(ApiError::InvalidApiKey);
    }
    let phc = record.secret_hash.clone();
    let presented = Arc::clone(&key);
    let ok =
        tokio::task::spawn_blocking(move || verify_secret(presented.secret.expose_secret(), &phc))
            .await
            .map_err(|e| ApiError::Internal(format!("verification task: {e}")))?;
    if ok {
        Ok(Arc::new(VerifiedKey {
            key_id: record.key_id,
            tenant: record.tenant_id,
            scopes: record.scopes,
        }))
    } else {
        Err(ApiError::InvalidApiKey)
    }
}

/// An argon2id hash of a random string, used to equalise timing for unknown key ids.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWpVd0m2l0I1lmN6ZVFeLtP1iG5wFVh2sT4b1oT8v1g";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let key = generate_key().expect("generate");
        let full = key.full_key.expose_secret().to_owned();
        assert!(full.starts_with(KEY_PREFIX));
        let parsed = PresentedKey::parse(&full).expect("parse");
        assert_eq!(parsed.key_id(), key.key_id);
        assert!(verify_secret(
            parsed.secret.expose_secret(),
            &key.secret_hash
        ));
        assert!(!verify_secret("wrong", &key.secret_hash));
        assert!(key.secret_hash.starts_with("$argon2id$"));
        assert!(!key.secret_hash.contains(parsed.secret.expose_secret()));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "em_live_",
            "em_test_abcdefabcdef_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "em_live_short_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "em_live_abcdefabcdef_short",
            "em_live_ABCDEFABCDEF_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "em_live_abcdefabcdef_xxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(PresentedKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = generate_key().expect("generate");
        let parsed = PresentedKey::parse(key.full_key.expose_secret()).expect("parse");
        let secret = key
            .full_key
            .expose_secret()
            .rsplit('_')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(!format!("{parsed:?}").contains(&secret));
    }

    #[test]
    fn dummy_hash_is_a_valid_phc_string() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
