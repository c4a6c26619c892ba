//! An embedded, persistent, tenant-partitioned vector index: the standalone mode's
//! [`VectorStore`] (production uses KyroDB through `kyrodb-client`).
//!
//! # Design
//! * **Durability** comes from [redb](https://docs.rs/redb): one file, one table per tenant,
//!   one ACID transaction per call, fsynced before the call returns. Nothing else is on disk.
//! * **Search** runs in memory. At open, every tenant's rows are loaded into a dense
//!   row-major matrix (exact scans) and, for tenants of at least
//!   [`IndexConfig::ann_min_vectors`] rows, a [usearch](https://docs.rs/usearch) HNSW graph is
//!   built in the background (exact scans answer meanwhile). The graph is derived state, so a
//!   crash can never leave it inconsistent with disk.
//! * **Tenant isolation** is structural: each tenant has its own table on disk and its own
//!   in-memory partition, and a query only ever touches its tenant's partition.
//! * **Filters** are evaluated with [`MetadataFilter::matches`]; selective filters scan the
//!   matching rows exactly, broad ones use the graph with the filter as a predicate and fall back
//!   to the exact scan whenever the graph returned fewer than `k` hits.
//!
//! Writes are serialised (redb has a single writer); searches run concurrently. The
//! `*_blocking` methods do disk and CPU work on the calling thread; the [`VectorStore`] impl
//! runs them on tokio's blocking pool.
//!
//! Stored metadata always carries [`meta::TENANT`] and [`meta::EPISODE`] (added on upsert), and
//! `get`/`search` return it with those keys.

mod ann;
mod error;
mod partition;
mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::embedding::Embedding;
use common::ids::{TenantId, VectorId};
use common::vector::{
    StoreHealth, VectorHit, VectorQuery, VectorRecord, VectorStore, VectorStoreError, meta,
};

pub use crate::error::IndexError;
use crate::partition::{BuildJob, Partition, Query};
pub use crate::partition::{GraphState, SearchPath};
use crate::storage::{Change, Storage, StoredRecord};

/// Largest `k` a search accepts (the [`VectorQuery`] contract).
pub const MAX_K: usize = 1000;

/// Tuning knobs. The defaults were chosen with `benches/search.rs` on a 2-core machine.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexConfig {
    /// Partitions with at least this many rows get an HNSW graph; smaller ones are scanned
    /// exactly (which is faster there and always exact).
    pub ann_min_vectors: usize,
    /// Largest `k` answered by the graph; larger `k` scan exactly.
    pub ann_max_k: usize,
    /// A filter estimated to match fewer rows than this is answered by an exact scan.
    pub filter_exact_below: usize,
    /// HNSW graph degree (`M`).
    pub connectivity: usize,
    /// HNSW `ef_construction`.
    pub expansion_add: usize,
    /// HNSW `ef_search` (raised to `k` when `k` is larger).
    pub expansion_search: usize,
    /// Concurrent graph searches per partition; further concurrent searches scan exactly.
    pub ann_threads: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            ann_min_vectors: 20_000,
            ann_max_k: 256,
            filter_exact_below: 1500,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            ann_threads: 64,
        }
    }
}

/// The result of [`EmbeddedIndex::search_detailed`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub hits: Vec<VectorHit>,
    pub path: SearchPath,
}

/// An embedded vector index of one dimension. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct EmbeddedIndex {
    inner: Arc<Inner>,
}

type Shared<T> = Arc<RwLock<T>>;

struct Inner {
    storage: Storage,
    dimension: usize,
    config: IndexConfig,
    partitions: RwLock<HashMap<TenantId, Shared<Partition>>>,
    /// Serialises writers so that memory is updated in commit order.
    writer: Mutex<()>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for EmbeddedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedIndex")
            .field("path", &self.inner.storage.path())
            .field("dimension", &self.inner.dimension)
            .finish_non_exhaustive()
    }
}

impl EmbeddedIndex {
    /// Opens (or creates) the index in `dir` with default tuning. Blocking: reads every vector
    /// and builds the graphs of large tenants.
    pub fn open(dir: impl AsRef<Path>, dimension: usize) -> Result<Self, IndexError> {
        Self::open_with(dir, dimension, IndexConfig::default())
    }

