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

// ---- the episode API: list, delete, feedback, over both stacks ----------------------------

mod episode_api {
    use std::any::Any;
    use std::sync::Arc;
    use std::time::Duration;

    use bus::{Bus, EmbeddedBus, EmbeddedBusConfig, NatsBus, NatsConfig, OutboundMessage};
    use common::events::{
        Envelope, EpisodeDeleted, EpisodeEmbedded, ImageStatus, ModelEmbedding, Stage, Topology,
    };
    use common::vector::{VectorSpace, VectorStore};
    use common::{Embedding, Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
    use db::Db;
    use embedded_index::EmbeddedIndex;
    use gateway::{AuthSettings, Gateway, GatewayDeps, HttpSettings};
    use ingest_writer::IngestDeps;
    use kyrodb_client::{KyroDbConfig, KyroDbStore};
    use reqwest::StatusCode;
    use secrecy::ExposeSecret as _;
    use serde_json::{Value, json};
    use test_support::db::TestDb;
    use test_support::kyrodb_fake::{self, FakeKyroDbOptions};
    use test_support::nats::TestTopology;
    use time::OffsetDateTime;
    use tokio_util::sync::CancellationToken;

    /// How the services are composed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Separate services: PostgreSQL, NATS JetStream, KyroDB (the fake, over gRPC).
        Services,
        /// The standalone composition: SQLite, the embedded bus, the embedded indexes.
        Standalone,
    }

    /// The gateway and the ingest-writer (the embedder is played by the test, which
    /// publishes `episode.embedded` events), with two tenants.
    struct Stack {
        mode: Mode,
        base: String,
        http: reqwest::Client,
        a: (TenantId, String),
        b: (TenantId, String),
        db: Db,
        bus: Arc<dyn Bus>,
        topology: Topology,
        text: Arc<dyn VectorStore>,
        image: Arc<dyn VectorStore>,
        shutdown: CancellationToken,
        /// Servers, files and databases that live as long as the stack.
        _keep: Vec<Box<dyn Any + Send>>,
    }

    /// The stores and the bus of a [`Mode`].
    type Parts = (
        TestDb,
        Arc<dyn Bus>,
        Topology,
        Arc<dyn VectorStore>,
        Arc<dyn VectorStore>,
    );

