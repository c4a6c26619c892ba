//! `FakeKyroDb`: an in-memory KyroDB speaking the real gRPC protocol on `127.0.0.1:0`.
//!
//! It implements the RPCs the client uses with KyroDB's documented semantics:
//! - Insert/BulkInsert are upserts; vectors are L2-normalised (cosine); reserved metadata keys
//!   are stripped and the namespace is stored as `__namespace__`;
//! - the namespace is a FILTER: an empty namespace means all namespaces;
//! - Search is exact k-NN over an oversampled candidate set, and namespace and metadata
//!   filters are applied AFTER it (so a filtered search may return fewer than k); result
//!   metadata is only filled when a namespace or filter is present, never with reserved keys;
//! - dimension mismatch: INTERNAL on Insert, INVALID_ARGUMENT on Search; k outside 1..=1000,
//!   ef_search > 10000 = INVALID_ARGUMENT; a zero vector is INTERNAL;
//! - with a required API key (`x-api-key` or `authorization: Bearer`) every RPC without it is
//!   UNAUTHENTICATED; GetConfig reports the configured dimension.
//!
//! Every request is recorded (tests assert on what was sent), and faults can be injected:
//! fail the next N calls with a code, add latency, report a health status, or ignore
//! namespaces and filters altogether (a broken server, to test the client's own checks).
//! Optional TLS (and mTLS) with `rcgen` certificates signed by a throwaway CA.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kyrodb_client::proto;
use kyrodb_client::proto::kyro_db_service_server::{KyroDbService, KyroDbServiceServer};
use kyrodb_client::proto::metadata_filter::FilterType;
use kyrodb_client::proto::range_match::Bound;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};

const MAX_K: u32 = 1000;
const MAX_EF_SEARCH: u32 = 10_000;
const MAX_BATCH: usize = 10_000;
const NAMESPACE_KEY: &str = "__namespace__";
const RESERVED: [&str; 3] = ["__namespace__", "__tenant_id__", "__tenant_idx__"];