    /// Like [`EmbeddedIndex::open`], with explicit tuning.
    pub fn open_with(
        dir: impl AsRef<Path>,
        dimension: usize,
        config: IndexConfig,
    ) -> Result<Self, IndexError> {
        if dimension == 0 {
            return Err(IndexError::InvalidArgument(
                "dimension must be positive".into(),
            ));
        }
        let storage = Storage::open(dir.as_ref(), dimension)?;
        let mut partitions = HashMap::new();
        let mut jobs = Vec::new();
        for (tenant, records) in storage.load_all()? {
            let mut p = Partition::from_records(dimension, records);
            let job = p.start_build(&config);
            let p = Arc::new(RwLock::new(p));
            if let Some(job) = job {
                jobs.push((Arc::downgrade(&p), job));
            }
            partitions.insert(tenant, p);
        }
        tracing::info!(
            path = %storage.path().display(),
            dimension,
            tenants = partitions.len(),
            "embedded index opened"
        );
        let index = Self {
            inner: Arc::new(Inner {
                storage,
                dimension,
                config,
                partitions: RwLock::new(partitions),
                writer: Mutex::new(()),
            }),
        };
        // Graphs of large tenants are built in the background; they serve exact scans until then.
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        index.spawn_builds(jobs, workers);
        Ok(index)
    }

    /// Runs graph builds on a background thread, one after another. A build whose partition
    /// is gone (tenant deleted, index dropped) stops early.
    fn spawn_builds(&self, jobs: Vec<(Weak<RwLock<Partition>>, BuildJob)>, workers: usize) {
        if jobs.is_empty() {
            return;
        }
        let config = self.inner.config.clone();
        let targets: Vec<_> = jobs.iter().map(|(p, job)| (p.clone(), job.epoch)).collect();
        let spawned = std::thread::Builder::new()
            .name("ann-build".into())
            .spawn(move || {
                for (weak, job) in jobs {
                    let cancelled = || weak.strong_count() == 0;
                    let built = job.run(&config, workers, &cancelled);
                    if let Some(p) = weak.upgrade() {
                        write(&p).finish_build(job.epoch, built);
                    }
                }
            });
        if let Err(e) = spawned {
            for (weak, epoch) in targets {
                if let Some(p) = weak.upgrade() {
                    write(&p).finish_build(
                        epoch,
                        Err(IndexError::Io(std::io::Error::new(e.kind(), e.to_string()))),
                    );
                }
            }
        }
    }

