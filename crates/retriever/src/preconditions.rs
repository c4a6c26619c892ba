//! Precondition matching: does what the agent knows about where it is about to act (tool,
//! environment, current state) fit the conditions under which a stored failure happened?
//! Heuristic and pure: no LLM, no IO.
//!
//! An episode's preconditions are its tool chain and its environment entries (the
//! reflection worker adds reflected ones later). Each is compared with the request:
//! `match`, `mismatch`, or `unknown` when the request says nothing (or says `"unknown"`).
//! Versions match on the components the episode states, up to major.minor
//! (`3.14.2` matches `3.14.4`, not `3.15.0`). Keys listed as hard exclude the episode on a
//! mismatch; every other mismatch lowers the score.

use common::Episode;
use common::query::{PreconditionCheck, PreconditionOutcome, QueryContext};

/// The outcome for one episode.
#[derive(Debug, Clone, PartialEq)]
pub struct PreconditionReport {
    pub checks: Vec<PreconditionCheck>,
    /// 0..1; 0.5 when nothing could be compared.
    pub score: f32,
    /// A hard precondition does not hold: the episode does not apply here.
    pub excluded: bool,
}

/// Compares `ctx` with the episode's preconditions. `hard_keys` are environment keys whose
/// mismatch excludes the episode (lower-case).
pub fn check(episode: &Episode, ctx: &QueryContext, hard_keys: &[String]) -> PreconditionReport {
    let mut checks = Vec::new();
    if !episode.tool_chain().is_empty() {
        let expected = episode.tool_chain().join(", ");
        let outcome = match &ctx.tool {
            None => PreconditionOutcome::Unknown,
            Some(tool) if episode.tool_chain().iter().any(|t| same_tool(t, tool)) => {
                PreconditionOutcome::Match
            }
            Some(_) => PreconditionOutcome::Mismatch,
        };
        checks.push(PreconditionCheck {
            key: "tool".to_owned(),
            expected,
            actual: ctx.tool.clone(),
            outcome,
            hard: false,
        });
    }
    for (key, expected) in episode.environment() {
        let key_lc = key.to_lowercase();
        let actual = ctx
            .environment
            .get(&key_lc)
            .or_else(|| ctx.current_state.get(&key_lc));
        let outcome = match actual {
            None => PreconditionOutcome::Unknown,
            Some(a) if is_unknown(a) => PreconditionOutcome::Unknown,
            Some(a) if values_match(expected, a) => PreconditionOutcome::Match,
            Some(_) => PreconditionOutcome::Mismatch,
        };
        checks.push(PreconditionCheck {
            key: format!("environment.{key}"),
            expected: expected.clone(),
            actual: actual.cloned(),
            outcome,
            hard: hard_keys.contains(&key_lc),
        });
    }
    let excluded = checks
        .iter()
        .any(|c| c.hard && c.outcome == PreconditionOutcome::Mismatch);
    // The tool counts twice: a different tool is the strongest sign of a different situation.
    let (mut total, mut sum) = (0.0f32, 0.0f32);
    for c in &checks {
        let weight = if c.key == "tool" { 2.0 } else { 1.0 };
        match c.outcome {
            PreconditionOutcome::Match => {
                total += weight;
                sum += weight;
            }
            PreconditionOutcome::Mismatch => total += weight,
            PreconditionOutcome::Unknown => {}
        }
    }
    let score = if total == 0.0 {
        0.5
    } else {
        // Shrunk towards neutral when little could be compared.
        let confidence = total / (total + 1.0);
        0.5 + (sum / total - 0.5) * confidence
    };
    PreconditionReport {
        checks,
        score,
        excluded,
    }
}

/// `docker` and `docker-compose`, `pip` and `pip3` count as the same tool family.
fn same_tool(a: &str, b: &str) -> bool {
    let family = |t: &str| {
        t.trim()
            .to_lowercase()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    a.eq_ignore_ascii_case(b) || family(a) == family(b)
}

fn is_unknown(v: &str) -> bool {
    matches!(
        v.trim().to_lowercase().as_str(),
        "" | "unknown" | "null" | "?" | "n/a"
    )
}

/// Case-insensitive equality; versions (`v1.28.4`, `3.14`) match on the components the
/// expectation states, up to major.minor.
pub fn values_match(expected: &str, actual: &str) -> bool {
    let (e, a) = (expected.trim().to_lowercase(), actual.trim().to_lowercase());
    if e == a {
        return true;
    }
    match (version(&e), version(&a)) {
        (Some(ev), Some(av)) => {
            let n = ev.len().min(av.len()).min(2);
            n > 0 && ev[..n] == av[..n]
        }
        _ => false,
    }
}

fn version(s: &str) -> Option<Vec<u64>> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let parts: Vec<u64> = s
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    (!parts.is_empty()).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    fn episode() -> Episode {
        Episode::parse(EpisodeFields {
            goal: Some("upgrade".into()),
            tool_chain: vec!["helm".into(), "kubectl".into()],
            environment: [
                ("helm".to_owned(), "3.14.2".to_owned()),
                ("cluster".to_owned(), "prod-gke".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .expect("valid in this test")
    }

    fn ctx(tool: Option<&str>, env: &[(&str, &str)]) -> QueryContext {
        QueryContext {
            tool: tool.map(str::to_owned),
            environment: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            current_state: Default::default(),
        }
    }

    #[test]
    fn nothing_known_is_neutral() {
        let r = check(&episode(), &ctx(None, &[]), &[]);
        assert_eq!(r.score, 0.5);
        assert!(!r.excluded);
        assert!(
            r.checks
                .iter()
                .all(|c| c.outcome == PreconditionOutcome::Unknown)
        );
    }

    #[test]
    fn matches_raise_and_mismatches_lower() {
        let good = check(
            &episode(),
            &ctx(Some("helm"), &[("helm", "3.14.4"), ("cluster", "prod-gke")]),
            &[],
        );
        let bad = check(
            &episode(),
            &ctx(Some("terraform"), &[("cluster", "dev-kind")]),
            &[],
        );
        assert!(good.score > 0.8, "{good:?}");
        assert!(bad.score < 0.2, "{bad:?}");
        assert!(!bad.excluded);
    }

    #[test]
    fn hard_keys_exclude() {
        let r = check(
            &episode(),
            &ctx(Some("helm"), &[("cluster", "dev-kind")]),
            &["cluster".to_owned()],
        );
        assert!(r.excluded);
        let unknown = check(
            &episode(),
            &ctx(Some("helm"), &[("cluster", "unknown")]),
            &["cluster".to_owned()],
        );
        assert!(!unknown.excluded);
    }

    #[test]
    fn versions_match_to_major_minor() {
        assert!(values_match("3.14.2", "3.14.4"));
        assert!(values_match("v1.28", "1.28.4"));
        assert!(!values_match("3.14.2", "3.15.0"));
        assert!(values_match("Ubuntu-22.04", "ubuntu-22.04"));
        assert!(!values_match("ubuntu-22.04", "ubuntu-24.04"));
        assert!(same_tool("docker", "docker-compose"));
        assert!(same_tool("pip", "pip3"));
        assert!(!same_tool("helm", "kubectl"));
    }
}
