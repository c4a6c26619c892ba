//! [`KyroDbStore`]: connection, the per-call machinery (deadline, retries, breaker, span) and
//! the [`VectorStore`] implementation.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::embedding::Embedding;
use common::ids::{TenantId, VectorId};
use common::vector::{
    StoreHealth, VectorHit, VectorQuery, VectorRecord, VectorStore, VectorStoreError, meta,
};
use rand::Rng;
use secrecy::ExposeSecret;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument;

use crate::breaker::{BreakerState, CircuitBreaker, Outcome};
use crate::config::{KyroDbConfig, MAX_BATCH, MAX_EF_SEARCH, MAX_K, TlsConfig};
use crate::convert;
use crate::error::{ConnectError, counts_as_failure, is_retryable, map_status};
use crate::proto;
use crate::proto::kyro_db_service_client::KyroDbServiceClient;

const API_KEY_HEADER: &str = "x-api-key";

type Client = KyroDbServiceClient<Channel>;

/// What the server told us about itself at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    pub dimension: u64,
    /// As KyroDB reports it (e.g. `Cosine`).
    pub distance: String,
    pub default_ef_search: u64,
}

/// A KyroDB-backed [`VectorStore`] for one vector space. Cheap to share behind an `Arc`;
/// the underlying HTTP/2 channel multiplexes concurrent calls and reconnects by itself.
pub struct KyroDbStore {
    client: Client,
    config: KyroDbConfig,
    api_key: Option<AsciiMetadataValue>,
    breaker: CircuitBreaker,
    server: ServerInfo,
}

