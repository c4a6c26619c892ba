//! Lexical scoring: BM25 over the candidate episodes of one query.
//!
//! Embeddings blur exact error strings (`ERESOLVE`, `ImagePullBackOff`, `E0433`,
//! `externally-managed-environment`); a lexical score on the episode's words brings them
//! back. It is computed over the vector store's candidates only — the document frequencies
//! come from those candidates — so the retriever needs no global inverted index, and a
//! term that separates similar episodes weighs most. Pure functions.

use std::collections::HashMap;

/// Words that carry no signal in error reports.
const STOP: [&str; 40] = [
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "is", "was", "were",
    "be", "been", "it", "this", "that", "as", "at", "by", "from", "not", "no", "but", "are", "has",
    "have", "had", "into", "when", "then", "than", "so", "if", "its", "can", "do", "does",
];

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Lower-cased terms of `text`: every alphanumeric run, plus each compound token
/// (`ERR_PNPM_PEER_DEP_ISSUES`, `run.googleapis.com`, `app/v1:latest`) whole, so an exact
/// identifier matches as one rare term.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for compound in text
        .split(|c: char| !(c.is_alphanumeric() || "._-/:@".contains(c)))
        .filter(|s| !s.is_empty())
    {
        let compound = compound.trim_matches(|c: char| "._-/:@".contains(c));
        let parts: Vec<&str> = compound
            .split(|c: char| !c.is_alphanumeric())
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() > 1 && compound.len() <= 64 {
            out.push(compound.to_lowercase());
        }
        for part in parts {
            let part = part.to_lowercase();
            if part.chars().count() > 1 && part.len() <= 40 && !STOP.contains(&part.as_str()) {
                out.push(part);
            }
        }
    }
    out
}

/// Term frequencies of one document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    tf: HashMap<String, u32>,
    len: u32,
}

impl Doc {
    pub fn new(text: &str) -> Self {
        let mut tf = HashMap::new();
        let mut len = 0;
        for t in terms(text) {
            *tf.entry(t).or_insert(0) += 1;
            len += 1;
        }
        Self { tf, len }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// BM25 scores of `query` against each of `docs` (document frequencies from `docs`),
/// divided by the best score so the result is in 0..=1 (all zero when nothing matches).
pub fn bm25_normalised(query: &str, docs: &[&Doc]) -> Vec<f32> {
    let n = docs.len();
    if n == 0 {
        return Vec::new();
    }
    let mut query_terms = terms(query);
    query_terms.sort();
    query_terms.dedup();
    let avg_len = docs.iter().map(|d| d.len as f32).sum::<f32>() / n as f32;
    let avg_len = avg_len.max(1.0);
    let idf: Vec<f32> = query_terms
        .iter()
        .map(|t| {
            let df = docs.iter().filter(|d| d.tf.contains_key(t)).count() as f32;
            // +1 smoothing keeps the IDF positive even for a term every candidate has.
            (1.0 + (n as f32 - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    let scores: Vec<f32> = docs
        .iter()
        .map(|d| {
            query_terms
                .iter()
                .zip(&idf)
                .map(|(t, idf)| {
                    let f = *d.tf.get(t).unwrap_or(&0) as f32;
                    if f == 0.0 {
                        0.0
                    } else {
                        idf * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * d.len as f32 / avg_len))
                    }
                })
                .sum()
        })
        .collect();
    let best = scores.iter().copied().fold(0.0f32, f32::max);
    if best <= 0.0 {
        return vec![0.0; n];
    }
    scores.into_iter().map(|s| s / best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_identifiers_are_kept_whole_and_split() {
        let t = terms("npm ERR! code ERESOLVE while resolving run.googleapis.com");
        assert!(t.contains(&"eresolve".to_owned()));
        assert!(t.contains(&"run.googleapis.com".to_owned()));
        assert!(t.contains(&"googleapis".to_owned()));
        assert!(!terms("the a of").iter().any(|w| w == "the"));
    }

    #[test]
    fn rare_exact_terms_win() {
        let a = Doc::new("pod stuck in ImagePullBackOff: pull access denied");
        let b = Doc::new("pod stuck in CrashLoopBackOff: exit code 1");
        let c = Doc::new("deployment rollout finished");
        let s = bm25_normalised("ImagePullBackOff on the new pod", &[&a, &b, &c]);
        assert_eq!(s[0], 1.0);
        assert!(s[1] < 0.5, "{s:?}");
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn no_overlap_is_all_zero() {
        let a = Doc::new("alpha beta");
        assert_eq!(bm25_normalised("gamma", &[&a]), vec![0.0]);
        assert!(bm25_normalised("gamma", &[]).is_empty());
    }
}
