//! One tenant's vectors in memory: a dense row-major matrix for exact scans, the metadata of
//! each row, and (for large partitions) an HNSW graph.
//!
//! The graph is built off the partition lock (at open, or when the partition grows past the
//! threshold) from a snapshot; writes made meanwhile are journaled and replayed when the build
//! is installed. Until then the partition serves exact scans.
//!
//! Search strategy (chosen by measurement, see `benches/search.rs` and the crate docs):
//! * fewer than [`IndexConfig::ann_min_vectors`] rows, or `k` above
//!   [`IndexConfig::ann_max_k`]: exact scan;
//! * otherwise, no filter: the graph, re-scored exactly; an exact scan if the graph returned
//!   fewer hits than it should have;
//! * otherwise, a filter: the filter's selectivity is estimated on a sample; a selective filter
//!   (few matches) is answered by an exact scan over the matching rows, a broad one by the graph
//!   searching with the filter as a predicate, falling back to the exact scan whenever it
//!   returned fewer than `k` hits. So a filter never causes "fewer than k" surprises.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use common::ids::{EpisodeId, VectorId};
use common::vector::MetadataFilter;

use crate::IndexConfig;
use crate::ann::Ann;
use crate::error::IndexError;
use crate::storage::StoredRecord;

/// Rows sampled to estimate a filter's selectivity.
const SELECTIVITY_SAMPLE: usize = 256;

pub(crate) struct Partition {
    dim: usize,
    ids: Vec<VectorId>,
    episodes: Vec<EpisodeId>,
    metadata: Vec<BTreeMap<String, String>>,
    /// Row-major, `ids.len() * dim` values.
    vectors: Vec<f32>,
    slots: HashMap<u64, usize>,
    graph: Graph,
    next_epoch: u64,
}

/// The HNSW graph's lifecycle. Searches use it only when `Ready`.
enum Graph {
    None,
    Building {
        epoch: u64,
        /// Ids written since the build's snapshot, replayed when it finishes.
        journal: Vec<VectorId>,
    },
    Ready(Ann),
    /// The last build failed; the next write past the threshold retries.
    Failed,
}

/// What [`Partition::graph_state`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphState {
    None,
    Building,
    Ready,
    Failed,
}

/// A snapshot to build a graph from, off the partition lock.
pub(crate) struct BuildJob {
    pub epoch: u64,
    dim: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

impl BuildJob {
    pub fn run(
        &self,
        cfg: &IndexConfig,
        workers: usize,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Ann, IndexError> {
        let items: Vec<(u64, &[f32])> = self
            .ids
            .iter()
            .copied()
            .zip(self.vectors.chunks_exact(self.dim))
            .collect();
        Ann::build(self.dim, cfg, &items, workers, cancelled)
    }
}

/// Brings the graph in line with the rows for `ids` (present: upsert; absent: remove).
fn sync_graph(
    ann: &Ann,
    slots: &HashMap<u64, usize>,
    vectors: &[f32],
    dim: usize,
    ids: &[VectorId],
) -> Result<(), IndexError> {
    for id in ids {
        match slots.get(&id.get()) {
            Some(&slot) => ann.upsert(id.get(), &vectors[slot * dim..(slot + 1) * dim])?,
            None => ann.remove(id.get())?,
        }
    }
    Ok(())
}

/// One scored row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scored {
    pub score: f32,
    pub id: VectorId,
    pub slot: usize,
}

/// Better first: higher score, then lower id (deterministic ties).
fn better(a: &Scored, b: &Scored) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// Heap order: "greater" means worse, so a max-heap keeps the worst kept candidate on top.
struct Worst(Scored);
impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        better(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        better(&self.0, &other.0)
    }
}

/// Dot product written so that LLVM vectorises it (16 independent lanes) without `unsafe`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ta) = a.as_chunks::<16>();
    let (cb, tb) = b.as_chunks::<16>();
    let mut acc = [0.0f32; 16];
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    // Pairwise reduction.
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// What a search asks of a partition (already validated).
pub(crate) struct Query<'a> {
    pub vector: &'a [f32],
    pub k: usize,
    pub min_score: Option<f32>,
    pub filter: Option<&'a MetadataFilter>,
}

/// Which path answered (exposed for tests and benches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    Exact,
    Ann,
    AnnFiltered,
    /// The graph returned too few hits; an exact scan answered.
    AnnFallback,
}

