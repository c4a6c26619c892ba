//! The gateway's HTTP contract, in process, against a real PostgreSQL database and a real
//! NATS JetStream (unique database and subject prefix per test).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bus::{Bus, NatsBus, NatsConfig};
use common::events::{Envelope, EpisodeCaptured, Topology};
use futures::StreamExt as _;
use gateway::{AuthSettings, Gateway, GatewayDeps, HttpSettings};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use test_support::db::TestDb;
use tokio_util::sync::CancellationToken;

struct Harness {
    base: String,
    key: String,
    tenant: common::TenantId,
    http: reqwest::Client,
    js: jetstream::Context,
    topology: Topology,
    shutdown: CancellationToken,
    test_db: TestDb,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with_nats("nats://127.0.0.1:4222").await
    }

    async fn start_with_nats(nats_url: &str) -> Harness {
        let test_db = TestDb::postgres().await;
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix).expect("prefix");
        let bus = Arc::new(
            NatsBus::connect(NatsConfig {
                url: nats_url.to_owned(),
                publish_timeout: Duration::from_secs(2),
                ..NatsConfig::default()
            })
            .await
            .expect("nats client"),
        );
        let _ = bus::ensure_topology(bus.as_ref(), &topology).await;
        let js = jetstream::new(
            async_nats::connect("nats://127.0.0.1:4222")
                .await
                .expect("nats for assertions"),
        );
        let created = gateway::admin::create_tenant(&test_db.db, "acme")
            .await
            .expect("tenant");
        let gateway = Gateway::build(
            &HttpSettings {
                addr: "127.0.0.1:0".into(),
                workers: Some(2),
                ..HttpSettings::default()
            },
            &AuthSettings::default(),
            GatewayDeps {
                db: test_db.db.clone(),
                bus: bus as Arc<dyn Bus>,
                topology: topology.clone(),
            },
        )
        .expect("gateway");
        let base = format!("http://{}", gateway.local_addr());
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
        Harness {
            base,
            key: created.api_key.expose_secret().to_owned(),
            tenant: created.tenant_id,
            http: reqwest::Client::new(),
            js,
            topology,
            shutdown,
            test_db,
        }
    }

    async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/v1/capture", self.base))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    async fn capture(&self, body: &Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post_raw(
            body.to_string(),
            &[
                ("X-API-Key", &self.key),
                ("Content-Type", "application/json"),
            ],
        )
        .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("request");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Messages in the episodes stream (0 when it does not exist).
    async fn published(&self) -> u64 {
        match self
            .js
            .get_stream(self.topology.episodes_stream().name)
            .await
        {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for spec in [
            self.topology.episodes_stream(),
            self.topology.dead_letter_stream(),
        ] {
            let _ = self.js.delete_stream(spec.name).await;
        }
        drop(self.test_db);
    }
}

fn valid_episode() -> Value {
    json!({
        "goal": "Deploy inventory-api to prod",
        "actions_taken": ["kubectl apply -f deploy.yaml"],
        "error_trace": "Error from server (Forbidden): user ci@acme-corp.com cannot create deployments",
        "error_class": "permission_error",
        "tool_chain": ["kubectl"],
        "environment": {"cluster": "prod-gke", "AWS_ACCESS_KEY_ID": "AKIA4QX7RZ2LMN8PWT3K"},
        "resolution": "Bound the deployer role",
        "tags": ["rbac"]
    })
}

fn error_field(body: &Value) -> Option<&str> {
    body["error"]["field"].as_str()
}

