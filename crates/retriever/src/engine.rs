//! The retriever's core: embed the query (cached), search the tenant's vectors, load the
//! candidate episodes (cached, existence re-checked), rank, and decide the gate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use bytes::Bytes;
use common::events::{EmbedTextReply, EmbedTextRequest, Topology};
use common::query::{
    GateDecision, GateRequest, QueryContext, SearchFilters, SearchHit, SearchRequest, SearchResults,
};
use common::vector::{
    MetadataFilter, RangeBound, VectorQuery, VectorStore, VectorStoreError, meta,
};
use common::{Embedding, Episode, EpisodeId, TenantId};
use db::Db;
use moka::future::Cache;
use time::OffsetDateTime;

use crate::gate::{self, GateSettings, Match};
use crate::lexical::Doc;
use crate::rank::{self, Candidate, RankSettings};
use crate::settings::CacheSettings;

/// Why a search or gate could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RetrieveError {
    #[error("query embedding unavailable: {0}")]
    Embedding(String),
    #[error("vector store: {0}")]
    Store(#[from] VectorStoreError),
    #[error("database: {0}")]
    Db(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl From<db::DbError> for RetrieveError {
    fn from(e: db::DbError) -> Self {
        RetrieveError::Db(e.to_string())
    }
}

/// An episode as ranking needs it (immutable once stored, so safe to cache).
#[derive(Debug)]
struct CachedEpisode {
    episode: Episode,
    embedding: Embedding,
    captured_at: OffsetDateTime,
    doc: Doc,
}

/// Recent answers by (tenant, request as JSON).
type ResultCache<T> = Cache<(TenantId, String), Arc<T>>;

/// Everything the retriever needs from the outside world.
#[derive(Clone)]
pub struct RetrieverDeps {
    pub bus: Arc<dyn Bus>,
    pub topology: Topology,
    pub db: Db,
    pub text_store: Arc<dyn VectorStore>,
}

/// Search and gate over one system of record and one text vector store.
pub struct Engine {
    deps: RetrieverDeps,
    ranking: RankSettings,
    gate: GateSettings,
    embed_timeout: Duration,
    embeddings: Cache<String, Embedding>,
    episodes: Cache<(TenantId, EpisodeId), Arc<CachedEpisode>>,
    /// Recent answers by (tenant, request as JSON); `None` when `result_ttl` is zero.
    searches: Option<ResultCache<SearchResults>>,
    gates: Option<ResultCache<GateDecision>>,
}

/// The text embedded for a gate request: what the agent wants, what it is about to run,
/// and what it knows (the same order as an episode's text).
pub fn gate_query_text(req: &GateRequest) -> String {
    let mut text = String::with_capacity(req.goal.len() + req.proposed_action.len() + 256);
    for part in [&req.goal, &req.proposed_action, &req.context] {
        if !part.trim().is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(part.trim());
        }
    }
    text
}

/// The words lexical matching sees for an episode: every text field.
fn episode_doc(e: &Episode) -> Doc {
    let mut text = String::with_capacity(4096);
    text.push_str(e.goal());
    text.push('\n');
    text.push_str(e.error_trace());
    for a in e.actions_taken() {
        text.push('\n');
        text.push_str(a);
    }
    if let Some(r) = e.resolution() {
        text.push('\n');
        text.push_str(r);
    }
    for t in e.tags().iter().chain(e.tool_chain()) {
        text.push(' ');
        text.push_str(t);
    }
    text.push(' ');
    text.push_str(e.error_class().as_str());
    Doc::new(&text)
}

/// The filters the vector store can evaluate (tool, class, tags, capture time).
fn store_filter(f: &SearchFilters) -> Option<MetadataFilter> {
    let mut all = Vec::new();
    if let Some(tool) = &f.tool {
        all.push(MetadataFilter::exact(
            format!("{}{tool}", meta::TOOL_PREFIX),
            meta::PRESENT,
        ));
    }
    if let Some(class) = f.error_class {
        all.push(MetadataFilter::exact(meta::ERROR_CLASS, class.as_str()));
    }
    for tag in &f.tags {
        all.push(MetadataFilter::exact(
            format!("{}{tag}", meta::TAG_PREFIX),
            meta::PRESENT,
        ));
    }
    let micros = |t: OffsetDateTime| common::time_util::to_unix_micros(t).to_string();
    if let Some(t) = f.created_after {
        all.push(MetadataFilter::Range {
            key: meta::CAPTURED_AT.to_owned(),
            bound: RangeBound::Gte,
            value: micros(t),
        });
    }
    if let Some(t) = f.created_before {
        all.push(MetadataFilter::Range {
            key: meta::CAPTURED_AT.to_owned(),
            bound: RangeBound::Lt,
            value: micros(t),
        });
    }
    match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(MetadataFilter::And(all)),
    }
}