    /// Waits until no graph build is running (or `timeout` passes); true if none is.
    pub fn wait_for_graphs(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let building = read(&self.inner.partitions)
                .values()
                .any(|p| read(p).graph_state() == GraphState::Building);
            if !building {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The graph state of `tenant`'s partition (`None` when the tenant is unknown).
    pub fn graph_state(&self, tenant: TenantId) -> Option<GraphState> {
        self.partition(tenant).map(|p| read(&p).graph_state())
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.inner.storage.path().to_path_buf()
    }

    pub fn config(&self) -> &IndexConfig {
        &self.inner.config
    }

    /// How many vectors `tenant` has.
    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        self.partition(tenant).map_or(0, |p| read(&p).len())
    }

    fn partition(&self, tenant: TenantId) -> Option<Shared<Partition>> {
        read(&self.inner.partitions).get(&tenant).cloned()
    }

    fn check_dim(&self, actual: usize) -> Result<(), IndexError> {
        if actual == self.inner.dimension {
            Ok(())
        } else {
            Err(IndexError::DimensionMismatch {
                expected: self.inner.dimension,
                actual,
            })
        }
    }

    fn to_stored(&self, r: &VectorRecord) -> Result<StoredRecord, IndexError> {
        self.check_dim(r.embedding.dim())?;
        if let Some(key) = meta::RESERVED.iter().find(|k| r.metadata.contains_key(**k)) {
            return Err(IndexError::InvalidArgument(format!(
                "metadata key {key} is reserved"
            )));
        }
        let mut metadata = r.metadata.clone();
        for (key, value) in [
            (meta::TENANT, r.tenant.to_string()),
            (meta::EPISODE, r.episode.to_string()),
        ] {
            if let Some(given) = metadata.insert(key.to_owned(), value.clone())
                && given != value
            {
                return Err(IndexError::InvalidArgument(format!(
                    "metadata {key}={given} contradicts the record's {value}"
                )));
            }
        }
        Ok(StoredRecord {
            id: r.id,
            episode: r.episode,
            vector: r.embedding.as_slice().to_vec(),
            metadata,
        })
    }

    /// Inserts or replaces `records` (any tenants) in one durable transaction.
    pub fn upsert_blocking(&self, records: &[VectorRecord]) -> Result<(), IndexError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut order: HashMap<TenantId, usize> = HashMap::new();
        let mut grouped: Vec<(TenantId, Vec<StoredRecord>)> = Vec::new();
        for r in records {
            let stored = self.to_stored(r)?;
            let i = *order.entry(r.tenant).or_insert_with(|| {
                grouped.push((r.tenant, Vec::new()));
                grouped.len() - 1
            });
            grouped[i].1.push(stored);
        }
        let _writer = lock(&self.inner.writer);
        let changes: Vec<(TenantId, Vec<Change<'_>>)> = grouped
            .iter()
            .map(|(t, rs)| (*t, rs.iter().map(Change::Put).collect()))
            .collect();
        self.inner.storage.apply(&changes)?;
        drop(changes);
        for (tenant, puts) in grouped {
            let p = {
                let mut map = write(&self.inner.partitions);
                map.entry(tenant)
                    .or_insert_with(|| Arc::new(RwLock::new(Partition::new(self.inner.dimension))))
                    .clone()
            };
            let job = write(&p).apply(puts, &[], &self.inner.config);
            if let Some(job) = job {
                self.spawn_builds(vec![(Arc::downgrade(&p), job)], 1);
            }
        }
        Ok(())
    }

    /// Deletes `ids` of `tenant`; returns how many existed.
    pub fn delete_blocking(&self, tenant: TenantId, ids: &[VectorId]) -> Result<u64, IndexError> {
        let _writer = lock(&self.inner.writer);
        let Some(p) = self.partition(tenant) else {
            return Ok(0);
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let changes = vec![(tenant, ids.iter().copied().map(Change::Delete).collect())];
        let deleted = self.inner.storage.apply(&changes)?;
        let (job, now_empty) = {
            let mut part = write(&p);
            (
                part.apply(Vec::new(), ids, &self.inner.config),
                part.len() == 0,
            )
        };
        if now_empty {
            write(&self.inner.partitions).remove(&tenant);
        }
        if let Some(job) = job {
            self.spawn_builds(vec![(Arc::downgrade(&p), job)], 1);
        }
        Ok(deleted.first().copied().unwrap_or(0))
    }

    /// Deletes every vector of `tenant`; returns how many there were.
    pub fn delete_tenant_blocking(&self, tenant: TenantId) -> Result<u64, IndexError> {
        let _writer = lock(&self.inner.writer);
        let n = self.inner.storage.delete_tenant(tenant)?;
        write(&self.inner.partitions).remove(&tenant);
        Ok(n)
    }

    /// Point lookup within `tenant`.
    pub fn get_blocking(
        &self,
        tenant: TenantId,
        id: VectorId,
    ) -> Result<Option<VectorRecord>, IndexError> {
        let Some(p) = self.partition(tenant) else {
            return Ok(None);
        };
        let part = read(&p);
        let Some((episode, vector, metadata)) = part.get(id) else {
            return Ok(None);
        };
        let embedding = Embedding::new(vector.to_vec()).map_err(|e| IndexError::Corrupt {
            table: format!("tenant/{tenant}"),
            reason: format!("record {id}: {e}"),
        })?;
        Ok(Some(VectorRecord {
            id,
            tenant,
            episode,
            embedding,
            metadata: metadata.clone(),
        }))
    }

    /// k-NN within `query.tenant`, best first.
    pub fn search_blocking(&self, query: &VectorQuery) -> Result<Vec<VectorHit>, IndexError> {
        self.search_detailed(query).map(|o| o.hits)
    }

    /// Like [`EmbeddedIndex::search_blocking`], also telling which path answered.
    pub fn search_detailed(&self, query: &VectorQuery) -> Result<SearchOutcome, IndexError> {
        if query.k == 0 || query.k > MAX_K {
            return Err(IndexError::InvalidArgument(format!(
                "k must be within 1..={MAX_K}, got {}",
                query.k
            )));
        }
        if query.min_score.is_some_and(f32::is_nan) {
            return Err(IndexError::InvalidArgument("min_score is NaN".into()));
        }
        self.check_dim(query.embedding.dim())?;
        let Some(p) = self.partition(query.tenant) else {
            return Ok(SearchOutcome {
                hits: Vec::new(),
                path: SearchPath::Exact,
            });
        };
        let part = read(&p);
        let q = Query {
            vector: query.embedding.as_slice(),
            k: query.k,
            min_score: query.min_score,
            filter: query.filter.as_ref(),
        };
        let (scored, path) = part.search(&q, &self.inner.config);
        let hits = scored
            .into_iter()
            .map(|s| VectorHit {
                id: s.id,
                episode: part.episode(s.slot),
                score: s.score,
                metadata: part.metadata(s.slot).clone(),
            })
            .collect();
        Ok(SearchOutcome { hits, path })
    }

    /// Health: the database answers a read; degraded (still serving, by exact scans) while a
    /// large tenant's graph is being built or after its build failed.
    pub fn health_blocking(&self) -> Result<StoreHealth, IndexError> {
        self.inner.storage.probe()?;
        let (mut building, mut failed) = (0, 0);
        for p in read(&self.inner.partitions).values() {
            match read(p).graph_state() {
                GraphState::Building => building += 1,
                GraphState::Failed => failed += 1,
                GraphState::None | GraphState::Ready => {}
            }
        }
        Ok(if building + failed == 0 {
            StoreHealth::Healthy
        } else {
            StoreHealth::Degraded(format!(
                "ANN graph building for {building} tenant(s), failed for {failed}; \
                 those are served by exact scans"
            ))
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, VectorStoreError>
    where
        T: Send + 'static,
        F: FnOnce(EmbeddedIndex) -> Result<T, IndexError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| IndexError::Task(e.to_string()))?
            .map_err(VectorStoreError::from)
    }
}

#[async_trait]
impl VectorStore for EmbeddedIndex {
    fn dimension(&self) -> usize {
        self.inner.dimension
    }

    async fn upsert(&self, records: &[VectorRecord]) -> Result<(), VectorStoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.to_vec();
        self.blocking(move |ix| ix.upsert_blocking(&records)).await
    }

    async fn search(&self, query: &VectorQuery) -> Result<Vec<VectorHit>, VectorStoreError> {
        let query = query.clone();
        self.blocking(move |ix| ix.search_blocking(&query)).await
    }

    async fn get(
        &self,
        tenant: TenantId,
        id: VectorId,
    ) -> Result<Option<VectorRecord>, VectorStoreError> {
        // Cheap, but it may wait for a writer holding the tenant's lock.
        self.blocking(move |ix| ix.get_blocking(tenant, id)).await
    }

    async fn delete(&self, tenant: TenantId, ids: &[VectorId]) -> Result<u64, VectorStoreError> {
        let ids = ids.to_vec();
        self.blocking(move |ix| ix.delete_blocking(tenant, &ids))
            .await
    }

    async fn delete_tenant(&self, tenant: TenantId) -> Result<u64, VectorStoreError> {
        self.blocking(move |ix| ix.delete_tenant_blocking(tenant))
            .await
    }

    async fn health(&self) -> Result<StoreHealth, VectorStoreError> {
        self.blocking(|ix| ix.health_blocking()).await
    }
}

/// Metadata as stored for a record (with the tenant and episode keys added), for tests that
/// compare what they wrote with what they read.
pub fn stored_metadata(record: &VectorRecord) -> BTreeMap<String, String> {
    let mut m = record.metadata.clone();
    m.insert(meta::TENANT.to_owned(), record.tenant.to_string());
    m.insert(meta::EPISODE.to_owned(), record.episode.to_string());
    m
}
