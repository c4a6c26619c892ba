//! The admin API (`/admin/v1`) and what it does to tenant requests: two gateway replicas
//! sharing one real PostgreSQL database and one real NATS server (unique database and
//! subject prefix per test), as in production.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, NatsBus, NatsConfig};
use common::events::Topology;
use gateway::{AuthSettings, Gateway, GatewayDeps, HttpSettings};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use test_support::db::TestDb;
use tokio_util::sync::CancellationToken;

const ADMIN_TOKEN: &str = "test-admin-token-4f9c2d7e1a";

struct Cluster {
    /// Base URLs of the two replicas.
    bases: [String; 2],
    http: reqwest::Client,
    shutdown: CancellationToken,
    topology: Topology,
    _db: TestDb,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Reply {
    status: StatusCode,
    json: Value,
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_with(AuthSettings::default()).await
    }

    async fn start_with(auth: AuthSettings) -> Cluster {
        let db = TestDb::postgres().await;
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix).expect("prefix");
        let shutdown = CancellationToken::new();
        let mut bases = Vec::new();
        for _ in 0..2 {
            let bus = Arc::new(
                NatsBus::connect(NatsConfig {
                    url: "nats://127.0.0.1:4222".to_owned(),
                    ..NatsConfig::default()
                })
                .await
                .expect("nats"),
            );
            let bus_for_topology: Arc<dyn Bus> = bus.clone();
            let gateway = Gateway::build(
                &HttpSettings {
                    addr: "127.0.0.1:0".into(),
                    workers: Some(1),
                    ..HttpSettings::default()
                },
                &AuthSettings {
                    admin_token: Some(SecretString::from(ADMIN_TOKEN)),
                    ..auth.clone()
                },
                GatewayDeps {
                    db: db.db.clone(),
                    bus: bus as Arc<dyn Bus>,
                    topology: topology.clone(),
                },
            )
            .expect("gateway");
            bus::ensure_topology(bus_for_topology.as_ref(), &topology)
                .await
                .expect("streams");
            bases.push(format!("http://{}", gateway.local_addr()));
            tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
        }
        // Let both replicas subscribe to the auth notices.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Cluster {
            bases: [bases[0].clone(), bases[1].clone()],
            http: reqwest::Client::new(),
            shutdown,
            topology,
            _db: db,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request");
        let status = res.status();
        let json = res.json::<Value>().await.unwrap_or(Value::Null);
        Reply { status, json }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}/admin/v1{path}", self.bases[0]))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.send(req).await
    }

    /// `GET /api/v1/episodes` with `key` on replica `i`.
    async fn list_episodes(&self, i: usize, key: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}/api/v1/episodes", self.bases[i]))
                .header("X-API-Key", key),
        )
        .await
    }

    /// `POST /api/v1/capture` on replica `i`.
    async fn capture(
        &self,
        i: usize,
        key: &str,
        goal: &str,
        idempotency: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/v1/capture", self.bases[i]))
            .header("X-API-Key", key)
            .json(&json!({"goal": goal, "error_trace": "boom", "error_class": "unknown"}));
        if let Some(k) = idempotency {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        (
            status,
            headers,
            res.json::<Value>().await.unwrap_or(Value::Null),
        )
    }

    async fn create_customer(&self, name: &str, tier: &str) -> (String, String, String) {
        let r = self
            .admin(
                reqwest::Method::POST,
                "/customers",
                Some(json!({"name": name, "tier": tier, "contact_email": "ops@example.com"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        (
            r.json["customer"]["id"].as_str().expect("id").to_owned(),
            r.json["key"]["key_id"].as_str().expect("key id").to_owned(),
            r.json["key"]["api_key"].as_str().expect("key").to_owned(),
        )
    }

    /// Polls until replica `i` answers `want` for `key`; returns how long it took.
    async fn until_status(&self, i: usize, key: &str, want: StatusCode) -> Duration {
        let started = Instant::now();
        loop {
            let r = self.list_episodes(i, key).await;
            if r.status == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "replica {i} still answers {} ({})",
                r.status,
                r.json
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_admin_token_and_never_a_tenant_key() {
    let c = Cluster::start().await;
    let (_, _, key) = c.create_customer("acme", "pro").await;
    let url = format!("{}/admin/v1/customers", c.bases[0]);
    for req in [
        c.http.get(&url),
        c.http.get(&url).bearer_auth("wrong"),
        c.http.get(&url).bearer_auth(&key),
        c.http.get(&url).header("X-API-Key", &key),
    ] {
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
        assert_eq!(r.json["error"]["code"], "invalid_admin_credential");
    }
    // And the admin token is not an API key.
    let r = c.list_episodes(0, ADMIN_TOKEN).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_managed_and_every_change_is_audited() {
    let c = Cluster::start().await;
    let (id, key_id, key) = c.create_customer("acme", "pro").await;
    assert_eq!(c.list_episodes(1, &key).await.status, StatusCode::OK);

    let r = c
        .admin(reqwest::Method::GET, &format!("/customers/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (&r.json["tier"], &r.json["status"], &r.json["contact_email"]),
        (&json!("pro"), &json!("active"), &json!("ops@example.com"))
    );
    let r = c
        .admin(
            reqwest::Method::PATCH,
            &format!("/customers/{id}"),
            Some(json!({"tier": "enterprise", "contact_email": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["tier"], "enterprise");
    assert_eq!(r.json["contact_email"], Value::Null);

    let r = c
        .admin(reqwest::Method::GET, "/customers?limit=10", None)
        .await;
    assert_eq!(r.json["customers"].as_array().map(Vec::len), Some(1));

    // Keys: a listing never carries a secret.
    let r = c
        .admin(reqwest::Method::GET, &format!("/customers/{id}/keys"), None)
        .await;
    assert_eq!(r.json["keys"][0]["key_id"], key_id.as_str());
    assert!(!r.json.to_string().contains(&key));
    assert!(!r.json.to_string().contains("argon2"));

    let r = c
        .admin(
            reqwest::Method::GET,
            &format!("/customers/{id}/usage"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["episodes_captured"], 0);

    let r = c
        .admin(reqwest::Method::GET, &format!("/audit?customer={id}"), None)
        .await;
    let actions: Vec<&str> = r.json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["customer.create", "key.create", "customer.update"]
    );
    assert!(r.json["entries"][2]["request_id"].is_string(), "{}", r.json);
    assert!(!r.json.to_string().contains(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_suspension_reach_both_replicas_within_a_second() {
    let c = Cluster::start().await;
    let (id, key_id, key) = c.create_customer("acme", "free").await;
    // Both replicas have verified (and cached) the key.
    for i in 0..2 {
        assert_eq!(c.list_episodes(i, &key).await.status, StatusCode::OK);
    }

    let r = c
        .admin(
            reqwest::Method::POST,
            &format!("/customers/{id}/suspend"),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "suspended");
    for i in 0..2 {
        let took = c.until_status(i, &key, StatusCode::FORBIDDEN).await;
        assert!(took < Duration::from_secs(1), "replica {i} took {took:?}");
    }
    let r = c.list_episodes(1, &key).await;
    assert_eq!(r.json["error"]["code"], "account_suspended");
    c.admin(
        reqwest::Method::POST,
        &format!("/customers/{id}/reactivate"),
        None,
    )
    .await;
    for i in 0..2 {
        c.until_status(i, &key, StatusCode::OK).await;
    }

    // Rotation: the new key works everywhere, the old one is refused everywhere.
    let r = c
        .admin(
            reqwest::Method::POST,
            &format!("/keys/{key_id}/rotate"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let new_key = r.json["api_key"].as_str().expect("new key").to_owned();
    for i in 0..2 {
        let took = c.until_status(i, &key, StatusCode::UNAUTHORIZED).await;
        assert!(took < Duration::from_secs(1), "replica {i} took {took:?}");
        assert_eq!(c.list_episodes(i, &new_key).await.status, StatusCode::OK);
    }

    // Revocation, idempotent.
    let new_id = r.json["key_id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        let r = c
            .admin(reqwest::Method::DELETE, &format!("/keys/{new_id}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert!(r.json["revoked_at"].is_string());
    }
    for i in 0..2 {
        let took = c.until_status(i, &new_key, StatusCode::UNAUTHORIZED).await;
        assert!(took < Duration::from_secs(1), "replica {i} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_what_a_key_may_do() {
    let c = Cluster::start().await;
    let (id, _, _) = c.create_customer("acme", "pro").await;
    let r = c
        .admin(
            reqwest::Method::POST,
            &format!("/customers/{id}/keys"),
            Some(json!({"name": "search-only", "scopes": ["search", "reflect"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["scopes"], json!(["search", "reflect"]));
    let key = r.json["api_key"].as_str().expect("key");
    let r = c.list_episodes(0, key).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json["error"]["code"], "insufficient_scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_a_4xx_json_error() {
    let c = Cluster::start().await;
    let (id, _, _) = c.create_customer("acme", "pro").await;
    let unknown = common::TenantId::new();
    let cases: Vec<(reqwest::Method, String, Option<Value>, StatusCode, &str)> = vec![
        (
            reqwest::Method::POST,
            "/customers".into(),
            Some(json!({"name": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            reqwest::Method::POST,
            "/customers".into(),
            Some(json!({"name": "x", "tier": "gold"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tier",
        ),
        (
            reqwest::Method::POST,
            "/customers".into(),
            Some(json!({"name": "x", "contact_email": "nope"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "contact_email",
        ),
        (
            reqwest::Method::POST,
            "/customers".into(),
            Some(json!({"name": "x", "plan": "pro"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "plan",
        ),
        (
            reqwest::Method::POST,
            "/customers".into(),
            Some(json!(["x"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "body",
        ),
        (
            reqwest::Method::GET,
            "/customers?limit=0".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
        (
            reqwest::Method::GET,
            "/customers?status=gone".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "status",
        ),
        (
            reqwest::Method::GET,
            format!("/customers/{unknown}"),
            None,
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            reqwest::Method::GET,
            "/customers/not-an-id".into(),
            None,
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            reqwest::Method::PATCH,
            format!("/customers/{id}"),
            Some(json!({"status": "deleted"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "status",
        ),
        (
            reqwest::Method::POST,
            format!("/customers/{id}/keys"),
            Some(json!({"name": "k", "scopes": ["admin"]})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes",
        ),
        (
            reqwest::Method::POST,
            format!("/customers/{id}/keys"),
            Some(json!({"name": "k", "scopes": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes",
        ),
        (
            reqwest::Method::GET,
            format!("/customers/{id}/usage?month=2026-13"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "month",
        ),
        (
            reqwest::Method::DELETE,
            "/keys/nope".into(),
            None,
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            reqwest::Method::POST,
            "/keys/nope/rotate".into(),
            None,
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            reqwest::Method::GET,
            "/audit?after=xyz".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "after",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let r = c.admin(method.clone(), &path, body.clone()).await;
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.json);
        assert!(
            r.json["error"]["code"].is_string(),
            "{method} {path}: {}",
            r.json
        );
        if !field.is_empty() {
            assert_eq!(
                r.json["error"]["field"], field,
                "{method} {path}: {}",
                r.json
            );
        }
    }
}

fn quotas(free: u64, pro: u64) -> AuthSettings {
    AuthSettings {
        quotas: gateway::quota::QuotaSettings {
            free,
            pro,
            ..gateway::quota::QuotaSettings::default()
        },
        ..AuthSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_quota_holds_across_replicas_and_warns_once_per_level() {
    let c = Cluster::start_with(quotas(5, 0)).await;
    let (id, _, key) = c.create_customer("acme", "free").await;
    let nats = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("nats");
    let tenant: common::TenantId = id.parse().expect("id");
    let mut warnings = nats
        .subscribe(
            c.topology
                .tenant_subject(common::events::TenantEventKind::QuotaWarning, tenant),
        )
        .await
        .expect("subscribe");
    let mut accepted = Vec::new();
    for n in 0..8 {
        let (status, headers, body) = c.capture(n % 2, &key, &format!("goal {n}"), None).await;
        match status {
            StatusCode::ACCEPTED => accepted.push(headers),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
                assert_eq!(body["error"]["quota"]["limit"], 5);
                assert!(body["error"]["quota"]["resets_at"].is_string());
                let retry: u64 = headers["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!(retry >= 1);
            }
            other => panic!("capture {n}: {other} {body}"),
        }
    }
    assert_eq!(accepted.len(), 5, "exactly the quota is admitted");
    let warn: Vec<Option<&str>> = accepted
        .iter()
        .map(|h| h.get("quota-warning").and_then(|v| v.to_str().ok()))
        .collect();
    assert!(warn[..3].iter().all(Option::is_none), "{warn:?}");
    assert!(warn[3].is_some_and(|w| w.contains("level=80")), "{warn:?}");
    assert!(warn[4].is_some_and(|w| w.contains("level=100")), "{warn:?}");
    assert_eq!(accepted[4]["quota-used"], "5");
    let mut levels = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(
        Duration::from_secs(2),
        futures::StreamExt::next(&mut warnings),
    )
    .await
    {
        let v: Value = serde_json::from_slice(&msg.payload).expect("json");
        assert_eq!(v["type"], "quota.warning");
        levels.push(v["data"]["level"].as_u64().expect("level"));
    }
    assert_eq!(levels, [80, 100], "each level announced once");
    // Reading keeps working when the capture quota is spent.
    assert_eq!(c.list_episodes(0, &key).await.status, StatusCode::OK);
    let r = c
        .admin(
            reqwest::Method::GET,
            &format!("/customers/{id}/usage"),
            None,
        )
        .await;
    assert_eq!(r.json["episodes_captured"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pro_overage_is_accepted_with_a_warning_and_replays_are_not_counted() {
    let c = Cluster::start_with(quotas(0, 5)).await;
    let (_, _, key) = c.create_customer("acme", "pro").await;
    for n in 0..5 {
        let (status, _, body) = c
            .capture(0, &key, &format!("goal {n}"), Some(&format!("k{n}")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // 20 % overage: the sixth is accepted, flagged as overage.
    let (status, headers, body) = c.capture(1, &key, "goal 5", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let warning = headers["quota-warning"].to_str().expect("ascii");
    assert!(warning.starts_with("overage"), "{warning}");
    let (status, _, body) = c.capture(1, &key, "goal 6", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["quota"]["hard_limit"], 6);
    // A replay of an accepted capture is still answered as one, not refused.
    let (status, headers, body) = c.capture(0, &key, "goal 0", Some("k0")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["idempotent-replayed"], "true");
}
