//! The text an episode is embedded as (documented in docs/EMBEDDING.md).
//!
//! The model reads at most 256 tokens, so the order is by importance and the error trace is
//! condensed to its informative lines:
//!
//! ```text
//! <goal>
//! Fix: <resolution>
//! Error: <condensed error trace>
//! Steps: <actions taken, "; "-separated>
//! Tags: <tags>
//! ```
//!
//! Condensing the trace: ANSI escapes are removed, whitespace collapsed, repeated lines and
//! stack-frame lines (beyond the first two) dropped, and lines naming an error ("error",
//! "failed", "denied", "not found", …) are kept first, up to [`TRACE_BUDGET`] bytes, in
//! their original order. The resolution comes second because it names the root cause in
//! plain words ("the token was read-only", "the selector is immutable"), which is how agents
//! describe a failure when they search; on the evaluation set this order beats
//! goal–error–steps (recall@5 0.89 → 0.91 with lexical re-ranking; docs/RETRIEVAL.md).

use std::collections::HashSet;

use common::Episode;

/// Bytes of condensed error trace kept.
pub const TRACE_BUDGET: usize = 500;
/// Bytes of actions kept.
pub const ACTIONS_BUDGET: usize = 300;
/// Bytes of resolution kept.
pub const RESOLUTION_BUDGET: usize = 600;

const SIGNAL_WORDS: [&str; 16] = [
    "error",
    "fail",
    "denied",
    "not found",
    "cannot",
    "can't",
    "unable",
    "invalid",
    "refused",
    "timeout",
    "timed out",
    "forbidden",
    "unauthorized",
    "exception",
    "panic",
    "conflict",
];

/// The text embedded for an episode.
pub fn episode_text(episode: &Episode) -> String {
    let mut out = String::with_capacity(2048);
    out.push_str(episode.goal().trim());
    if let Some(fix) = episode.resolution().map(collapse_whitespace)
        && !fix.is_empty()
    {
        out.push_str("\nFix: ");
        out.push_str(&clip(&fix, RESOLUTION_BUDGET));
    }
    let trace = condense_trace(episode.error_trace(), TRACE_BUDGET);
    if !trace.is_empty() {
        out.push_str("\nError: ");
        out.push_str(&trace);
    }
    if !episode.actions_taken().is_empty() {
        let actions = episode
            .actions_taken()
            .iter()
            .map(|a| collapse_whitespace(a))
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str("\nSteps: ");
        out.push_str(&clip(&actions, ACTIONS_BUDGET));
    }
    if !episode.tags().is_empty() {
        out.push_str("\nTags: ");
        out.push_str(&episode.tags().join(", "));
    }
    out
}

/// The informative lines of an error trace, at most `budget` bytes.
pub fn condense_trace(trace: &str, budget: usize) -> String {
    let mut seen = HashSet::new();
    let mut frames = 0usize;
    let lines: Vec<String> = strip_ansi(trace)
        .lines()
        .map(collapse_whitespace)
        .filter(|l| !l.is_empty())
        .filter(|l| seen.insert(l.clone()))
        .filter(|l| {
            if is_stack_frame(l) {
                frames += 1;
                frames <= 2
            } else {
                true
            }
        })
        .collect();
    let signal: Vec<bool> = lines.iter().map(|l| has_signal(l)).collect();
    // How many bytes of each line are kept (0 = dropped).
    let mut keep = vec![0usize; lines.len()];
    let mut used = 0usize;
    // Error lines first, then the rest, each in original order, within the budget. A line
    // that does not fit keeps its head if at least a quarter of the budget is left.
    for pass in [true, false] {
        for (i, line) in lines.iter().enumerate() {
            if keep[i] > 0 || signal[i] != pass {
                continue;
            }
            let left = budget.saturating_sub(used);
            let cost = line.len() + 3;
            if cost <= left {
                keep[i] = line.len();
                used += cost;
            } else if left >= budget / 4 {
                keep[i] = left - 3;
                used = budget;
            }
        }
    }
    let kept: Vec<String> = lines
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k > 0)
        .map(|(l, k)| clip(l, *k))
        .collect();
    clip(&kept.join(" | "), budget)
}

fn has_signal(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    SIGNAL_WORDS.iter().any(|w| lower.contains(w))
}

fn is_stack_frame(line: &str) -> bool {
    line.starts_with("at ")
        || line.starts_with("File \"")
        || (line.starts_with('#') && line[1..].starts_with(|c: char| c.is_ascii_digit()))
        || line.starts_with("frame #")
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// At most `max` bytes, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    common::episode::truncate_to(s.to_owned(), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    fn episode(trace: &str) -> Episode {
        Episode::parse(EpisodeFields {
            goal: Some("Deploy the api".into()),
            error_trace: trace.into(),
            error_class: Some("permission_error".into()),
            tool_chain: vec!["kubectl".into(), "helm".into()],
            actions_taken: vec!["kubectl   apply -f x.yaml".into()],
            tags: vec!["rbac".into()],
            resolution: Some("Granted   the role.".into()),
            ..Default::default()
        })
        .expect("valid")
    }

    #[test]
    fn composition_orders_fields() {
        let text = episode_text(&episode("Error from server (Forbidden): nope"));
        assert!(
            text.starts_with("Deploy the api\nFix: Granted the role.\n"),
            "{text}"
        );
        assert!(text.contains("\nError: Error from server (Forbidden): nope\n"));
        assert!(text.contains("Steps: kubectl apply -f x.yaml"));
        assert!(text.ends_with("Tags: rbac"));
    }

    #[test]
    fn condensing_prefers_error_lines_and_drops_noise() {
        let mut trace = String::from("\u{1b}[31mERROR\u{1b}[0m: build failed\n");
        for i in 0..200 {
            trace.push_str(&format!("    at com.acme.Foo.bar(Foo.java:{i})\n"));
        }
        trace.push_str("noise line\nnoise line\n");
        trace.push_str(&"x".repeat(2000));
        trace.push_str("\nCaused by: permission denied on /var/run/docker.sock\n");
        let c = condense_trace(&trace, TRACE_BUDGET);
        assert!(c.len() <= TRACE_BUDGET);
        assert!(c.starts_with("ERROR: build failed"));
        assert!(c.contains("permission denied on /var/run/docker.sock"));
        assert_eq!(c.matches("Foo.java").count(), 2);
        assert_eq!(c.matches("noise line").count(), 1);
        assert!(!c.contains('\u{1b}'));
    }

    #[test]
    fn long_single_line_keeps_its_head() {
        let c = condense_trace(&"é".repeat(5000), 100);
        assert!(!c.is_empty() && c.len() <= 100);
    }

    #[test]
    fn empty_trace_is_omitted() {
        assert!(!episode_text(&episode("")).contains("Error:"));
    }
}
