//! Ranking: one score per candidate from weighted parts (docs/RETRIEVAL.md). Pure.
//!
//! ```text
//! score = w_sim · expanded_similarity + w_lex · lexical
//!       + w_pre · (precondition − 0.5) + w_rec · recency + w_use · usage
//! ```
//!
//! `expanded_similarity` is the cosine with the query moved towards its best first-pass
//! matches (Rocchio pseudo-relevance feedback: q' = q + β·mean(top m), normalised; the
//! first pass ranks by similarity + lexical). Recurring failures are worded differently
//! each time; the expansion pulls the other members of the best match's group up with it.
//! `precondition` is centred on its neutral 0.5, so a request that says nothing about its
//! environment ranks purely by relevance; `recency` halves every `half_life`; `usage` is the
//! smoothed balance of helpful and unhelpful feedback, (h − u) / (h + u + 2).

use std::time::Duration;

use common::Episode;
use common::query::{PreconditionCheck, QueryContext, ScoreParts};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::lexical::{self, Doc};
use crate::preconditions;

/// Ranking weights and knobs (`EM_RETRIEVER__RANKING__*`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankSettings {
    pub similarity_weight: f32,
    pub lexical_weight: f32,
    pub precondition_weight: f32,
    pub recency_weight: f32,
    pub usage_weight: f32,
    /// Age at which the recency part is 0.5.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Environment keys whose mismatch excludes an episode (lower-case).
    pub hard_keys: Vec<String>,
    /// Candidates fetched from the vector store per query (at least 4·k).
    pub candidates: usize,
    /// Pseudo-relevance feedback: how many first-pass matches expand the query (0: off).
    pub expansion_docs: usize,
    /// … and their weight β relative to the query.
    pub expansion_weight: f32,
}

impl Default for RankSettings {
    fn default() -> Self {
        Self {
            similarity_weight: 1.0,
            lexical_weight: 0.2,
            precondition_weight: 0.1,
            recency_weight: 0.02,
            usage_weight: 0.05,
            half_life: Duration::from_secs(90 * 24 * 3600),
            hard_keys: Vec::new(),
            candidates: 50,
            expansion_docs: 2,
            expansion_weight: 0.5,
        }
    }
}

/// One candidate from the vector store, with what ranking needs.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub episode: &'a Episode,
    /// The episode's text embedding (unit length, same space as the query).
    pub embedding: &'a [f32],
    pub doc: &'a Doc,
    pub captured_at: OffsetDateTime,
    pub similarity: f32,
    pub helpful: u64,
    pub unhelpful: u64,
}

/// A ranked candidate (`index` into the input slice).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub index: usize,
    pub score: f32,
    pub parts: ScoreParts,
    pub checks: Vec<PreconditionCheck>,
}

/// Scores every candidate and returns them best first, without those a hard precondition
/// excludes. Ties break on similarity, then on input order.
pub fn rank(
    query: &str,
    query_embedding: &[f32],
    ctx: &QueryContext,
    candidates: &[Candidate<'_>],
    settings: &RankSettings,
    now: OffsetDateTime,
) -> Vec<Ranked> {
    let docs: Vec<&Doc> = candidates.iter().map(|c| c.doc).collect();
    let lexical = lexical::bm25_normalised(query, &docs);
    let expanded = expand_query(query_embedding, candidates, &lexical, settings);
    let mut ranked: Vec<Ranked> = candidates
        .iter()
        .enumerate()
        .filter_map(|(index, c)| {
            let pre = preconditions::check(c.episode, ctx, &settings.hard_keys);
            if pre.excluded {
                return None;
            }
            let parts = ScoreParts {
                similarity: c.similarity,
                expanded_similarity: expanded
                    .as_deref()
                    .map_or(c.similarity, |q| common::embedding::dot(q, c.embedding)),
                lexical: lexical[index],
                precondition: pre.score,
                recency: recency(c.captured_at, now, settings.half_life),
                usage: usage(c.helpful, c.unhelpful),
            };
            Some(Ranked {
                index,
                score: total(&parts, settings),
                parts,
                checks: pre.checks,
            })
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.parts.similarity.total_cmp(&a.parts.similarity))
            .then(a.index.cmp(&b.index))
    });
    ranked
}

/// q' = q + β·mean(embeddings of the best `expansion_docs` by similarity + lexical),
/// normalised; `None` when expansion is off or there is nothing to expand with.
fn expand_query(
    query: &[f32],
    candidates: &[Candidate<'_>],
    lexical: &[f32],
    s: &RankSettings,
) -> Option<Vec<f32>> {
    if s.expansion_docs == 0 || s.expansion_weight <= 0.0 || candidates.is_empty() {
        return None;
    }
    let mut first: Vec<(usize, f32)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.similarity + s.lexical_weight * lexical[i]))
        .collect();
    first.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<&[f32]> = first
        .iter()
        .take(s.expansion_docs)
        .map(|(i, _)| candidates[*i].embedding)
        .filter(|e| e.len() == query.len())
        .collect();
    if top.is_empty() {
        return None;
    }
    let beta = s.expansion_weight / top.len() as f32;
    let mut q: Vec<f32> = query.to_vec();
    for e in top {
        for (x, y) in q.iter_mut().zip(e) {
            *x += beta * y;
        }
    }
    let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm <= f32::EPSILON {
        return None;
    }
    q.iter_mut().for_each(|x| *x /= norm);
    Some(q)
}

/// The weighted sum of the parts.
pub fn total(p: &ScoreParts, w: &RankSettings) -> f32 {
    w.similarity_weight * p.expanded_similarity
        + w.lexical_weight * p.lexical
        + w.precondition_weight * (p.precondition - 0.5)
        + w.recency_weight * p.recency
        + w.usage_weight * p.usage
}

