//! The scores of docs/EVALUATION.md, as pure functions (the set's README defines them).

use std::collections::BTreeMap;

pub const DECISIONS: [&str; 4] = ["block", "rewrite", "hint", "proceed"];

/// One answered search query.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub kind: String,
    pub filtered: bool,
    /// Relevant dataset ids, most relevant first (empty: nothing stored answers it).
    pub relevant: Vec<String>,
    /// Returned dataset ids, best first.
    pub returned: Vec<String>,
    /// The highest similarity among the returned hits (0 when none).
    pub top_similarity: f32,
}

/// recall@5 of one answerable query.
pub fn recall_at_5(q: &QueryOutcome) -> f64 {
    let hit = q
        .returned
        .iter()
        .take(5)
        .filter(|id| q.relevant.contains(id))
        .count();
    hit as f64 / q.relevant.len().min(5) as f64
}

/// Reciprocal rank of the first relevant result within the top 10 (0 if none).
pub fn rr_at_10(q: &QueryOutcome) -> f64 {
    q.returned
        .iter()
        .take(10)
        .position(|id| q.relevant.contains(id))
        .map_or(0.0, |p| 1.0 / (p + 1) as f64)
}

/// Mean recall@5 and MRR@10 over the answerable queries selected by `pick`.
pub fn search_scores(
    qs: &[QueryOutcome],
    pick: impl Fn(&QueryOutcome) -> bool,
) -> (f64, f64, usize) {
    let sel: Vec<&QueryOutcome> = qs
        .iter()
        .filter(|q| !q.relevant.is_empty() && pick(q))
        .collect();
    if sel.is_empty() {
        return (0.0, 0.0, 0);
    }
    let n = sel.len() as f64;
    (
        sel.iter().map(|q| recall_at_5(q)).sum::<f64>() / n,
        sel.iter().map(|q| rr_at_10(q)).sum::<f64>() / n,
        sel.len(),
    )
}

/// At threshold `tau` (a query "returns no result" when no hit has similarity ≥ tau):
/// (no-result precision, no-result recall, recall@5 of the answerable queries).
pub fn no_result(qs: &[QueryOutcome], tau: f32) -> (f64, f64, f64) {
    let empty = |q: &QueryOutcome| q.top_similarity < tau;
    let no_result = qs.iter().filter(|q| empty(q)).count();
    let correct = qs
        .iter()
        .filter(|q| empty(q) && q.relevant.is_empty())
        .count();
    let unanswerable = qs.iter().filter(|q| q.relevant.is_empty()).count();
    let answerable: Vec<&QueryOutcome> = qs.iter().filter(|q| !q.relevant.is_empty()).collect();
    let recall = answerable
        .iter()
        .map(|q| if empty(q) { 0.0 } else { recall_at_5(q) })
        .sum::<f64>()
        / answerable.len().max(1) as f64;
    (
        if no_result == 0 {
            1.0
        } else {
            correct as f64 / no_result as f64
        },
        correct as f64 / unanswerable.max(1) as f64,
        recall,
    )
}

/// Gate results: the confusion matrix (expected → predicted → count).
#[derive(Debug, Clone, Default)]
pub struct Confusion(pub BTreeMap<String, BTreeMap<String, usize>>);

impl Confusion {
    pub fn add(&mut self, expected: &str, predicted: &str) {
        *self
            .0
            .entry(expected.to_owned())
            .or_default()
            .entry(predicted.to_owned())
            .or_default() += 1;
    }

    pub fn get(&self, expected: &str, predicted: &str) -> usize {
        self.0
            .get(expected)
            .and_then(|r| r.get(predicted))
            .copied()
            .unwrap_or(0)
    }

    fn row(&self, expected: &str) -> usize {
        self.0.get(expected).map_or(0, |r| r.values().sum())
    }

    pub fn total(&self) -> usize {
        self.0.values().flat_map(|r| r.values()).sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: usize = DECISIONS.iter().map(|d| self.get(d, d)).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// The definition: block or rewrite where proceed was expected.
    pub fn false_block(&self) -> f64 {
        (self.get("proceed", "block") + self.get("proceed", "rewrite")) as f64
            / self.row("proceed").max(1) as f64
    }

    /// The set README's definition: block where proceed or hint was expected.
    pub fn false_block_readme(&self) -> f64 {
        (self.get("proceed", "block") + self.get("hint", "block")) as f64
            / (self.row("proceed") + self.row("hint")).max(1) as f64
    }

    /// Proceed where block was expected.
    pub fn missed_block(&self) -> f64 {
        self.get("block", "proceed") as f64 / self.row("block").max(1) as f64
    }

    /// Total cost under the README's suggested cost matrix, per probe.
    pub fn mean_cost(&self) -> f64 {
        const COST: [[usize; 4]; 4] = [[0, 1, 3, 5], [1, 0, 2, 3], [4, 1, 0, 1], [5, 2, 1, 0]];
        let mut cost = 0;
        for (i, e) in DECISIONS.iter().enumerate() {
            for (j, p) in DECISIONS.iter().enumerate() {
                cost += COST[i][j] * self.get(e, p);
            }
        }
        cost as f64 / self.total().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(relevant: &[&str], returned: &[&str], sim: f32) -> QueryOutcome {
        QueryOutcome {
            kind: "k".into(),
            filtered: false,
            relevant: relevant.iter().map(|s| (*s).to_owned()).collect(),
            returned: returned.iter().map(|s| (*s).to_owned()).collect(),
            top_similarity: sim,
        }
    }

    #[test]
    fn search_metrics() {
        let a = q(&["a", "b"], &["x", "a", "y", "z", "w", "b"], 0.8);
        assert_eq!(recall_at_5(&a), 0.5);
        assert_eq!(rr_at_10(&a), 0.5);
        let none = q(&[], &["x"], 0.2);
        let (r, m, n) = search_scores(&[a.clone(), none.clone()], |_| true);
        assert_eq!((r, m, n), (0.5, 0.5, 1));
        let (p, rec, ans) = no_result(&[a, none], 0.5);
        assert_eq!((p, rec, ans), (1.0, 1.0, 0.5));
    }

    #[test]
    fn gate_metrics() {
        let mut c = Confusion::default();
        c.add("proceed", "proceed");
        c.add("proceed", "rewrite");
        c.add("block", "proceed");
        c.add("block", "block");
        assert_eq!(c.accuracy(), 0.5);
        assert_eq!(c.false_block(), 0.5);
        assert_eq!(c.missed_block(), 0.5);
        assert_eq!(c.false_block_readme(), 0.0);
        assert_eq!(c.mean_cost(), (2 + 5) as f64 / 4.0);
    }
}
