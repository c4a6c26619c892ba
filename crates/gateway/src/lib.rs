//! The public gateway: the only component reachable from outside.
//!
//! It authenticates tenants by API key, validates and redacts captured episodes, publishes
//! them onto the event bus (JetStream in production, the embedded bus in standalone mode)
//! and serves stored episodes from the system of record. See docs/API.md.

pub mod admin;
pub mod auth;
pub mod capture;
pub mod cli;
pub mod error;
pub mod lifecycle;
pub mod quota;
pub mod retriever;
pub mod routes;
pub mod usage;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, Service as _};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpMessage as _, HttpResponse, HttpServer, web};
use bus::Bus;
use common::events::Topology;
use db::Db;
use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::capture::CaptureService;
use crate::error::ApiError;

/// HTTP settings (`EM_GATEWAY__HTTP__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Listen address; port 0 picks a free port.
    pub addr: String,
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Deadline for search and reflect (answered by the retriever over request-reply);
    /// past it the gateway answers 504.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8080".to_owned(),
            workers: None,
            body_limit_bytes: common::episode::limits::BODY_BYTES,
            query_timeout: Duration::from_secs(3),
        }
    }
}

/// Authentication settings (`EM_GATEWAY__AUTH__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// How long a verified key is trusted without re-checking the database (revocations
    /// and customer changes clear it on every replica at once).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The admin API's credential (`Authorization: Bearer <token>`); unset: `/admin/v1`
    /// refuses every request.
    pub admin_token: Option<SecretString>,
    /// How often buffered search and gate counts are written to the usage table.
    #[serde(with = "humantime_serde")]
    pub usage_flush: Duration,
    /// Monthly capture quotas per tier.
    pub quotas: quota::QuotaSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(300),
            admin_token: None,
            usage_flush: Duration::from_secs(5),
            quotas: quota::QuotaSettings::default(),
        }
    }
}

/// Everything the gateway binary reads (`EM_GATEWAY__<SECTION>__<KEY>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub database: db::DbConfig,
    /// Apply pending migrations at start-up (safe with several replicas).
    pub run_migrations: Option<bool>,
    pub nats: bus::NatsConfig,
    pub events: common::events::TopologySettings,
}

/// What the gateway needs from the outside world.
#[derive(Clone)]
pub struct GatewayDeps {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub topology: Topology,
}

/// Shared state of every request handler.
pub struct AppState {
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub auth: Authenticator,
    pub capture: CaptureService,
    /// Deletion and feedback.
    pub lifecycle: lifecycle::Lifecycle,
    pub retriever: retriever::RetrieverClient,
    pub body_limit: usize,
    /// Customer and key administration (`/admin/v1`).
    pub admin: admin::Admin,
    pub admin_token: Option<SecretString>,
    /// Buffered search and gate counts.
    pub usage: usage::UsageCounter,
}

/// A built, listening gateway.
pub struct Gateway {
    server: Server,
    addr: SocketAddr,
    state: web::Data<AppState>,
    usage_flush: Duration,
    auth_subject: String,
}