#[tokio::test]
async fn capture_is_published_redacted_and_reported_processing() {
    let h = Harness::start().await;
    let (status, headers, body) = h.capture(&valid_episode()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "accepted");
    let id = body["episode_id"].as_str().expect("id").to_owned();
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/api/v1/episodes/{id}").as_str())
    );
    assert!(headers.contains_key("x-request-id"));

    // The event is in JetStream, with its dedup id, redacted.
    let stream =
        h.js.get_stream(h.topology.episodes_stream().name)
            .await
            .expect("stream");
    let msg = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(
        msg.subject.as_str(),
        h.topology
            .episode_subject(common::events::Stage::Captured, h.tenant)
    );
    let raw = String::from_utf8_lossy(&msg.payload).into_owned();
    assert!(
        !raw.contains("AKIA4QX7RZ2LMN8PWT3K"),
        "secret leaked: {raw}"
    );
    assert!(!raw.contains("ci@acme-corp.com"), "email leaked: {raw}");
    let event: Envelope<EpisodeCaptured> = serde_json::from_slice(&msg.payload).expect("event");
    assert_eq!(event.data.episode_id.to_string(), id);
    assert_eq!(event.id, format!("{id}.captured"));
    assert!(
        event
            .data
            .redactions
            .iter()
            .any(|r| r.kind == "aws_access_key")
    );
    let headers = msg.headers;
    assert!(format!("{headers:?}").contains(&format!("{id}.captured")));

    // Nobody consumes in this test: the episode is accepted but not stored yet.
    let (status, body) = h.get(&format!("/api/v1/episodes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "processing");
    h.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field_and_publishes_nothing() {
    let h = Harness::start().await;
    let key = h.key.clone();
    let json_headers = [
        ("X-API-Key", key.as_str()),
        ("Content-Type", "application/json"),
    ];
    let big = "x".repeat(common::episode::limits::ERROR_TRACE_BYTES + 1);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("malformed json", br#"{"goal": "x""#.to_vec(), 400, None),
        ("not json", b"hello".to_vec(), 400, None),
        (
            "missing goal",
            br#"{"error_trace": "x"}"#.to_vec(),
            422,
            Some("goal"),
        ),
        (
            "empty goal",
            br#"{"goal": "  "}"#.to_vec(),
            422,
            Some("goal"),
        ),
        (
            "goal wrong type",
            br#"{"goal": 42}"#.to_vec(),
            422,
            Some("goal"),
        ),
        (
            "actions wrong type",
            br#"{"goal": "g", "actions_taken": "ls"}"#.to_vec(),
            422,
            Some("actions_taken"),
        ),
        (
            "environment value wrong type",
            br#"{"goal": "g", "environment": {"os": [1]}}"#.to_vec(),
            422,
            Some("environment.os"),
        ),
        (
            "unknown error_class",
            br#"{"goal": "g", "error_class": "segfault"}"#.to_vec(),
            422,
            Some("error_class"),
        ),
        (
            "unknown field",
            br#"{"goal": "g", "severity": "high"}"#.to_vec(),
            422,
            Some("severity"),
        ),
        (
            "oversize field",
            json!({"goal": "g", "error_trace": big})
                .to_string()
                .into_bytes(),
            422,
            Some("error_trace"),
        ),
        (
            "nul byte",
            br#"{"goal": "g", "actions_taken": ["a\u0000b"]}"#.to_vec(),
            422,
            Some("actions_taken[0]"),
        ),
        (
            "non-utf8",
            b"{\"goal\": \"\xff\xfe\"}".to_vec(),
            400,
            Some("goal"),
        ),
        (
            "bad screenshot",
            br#"{"goal": "g", "screenshot": "bm90IGFuIGltYWdl"}"#.to_vec(),
            422,
            Some("screenshot"),
        ),
        (
            "wrong episode type",
            br#"{"goal": "g", "episode_type": "success"}"#.to_vec(),
            422,
            Some("episode_type"),
        ),
    ];
    for (name, body, expected, field) in cases {
        let (status, _, json) = h.post_raw(body, &json_headers).await;
        assert_eq!(status.as_u16(), expected, "{name}: {json}");
        assert!(json["error"]["code"].is_string(), "{name}: {json}");
        assert!(json["error"]["message"].is_string(), "{name}: {json}");
        if let Some(field) = field {
            assert_eq!(error_field(&json), Some(field), "{name}: {json}");
        }
    }

    // Oversize body: 413 before parsing.
    let huge = json!({"goal": "g", "code_state_diff": "y".repeat(2 * 1024 * 1024)}).to_string();
    let (status, _, json) = h.post_raw(huge, &json_headers).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert_eq!(json["error"]["code"], "payload_too_large");

    // Wrong content type.
    let (status, _, json) = h
        .post_raw(
            valid_episode().to_string(),
            &[("X-API-Key", &key), ("Content-Type", "text/plain")],
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{json}");

    // Missing and invalid keys.
    let body = valid_episode().to_string();
    let (status, headers, json) = h
        .post_raw(body.clone(), &[("Content-Type", "application/json")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"]["code"], "missing_api_key");
    assert!(headers.contains_key("www-authenticate"));
    for bad in [
        "nope",
        "em_live_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    ] {
        let (status, _, json) = h
            .post_raw(
                body.clone(),
                &[("X-API-Key", bad), ("Content-Type", "application/json")],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(json["error"]["code"], "invalid_api_key");
    }
    // A wrong secret for a real key id.
    let forged = format!("{}{}", &key[..key.len() - 4], "AAAA");
    let (status, _, _) = h
        .post_raw(
            body,
            &[("X-API-Key", &forged), ("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert_eq!(h.published().await, 0, "bad input must publish nothing");
    h.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_same_episode() {
    let h = Harness::start().await;
    let body = valid_episode().to_string();
    let headers = [
        ("X-API-Key", h.key.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "retry-123"),
    ];
    let (s1, _, b1) = h.post_raw(body.clone(), &headers).await;
    let (s2, h2, b2) = h.post_raw(body, &headers).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(b1["episode_id"], b2["episode_id"]);
    assert_eq!(
        h2.get("idempotent-replayed").and_then(|v| v.to_str().ok()),
        Some("true")
    );
    // JetStream de-duplicated the second publish.
    assert_eq!(h.published().await, 1);

    // Same key, different body.
    let mut other = valid_episode();
    other["goal"] = json!("something else");
    let (s3, _, b3) = h.post_raw(other.to_string(), &headers).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{b3}");
    assert_eq!(b3["error"]["code"], "idempotency_key_mismatch");

    // Concurrent retries with one key: one episode id.
    let key2 = [
        ("X-API-Key", h.key.as_str()),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "burst-1"),
    ];
    let body = valid_episode().to_string();
    let answers = futures::future::join_all((0..20).map(|_| h.post_raw(body.clone(), &key2))).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(s, _, b)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{b}");
            b["episode_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(h.published().await, 2);
    h.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_episode_ids() {
    let h = Harness::start().await;
    let (status, body) = h
        .get(&format!("/api/v1/episodes/{}", common::EpisodeId::new()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = h.get("/api/v1/episodes/not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_field(&body), Some("id"));
    let (status, body) = h.get("/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = h.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn nats_unreachable_is_503_with_retry_after_never_202() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let h = Harness::start_with_nats(&format!("nats://127.0.0.1:{port}")).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = h.capture(&valid_episode()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "must fail fast, took {:?}",
        started.elapsed()
    );
    let (status, body) = h.get("/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["event_bus"], "unavailable");
    h.stop().await;
}

#[tokio::test]
async fn many_concurrent_captures_from_one_key_verify_argon2_once() {
    let h = Harness::start().await;
    let started = std::time::Instant::now();
    let body = valid_episode();
    let answers = futures::future::join_all((0..100).map(|_| h.capture(&body))).await;
    assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::ACCEPTED));
    assert_eq!(h.published().await, 100);
    // 100 argon2id verifications would take several seconds on 2 cores; one is ~30 ms.
    eprintln!("100 concurrent captures took {:?}", started.elapsed());
    let (status, _) = h.get("/health/live").await;
    assert_eq!(status, StatusCode::OK);
    let mut sub =
        h.js.get_stream(h.topology.episodes_stream().name)
            .await
            .expect("stream")
            .get_or_create_consumer(
                "check",
                jetstream::consumer::pull::Config {
                    durable_name: Some("check".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("consumer")
            .fetch()
            .max_messages(100)
            .messages()
            .await
            .expect("fetch");
    let mut ids = std::collections::HashSet::new();
    while let Some(Ok(msg)) = sub.next().await {
        let event: Envelope<EpisodeCaptured> = serde_json::from_slice(&msg.payload).expect("event");
        ids.insert(event.data.episode_id);
    }
    assert_eq!(ids.len(), 100, "every capture is a distinct episode");
    h.stop().await;
}