impl std::fmt::Debug for KyroDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KyroDbStore")
            .field("url", &self.config.url)
            .field("space", &self.config.space)
            .field("server", &self.server)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl KyroDbStore {
    /// Connects, asks the server for its config and refuses to start on a dimension mismatch.
    pub async fn connect(config: KyroDbConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let api_key = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value: AsciiMetadataValue = MetadataValue::try_from(key.expose_secret())
                    .map_err(|_| {
                        ConnectError::InvalidConfig(
                            "api_key contains characters not allowed in gRPC metadata".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };

        let mut endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|e| ConnectError::InvalidConfig(format!("url {:?}: {e}", config.url)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            endpoint = endpoint
                .tls_config(client_tls(tls).await?)
                .map_err(|e| ConnectError::InvalidConfig(format!("tls: {e}")))?;
        }
        let transport_err = |message: String| ConnectError::Transport {
            url: config.url.clone(),
            message,
        };
        let channel = tokio::time::timeout(config.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| transport_err(format!("timed out after {:?}", config.connect_timeout)))?
            .map_err(|e| transport_err(error_chain(&e)))?;

        let breaker = CircuitBreaker::new(config.breaker.clone());
        let mut store = Self {
            client: KyroDbServiceClient::new(channel),
            config,
            api_key,
            breaker,
            server: ServerInfo {
                version: String::new(),
                dimension: 0,
                distance: String::new(),
                default_ef_search: 0,
            },
        };

        let cfg = store
            .call(
                "GetConfig",
                || proto::ConfigRequest {},
                |mut c, r| async move { c.get_config(r).await },
            )
            .await?;
        store.server = ServerInfo {
            version: cfg.version,
            dimension: cfg.embedding_dimension,
            distance: cfg.hnsw_distance,
            default_ef_search: cfg.hnsw_ef_search,
        };
        let expected = store.config.expected_dimension;
        if usize::try_from(store.server.dimension).ok() != Some(expected) {
            return Err(ConnectError::DimensionMismatch {
                url: store.config.url.clone(),
                space: store.config.space.as_str(),
                expected,
                server: store.server.dimension,
            });
        }
        tracing::info!(
            url = %store.config.url,
            space = store.config.space.as_str(),
            server_version = %store.server.version,
            dimension = store.server.dimension,
            distance = %store.server.distance,
            "connected to KyroDB"
        );
        if !store.server.distance.eq_ignore_ascii_case("cosine") {
            tracing::warn!(
                distance = %store.server.distance,
                "KyroDB does not use cosine distance: scores are not cosine similarities and \
                 score thresholds will not mean what they say"
            );
        }
        Ok(store)
    }

    /// What the server reported at connect time.
    pub fn server_info(&self) -> &ServerInfo {
        &self.server
    }

    pub fn config(&self) -> &KyroDbConfig {
        &self.config
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// One RPC with deadline, breaker, retries and a span. `body` builds the request message
    /// for each attempt, `send` performs the call on a client clone.
    async fn call<Req, Resp, Fut>(
        &self,
        rpc: &'static str,
        body: impl Fn() -> Req,
        send: impl Fn(Client, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, VectorStoreError>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let span = tracing::info_span!(
            "kyrodb.rpc",
            rpc,
            space = self.config.space.as_str(),
            otel.kind = "client",
            attempts = tracing::field::Empty,
        );
        async {
            let timeout = self.config.request_timeout;
            let max_attempts = self.config.retry.max_attempts.max(1);
            let mut attempt = 0;
            loop {
                attempt += 1;
                tracing::Span::current().record("attempts", attempt);
                let Some(permit) = self.breaker.try_acquire() else {
                    tracing::debug!("circuit open: failing fast");
                    return Err(VectorStoreError::CircuitOpen);
                };
                let mut request = tonic::Request::new(body());
                request.set_timeout(timeout);
                if let Some(key) = &self.api_key {
                    request.metadata_mut().insert(API_KEY_HEADER, key.clone());
                }
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(timeout, send(self.client.clone(), request)).await {
                        Err(_elapsed) => Err(VectorStoreError::Timeout(timeout)),
                        Ok(Ok(response)) => Ok(response.into_inner()),
                        // tonic (client or server) enforces the `grpc-timeout` we send and
                        // reports it as CANCELLED: a failure at the deadline is a timeout.
                        Ok(Err(_)) if started.elapsed() >= timeout => {
                            Err(VectorStoreError::Timeout(timeout))
                        }
                        Ok(Err(status)) => Err(map_status(&status, timeout)),
                    };
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                match result {
                    Ok(value) => {
                        permit.record(Outcome::ServerAnswered);
                        tracing::debug!(elapsed_ms, "ok");
                        return Ok(value);
                    }
                    Err(err) => {
                        permit.record(if counts_as_failure(&err) {
                            Outcome::ServerFailed
                        } else {
                            Outcome::ServerAnswered
                        });
                        if attempt < max_attempts && is_retryable(&err) {
                            let delay = self.backoff(attempt);
                            tracing::warn!(attempt, elapsed_ms, ?delay, error = %err, "retrying");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        tracing::warn!(attempt, elapsed_ms, error = %err, "failed");
                        return Err(err);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Exponential backoff after the `attempt`-th failure, with jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let retry = &self.config.retry;
        let exp = retry
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(retry.max_backoff);
        let jitter = if retry.jitter > 0.0 {
            rand::rng().random_range(0.0..=retry.jitter)
        } else {
            0.0
        };
        exp.mul_f64(1.0 - jitter)
    }

    fn check_dimension(&self, embedding: &Embedding) -> Result<(), VectorStoreError> {
        let expected = self.config.expected_dimension;
        if embedding.dim() != expected {
            return Err(VectorStoreError::DimensionMismatch {
                expected,
                actual: embedding.dim(),
            });
        }
        Ok(())
    }

    async fn insert_one(&self, request: proto::InsertRequest) -> Result<(), VectorStoreError> {
        let response = self
            .call(
                "Insert",
                || request.clone(),
                |mut c, r| async move { c.insert(r).await },
            )
            .await?;
        if !response.success {
            return Err(VectorStoreError::Internal(format!(
                "insert rejected: {}",
                response.error
            )));
        }
        Ok(())
    }

    async fn bulk_insert(&self, chunk: Vec<proto::InsertRequest>) -> Result<(), VectorStoreError> {
        let sent = chunk.len() as u64;
        let response = self
            .call(
                "BulkInsert",
                || chunk.clone(),
                |mut c, r| async move { c.bulk_insert(r.map(futures::stream::iter)).await },
            )
            .await?;
        if !response.success || response.total_failed > 0 || response.total_inserted != sent {
            return Err(VectorStoreError::Internal(format!(
                "bulk insert partially failed: {} of {sent} inserted, {} failed, last error: {}",
                response.total_inserted, response.total_failed, response.error
            )));
        }
        Ok(())
    }

    async fn batch_delete(
        &self,
        criteria: proto::batch_delete_request::DeleteCriteria,
        namespace: String,
    ) -> Result<u64, VectorStoreError> {
        let response = self
            .call(
                "BatchDelete",
                || proto::BatchDeleteRequest {
                    delete_criteria: Some(criteria.clone()),
                    namespace: namespace.clone(),
                },
                |mut c, r| async move { c.batch_delete(r).await },
            )
            .await?;
        if !response.success {
            return Err(VectorStoreError::Internal(format!(
                "batch delete failed: {}",
                response.error
            )));
        }
        Ok(response.deleted_count)
    }
}

#[async_trait]
impl VectorStore for KyroDbStore {
    fn dimension(&self) -> usize {
        self.config.expected_dimension
    }

    #[tracing::instrument(skip_all, fields(records = records.len()))]
    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), VectorStoreError> {
        let mut requests = Vec::with_capacity(records.len());
        for record in records {
            self.check_dimension(&record.embedding)?;
            requests.push(convert::insert_request(record)?);
        }
        if let [single] = requests.as_slice() {
            return self.insert_one(single.clone()).await;
        }
        for chunk in requests.chunks(MAX_BATCH) {
            self.bulk_insert(chunk.to_vec()).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant = %query.tenant, k = query.k, hits))]
    async fn search(&self, query: &VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        if query.k == 0 || query.k > MAX_K {
            return Err(VectorStoreError::InvalidArgument(format!(
                "k must be in 1..={MAX_K}, got {}",
                query.k
            )));
        }
        self.check_dimension(&query.embedding)?;
        let tenant = query.tenant;
        let oversample = usize::try_from(self.config.search_oversample).unwrap_or(1);
        let server_k = query.k.saturating_mul(oversample).clamp(query.k, MAX_K);
        // u32: server_k <= 1000.
        let server_k = u32::try_from(server_k).unwrap_or(MAX_K as u32);
        let ef_search = self.config.ef_search.max(server_k).min(MAX_EF_SEARCH);
        let min_score = query.min_score.filter(|s| *s > 0.0).unwrap_or(0.0);
        let request = proto::SearchRequest {
            query_embedding: query.embedding.as_slice().to_vec(),
            k: server_k,
            min_score,
            namespace: convert::namespace(tenant)?,
            include_embeddings: false,
            filter: Some(convert::filter_to_proto(&convert::tenant_filter(
                tenant,
                query.filter.as_ref(),
            ))),
            ef_search,
            metadata_filters: Default::default(),
        };
        let response = self
            .call(
                "Search",
                || request.clone(),
                |mut c, r| async move { c.search(r).await },
            )
            .await?;
        if !response.error.is_empty() {
            return Err(VectorStoreError::Internal(format!(
                "search failed: {}",
                response.error
            )));
        }

        let mut foreign = 0usize;
        let mut malformed = 0usize;
        let mut hits = Vec::with_capacity(query.k);
        for result in response.results {
            if !convert::owned_by(&result.metadata, tenant) {
                foreign += 1;
                continue;
            }
            let (Some(id), Some(episode)) = (
                convert::vector_id(result.doc_id),
                convert::episode_of(&result.metadata),
            ) else {
                malformed += 1;
                continue;
            };
            if result.score.is_nan() || query.min_score.is_some_and(|min| result.score < min) {
                continue;
            }
            let metadata = convert::to_btree(result.metadata);
            if query.filter.as_ref().is_some_and(|f| !f.matches(&metadata)) {
                foreign += 1;
                continue;
            }
            hits.push(VectorHit {
                id,
                episode,
                score: result.score,
                metadata,
            });
        }
        if foreign > 0 {
            tracing::error!(
                dropped = foreign,
                "KyroDB returned hits outside the tenant or filter; dropped them"
            );
        }
        if malformed > 0 {
            tracing::warn!(
                dropped = malformed,
                "KyroDB returned hits without a valid id or episode"
            );
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(query.k);
        tracing::Span::current().record("hits", hits.len());
        Ok(hits)
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, id = id.get()))]
    async fn get(
        &self,
        tenant: TenantId,
        id: VectorId,
    ) -> Result<Option<VectorRecord>, VectorStoreError> {
        let request = proto::QueryRequest {
            doc_id: id.get(),
            include_embedding: true,
            namespace: convert::namespace(tenant)?,
        };
        let response = self
            .call(
                "Query",
                || request.clone(),
                |mut c, r| async move { c.query(r).await },
            )
            .await?;
        if !response.error.is_empty() {
            return Err(VectorStoreError::Internal(format!(
                "query failed: {}",
                response.error
            )));
        }
        if !response.found {
            return Ok(None);
        }
        if !convert::owned_by(&response.metadata, tenant)
            || (response.doc_id != 0 && response.doc_id != id.get())
        {
            tracing::error!("KyroDB returned a document of another tenant or id; ignored it");
            return Ok(None);
        }
        let episode = convert::episode_of(&response.metadata).ok_or_else(|| {
            VectorStoreError::Internal("stored vector has no valid episode_id".into())
        })?;
        let embedding = Embedding::new(response.embedding)
            .map_err(|e| VectorStoreError::Internal(format!("stored embedding is invalid: {e}")))?;
        self.check_dimension(&embedding)?;
        let mut metadata = convert::to_btree(response.metadata);
        metadata.remove(meta::TENANT);
        metadata.remove(meta::EPISODE);
        Ok(Some(VectorRecord {
            id,
            tenant,
            episode,
            embedding,
            metadata,
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, ids = ids.len()))]
    async fn delete(&self, tenant: TenantId, ids: &[VectorId]) -> Result<u64, VectorStoreError> {
        let namespace = convert::namespace(tenant)?;
        let mut deleted = 0u64;
        for chunk in ids.chunks(MAX_BATCH) {
            let criteria = proto::batch_delete_request::DeleteCriteria::Ids(proto::IdList {
                doc_ids: chunk.iter().map(|id| id.get()).collect(),
            });
            deleted += self.batch_delete(criteria, namespace.clone()).await?;
        }
        Ok(deleted)
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    async fn delete_tenant(&self, tenant: TenantId) -> Result<u64, VectorStoreError> {
        let criteria = proto::batch_delete_request::DeleteCriteria::Filter(
            convert::filter_to_proto(&convert::tenant_filter(tenant, None)),
        );
        self.batch_delete(criteria, convert::namespace(tenant)?)
            .await
    }

    async fn health(&self) -> Result<StoreHealth, VectorStoreError> {
        use proto::health_response::Status;
        let response = self
            .call(
                "Health",
                || proto::HealthRequest {
                    component: String::new(),
                },
                |mut c, r| async move { c.health(r).await },
            )
            .await?;
        // A successful RPC is liveness; the status reflects KyroDB's SLO view.
        let status = Status::try_from(response.status).unwrap_or(Status::Unknown);
        let detail = || {
            let mut troubled: Vec<String> = response
                .components
                .iter()
                .filter(|(_, v)| !v.starts_with("healthy"))
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            troubled.sort();
            if troubled.is_empty() {
                String::new()
            } else {
                format!(" ({})", troubled.join("; "))
            }
        };
        Ok(match status {
            Status::Healthy => StoreHealth::Healthy,
            Status::Degraded => {
                StoreHealth::Degraded(format!("KyroDB reports DEGRADED{}", detail()))
            }
            Status::Unhealthy => StoreHealth::Degraded(format!(
                "KyroDB reports UNHEALTHY (SLO thresholds breached) while serving{}",
                detail()
            )),
            Status::Unknown => StoreHealth::Degraded("KyroDB reports status UNKNOWN".into()),
        })
    }
}

async fn client_tls(tls: &TlsConfig) -> Result<ClientTlsConfig, ConnectError> {
    async fn read(path: &std::path::Path) -> Result<Vec<u8>, ConnectError> {
        tokio::fs::read(path)
            .await
            .map_err(|source| ConnectError::TlsFile {
                path: path.display().to_string(),
                source,
            })
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_cert_pem {
        Some(path) => config.ca_certificate(Certificate::from_pem(read(path).await?)),
        None => config.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
        config = config.identity(Identity::from_pem(read(cert).await?, read(key).await?));
    }
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

/// An error with its sources, for one log line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