impl Gateway {
    /// Binds the listener and builds the app. Reads no env vars and installs no signal
    /// handlers, so tests and the standalone binary can compose it.
    pub fn build(
        http: &HttpSettings,
        auth: &AuthSettings,
        deps: GatewayDeps,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(&http.addr)?;
        let addr = listener.local_addr()?;
        let publisher: Arc<dyn bus::Publisher> = deps.bus.clone();
        let authenticator = Authenticator::new(deps.db.clone(), auth.cache_ttl);
        let auth_subject = deps.topology.auth_control_subject();
        let notifier = admin::AuthNotifier::new(
            Some(authenticator.clone()),
            Some((deps.bus.clone(), auth_subject.clone())),
        );
        let state = web::Data::new(AppState {
            admin: admin::Admin::new(deps.db.clone(), notifier),
            admin_token: auth.admin_token.clone(),
            usage: usage::UsageCounter::default(),
            auth: authenticator,
            capture: CaptureService::new(
                deps.db.clone(),
                publisher.clone(),
                deps.topology.clone(),
                quota::Quotas::new(
                    deps.db.clone(),
                    publisher.clone(),
                    deps.topology.clone(),
                    auth.quotas.clone(),
                ),
            ),
            lifecycle: lifecycle::Lifecycle::new(deps.db.clone(), publisher, deps.topology.clone()),
            retriever: retriever::RetrieverClient::new(
                deps.bus.clone(),
                deps.topology.clone(),
                http.query_timeout,
            ),
            db: deps.db,
            bus: deps.bus,
            body_limit: http.body_limit_bytes,
        });
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap_fn(|req, srv| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| {
                            !v.is_empty()
                                && v.len() <= 128
                                && v.bytes().all(|b| b.is_ascii_graphic())
                        })
                        .map(str::to_owned)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
                    let span = tracing::info_span!(
                        "http",
                        method = %req.method(),
                        route = req.match_pattern().unwrap_or_default(),
                        request_id = %request_id,
                    );
                    req.extensions_mut().insert(RequestId(request_id.clone()));
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        tracing::info!(status = res.status().as_u16(), "request");
                        if let Ok(value) = HeaderValue::from_str(&request_id) {
                            res.headers_mut()
                                .insert(HeaderName::from_static(REQUEST_ID), value);
                        }
                        Ok(res)
                    }
                    .instrument(span)
                })
                .route("/health/live", web::get().to(routes::health::live))
                .route("/health/ready", web::get().to(routes::health::ready))
                .service(
                    web::scope("/api/v1")
                        .route("/capture", web::post().to(routes::capture::capture))
                        .route("/search", web::post().to(routes::query::search))
                        .route("/reflect", web::post().to(routes::query::reflect))
                        .route("/episodes", web::get().to(routes::episodes::list))
                        .route("/episodes/{id}", web::get().to(routes::episodes::get))
                        .route("/episodes/{id}", web::delete().to(routes::episodes::delete))
                        .route(
                            "/episodes/{id}/feedback",
                            web::post().to(routes::feedback::feedback),
                        ),
                )
                .service(
                    web::scope("/admin/v1")
                        .route("/customers", web::post().to(routes::admin::create_customer))
                        .route("/customers", web::get().to(routes::admin::list_customers))
                        .route(
                            "/customers/{id}",
                            web::get().to(routes::admin::get_customer),
                        )
                        .route(
                            "/customers/{id}",
                            web::patch().to(routes::admin::update_customer),
                        )
                        .route(
                            "/customers/{id}/suspend",
                            web::post().to(routes::admin::suspend),
                        )
                        .route(
                            "/customers/{id}/reactivate",
                            web::post().to(routes::admin::reactivate),
                        )
                        .route(
                            "/customers/{id}/keys",
                            web::get().to(routes::admin::list_keys),
                        )
                        .route(
                            "/customers/{id}/keys",
                            web::post().to(routes::admin::create_key),
                        )
                        .route("/customers/{id}/usage", web::get().to(routes::admin::usage))
                        .route(
                            "/keys/{key_id}/rotate",
                            web::post().to(routes::admin::rotate_key),
                        )
                        .route(
                            "/keys/{key_id}",
                            web::delete().to(routes::admin::revoke_key),
                        )
                        .route("/audit", web::get().to(routes::admin::audit)),
                )
                .default_service(web::to(not_found))
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(10);
        if let Some(workers) = http.workers {
            server = server.workers(workers);
        }
        Ok(Self {
            server: server.run(),
            addr,
            state,
            usage_flush: auth.usage_flush,
            auth_subject,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests. Also listens
    /// for auth notices from other replicas and flushes usage counts.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = auth::AuthNoticeListener(self.state.auth.clone());
        let notices = match self
            .state
            .bus
            .listen(&self.auth_subject, Arc::new(listener), shutdown.clone())
            .await
        {
            Ok(task) => Some(task),
            Err(e) => {
                // Without the bus, other replicas' revocations reach this one at the
                // cache TTL; this replica's own changes still apply at once.
                tracing::warn!(error = %e, "cannot listen for auth notices");
                None
            }
        };
        let flusher = tokio::spawn(self.state.usage.clone().run(
            self.state.db.clone(),
            self.usage_flush,
            shutdown.clone(),
        ));
        let handle = self.server.handle();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        let result = self.server.await;
        stopper.abort();
        let _ = flusher.await;
        if let Some(task) = notices {
            let _ = task.await;
        }
        result
    }
}

/// Response header carrying the request id (echoed when the client sends one).
pub const REQUEST_ID: &str = "x-request-id";

/// The id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".to_owned()))
}