/// 1 now, 0.5 after `half_life`; a capture time in the future counts as now.
pub fn recency(captured_at: OffsetDateTime, now: OffsetDateTime, half_life: Duration) -> f32 {
    let age = (now - captured_at).as_seconds_f64().max(0.0);
    let half = half_life.as_secs_f64().max(1.0);
    0.5f64.powf(age / half) as f32
}

/// Smoothed feedback balance in -1..1.
pub fn usage(helpful: u64, unhelpful: u64) -> f32 {
    (helpful as f64 - unhelpful as f64) as f32 / (helpful + unhelpful + 2) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    fn ep(goal: &str, tool: &str) -> Episode {
        Episode::parse(EpisodeFields {
            goal: Some(goal.into()),
            tool_chain: vec![tool.into()],
            ..Default::default()
        })
        .expect("valid in this test")
    }

    #[test]
    fn recency_and_usage_shapes() {
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        assert!((recency(now, now, day) - 1.0).abs() < 1e-6);
        assert!((recency(now - time::Duration::days(1), now, day) - 0.5).abs() < 1e-3);
        assert_eq!(recency(now + time::Duration::days(1), now, day), 1.0);
        assert_eq!(usage(0, 0), 0.0);
        assert!(usage(10, 0) > 0.8);
        assert!(usage(0, 10) < -0.8);
    }

    #[test]
    fn lexical_and_feedback_break_near_ties() {
        let now = OffsetDateTime::now_utc();
        let a = ep("pod in ImagePullBackOff after deploy", "kubectl");
        let b = ep("pod in CrashLoopBackOff after deploy", "kubectl");
        let (da, db) = (Doc::new(a.goal()), Doc::new(b.goal()));
        let c = |e, d, sim, h| Candidate {
            episode: e,
            embedding: &[],
            doc: d,
            captured_at: now,
            similarity: sim,
            helpful: h,
            unhelpful: 0,
        };
        let s = RankSettings::default();
        let ctx = QueryContext::default();
        let r = rank(
            "ImagePullBackOff",
            &[],
            &ctx,
            &[c(&b, &db, 0.71, 0), c(&a, &da, 0.70, 0)],
            &s,
            now,
        );
        assert_eq!(r[0].index, 1, "{r:?}");
        // Feedback alone reorders equal candidates.
        let r = rank(
            "after deploy",
            &[],
            &ctx,
            &[c(&a, &da, 0.7, 0), c(&b, &db, 0.7, 9)],
            &s,
            now,
        );
        assert_eq!(r[0].index, 1);
        assert!(r[0].parts.usage > 0.0);
    }

    #[test]
    fn context_tool_mismatch_lowers_and_hard_keys_exclude() {
        let now = OffsetDateTime::now_utc();
        let a = ep("deploy failed", "helm");
        let d = Doc::new(a.goal());
        let cand = [Candidate {
            episode: &a,
            embedding: &[],
            doc: &d,
            captured_at: now,
            similarity: 0.8,
            helpful: 0,
            unhelpful: 0,
        }];
        let s = RankSettings::default();
        let neutral = rank("deploy", &[], &QueryContext::default(), &cand, &s, now)[0].score;
        let other_tool = QueryContext {
            tool: Some("terraform".into()),
            ..Default::default()
        };
        let lowered = rank("deploy", &[], &other_tool, &cand, &s, now)[0].score;
        assert!(lowered < neutral);
    }
}

#[cfg(test)]
mod expansion_tests {
    use super::*;
    use common::EpisodeFields;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn expansion_pulls_up_the_neighbours_of_the_best_match() {
        let now = OffsetDateTime::now_utc();
        let e = Episode::parse(EpisodeFields {
            goal: Some("g".into()),
            ..Default::default()
        })
        .expect("valid in this test");
        let d = Doc::new("g");
        let query = unit(&[1.0, 0.0, 0.0]);
        // `best` matches the query; `sibling` is close to `best` but less to the query;
        // `other` is as close to the query as `sibling` but in another direction.
        let best = unit(&[0.9, 0.44, 0.0]);
        let sibling = unit(&[0.6, 0.8, 0.0]);
        let other = unit(&[0.6, 0.0, 0.8]);
        let dot = |a: &[f32]| common::embedding::dot(&query, a);
        let c = |emb: &'static [f32], sim: f32| Candidate {
            episode: &e,
            embedding: emb,
            doc: &d,
            captured_at: now,
            similarity: sim,
            helpful: 0,
            unhelpful: 0,
        };
        let (best, sibling, other): (&'static [f32], &'static [f32], &'static [f32]) = (
            Box::leak(best.into_boxed_slice()),
            Box::leak(sibling.into_boxed_slice()),
            Box::leak(other.into_boxed_slice()),
        );
        let cands = [
            c(other, dot(other)),
            c(sibling, dot(sibling)),
            c(best, dot(best)),
        ];
        let s = RankSettings {
            expansion_docs: 1,
            ..RankSettings::default()
        };
        let r = rank("q", &query, &QueryContext::default(), &cands, &s, now);
        assert_eq!(r[0].index, 2);
        assert_eq!(r[1].index, 1, "{r:?}");
        let off = RankSettings {
            expansion_docs: 0,
            ..RankSettings::default()
        };
        let r = rank("q", &query, &QueryContext::default(), &cands, &off, now);
        assert_eq!(
            r[1].index, 0,
            "without expansion the tie breaks on input order"
        );
    }
}
