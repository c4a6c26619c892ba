//! `POST /api/v1/search` and `POST /api/v1/reflect` at the gateway edge, in process, against
//! a real PostgreSQL and a real NATS: validation (422 naming the field) happens before the
//! retriever is asked; a missing retriever is 503, a slow one 504, both with the JSON error
//! envelope and `Retry-After`, never a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bus::{Bus, NatsBus, NatsConfig, RequestHandler};
use bytes::Bytes;
use common::events::Topology;
use common::query::{RetrieverCall, RetrieverReply, SearchRequest, SearchResults};
use gateway::{AuthSettings, Gateway, GatewayDeps, HttpSettings};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use test_support::db::TestDb;
use tokio_util::sync::CancellationToken;

struct Harness {
    base: String,
    key: String,
    http: reqwest::Client,
    bus: Arc<NatsBus>,
    topology: Topology,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl Harness {
    async fn start(query_timeout: Duration) -> Harness {
        let db = TestDb::postgres().await;
        let prefix = format!("q{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix).expect("prefix");
        let bus = Arc::new(
            NatsBus::connect(NatsConfig::default())
                .await
                .expect("nats client"),
        );
        let created = gateway::admin::create_tenant(&db.db, "acme")
            .await
            .expect("tenant");
        let gateway = Gateway::build(
            &HttpSettings {
                addr: "127.0.0.1:0".into(),
                workers: Some(2),
                query_timeout,
                ..HttpSettings::default()
            },
            &AuthSettings::default(),
            GatewayDeps {
                db: db.db.clone(),
                bus: bus.clone() as Arc<dyn Bus>,
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
            http: reqwest::Client::new(),
            bus,
            topology,
            shutdown,
            _db: db,
        }
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }
}

fn field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn bad_search_and_gate_input_is_422_naming_the_field() {
    let h = Harness::start(Duration::from_secs(2)).await;
    let long = "x".repeat(common::query::limits::QUERY_BYTES + 1);
    let cases = [
        ("/api/v1/search", json!({"query": "a", "k": 0}), "k"),
        ("/api/v1/search", json!({"query": "a", "k": 51}), "k"),
        ("/api/v1/search", json!({"query": "   "}), "query"),
        ("/api/v1/search", json!({}), "query"),
        ("/api/v1/search", json!({"query": long}), "query"),
        (
            "/api/v1/search",
            json!({"query": "a", "filters": {"colour": "red"}}),
            "colour",
        ),
        (
            "/api/v1/search",
            json!({"query": "a", "min_similarity": 2}),
            "min_similarity",
        ),
        (
            "/api/v1/search",
            json!({"query": "a", "filters": {"error_class": "bogus"}}),
            "filters.error_class",
        ),
        (
            "/api/v1/search",
            json!({"query": "a", "surprise": 1}),
            "surprise",
        ),
        ("/api/v1/reflect", json!({"goal": "g"}), "proposed_action"),
        (
            "/api/v1/reflect",
            json!({"proposed_action": "x".repeat(5000)}),
            "proposed_action",
        ),
        (
            "/api/v1/reflect",
            json!({"proposed_action": "ls", "context": "c".repeat(9000)}),
            "context",
        ),
    ];
    for (path, body, expected) in cases {
        let (status, _, reply) = h.post(path, &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {reply}"
        );
        assert_eq!(reply["error"]["code"], "validation_failed");
        assert!(
            field(&reply).ends_with(expected),
            "{path}: expected field {expected}, got {reply}"
        );
    }
    // Without a key nothing is looked at.
    let res = h
        .http
        .post(format!("{}/api/v1/search", h.base))
        .json(&json!({"query": "a"}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    h.shutdown.cancel();
}

#[tokio::test]
async fn no_retriever_is_503_with_retry_after() {
    let h = Harness::start(Duration::from_secs(2)).await;
    let started = Instant::now();
    for (path, body) in [
        ("/api/v1/search", json!({"query": "helm upgrade failed"})),
        (
            "/api/v1/reflect",
            json!({"proposed_action": "helm upgrade api ./chart"}),
        ),
    ] {
        let (status, headers, reply) = h.post(path, &body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
        assert_eq!(reply["error"]["code"], "service_unavailable");
        assert!(headers.contains_key("retry-after"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not at the deadline"
    );
    h.shutdown.cancel();
}

/// Answers after `delay`, with an empty result.
struct Slow(Duration);

#[async_trait]
impl RequestHandler for Slow {
    async fn handle(&self, payload: Bytes) -> Bytes {
        let call: RetrieverCall<SearchRequest> =
            serde_json::from_slice(&payload).expect("a search call");
        assert_eq!(call.request.text, "crash loop");
        tokio::time::sleep(self.0).await;
        let reply = RetrieverReply::Ok {
            result: SearchResults {
                results: Vec::new(),
                candidates: 0,
            },
        };
        serde_json::to_vec(&reply).expect("encode").into()
    }
}

#[tokio::test]
async fn slow_retriever_is_504_at_the_deadline_and_fast_one_answers() {
    let h = Harness::start(Duration::from_millis(300)).await;
    let stop = CancellationToken::new();
    let _slow = h
        .bus
        .serve(
            &h.topology.search_subject(),
            &h.topology.retriever_queue_group(),
            Arc::new(Slow(Duration::from_secs(3))),
            stop.clone(),
        )
        .await
        .expect("serve");
    let started = Instant::now();
    let (status, headers, reply) = h
        .post("/api/v1/search", &json!({"query": "crash loop"}))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert_eq!(reply["error"]["code"], "upstream_timeout");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stop.cancel();

    // A responder within the deadline: 200 with the results shape.
    let fast = CancellationToken::new();
    let h2 = Harness::start(Duration::from_secs(2)).await;
    let _fast = h2
        .bus
        .serve(
            &h2.topology.search_subject(),
            &h2.topology.retriever_queue_group(),
            Arc::new(Slow(Duration::from_millis(10))),
            fast.clone(),
        )
        .await
        .expect("serve");
    let (status, _, reply) = h2
        .post("/api/v1/search", &json!({"query": "crash loop"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["results"], json!([]));
    fast.cancel();
    h.shutdown.cancel();
    h2.shutdown.cancel();
}