/// How to start the fake.
#[derive(Debug, Clone)]
pub struct FakeKyroDbOptions {
    /// `GetConfig.embedding_dimension`, and what Insert/Search accept.
    pub dimension: usize,
    /// `GetConfig.hnsw_distance`, spelled like KyroDB does (`Cosine`).
    pub distance: String,
    /// When set, every RPC needs this key.
    pub api_key: Option<String>,
    /// Serve TLS with a fresh CA; see [`FakeKyroDbHandle::ca_cert_path`].
    pub tls: Option<FakeTls>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FakeTls {
    /// Require a client certificate signed by the fake's CA (mTLS); see
    /// [`FakeKyroDbHandle::client_cert_path`].
    pub require_client_cert: bool,
}

impl Default for FakeKyroDbOptions {
    fn default() -> Self {
        Self {
            dimension: common::embedding::TEXT_DIM,
            distance: "Cosine".into(),
            api_key: None,
            tls: None,
        }
    }
}

impl FakeKyroDbOptions {
    pub fn with_dimension(dimension: usize) -> Self {
        Self {
            dimension,
            ..Self::default()
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The RPC name, e.g. `"Search"`.
    pub rpc: &'static str,
    /// The API key presented (`x-api-key`, or `authorization: Bearer`).
    pub api_key: Option<String>,
    pub body: RecordedBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordedBody {
    Insert(proto::InsertRequest),
    BulkInsert(Vec<proto::InsertRequest>),
    Delete(proto::DeleteRequest),
    Query(proto::QueryRequest),
    Search(proto::SearchRequest),
    BatchDelete(proto::BatchDeleteRequest),
    Health(proto::HealthRequest),
    GetConfig,
}

impl RecordedRequest {
    /// The namespaces a data request carried (one per inserted document for BulkInsert);
    /// empty for Health and GetConfig.
    pub fn namespaces(&self) -> Vec<&str> {
        match &self.body {
            RecordedBody::Insert(r) => vec![r.namespace.as_str()],
            RecordedBody::BulkInsert(rs) => rs.iter().map(|r| r.namespace.as_str()).collect(),
            RecordedBody::Delete(r) => vec![r.namespace.as_str()],
            RecordedBody::Query(r) => vec![r.namespace.as_str()],
            RecordedBody::Search(r) => vec![r.namespace.as_str()],
            RecordedBody::BatchDelete(r) => vec![r.namespace.as_str()],
            RecordedBody::Health(_) | RecordedBody::GetConfig => vec![],
        }
    }

    pub fn is_data_rpc(&self) -> bool {
        !matches!(self.body, RecordedBody::Health(_) | RecordedBody::GetConfig)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FakeKyroDbError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tonic transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

#[derive(Debug, Clone)]
struct Doc {
    /// Unit length.
    embedding: Vec<f32>,
    /// Including `__namespace__` when inserted with a namespace.
    metadata: HashMap<String, String>,
}

#[derive(Debug)]
struct State {
    docs: BTreeMap<u64, Doc>,
    requests: Vec<RecordedRequest>,
    fail_next: usize,
    fail_code: Code,
    latency: Duration,
    health: proto::health_response::Status,
    ignore_scoping: bool,
    reject_inserts: bool,
}

#[derive(Debug)]
struct Shared {
    options: FakeKyroDbOptions,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeKyroDbHandle {
    url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tls: Option<TlsFiles>,
}

#[derive(Debug)]
struct TlsFiles {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// Starts a fake KyroDB on `127.0.0.1:0`.
pub async fn spawn(options: FakeKyroDbOptions) -> Result<FakeKyroDbHandle, FakeKyroDbError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        options: options.clone(),
        state: Mutex::new(State {
            docs: BTreeMap::new(),
            requests: Vec::new(),
            fail_next: 0,
            fail_code: Code::Unavailable,
            latency: Duration::ZERO,
            health: proto::health_response::Status::Healthy,
            ignore_scoping: false,
            reject_inserts: false,
        }),
    });

    let mut builder = Server::builder();
    let mut tls_files = None;
    let scheme = if let Some(tls) = options.tls {
        let (files, config) = tls_setup(tls)?;
        builder = builder.tls_config(config)?;
        tls_files = Some(files);
        "https"
    } else {
        "http"
    };
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = KyroDbServiceServer::new(FakeService {
        shared: Arc::clone(&shared),
    });
    let task = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        incoming,
        async {
            let _ = rx.await;
        },
    ));
    Ok(FakeKyroDbHandle {
        url: format!("{scheme}://{addr}"),
        addr,
        shared,
        shutdown: Some(tx),
        task: Some(task),
        tls: tls_files,
    })
}

fn tls_setup(tls: FakeTls) -> Result<(TlsFiles, ServerTlsConfig), FakeKyroDbError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-kyrodb test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        vec!["fake-kyrodb-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let dir = tempfile::tempdir()?;
    let files = TlsFiles {
        ca: dir.path().join("ca.pem"),
        client_cert: dir.path().join("client.pem"),
        client_key: dir.path().join("client.key"),
        _dir: dir,
    };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.client_cert, client_cert)?;
    std::fs::write(&files.client_key, client_key)?;

    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(server_cert, server_key));
    if tls.require_client_cert {
        config = config.client_ca_root(Certificate::from_pem(ca.pem()));
    }
    Ok((files, config))
}

impl FakeKyroDbHandle {
    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The next `n` calls (any RPC) fail with `code`, after being recorded.
    pub fn inject_failures(&self, n: usize, code: Code) {
        let mut state = self.shared.lock();
        state.fail_next = n;
        state.fail_code = code;
    }

    /// Every call waits this long before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// What Health reports (the RPC itself keeps succeeding).
    pub fn set_health(&self, status: proto::health_response::Status) {
        self.shared.lock().health = status;
    }

    /// Simulates a broken server that ignores namespaces and filters on Search and Query
    /// (and still returns metadata), to test the client's own tenant checks.
    pub fn set_ignore_scoping(&self, ignore: bool) {
        self.shared.lock().ignore_scoping = ignore;
    }

    /// Every inserted document fails in the engine: INTERNAL on Insert, and a partial failure
    /// reported in the body (`success=false`, `total_failed`) on BulkInsert.
    pub fn set_reject_inserts(&self, reject: bool) {
        self.shared.lock().reject_inserts = reject;
    }

    /// Number of stored documents (all namespaces).
    pub fn len(&self) -> usize {
        self.shared.lock().docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// PEM of the CA that signed the server (and client) certificates, when serving TLS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// A client certificate signed by the fake's CA, for mTLS.
    pub fn client_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.client_cert.as_path())
    }