impl Engine {
    pub fn new(
        deps: RetrieverDeps,
        ranking: RankSettings,
        gate: GateSettings,
        cache: &CacheSettings,
    ) -> Self {
        Self {
            deps,
            ranking,
            gate,
            embed_timeout: cache.embed_timeout,
            embeddings: Cache::builder()
                .max_capacity(cache.query_embeddings)
                .time_to_live(cache.query_embedding_ttl)
                .build(),
            episodes: Cache::builder().max_capacity(cache.episodes).build(),
            searches: (!cache.result_ttl.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(cache.results)
                    .time_to_live(cache.result_ttl)
                    .build()
            }),
            gates: (!cache.result_ttl.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(cache.results)
                    .time_to_live(cache.result_ttl)
                    .build()
            }),
        }
    }

    /// A cached answer, if every episode it returns still exists (one indexed query).
    async fn still_valid<'a>(
        &self,
        tenant: TenantId,
        ids: impl Iterator<Item = &'a EpisodeId>,
    ) -> Result<bool, RetrieveError> {
        let ids: Vec<EpisodeId> = ids.copied().collect();
        if ids.is_empty() {
            return Ok(true);
        }
        let existing = self.deps.db.existing_episode_ids(tenant, &ids).await?;
        Ok(existing.len() == ids.len())
    }

    /// The query's embedding, from the cache or the embedder (concurrent misses for the
    /// same text share one request).
    async fn embed(&self, text: &str) -> Result<Embedding, RetrieveError> {
        let key = text.trim().to_owned();
        self.embeddings
            .try_get_with(key.clone(), async {
                let request = serde_json::to_vec(&EmbedTextRequest { texts: vec![key] })
                    .map_err(|e| RetrieveError::Invalid(e.to_string()))?;
                let reply = self
                    .deps
                    .bus
                    .request(
                        &self.deps.topology.embed_text_subject(),
                        Bytes::from(request),
                        self.embed_timeout,
                    )
                    .await
                    .map_err(|e| RetrieveError::Embedding(e.to_string()))?;
                match serde_json::from_slice::<EmbedTextReply>(&reply) {
                    Ok(EmbedTextReply::Ok { mut embeddings, .. }) if embeddings.len() == 1 => {
                        Ok(embeddings.remove(0))
                    }
                    Ok(EmbedTextReply::Ok { .. }) => Err(RetrieveError::Embedding(
                        "the embedder answered with the wrong number of vectors".into(),
                    )),
                    Ok(EmbedTextReply::Error { code, message }) => {
                        Err(RetrieveError::Embedding(format!("{code}: {message}")))
                    }
                    Err(e) => Err(RetrieveError::Embedding(format!("malformed reply: {e}"))),
                }
            })
            .await
            .map_err(|e: Arc<RetrieveError>| (*e).clone())
    }

    /// Candidate episodes for `embedding`, best similarity first, each existing in the
    /// system of record right now (a deleted episode is never returned).
    async fn candidates(
        &self,
        tenant: TenantId,
        embedding: Embedding,
        k: usize,
        filters: &SearchFilters,
    ) -> Result<(usize, Vec<(Arc<CachedEpisode>, EpisodeId, f32)>), RetrieveError> {
        let query = VectorQuery {
            tenant,
            embedding,
            k: k.clamp(1, 1000),
            min_score: None,
            filter: store_filter(filters),
        };
        let hits = self.deps.text_store.search(&query).await?;
        let found = hits.len();
        // Best similarity per episode (an episode may have several vectors).
        let mut best: HashMap<EpisodeId, f32> = HashMap::new();
        for h in &hits {
            let s = best.entry(h.episode).or_insert(f32::MIN);
            *s = s.max(h.score);
        }
        let ids: Vec<EpisodeId> = best.keys().copied().collect();
        let existing: HashSet<EpisodeId> = self
            .deps
            .db
            .existing_episode_ids(tenant, &ids)
            .await?
            .into_iter()
            .collect();
        let mut missing = Vec::new();
        let mut loaded = HashMap::new();
        for id in ids.iter().filter(|id| existing.contains(id)) {
            match self.episodes.get(&(tenant, *id)).await {
                Some(e) => {
                    loaded.insert(*id, e);
                }
                None => missing.push(*id),
            }
        }
        if !missing.is_empty() {
            for stored in self.deps.db.get_episodes(tenant, &missing).await? {
                let episode = stored.episode.without_screenshot();
                let cached = Arc::new(CachedEpisode {
                    doc: episode_doc(&episode),
                    embedding: stored.text_embedding,
                    episode,
                    captured_at: stored.captured_at,
                });
                self.episodes
                    .insert((tenant, stored.id), cached.clone())
                    .await;
                loaded.insert(stored.id, cached);
            }
        }
        let mut out: Vec<(Arc<CachedEpisode>, EpisodeId, f32)> = loaded
            .into_iter()
            .filter(|(_, e)| filters.matches(&e.episode, e.captured_at))
            .map(|(id, e)| (e, id, best[&id]))
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.cmp(&b.1)));
        Ok((found, out))
    }

    async fn ranked_hits(
        &self,
        tenant: TenantId,
        text: &str,
        k: usize,
        filters: &SearchFilters,
        ctx: &QueryContext,
        min_similarity: Option<f32>,
    ) -> Result<(usize, Vec<SearchHit>), RetrieveError> {
        let embedding = self.embed(text).await?;
        let wanted = self.ranking.candidates.max(4 * k);
        let (found, cands) = self
            .candidates(tenant, embedding.clone(), wanted, filters)
            .await?;
        let ids: Vec<EpisodeId> = cands.iter().map(|c| c.1).collect();
        let feedback = self.deps.db.feedback_counts(tenant, &ids).await?;
        let now = OffsetDateTime::now_utc();
        let input: Vec<Candidate<'_>> = cands
            .iter()
            .map(|(e, id, sim)| {
                let (helpful, unhelpful) = feedback.get(id).copied().unwrap_or((0, 0));
                Candidate {
                    episode: &e.episode,
                    embedding: e.embedding.as_slice(),
                    doc: &e.doc,
                    captured_at: e.captured_at,
                    similarity: *sim,
                    helpful,
                    unhelpful,
                }
            })
            .collect();
        let ranked = rank::rank(text, embedding.as_slice(), ctx, &input, &self.ranking, now);
        let hits = ranked
            .into_iter()
            .filter(|r| min_similarity.is_none_or(|m| r.parts.similarity >= m))
            .take(k)
            .map(|r| {
                let (e, id, _) = &cands[r.index];
                SearchHit {
                    episode_id: *id,
                    episode: e.episode.clone(),
                    captured_at: e.captured_at,
                    score: r.score,
                    parts: r.parts,
                    preconditions: r.checks,
                }
            })
            .collect();
        Ok((found, hits))
    }

    /// Answers from `cache` when the same request was answered within `result_ttl` and
    /// every episode the answer returns still exists; otherwise computes and caches.
    async fn cached<Req, T, Fut>(
        &self,
        cache: Option<&ResultCache<T>>,
        tenant: TenantId,
        req: &Req,
        returned: fn(&T) -> Vec<EpisodeId>,
        compute: Fut,
    ) -> Result<Arc<T>, RetrieveError>
    where
        Req: serde::Serialize,
        T: Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, RetrieveError>>,
    {
        let key = cache.and_then(|cache| {
            serde_json::to_string(req)
                .ok()
                .map(|json| (cache, (tenant, json)))
        });
        if let Some((cache, key)) = &key
            && let Some(hit) = cache.get(key).await
        {
            if self.still_valid(tenant, returned(&hit).iter()).await? {
                return Ok(hit);
            }
            cache.invalidate(key).await;
        }
        let answer = Arc::new(compute.await?);
        if let Some((cache, key)) = key {
            cache.insert(key, answer.clone()).await;
        }
        Ok(answer)
    }

    pub async fn search(
        &self,
        tenant: TenantId,
        req: &SearchRequest,
    ) -> Result<Arc<SearchResults>, RetrieveError> {
        let compute = async {
            let (candidates, results) = self
                .ranked_hits(
                    tenant,
                    &req.text,
                    req.k,
                    &req.filters,
                    &req.context,
                    req.min_similarity,
                )
                .await?;
            Ok(SearchResults {
                results,
                candidates,
            })
        };
        let returned = |r: &SearchResults| r.results.iter().map(|h| h.episode_id).collect();
        self.cached(self.searches.as_ref(), tenant, req, returned, compute)
            .await
    }

    pub async fn reflect(
        &self,
        tenant: TenantId,
        req: &GateRequest,
    ) -> Result<Arc<GateDecision>, RetrieveError> {
        let returned = |d: &GateDecision| d.matched_episodes.iter().map(|h| h.episode_id).collect();
        self.cached(
            self.gates.as_ref(),
            tenant,
            req,
            returned,
            self.decide(tenant, req),
        )
        .await
    }

    async fn decide(
        &self,
        tenant: TenantId,
        req: &GateRequest,
    ) -> Result<GateDecision, RetrieveError> {
        let text = gate_query_text(req);
        let ctx = QueryContext {
            tool: req.tool.clone(),
            environment: req.environment.clone(),
            current_state: req.current_state.clone(),
        };
        let (_, hits) = self
            .ranked_hits(
                tenant,
                &text,
                self.gate.matches.max(1),
                &SearchFilters::default(),
                &ctx,
                None,
            )
            .await?;
        let ids: Vec<String> = hits.iter().map(|h| h.episode_id.to_string()).collect();
        let matches: Vec<Match<'_>> = hits
            .iter()
            .zip(&ids)
            .map(|(h, id)| Match {
                id,
                episode: &h.episode,
                similarity: h.parts.similarity,
            })
            .collect();
        let verdict = gate::decide(req, &matches, &self.gate);
        // Cited episodes first, then the rest of the matches.
        let mut order: Vec<usize> = verdict.cites.clone();
        order.extend((0..hits.len()).filter(|i| !verdict.cites.contains(i)));
        let mut hits: Vec<Option<SearchHit>> = hits.into_iter().map(Some).collect();
        let matched_episodes = order.into_iter().filter_map(|i| hits[i].take()).collect();
        Ok(GateDecision {
            recommendation: verdict.recommendation,
            confidence: verdict.confidence,
            rationale: verdict.rationale,
            suggested_action: verdict.suggested_action,
            matched_episodes,
        })
    }

    /// Forgets a cached episode (after a delete in this process).
    pub async fn forget(&self, tenant: TenantId, id: EpisodeId) {
        self.episodes.invalidate(&(tenant, id)).await;
    }
}