    impl Stack {
        async fn start(mode: Mode) -> Stack {
            let mut keep: Vec<Box<dyn Any + Send>> = Vec::new();
            let (test_db, bus, topology, text, image): Parts = match mode {
                Mode::Services => {
                    let test_topology = TestTopology::new();
                    let topology = test_topology.topology.clone();
                    keep.push(Box::new(test_topology));
                    let bus = NatsBus::connect(NatsConfig {
                        url: test_support::nats::nats_url(),
                        ..NatsConfig::default()
                    })
                    .await
                    .expect("nats");
                    let text_fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(384))
                        .await
                        .expect("fake KyroDB");
                    let image_fake = kyrodb_fake::spawn(FakeKyroDbOptions::with_dimension(512))
                        .await
                        .expect("fake KyroDB");
                    let text = KyroDbStore::connect(KyroDbConfig::new(
                        text_fake.url(),
                        VectorSpace::Text,
                        384,
                    ))
                    .await
                    .expect("text store");
                    let image = KyroDbStore::connect(KyroDbConfig::new(
                        image_fake.url(),
                        VectorSpace::Image,
                        512,
                    ))
                    .await
                    .expect("image store");
                    keep.push(Box::new(text_fake));
                    keep.push(Box::new(image_fake));
                    (
                        TestDb::postgres().await,
                        Arc::new(bus),
                        topology,
                        Arc::new(text),
                        Arc::new(image),
                    )
                }
                Mode::Standalone => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let bus =
                        EmbeddedBus::open(dir.path().join("bus.db"), EmbeddedBusConfig::default())
                            .await
                            .expect("embedded bus");
                    let open = |name: &str, dim: usize| {
                        let path = dir.path().join("index").join(name);
                        tokio::task::spawn_blocking(move || EmbeddedIndex::open(path, dim))
                    };
                    let text = open("text", 384).await.expect("task").expect("index");
                    let image = open("image", 512).await.expect("task").expect("index");
                    keep.push(Box::new(dir));
                    (
                        TestDb::sqlite().await,
                        Arc::new(bus),
                        Topology::new("tsa").expect("prefix"),
                        Arc::new(text),
                        Arc::new(image),
                    )
                }
            };
            bus::ensure_topology(bus.as_ref(), &topology)
                .await
                .expect("topology");
            let db = test_db.db.clone();
            let a = gateway::admin::create_tenant(&db, "a")
                .await
                .expect("tenant");
            let b = gateway::admin::create_tenant(&db, "b")
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
                    db: db.clone(),
                    bus: bus.clone(),
                    topology: topology.clone(),
                },
            )
            .expect("gateway");
            let base = format!("http://{}", gateway.local_addr());
            let shutdown = CancellationToken::new();
            tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
            tokio::spawn(ingest_writer::run(
                IngestDeps {
                    db: db.clone(),
                    bus: bus.clone(),
                    topology: topology.clone(),
                    text_store: text.clone(),
                    image_store: Some(image.clone()),
                },
                shutdown.clone(),
            ));
            keep.push(Box::new(test_db));
            Stack {
                mode,
                base,
                http: reqwest::Client::new(),
                a: (a.tenant_id, a.api_key.expose_secret().to_owned()),
                b: (b.tenant_id, b.api_key.expose_secret().to_owned()),
                db,
                bus,
                topology,
                text,
                image,
                shutdown,
                _keep: keep,
            }
        }

        async fn send(
            &self,
            method: reqwest::Method,
            key: &str,
            path: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let mut req = self
                .http
                .request(method, format!("{}{path}", self.base))
                .header("X-API-Key", key);
            if let Some(body) = body {
                req = req
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            let res = req.send().await.expect("request");
            let status = res.status();
            let text = res.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }

        async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
            self.send(reqwest::Method::GET, key, path, None).await
        }

        async fn delete(&self, key: &str, id: impl std::fmt::Display) -> (StatusCode, Value) {
            self.send(
                reqwest::Method::DELETE,
                key,
                &format!("/api/v1/episodes/{id}"),
                None,
            )
            .await
        }

        async fn feedback(
            &self,
            key: &str,
            id: impl std::fmt::Display,
            body: Value,
        ) -> (StatusCode, Value) {
            self.send(
                reqwest::Method::POST,
                key,
                &format!("/api/v1/episodes/{id}/feedback"),
                Some(body),
            )
            .await
        }

        /// Plays the embedder: publishes `episode.embedded` for an episode.
        async fn embed(&self, tenant: TenantId, spec: &Spec) -> EpisodeId {
            let id = spec.id.unwrap_or_default();
            let episode = Episode::parse(EpisodeFields {
                goal: Some(format!("goal {}", spec.seed)),
                error_class: Some(spec.class.to_owned()),
                tool_chain: spec.tools.iter().map(|t| (*t).to_owned()).collect(),
                tags: spec.tags.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            })
            .expect("episode");
            let unit = |dim: usize| {
                let v = (0..dim)
                    .map(|i| ((i as f32) * (spec.seed as f32 + 1.0)).sin() + 1.5)
                    .collect();
                Embedding::new(v).expect("embedding")
            };
            let env = Envelope::new(
                tenant,
                EpisodeEmbedded {
                    episode_id: id,
                    vector_id: VectorId::for_episode(tenant, id),
                    captured_at: spec.captured_at,
                    episode,
                    text: ModelEmbedding {
                        model: "all-MiniLM-L6-v2".into(),
                        vector: unit(384),
                    },
                    image_status: if spec.image {
                        ImageStatus::Embedded
                    } else {
                        ImageStatus::None
                    },
                    image: spec.image.then(|| ModelEmbedding {
                        model: "clip".into(),
                        vector: unit(512),
                    }),
                    redactions: vec![],
                },
                common::time_util::now_micros(),
            );
            let message = OutboundMessage::episode_event(&self.topology, &env).expect("encode");
            self.bus.publish(message).await.expect("publish");
            id
        }

        /// Publishes the episodes and waits until the writer stored all of them.
        async fn store(&self, tenant: TenantId, specs: &[Spec]) -> Vec<EpisodeId> {
            let mut ids = Vec::new();
            for spec in specs {
                ids.push(self.embed(tenant, spec).await);
            }
            for id in &ids {
                eventually("episode stored", || async {
                    self.db
                        .get_episode(tenant, *id)
                        .await
                        .expect("get")
                        .is_some()
                })
                .await;
            }
            ids
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What to publish for one episode.
    #[derive(Clone)]
    struct Spec {
        id: Option<EpisodeId>,
        seed: u64,
        captured_at: OffsetDateTime,
        class: &'static str,
        tools: &'static [&'static str],
        tags: &'static [&'static str],
        image: bool,
    }

    fn spec(seed: u64, captured_at: OffsetDateTime) -> Spec {
        Spec {
            id: None,
            seed,
            captured_at,
            class: "dependency_error",
            tools: &["cargo"],
            tags: &[],
            image: false,
        }
    }

    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ids_of(page: &Value) -> Vec<String> {
        page["episodes"]
            .as_array()
            .expect("episodes")
            .iter()
            .map(|e| e["episode_id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Every page of `GET /api/v1/episodes?<query>`, checking that only the last is short.
    async fn pages(stack: &Stack, key: &str, query: &str, limit: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/episodes?limit={limit}");
            if !query.is_empty() {
                path.push('&');
                path.push_str(query);
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = stack.get(key, &path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            let ids = ids_of(&page);
            all.extend(ids.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => {
                    assert_eq!(ids.len(), limit, "a short page with a cursor: {path}");
                    cursor = Some(next.to_owned());
                }
                None => {
                    assert!(page["next_cursor"].is_null(), "{page}");
                    return all;
                }
            }
        }
    }

    fn rfc3339(t: OffsetDateTime) -> String {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("format")
            .replace('+', "%2B")
    }

    async fn list_pages_filters_and_is_tenant_scoped(mode: Mode) {
        let s = Stack::start(mode).await;
        let base = common::time_util::now_micros() - time::Duration::hours(2);
        let classes = ["network_error", "permission_error", "dependency_error"];
        let specs: Vec<Spec> = (0..12u64)
            .map(|i| Spec {
                // Pairs share a capture time; the id breaks the tie.
                captured_at: base + time::Duration::minutes((i / 2) as i64),
                class: classes[(i % 3) as usize],
                tools: if i % 2 == 0 {
                    &["kubectl", "helm"]
                } else {
                    &["kubectl-x"]
                },
                tags: if i % 4 == 0 { &["rbac"] } else { &["net"] },
                image: i == 0,
                ..spec(i, base)
            })
            .collect();
        let ids = s.store(s.a.0, &specs).await;
        s.store(s.b.0, &[spec(99, base), spec(98, base)]).await;
        let mut expected: Vec<(OffsetDateTime, String, usize)> = specs
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (sp, id))| (sp.captured_at, id.to_string(), i))
            .collect();
        expected.sort_by(|x, y| (y.0, &y.1).cmp(&(x.0, &x.1)));
        let order = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
            expected
                .iter()
                .filter(|(_, _, i)| keep(*i))
                .map(|(_, id, _)| id.clone())
                .collect()
        };
        let key = s.a.1.clone();

        // Newest first across pages; the default page size is 20.
        assert_eq!(pages(&s, &key, "", 5).await, order(&|_| true));
        let (status, first) = s.get(&key, "/api/v1/episodes").await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(ids_of(&first), order(&|_| true));
        assert!(first["next_cursor"].is_null());

        // Filters, across pages.
        assert_eq!(
            pages(&s, &key, "tool=kubectl", 2).await,
            order(&|i| i % 2 == 0)
        );
        assert_eq!(
            pages(&s, &key, "tool=kubectl&tag=rbac", 1).await,
            order(&|i| i % 4 == 0)
        );
        assert_eq!(
            pages(&s, &key, "error_class=network_error", 3).await,
            order(&|i| i % 3 == 0)
        );
        let window = format!(
            "created_after={}&created_before={}",
            rfc3339(base + time::Duration::minutes(1)),
            rfc3339(base + time::Duration::minutes(4))
        );
        assert_eq!(
            pages(&s, &key, &window, 4).await,
            order(&|i| (2..8).contains(&i))
        );

        // An item is exactly what GET /episodes/{id} returns (the screenshot described, not
        // sent).
        let (_, page) = s.get(&key, "/api/v1/episodes?limit=100").await;
        for item in page["episodes"].as_array().expect("episodes") {
            let id = item["episode_id"].as_str().expect("id");
            let (status, single) = s.get(&key, &format!("/api/v1/episodes/{id}")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(item, &single);
        }

        // Tenant B sees only its own two.
        assert_eq!(pages(&s, &s.b.1, "", 10).await.len(), 2);
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_pages_filters_and_is_tenant_scoped_services() {
        list_pages_filters_and_is_tenant_scoped(Mode::Services).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_pages_filters_and_is_tenant_scoped_standalone() {
        list_pages_filters_and_is_tenant_scoped(Mode::Standalone).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_rejects_bad_parameters_naming_them() {
        let s = Stack::start(Mode::Standalone).await;
        let key = s.a.1.clone();
        for (query, field) in [
            ("sort=asc", "sort"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=many", "limit"),
            ("cursor=not-a-cursor", "cursor"),
            ("error_class=segfault", "error_class"),
            ("tool=", "tool"),
            ("tag=a&tag=b", "tag"),
            ("created_after=yesterday", "created_after"),
            ("created_before=2026-01-01", "created_before"),
            (
                "created_after=2026-01-02T00:00:00Z&created_before=2026-01-01T00:00:00Z",
                "created_before",
            ),
        ] {
            let (status, body) = s.get(&key, &format!("/api/v1/episodes?{query}")).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
            assert_eq!(body["error"]["code"], "validation_failed", "{query}");
            assert_eq!(body["error"]["field"], field, "{query}: {body}");
            assert_eq!(body["error"]["details"][0]["field"], field, "{query}");
        }
        // Authentication comes first.
        let (status, body) = s.get("nope", "/api/v1/episodes?sort=asc").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        s.stop().await;
    }

    async fn delete_removes_the_episode_everywhere(mode: Mode) {
        let s = Stack::start(mode).await;
        let (a, key_a) = s.a.clone();
        let key_b = s.b.1.clone();
        let now = common::time_util::now_micros();
        let ids = s
            .store(
                a,
                &[
                    Spec {
                        image: true,
                        ..spec(1, now)
                    },
                    spec(2, now),
                ],
            )
            .await;
        let (gone, kept) = (ids[0], ids[1]);
        let vector = VectorId::for_episode(a, gone);
        assert!(s.text.get(a, vector).await.expect("get").is_some());
        assert!(s.image.get(a, vector).await.expect("get").is_some());
        s.feedback(&key_a, gone, json!({"helpful": true})).await;

        // Tenant B can neither see nor delete nor rate it.
        assert_eq!(s.delete(&key_b, gone).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            s.get(&key_b, &format!("/api/v1/episodes/{gone}")).await.0,
            StatusCode::NOT_FOUND
        );
        let (status, body) = s.feedback(&key_b, gone, json!({"helpful": false})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(s.db.get_episode(a, gone).await.expect("get").is_some());

        // A deletes it: 204, gone from the system of record at once and from both vector
        // stores shortly after; twice is fine.
        let (status, body) = s.delete(&key_a, gone).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, body) = s.get(&key_a, &format!("/api/v1/episodes/{gone}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(!pages(&s, &key_a, "", 10).await.contains(&gone.to_string()));
        eventually("vectors deleted", || async {
            s.text.get(a, vector).await.expect("get").is_none()
                && s.image.get(a, vector).await.expect("get").is_none()
        })
        .await;
        assert_eq!(s.delete(&key_a, gone).await.0, StatusCode::NO_CONTENT);
        assert!(
            s.db.feedback_counts(a, &[gone])
                .await
                .expect("counts")
                .is_empty()
        );
        let (status, _) = s.feedback(&key_a, gone, json!({"helpful": true})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The other episode is untouched.
        assert!(
            s.text
                .get(a, VectorId::for_episode(a, kept))
                .await
                .expect("get")
                .is_some()
        );
        assert_eq!(
            s.get(&key_a, &format!("/api/v1/episodes/{kept}")).await.0,
            StatusCode::OK
        );

        // Unknown and malformed ids.
        let (status, body) = s.delete(&key_a, EpisodeId::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, body) = s.delete(&key_a, "not-a-uuid").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "id");

        // The deletion was announced once (the repeat was de-duplicated).
        if s.mode == Mode::Services {
            let js = async_nats::jetstream::new(
                async_nats::connect(test_support::nats::nats_url())
                    .await
                    .expect("nats"),
            );
            let stream = js
                .get_stream(s.topology.episodes_stream().name)
                .await
                .expect("stream");
            let subject = s.topology.episode_subject(Stage::Deleted, a);
            let message = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .expect("deleted event");
            let event: Envelope<EpisodeDeleted> =
                serde_json::from_slice(&message.payload).expect("event");
            assert_eq!(event.id, format!("{gone}.deleted"));
            assert_eq!(event.event_type, "episode.deleted");
            assert_eq!(event.tenant_id, a);
            assert_eq!(event.data.episode_id, gone);
            assert_eq!(event.data.text_vector_id, vector);
            assert_eq!(event.data.image_vector_id, Some(vector));
            use futures::StreamExt as _;
            let counts: Vec<(String, usize)> = stream
                .info_with_subjects(&subject)
                .await
                .expect("info")
                .map(|r| r.expect("subject count"))
                .collect()
                .await;
            assert_eq!(counts, vec![(subject.clone(), 1)]);
        }
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_removes_the_episode_everywhere_services() {
        delete_removes_the_episode_everywhere(Mode::Services).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_removes_the_episode_everywhere_standalone() {
        delete_removes_the_episode_everywhere(Mode::Standalone).await;
    }

    async fn delete_while_processing_stores_nothing(mode: Mode) {
        let s = Stack::start(mode).await;
        let (a, key) = s.a.clone();
        let capture = json!({"goal": "deploy", "error_class": "network_error"});
        let post = |idempotency: &'static str| {
            s.http
                .post(format!("{}/api/v1/capture", s.base))
                .header("X-API-Key", &key)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", idempotency)
                .body(capture.to_string())
                .send()
        };
        let res = post("only-once").await.expect("capture");
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body: Value = res.json().await.expect("json");
        let id: EpisodeId = body["episode_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        let (status, body) = s.get(&key, &format!("/api/v1/episodes/{id}")).await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("processing"))
        );

        // Deleted before the embedder is done with it.
        assert_eq!(s.delete(&key, id).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            s.get(&key, &format!("/api/v1/episodes/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
        // The embedder finishes; then another episode goes through, so we know the writer
        // got past the deleted one.
        let now = common::time_util::now_micros();
        s.embed(
            a,
            &Spec {
                id: Some(id),
                image: true,
                ..spec(7, now)
            },
        )
        .await;
        s.store(a, &[spec(8, now)]).await;
        assert_eq!(s.db.get_episode(a, id).await.expect("get"), None);
        assert_eq!(s.db.count_episodes(a).await.expect("count"), 1);
        let vector = VectorId::for_episode(a, id);
        assert!(s.text.get(a, vector).await.expect("get").is_none());
        assert!(s.image.get(a, vector).await.expect("get").is_none());

        // A retry of the capture does not bring it back.
        let res = post("only-once").await.expect("capture");
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "episode_deleted", "{body}");
        assert_eq!(
            s.get(&key, &format!("/api/v1/episodes/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_while_processing_stores_nothing_services() {
        delete_while_processing_stores_nothing(Mode::Services).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_while_processing_stores_nothing_standalone() {
        delete_while_processing_stores_nothing(Mode::Standalone).await;
    }

    async fn feedback_is_counted(mode: Mode) {
        let s = Stack::start(mode).await;
        let (a, key) = s.a.clone();
        let id = s
            .store(a, &[spec(1, common::time_util::now_micros())])
            .await[0];
        let (status, body) = s
            .feedback(
                &key,
                id,
                json!({"helpful": true, "note": "worked; ask j.avery@fastmail.com"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"episode_id": id.to_string(), "helpful_count": 1, "unhelpful_count": 0})
        );
        s.feedback(&key, id, json!({"helpful": true})).await;
        let (status, body) = s
            .feedback(&key, id, json!({"helpful": false, "note": null}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (&body["helpful_count"], &body["unhelpful_count"]),
            (&json!(2), &json!(1))
        );
        assert_eq!(
            s.db.feedback_counts(a, &[id])
                .await
                .expect("counts")
                .get(&id),
            Some(&(2, 1))
        );

        // Strict body, naming the field.
        let long = "n".repeat(1001);
        for (body, field) in [
            (json!({}), "helpful"),
            (json!({"helpful": "yes"}), "helpful"),
            (json!({"helpful": true, "stars": 5}), "stars"),
            (json!({"helpful": true, "note": long}), "note"),
            (json!({"helpful": true, "note": 7}), "note"),
        ] {
            let (status, reply) = s.feedback(&key, id, body.clone()).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {reply}");
            assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        }
        let (status, _) = s
            .feedback(&key, EpisodeId::new(), json!({"helpful": true}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, reply) = s.feedback(&key, "x", json!({"helpful": true})).await;
        assert_eq!(
            (status, &reply["error"]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("id"))
        );
        // Nothing of the rejected requests was counted.
        assert_eq!(
            s.db.feedback_counts(a, &[id])
                .await
                .expect("counts")
                .get(&id),
            Some(&(2, 1))
        );
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_is_counted_services() {
        feedback_is_counted(Mode::Services).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_is_counted_standalone() {
        feedback_is_counted(Mode::Standalone).await;
    }
}
