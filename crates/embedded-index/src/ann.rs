//! The approximate half: a usearch HNSW graph over one tenant's vectors, kept in memory and
//! rebuilt from the durable store at open. Keys are the [`VectorId`](common::ids::VectorId)
//! values; the graph never decides a score or a filter on its own (the partition re-scores and
//! re-checks every hit).

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::IndexConfig;
use crate::error::IndexError;

pub(crate) struct Ann {
    index: Index,
    threads: usize,
}

fn ann_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Ann(e.to_string())
}

impl Ann {
    fn new(dim: usize, cfg: &IndexConfig, capacity: usize) -> Result<Self, IndexError> {
        let options = IndexOptions {
            dimensions: dim,
            // Embeddings are unit length, so inner product is cosine (distance = 1 - cos).
            metric: MetricKind::IP,
            quantization: ScalarKind::F32,
            connectivity: cfg.connectivity,
            expansion_add: cfg.expansion_add,
            expansion_search: cfg.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(ann_err)?;
        // One thread context per concurrent caller; a search that finds none free fails and
        // the partition falls back to an exact scan.
        let threads = cfg.ann_threads.max(1);
        index
            .reserve_capacity_and_threads(capacity.max(64), threads)
            .map_err(ann_err)?;
        Ok(Self { index, threads })
    }

    /// Builds a graph over `items` (id, vector), adding from `workers` threads. Stops early
    /// with an error once `cancelled()` says so (checked every few hundred adds).
    pub fn build(
        dim: usize,
        cfg: &IndexConfig,
        items: &[(u64, &[f32])],
        workers: usize,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, IndexError> {
        let ann = Self::new(dim, cfg, items.len() + items.len() / 4)?;
        let workers = workers.clamp(1, ann.threads);
        let chunk = items.len().div_ceil(workers).max(1);
        let results: Vec<Result<(), IndexError>> = std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    let index = &ann.index;
                    s.spawn(move || {
                        for (i, (key, v)) in part.iter().enumerate() {
                            if i % 256 == 0 && cancelled() {
                                return Err(IndexError::Ann("graph build cancelled".into()));
                            }
                            index.add(*key, v).map_err(ann_err)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(IndexError::Ann("graph build thread panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        Ok(ann)
    }

    /// Inserts or replaces one vector.
    pub fn upsert(&self, key: u64, v: &[f32]) -> Result<(), IndexError> {
        if self.index.contains(key) {
            self.index.remove(key).map_err(ann_err)?;
        }
        if self.index.size() >= self.index.capacity() {
            let grown = (self.index.capacity() * 2).max(1024);
            self.index
                .reserve_capacity_and_threads(grown, self.threads)
                .map_err(ann_err)?;
        }
        self.index.add(key, v).map_err(ann_err)
    }

    pub fn remove(&self, key: u64) -> Result<(), IndexError> {
        if self.index.contains(key) {
            self.index.remove(key).map_err(ann_err)?;
        }
        Ok(())
    }

    /// Up to `k` approximate neighbours' keys, best first.
    pub fn search(&self, q: &[f32], k: usize) -> Result<Vec<u64>, IndexError> {
        Ok(self.index.search(q, k).map_err(ann_err)?.keys)
    }

    /// Up to `k` approximate neighbours whose key satisfies `accept`, best first.
    pub fn filtered_search(
        &self,
        q: &[f32],
        k: usize,
        accept: impl Fn(u64) -> bool,
    ) -> Result<Vec<u64>, IndexError> {
        Ok(self
            .index
            .filtered_search(q, k, accept)
            .map_err(ann_err)?
            .keys)
    }
}
