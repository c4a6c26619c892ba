//! A client of the public HTTP API, as an agent would use it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// A tenant and its API key, as printed by `create-tenant`.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub key: String,
}

impl Tenant {
    /// Parses the `tenant_id:` and `api_key:` lines of a `create-tenant` output.
    ///
    /// # Panics
    /// If either line is missing or the key is not an `em_live_` key.
    pub fn parse_cli_output(stdout: &str) -> Tenant {
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
        };
        let tenant = Tenant {
            id: field("tenant_id:"),
            key: field("api_key:"),
        };
        assert!(
            tenant.key.starts_with("em_live_"),
            "unexpected key format in:\n{stdout}"
        );
        tenant
    }
}

/// One HTTP exchange.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` if it is not JSON).
    pub json: Value,
}

impl Reply {
    /// `episode_id` of a 202.
    ///
    /// # Panics
    /// Unless this is a 202 with an `episode_id`.
    pub fn episode_id(&self) -> String {
        assert_eq!(
            self.status,
            StatusCode::ACCEPTED,
            "expected 202, got {}: {}",
            self.status,
            self.text
        );
        self.json["episode_id"]
            .as_str()
            .unwrap_or_else(|| panic!("202 without episode_id: {}", self.text))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The public API of one deployment.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    /// `base` is e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            base: base.into(),
            http,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("reading an HTTP body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// `POST /api/v1/capture`.
    pub async fn capture(&self, key: &str, body: &Value, idempotency_key: Option<&str>) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/api/v1/capture", self.base))
            .header("X-API-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        self.send(request).await
    }

    /// `GET /api/v1/episodes/{id}`.
    pub async fn episode(&self, key: &str, id: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}/api/v1/episodes/{id}", self.base))
                .header("X-API-Key", key),
        )
        .await
    }

    /// `POST <path>` with a JSON body and the tenant's key (search, reflect).
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("X-API-Key", key)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `DELETE <path>` with the tenant's key.
    pub async fn delete(&self, key: &str, path: &str) -> Reply {
        self.send(
            self.http
                .delete(format!("{}{path}", self.base))
                .header("X-API-Key", key),
        )
        .await
    }

    /// `GET <path>` without a key (health endpoints).
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Polls `GET /api/v1/episodes/{id}` every `every` until its status is `stored`;
    /// returns the stored view and the time it took.
    ///
    /// # Panics
    /// On timeout, or on any answer other than 200 `processing`/`stored`.
    pub async fn wait_stored(
        &self,
        key: &str,
        id: &str,
        timeout: Duration,
        every: Duration,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let reply = self.episode(key, id).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "GET episode {id}: {}",
                reply.text
            );
            match reply.json["status"].as_str() {
                Some("stored") => return (reply.json, started.elapsed()),
                Some("processing") => {}
                other => panic!("episode {id}: unexpected status {other:?}: {}", reply.text),
            }
            assert!(
                started.elapsed() < timeout,
                "episode {id} not stored within {timeout:?}"
            );
            tokio::time::sleep(every).await;
        }
    }
}