impl Partition {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            episodes: Vec::new(),
            metadata: Vec::new(),
            vectors: Vec::new(),
            slots: HashMap::new(),
            graph: Graph::None,
            next_epoch: 0,
        }
    }

    pub fn from_records(dim: usize, records: Vec<StoredRecord>) -> Self {
        let mut p = Self::new(dim);
        p.ids.reserve(records.len());
        p.episodes.reserve(records.len());
        p.metadata.reserve(records.len());
        p.vectors.reserve(records.len() * dim);
        p.slots.reserve(records.len());
        for r in records {
            p.put_row(r.id, r.episode, &r.vector, r.metadata);
        }
        p
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    fn row(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    fn put_row(
        &mut self,
        id: VectorId,
        episode: EpisodeId,
        vector: &[f32],
        metadata: BTreeMap<String, String>,
    ) {
        match self.slots.get(&id.get()) {
            Some(&slot) => {
                self.episodes[slot] = episode;
                self.metadata[slot] = metadata;
                self.vectors[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(vector);
            }
            None => {
                self.slots.insert(id.get(), self.ids.len());
                self.ids.push(id);
                self.episodes.push(episode);
                self.metadata.push(metadata);
                self.vectors.extend_from_slice(vector);
            }
        }
    }

    fn remove_row(&mut self, id: VectorId) -> bool {
        let Some(slot) = self.slots.remove(&id.get()) else {
            return false;
        };
        let last = self.ids.len() - 1;
        self.ids.swap_remove(slot);
        self.episodes.swap_remove(slot);
        self.metadata.swap_remove(slot);
        if slot != last {
            let (head, tail) = self.vectors.split_at_mut(last * self.dim);
            head[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
            self.slots.insert(self.ids[slot].get(), slot);
        }
        self.vectors.truncate(last * self.dim);
        true
    }

    /// Applies committed upserts and deletes and keeps the graph in step. Returns a build job
    /// when the partition just grew past the graph threshold (or its graph failed): the caller
    /// runs it off-lock and hands the result to [`Partition::finish_build`].
    pub fn apply(
        &mut self,
        puts: Vec<StoredRecord>,
        deletes: &[VectorId],
        cfg: &IndexConfig,
    ) -> Option<BuildJob> {
        let mut touched = Vec::with_capacity(puts.len() + deletes.len());
        for r in puts {
            touched.push(r.id);
            self.put_row(r.id, r.episode, &r.vector, r.metadata);
        }
        for id in deletes {
            self.remove_row(*id);
            touched.push(*id);
        }
        if self.len() < cfg.ann_min_vectors / 2 {
            // Shrunk well below the threshold: drop the graph (or orphan a running build).
            self.graph = Graph::None;
            return None;
        }
        match &mut self.graph {
            Graph::Building { journal, .. } => {
                journal.extend(touched);
                None
            }
            Graph::Ready(ann) => {
                if let Err(e) = sync_graph(ann, &self.slots, &self.vectors, self.dim, &touched) {
                    tracing::warn!(error = %e, "ANN update failed; rebuilding the graph");
                    self.graph = Graph::None;
                    return self.start_build(cfg);
                }
                None
            }
            Graph::None | Graph::Failed => {
                if self.len() >= cfg.ann_min_vectors {
                    self.start_build(cfg)
                } else {
                    None
                }
            }
        }
    }

    /// Snapshots the rows for a graph build and marks the partition as building (it keeps
    /// serving exact scans, and journals the ids written meanwhile).
    pub fn start_build(&mut self, cfg: &IndexConfig) -> Option<BuildJob> {
        if self.len() < cfg.ann_min_vectors {
            return None;
        }
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.graph = Graph::Building {
            epoch,
            journal: Vec::new(),
        };
        Some(BuildJob {
            epoch,
            dim: self.dim,
            ids: self.ids.iter().map(|id| id.get()).collect(),
            vectors: self.vectors.clone(),
        })
    }

    /// Installs a finished graph after replaying the writes made during the build. A result
    /// for a build that was superseded (partition shrank, newer build) is dropped.
    pub fn finish_build(&mut self, epoch: u64, built: Result<Ann, IndexError>) {
        let journal = match &mut self.graph {
            Graph::Building { epoch: e, journal } if *e == epoch => std::mem::take(journal),
            _ => return,
        };
        let installed = built.and_then(|ann| {
            sync_graph(&ann, &self.slots, &self.vectors, self.dim, &journal)?;
            Ok(ann)
        });
        self.graph = match installed {
            Ok(ann) => Graph::Ready(ann),
            Err(e) => {
                tracing::warn!(error = %e, rows = self.len(), "ANN build failed; serving exact scans");
                Graph::Failed
            }
        };
    }

    pub fn graph_state(&self) -> GraphState {
        match self.graph {
            Graph::None => GraphState::None,
            Graph::Building { .. } => GraphState::Building,
            Graph::Ready(_) => GraphState::Ready,
            Graph::Failed => GraphState::Failed,
        }
    }

    pub fn get(&self, id: VectorId) -> Option<(EpisodeId, &[f32], &BTreeMap<String, String>)> {
        let &slot = self.slots.get(&id.get())?;
        Some((self.episodes[slot], self.row(slot), &self.metadata[slot]))
    }

    pub fn episode(&self, slot: usize) -> EpisodeId {
        self.episodes[slot]
    }

    pub fn metadata(&self, slot: usize) -> &BTreeMap<String, String> {
        &self.metadata[slot]
    }

    /// The best `k` rows, best first, and which path produced them.
    pub fn search(&self, q: &Query<'_>, cfg: &IndexConfig) -> (Vec<Scored>, SearchPath) {
        let n = self.len();
        let ann = match &self.graph {
            Graph::Ready(ann) if n >= cfg.ann_min_vectors && q.k <= cfg.ann_max_k => ann,
            _ => return (self.exact(q), SearchPath::Exact),
        };
        let (hits, path) = match q.filter {
            None => match ann.search(q.vector, q.k) {
                Ok(keys) => (self.rescore(&keys, q), SearchPath::Ann),
                Err(e) => {
                    tracing::debug!(error = %e, "ANN search failed; exact scan");
                    return (self.exact(q), SearchPath::AnnFallback);
                }
            },
            Some(filter) => {
                if self.estimated_matches(filter) < cfg.filter_exact_below.max(q.k) {
                    return (self.exact(q), SearchPath::Exact);
                }
                let accept = |key: u64| {
                    self.slots
                        .get(&key)
                        .is_some_and(|&slot| filter.matches(&self.metadata[slot]))
                };
                match ann.filtered_search(q.vector, q.k, accept) {
                    Ok(keys) => (self.rescore(&keys, q), SearchPath::AnnFiltered),
                    Err(e) => {
                        tracing::debug!(error = %e, "filtered ANN search failed; exact scan");
                        return (self.exact(q), SearchPath::AnnFallback);
                    }
                }
            }
        };
        // The graph must return k hits when the partition holds k candidates; if it did not
        // (too selective a filter, tombstones), the exact scan decides.
        let returned = hits.len();
        let wanted = q.k.min(n);
        if returned < wanted {
            return (self.exact(q), SearchPath::AnnFallback);
        }
        (self.apply_min_score(hits, q.min_score), path)
    }

    /// Re-scores graph hits exactly and re-checks the filter (defence in depth).
    fn rescore(&self, keys: &[u64], q: &Query<'_>) -> Vec<Scored> {
        let mut hits: Vec<Scored> = keys
            .iter()
            .filter_map(|key| {
                let &slot = self.slots.get(key)?;
                if let Some(f) = q.filter
                    && !f.matches(&self.metadata[slot])
                {
                    return None;
                }
                Some(Scored {
                    score: dot(q.vector, self.row(slot)),
                    id: self.ids[slot],
                    slot,
                })
            })
            .collect();
        hits.sort_by(better);
        hits.dedup_by_key(|h| h.id);
        hits.truncate(q.k);
        hits
    }

    fn apply_min_score(&self, mut hits: Vec<Scored>, min_score: Option<f32>) -> Vec<Scored> {
        if let Some(m) = min_score {
            hits.retain(|h| h.score >= m);
        }
        hits
    }

    /// Estimated number of rows matching `filter`, from an evenly strided sample.
    fn estimated_matches(&self, filter: &MetadataFilter) -> usize {
        let n = self.len();
        if n == 0 {
            return 0;
        }
        let sample = SELECTIVITY_SAMPLE.min(n);
        let stride = n / sample;
        let hits = (0..sample)
            .filter(|i| filter.matches(&self.metadata[i * stride]))
            .count();
        hits * n / sample
    }

    /// Exact top-k. With a broad filter (or none), every row is scored and the filter is
    /// checked only for rows that would enter the current top-k; with a selective one, the
    /// filter goes first and only matching rows are scored. Same results either way.
    pub fn exact(&self, q: &Query<'_>) -> Vec<Scored> {
        let k = q.k.min(self.len());
        if k == 0 {
            return Vec::new();
        }
        let filter_first = q
            .filter
            .is_some_and(|f| self.estimated_matches(f) * 4 < self.len());
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        let min = q.min_score.unwrap_or(f32::NEG_INFINITY);
        for (slot, row) in self.vectors.chunks_exact(self.dim).enumerate() {
            if filter_first && q.filter.is_some_and(|f| !f.matches(&self.metadata[slot])) {
                continue;
            }
            let score = dot(q.vector, row);
            if score < min {
                continue;
            }
            let cand = Scored {
                score,
                id: self.ids[slot],
                slot,
            };
            if heap.len() == k
                && heap
                    .peek()
                    .is_some_and(|Worst(worst)| better(&cand, worst) != Ordering::Less)
            {
                continue;
            }
            if !filter_first && q.filter.is_some_and(|f| !f.matches(&self.metadata[slot])) {
                continue;
            }
            heap.push(Worst(cand));
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut out: Vec<Scored> = heap.into_iter().map(|Worst(s)| s).collect();
        out.sort_by(better);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for len in [1usize, 3, 16, 17, 384, 385] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-3, "len {len}");
        }
    }

    fn unit(dim: usize, seed: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim)
            .map(|i| ((i * 7 + seed * 13) as f32 * 0.7).sin())
            .collect();
        let norm = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    fn stored(n: u64, vector: Vec<f32>) -> StoredRecord {
        StoredRecord {
            id: VectorId::try_from(n).expect("valid id"),
            episode: EpisodeId::new(),
            vector,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn writes_during_a_build_are_replayed_into_the_graph() {
        let dim = 16;
        let cfg = IndexConfig {
            ann_min_vectors: 100,
            ..IndexConfig::default()
        };
        let mut p = Partition::from_records(
            dim,
            (1..=300)
                .map(|n| stored(n, unit(dim, n as usize)))
                .collect(),
        );
        let job = p.start_build(&cfg).expect("large enough to build");
        assert_eq!(p.graph_state(), GraphState::Building);
        // Meanwhile: replace 1, delete 2, add 301.
        let replaced = unit(dim, 10_000);
        let added = unit(dim, 20_000);
        let none = p.apply(
            vec![stored(1, replaced.clone()), stored(301, added.clone())],
            &[VectorId::try_from(2u64).expect("id")],
            &cfg,
        );
        assert!(none.is_none(), "no second build while one runs");
        let built = job.run(&cfg, 2, &|| false);
        p.finish_build(job.epoch, built);
        assert_eq!(p.graph_state(), GraphState::Ready);
        for (v, want) in [(&replaced, 1u64), (&added, 301)] {
            let q = Query {
                vector: v,
                k: 3,
                min_score: None,
                filter: None,
            };
            let (hits, path) = p.search(&q, &cfg);
            assert_eq!(path, SearchPath::Ann);
            assert_eq!(hits[0].id.get(), want);
        }
        let old_two = unit(dim, 2);
        let q = Query {
            vector: &old_two,
            k: 300,
            min_score: None,
            filter: None,
        };
        let (hits, _) = p.search(&q, &cfg);
        assert!(hits.iter().all(|h| h.id.get() != 2));
        // A stale build result (superseded epoch) is ignored.
        p.finish_build(job.epoch, Err(IndexError::Ann("stale".into())));
        assert_eq!(p.graph_state(), GraphState::Ready);
    }

    #[test]
    fn swap_remove_keeps_slots_consistent() {
        let mut p = Partition::new(2);
        let id = |n: u64| VectorId::try_from(n).expect("valid id");
        for n in 1..=4 {
            p.put_row(id(n), EpisodeId::new(), &[n as f32, 0.0], BTreeMap::new());
        }
        assert!(p.remove_row(id(1)));
        assert!(!p.remove_row(id(1)));
        for n in 2..=4 {
            let (_, v, _) = p.get(id(n)).expect("present");
            assert_eq!(v[0], n as f32);
        }
        assert_eq!(p.len(), 3);
        assert!(p.remove_row(id(4)));
        assert_eq!(p.vectors.len(), 4);
    }
}