    pub fn client_key_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.client_key.as_path())
    }

    /// Stops the server and waits (at most 5 s) for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for FakeKyroDbHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct FakeService {
    shared: Arc<Shared>,
}

fn presented_key<T>(request: &Request<T>) -> Option<String> {
    let md = request.metadata();
    if let Some(v) = md.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.to_owned());
    }
    md.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

impl FakeService {
    /// Records the request, then applies latency, injected failures and authentication, in
    /// that order.
    async fn admit(
        &self,
        rpc: &'static str,
        api_key: Option<String>,
        body: RecordedBody,
    ) -> Result<(), Status> {
        let (latency, failure) = {
            let mut state = self.shared.lock();
            state.requests.push(RecordedRequest {
                rpc,
                api_key: api_key.clone(),
                body,
            });
            let failure = if state.fail_next > 0 {
                state.fail_next -= 1;
                Some(state.fail_code)
            } else {
                None
            };
            (state.latency, failure)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(code) = failure {
            return Err(Status::new(code, format!("injected failure of {rpc}")));
        }
        if let Some(required) = &self.shared.options.api_key {
            match api_key {
                None => return Err(Status::unauthenticated("missing api key")),
                Some(key) if key != *required => {
                    return Err(Status::unauthenticated("invalid api key"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn dimension(&self) -> usize {
        self.shared.options.dimension
    }

    /// Validates and stores one document, as the engine would.
    fn store(&self, req: &proto::InsertRequest) -> Result<(), Status> {
        let doc = validate_insert(req, self.dimension())?;
        let mut state = self.shared.lock();
        if state.reject_inserts {
            return Err(Status::internal("Insert failed: injected engine failure"));
        }
        state.docs.insert(req.doc_id, doc);
        Ok(())
    }
}

/// Unit length, or `None` for a zero vector.
fn normalise(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_normal() {
        return None;
    }
    Some(v.iter().map(|x| x / norm).collect())
}

fn validate_insert(req: &proto::InsertRequest, dimension: usize) -> Result<Doc, Status> {
    if req.doc_id < 1 {
        return Err(Status::invalid_argument("doc_id must be >= 1"));
    }
    if req.embedding.is_empty() {
        return Err(Status::invalid_argument("embedding cannot be empty"));
    }
    if req.embedding.iter().any(|v| !v.is_finite()) {
        return Err(Status::invalid_argument(
            "embedding must contain only finite values (no NaN/Inf)",
        ));
    }
    if req.embedding.len() != dimension {
        return Err(Status::internal(format!(
            "Insert failed: embedding dimension mismatch: expected {dimension}, got {}",
            req.embedding.len()
        )));
    }
    let embedding = normalise(&req.embedding)
        .ok_or_else(|| Status::internal("Insert failed: cannot normalise a zero vector"))?;
    let mut metadata = req.metadata.clone();
    for key in RESERVED {
        metadata.remove(key);
    }
    if !req.namespace.is_empty() {
        metadata.insert(NAMESPACE_KEY.to_owned(), req.namespace.clone());
    }
    Ok(Doc {
        embedding,
        metadata,
    })
}

fn public_metadata(metadata: &HashMap<String, String>) -> HashMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn in_namespace(doc: &Doc, namespace: &str) -> bool {
    namespace.is_empty()
        || doc
            .metadata
            .get(NAMESPACE_KEY)
            .map(String::as_str)
            .unwrap_or("")
            == namespace
}

/// KyroDB's filter semantics: numeric comparison when both sides parse as numbers.
fn matches(filter: &proto::MetadataFilter, metadata: &HashMap<String, String>) -> bool {
    let Some(filter_type) = &filter.filter_type else {
        return true;
    };
    match filter_type {
        FilterType::Exact(e) => metadata.get(&e.key) == Some(&e.value),
        FilterType::InMatch(i) => metadata
            .get(&i.key)
            .is_some_and(|v| i.values.iter().any(|x| x == v)),
        FilterType::Range(r) => {
            let Some(actual) = metadata.get(&r.key) else {
                return false;
            };
            let cmp = |limit: &str| match (actual.parse::<f64>(), limit.parse::<f64>()) {
                (Ok(a), Ok(b)) => a.partial_cmp(&b),
                _ => Some(actual.as_str().cmp(limit)),
            };
            use std::cmp::Ordering::{Equal, Greater, Less};
            match &r.bound {
                None => false,
                Some(Bound::Gte(l)) => matches!(cmp(l), Some(Greater | Equal)),
                Some(Bound::Lte(l)) => matches!(cmp(l), Some(Less | Equal)),
                Some(Bound::Gt(l)) => matches!(cmp(l), Some(Greater)),
                Some(Bound::Lt(l)) => matches!(cmp(l), Some(Less)),
            }
        }
        FilterType::AndFilter(a) => a.filters.iter().all(|f| matches(f, metadata)),
        FilterType::OrFilter(o) => o.filters.iter().any(|f| matches(f, metadata)),
        FilterType::NotFilter(n) => !n.filter.as_deref().is_some_and(|f| matches(f, metadata)),
    }
}

/// KyroDB's candidate oversampling before filters are applied (an estimate of selectivity).
fn oversampling(filter: Option<&proto::MetadataFilter>, has_namespace: bool) -> usize {
    fn selectivity(f: &proto::MetadataFilter) -> usize {
        match &f.filter_type {
            None => 1,
            Some(FilterType::Exact(_)) => 2,
            Some(FilterType::Range(_)) => 5,
            Some(FilterType::InMatch(i)) if i.values.len() <= 2 => 3,
            Some(FilterType::InMatch(i)) if i.values.len() <= 5 => 5,
            Some(FilterType::InMatch(_)) => 8,
            Some(FilterType::AndFilter(a)) => a.filters.iter().map(selectivity).min().unwrap_or(1),
            Some(FilterType::OrFilter(o)) => o.filters.iter().map(selectivity).max().unwrap_or(1),
            Some(FilterType::NotFilter(_)) => 2,
        }
    }
    let base = filter.map(selectivity).unwrap_or(1);
    if has_namespace {
        (base * 4).min(10)
    } else {
        base
    }
}

type BoxResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl KyroDbService for FakeService {
    async fn insert(
        &self,
        request: Request<proto::InsertRequest>,
    ) -> BoxResult<proto::InsertResponse> {
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("Insert", key, RecordedBody::Insert(req.clone()))
            .await?;
        self.store(&req)?;
        Ok(Response::new(proto::InsertResponse {
            success: true,
            error: String::new(),
            inserted_at: unix_now(),
            tier: proto::insert_response::Tier::ColdTier as i32,
            total_inserted: 1,
            total_failed: 0,
        }))
    }

    async fn bulk_insert(
        &self,
        request: Request<Streaming<proto::InsertRequest>>,
    ) -> BoxResult<proto::InsertResponse> {
        let key = presented_key(&request);
        let mut stream = request.into_inner();
        let mut all = Vec::new();
        while let Some(req) = stream.message().await? {
            all.push(req);
        }
        self.admit("BulkInsert", key, RecordedBody::BulkInsert(all.clone()))
            .await?;
        let (mut inserted, mut failed, mut last_error) = (0u64, 0u64, String::new());
        for (i, req) in all.into_iter().enumerate() {
            if i >= MAX_BATCH {
                failed += 1;
                last_error = format!("Batch size exceeds maximum {MAX_BATCH}");
                break;
            }
            match self.store(&req) {
                Ok(()) => inserted += 1,
                Err(status) => {
                    failed += 1;
                    last_error = status.message().to_owned();
                }
            }
        }
        Ok(Response::new(proto::InsertResponse {
            success: failed == 0,
            error: last_error,
            inserted_at: unix_now(),
            tier: proto::insert_response::Tier::ColdTier as i32,
            total_inserted: inserted,
            total_failed: failed,
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> BoxResult<proto::DeleteResponse> {
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("Delete", key, RecordedBody::Delete(req.clone()))
            .await?;
        if req.doc_id < 1 {
            return Err(Status::invalid_argument("doc_id must be >= 1"));
        }
        let mut state = self.shared.lock();
        let existed = state
            .docs
            .get(&req.doc_id)
            .is_some_and(|d| in_namespace(d, &req.namespace));
        if existed {
            state.docs.remove(&req.doc_id);
        }
        Ok(Response::new(proto::DeleteResponse {
            success: true,
            error: String::new(),
            existed,
        }))
    }

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> BoxResult<proto::QueryResponse> {
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("Query", key, RecordedBody::Query(req.clone()))
            .await?;
        if req.doc_id == 0 {
            return Err(Status::invalid_argument("doc_id must be non-zero"));
        }
        let state = self.shared.lock();
        let doc = state
            .docs
            .get(&req.doc_id)
            .filter(|d| state.ignore_scoping || in_namespace(d, &req.namespace));
        Ok(Response::new(match doc {
            None => proto::QueryResponse {
                found: false,
                doc_id: req.doc_id,
                ..Default::default()
            },
            Some(doc) => proto::QueryResponse {
                found: true,
                doc_id: req.doc_id,
                embedding: if req.include_embedding {
                    doc.embedding.clone()
                } else {
                    vec![]
                },
                metadata: public_metadata(&doc.metadata),
                served_from: proto::query_response::Tier::ColdTier as i32,
                error: String::new(),
            },
        }))
    }

    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> BoxResult<proto::SearchResponse> {
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("Search", key, RecordedBody::Search(req.clone()))
            .await?;
        if req.query_embedding.is_empty() {
            return Err(Status::invalid_argument("query_embedding cannot be empty"));
        }
        if req.query_embedding.iter().any(|v| !v.is_finite()) {
            return Err(Status::invalid_argument(
                "query_embedding must contain only finite values (no NaN/Inf)",
            ));
        }
        if req.k == 0 || req.k > MAX_K {
            return Err(Status::invalid_argument(format!(
                "k must be in 1..={MAX_K}, got {}",
                req.k
            )));
        }
        if req.ef_search > MAX_EF_SEARCH {
            return Err(Status::invalid_argument(
                "ef_search must be <= 10000 (0 = server default)",
            ));
        }
        if req.query_embedding.len() != self.dimension() {
            return Err(Status::invalid_argument(format!(
                "query dimension mismatch: expected {}, got {}",
                self.dimension(),
                req.query_embedding.len()
            )));
        }
        let query = normalise(&req.query_embedding)
            .ok_or_else(|| Status::internal("Search failed: cannot normalise a zero vector"))?;

        let state = self.shared.lock();
        // The k-NN step (exact here), then filters on the oversampled candidates.
        let mut scored: Vec<(u64, f32)> = state
            .docs
            .iter()
            .map(|(id, doc)| (*id, common::embedding::dot(&query, &doc.embedding)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let candidates = (req.k as usize)
            .saturating_mul(oversampling(req.filter.as_ref(), !req.namespace.is_empty()))
            .min(MAX_BATCH);
        let needs_metadata = !req.namespace.is_empty() || req.filter.is_some();
        let mut results = Vec::new();
        let mut total_found = 0u32;
        for (id, score) in scored.into_iter().take(candidates) {
            if req.min_score > 0.0 && score < req.min_score {
                continue;
            }
            let Some(doc) = state.docs.get(&id) else {
                continue;
            };
            let metadata = if needs_metadata || state.ignore_scoping {
                if !state.ignore_scoping {
                    if !in_namespace(doc, &req.namespace) {
                        continue;
                    }
                    if let Some(filter) = &req.filter
                        && !matches(filter, &doc.metadata)
                    {
                        continue;
                    }
                }
                public_metadata(&doc.metadata)
            } else {
                HashMap::new()
            };
            total_found += 1;
            if results.len() < req.k as usize {
                results.push(proto::SearchResult {
                    doc_id: id,
                    score,
                    embedding: if req.include_embeddings {
                        doc.embedding.clone()
                    } else {
                        vec![]
                    },
                    metadata,
                });
            }
        }
        Ok(Response::new(proto::SearchResponse {
            results,
            total_found,
            search_latency_ms: 0.1,
            search_path: proto::search_response::SearchPath::ColdTierOnly as i32,
            error: String::new(),
        }))
    }

    async fn batch_delete(
        &self,
        request: Request<proto::BatchDeleteRequest>,
    ) -> BoxResult<proto::BatchDeleteResponse> {
        use proto::batch_delete_request::DeleteCriteria;
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("BatchDelete", key, RecordedBody::BatchDelete(req.clone()))
            .await?;
        let mut state = self.shared.lock();
        let doomed: Vec<u64> = match &req.delete_criteria {
            None => return Err(Status::invalid_argument("No delete criteria provided")),
            Some(DeleteCriteria::Ids(ids)) => {
                if ids.doc_ids.len() > MAX_BATCH {
                    return Err(Status::invalid_argument(format!(
                        "Batch size {} exceeds maximum {MAX_BATCH}",
                        ids.doc_ids.len()
                    )));
                }
                ids.doc_ids
                    .iter()
                    .copied()
                    .filter(|id| {
                        state
                            .docs
                            .get(id)
                            .is_some_and(|d| in_namespace(d, &req.namespace))
                    })
                    .collect()
            }
            Some(DeleteCriteria::Filter(filter)) => state
                .docs
                .iter()
                .filter(|(_, d)| in_namespace(d, &req.namespace) && matches(filter, &d.metadata))
                .map(|(id, _)| *id)
                .collect(),
        };
        let mut deleted = 0u64;
        for id in doomed {
            if state.docs.remove(&id).is_some() {
                deleted += 1;
            }
        }
        Ok(Response::new(proto::BatchDeleteResponse {
            success: true,
            deleted_count: deleted,
            error: String::new(),
        }))
    }

    async fn health(
        &self,
        request: Request<proto::HealthRequest>,
    ) -> BoxResult<proto::HealthResponse> {
        let key = presented_key(&request);
        let req = request.into_inner();
        self.admit("Health", key, RecordedBody::Health(req.clone()))
            .await?;
        let (status, docs) = {
            let state = self.shared.lock();
            (state.health, state.docs.len())
        };
        let components = HashMap::from([
            ("cache".to_owned(), "healthy (0% hit rate)".to_owned()),
            ("hot_tier".to_owned(), "healthy (0 docs)".to_owned()),
            ("cold_tier".to_owned(), format!("healthy ({docs} docs)")),
            ("wal".to_owned(), "healthy".to_owned()),
        ]);
        Ok(Response::new(proto::HealthResponse {
            status: status as i32,
            version: "0.1.0-fake".into(),
            components,
            uptime_seconds: 1,
            git_commit: "fake".into(),
        }))
    }

    async fn get_config(
        &self,
        request: Request<proto::ConfigRequest>,
    ) -> BoxResult<proto::ConfigResponse> {
        let key = presented_key(&request);
        self.admit("GetConfig", key, RecordedBody::GetConfig)
            .await?;
        Ok(Response::new(proto::ConfigResponse {
            hot_tier_max_size: 10_000,
            hot_tier_max_age_seconds: 60,
            hnsw_max_elements: 100_000,
            data_dir: String::new(),
            fsync_policy: "Never".into(),
            snapshot_interval: 0,
            flush_interval_seconds: 30,
            embedding_dimension: self.dimension() as u64,
            version: "0.1.0-fake".into(),
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 50,
            hnsw_distance: self.shared.options.distance.clone(),
            hnsw_disable_normalization_check: false,
        }))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(k: &str, v: &str) -> proto::MetadataFilter {
        proto::MetadataFilter {
            filter_type: Some(FilterType::Exact(proto::ExactMatch {
                key: k.into(),
                value: v.into(),
            })),
        }
    }

    #[test]
    fn filters_follow_kyrodb_semantics() {
        let md = HashMap::from([("t".to_owned(), "10".to_owned()), ("a".into(), "x".into())]);
        let range = |b| proto::MetadataFilter {
            filter_type: Some(FilterType::Range(proto::RangeMatch {
                key: "t".into(),
                bound: Some(b),
            })),
        };
        assert!(matches(&exact("a", "x"), &md));
        assert!(!matches(&exact("a", "y"), &md));
        assert!(matches(&range(Bound::Gt("9".into())), &md)); // numeric, not lexicographic
        assert!(!matches(&range(Bound::Lt("9".into())), &md));
        let not = proto::MetadataFilter {
            filter_type: Some(FilterType::NotFilter(Box::new(proto::NotFilter {
                filter: Some(Box::new(exact("a", "x"))),
            }))),
        };
        assert!(!matches(&not, &md));
        assert_eq!(oversampling(Some(&exact("a", "x")), true), 8);
        assert_eq!(oversampling(None, false), 1);
    }
}
