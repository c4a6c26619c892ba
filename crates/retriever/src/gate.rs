//! The gate: block / rewrite / hint / proceed from the ranked matches of a proposed action.
//! Deterministic rules on similarity, the kind of command, the stored resolution and what
//! the agent says it knows; thresholds in [`GateSettings`]. Pure.
//!
//! In order (docs/RETRIEVAL.md):
//! 1. no match at or above `relevant_similarity` → **proceed**;
//! 2. a read-only or diagnostic command (`get`, `describe`, `status`, `--dry-run`, …) that is
//!    not destructive → **proceed**;
//! 3. the action is destructive or unsafe (`--force`, `-lock=false`, `force-unlock`,
//!    printing a private key, …) and a stored failure is relevant → **block**;
//! 4. the best match did not run the same operation (tool and subcommand) → **hint** when
//!    the match is strong, otherwise **proceed**;
//! 5. the agent does not know the state that caused the stored failure (`"unknown"`,
//!    "not checked") → **hint**;
//! 6. every yes/no fact in `current_state` says the cause is absent (`venv_active: true`,
//!    `lock_held: false`; see [`state_polarity`]) → **proceed**: the fix is in place;
//! 7. the stored failure was a permission failure and its fix names no command to run
//!    instead (a grant, a credential, an approval) → **block**;
//! 8. otherwise → **rewrite**, suggesting the stored fix.

use common::Episode;
use common::ErrorClass;
use common::query::{GateRequest, Recommendation};
use serde::Deserialize;

/// Gate thresholds (`EM_RETRIEVER__GATE__*`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Below this similarity nothing stored is relevant.
    pub relevant_similarity: f32,
    /// A match this close that ran a different operation still earns a hint.
    pub strong_similarity: f32,
    /// How many matches the decision considers (and returns).
    pub matches: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            relevant_similarity: 0.55,
            strong_similarity: 0.72,
            matches: 3,
        }
    }
}

/// A ranked match as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub id: &'a str,
    pub episode: &'a Episode,
    pub similarity: f32,
}

/// The decision, before it is dressed as a [`common::query::GateDecision`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub recommendation: Recommendation,
    pub confidence: f32,
    pub rationale: String,
    pub suggested_action: Option<String>,
    /// Indices into the matches the verdict rests on.
    pub cites: Vec<usize>,
}

/// Decides on a proposed action given its matches, best first.
pub fn decide(req: &GateRequest, matches: &[Match<'_>], s: &GateSettings) -> Verdict {
    let action = req.proposed_action.trim();
    let relevant: Vec<usize> = (0..matches.len())
        .filter(|&i| matches[i].similarity >= s.relevant_similarity)
        .collect();
    let Some(&best_i) = relevant.first() else {
        let best = matches.first().map_or(0.0, |m| m.similarity);
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: clamp(1.0 - best),
            rationale: format!(
                "No stored failure is similar to this action (best similarity {best:.2}, threshold {:.2}).",
                s.relevant_similarity
            ),
            suggested_action: None,
            cites: Vec::new(),
        };
    };
    let best = matches[best_i];
    let destructive = is_destructive(action);
    if is_read_only(action) && !destructive {
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: 0.8,
            rationale: format!(
                "`{}` only reads or checks; the closest stored failure ({}) was a different, changing operation.",
                command_words(action).join(" "),
                best.id
            ),
            suggested_action: None,
            cites: vec![best_i],
        };
    }
    if destructive {
        return Verdict {
            recommendation: Recommendation::Block,
            confidence: clamp(best.similarity + 0.1),
            rationale: format!(
                "The action is destructive or unsafe in the light of a stored failure ({}, similarity {:.2}): {}",
                best.id,
                best.similarity,
                lesson(best.episode)
            ),
            suggested_action: first_sentence(best.episode.resolution())
                .map(|r| format!("Do not run it. Instead: {r}")),
            cites: vec![best_i],
        };
    }
    let same_op = relevant
        .iter()
        .copied()
        .find(|&i| same_operation(action, matches[i].episode.actions_taken()));
    let Some(m_i) = same_op else {
        if best.similarity >= s.strong_similarity {
            return Verdict {
                recommendation: Recommendation::Hint,
                confidence: clamp(best.similarity),
                rationale: format!(
                    "A closely related failure is stored ({}, similarity {:.2}): {} It ran a different command, so check whether the same cause applies.",
                    best.id,
                    best.similarity,
                    lesson(best.episode)
                ),
                suggested_action: first_sentence(best.episode.resolution()),
                cites: vec![best_i],
            };
        }
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: clamp(1.0 - best.similarity + 0.2),
            rationale: format!(
                "Stored failures with this tool ({}) ran other operations; none applies to `{}`.",
                best.id,
                command_words(action).join(" ")
            ),
            suggested_action: None,
            cites: vec![best_i],
        };
    };
    let m = matches[m_i];
    let cites = vec![m_i];
    if state_is_uncertain(req) {
        return Verdict {
            recommendation: Recommendation::Hint,
            confidence: clamp(m.similarity),
            rationale: format!(
                "The same operation failed before ({}, similarity {:.2}): {} The current state does not say whether that cause is present; check it first.",
                m.id,
                m.similarity,
                lesson(m.episode)
            ),
            suggested_action: first_sentence(m.episode.resolution()),
            cites,
        };
    }
    if state_polarity(&req.current_state) == Polarity::AllClear {
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: 0.6,
            rationale: format!(
                "The same operation failed before ({}), but the current state says its cause is absent: {}",
                m.id,
                lesson(m.episode)
            ),
            suggested_action: None,
            cites,
        };
    }
    let substitute = suggested_command(m.episode);
    if m.episode.error_class() == ErrorClass::PermissionError && substitute.is_none() {
        return Verdict {
            recommendation: Recommendation::Block,
            confidence: clamp(m.similarity + 0.1),
            rationale: format!(
                "This action failed before under similar conditions ({}, similarity {:.2}) and the fix lay outside the command itself: {}",
                m.id,
                m.similarity,
                lesson(m.episode)
            ),
            suggested_action: first_sentence(m.episode.resolution())
                .map(|r| format!("Do not run it as is. First: {r}")),
            cites,
        };
    }
    Verdict {
        recommendation: Recommendation::Rewrite,
        confidence: clamp(m.similarity),
        rationale: format!(
            "This action failed before ({}, similarity {:.2}): {}",
            m.id,
            m.similarity,
            lesson(m.episode)
        ),
        suggested_action: substitute.or_else(|| first_sentence(m.episode.resolution())),
        cites,
    }
}

fn clamp(x: f32) -> f32 {
    x.clamp(0.0, 1.0)
}

/// "It failed with <class>; what fixed it: <resolution's first sentence>".
fn lesson(e: &Episode) -> String {
    let class = e.error_class().as_str().replace('_', " ");
    match first_sentence(e.resolution()) {
        Some(fix) => format!(
            "it failed with a {class} (goal: {}). What fixed it: {fix}",
            e.goal()
        ),
        None => format!("it failed with a {class} (goal: {}).", e.goal()),
    }
}

/// The leading words of a command: the executable and its subcommands, up to the first
/// flag, path, URL, assignment or quoted argument (at most three), lower-cased; `sudo` and
/// leading `VAR=value` assignments skipped.
pub fn command_words(cmd: &str) -> Vec<String> {
    let mut words = cmd.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if *w == "sudo" || (w.contains('=') && !w.starts_with('-')) {
            words.next();
        } else {
            break;
        }
    }
    let mut out = Vec::new();
    for w in words {
        let stop = w.starts_with('-')
            || w.contains([
                '=', '/', '.', ':', '$', '"', '\'', '@', '|', '&', ';', '<', '>',
            ])
            || w.chars().next().is_some_and(|c| c.is_ascii_digit());
        if stop {
            break;
        }
        out.push(w.to_lowercase());
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// The action runs the same operation as one of the episode's actions: same executable and
/// same subcommand (or both are bare executables).
pub fn same_operation(action: &str, episode_actions: &[String]) -> bool {
    let a = command_words(action);
    if a.is_empty() {
        return false;
    }
    episode_actions.iter().any(|e| {
        let e = command_words(e);
        let common = a.iter().zip(&e).take_while(|(x, y)| x == y).count();
        common >= 2 || (common == 1 && (a.len() == 1 || e.len() == 1))
    })
}

const READ_ONLY: [&str; 36] = [
    "get",
    "describe",
    "logs",
    "log",
    "status",
    "list",
    "ls",
    "show",
    "version",
    "help",
    "output",
    "validate",
    "template",
    "lint",
    "diff",
    "current",
    "history",
    "heads",
    "check",
    "top",
    "explain",
    "whoami",
    "info",
    "inspect",
    "vet",
    "view",
    "search",
    "events",
    "print",
    "config-get",
    "why",
    "outdated",
    "audit",
    "tree",
    "api-resources",
    "auth-can-i",
];

/// Reads or checks without changing anything.
pub fn is_read_only(cmd: &str) -> bool {
    let lc = cmd.to_lowercase();
    if lc.contains("--dry-run") || lc.contains(" --version") || lc.ends_with(" -v") {
        return true;
    }
    let words = command_words(cmd);
    match words.as_slice() {
        [] => false,
        [_] => ["-v", "--version", "--help"]
            .iter()
            .any(|f| lc.split_whitespace().nth(1) == Some(*f)),
        [_, rest @ ..] => rest.iter().take(2).any(|w| READ_ONLY.contains(&w.as_str())),
    }
}

const DESTRUCTIVE: [&str; 16] = [
    "--force",
    "push -f",
    "reset --hard",
    "migrate reset",
    "-lock=false",
    "stricthostkeychecking=no",
    "drop database",
    "drop table",
    "rm -rf",
    "--no-verify",
    "chmod 777",
    "--insecure",
    "stop-writes-on-bgsave-error no",
    "--skip-tls-verify",
    "force-unlock",
    "--accept-data-loss",
];

/// Destructive, or unsafe enough that a stored failure makes it a block.
pub fn is_destructive(cmd: &str) -> bool {
    let lc = cmd.to_lowercase();
    DESTRUCTIVE.iter().any(|p| lc.contains(p))
        || ((lc.contains("cat ") || lc.contains("echo ")) && lc.contains("id_rsa"))
        || (lc.contains("cat ") && lc.contains(".pem"))
}

/// The agent says it does not know the state the stored failure depended on.
pub fn state_is_uncertain(req: &GateRequest) -> bool {
    let unknown_value = req
        .current_state
        .values()
        .any(|v| v.trim().eq_ignore_ascii_case("unknown"));
    let ctx = req.context.to_lowercase();
    unknown_value
        || [
            "not checked",
            "unknown",
            "nobody knows",
            "not verified",
            "unclear",
            "has not been checked",
            "hasn't been checked",
            "not sure",
        ]
        .iter()
        .any(|p| ctx.contains(p))
}

/// What the yes/no facts of `current_state` say about the usual causes of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// At least one fact points at a problem (`lock_held: true`, `prefix_writable: false`).
    Problem,
    /// Every yes/no fact says things are fine (`venv_active: true`, `lock_held: false`).
    AllClear,
    /// No yes/no facts.
    Silent,
}

/// Words in a state key that make `true` bad news.
const BAD_WORDS: [&str; 44] = [
    "lock",
    "held",
    "expired",
    "revoked",
    "protected",
    "failed",
    "fail",
    "error",
    "errors",
    "missing",
    "conflict",
    "conflicts",
    "stale",
    "dirty",
    "behind",
    "inactive",
    "denied",
    "inspection",
    "leak",
    "leaked",
    "orphaned",
    "pending",
    "running",
    "exceeded",
    "broken",
    "unstaged",
    "uncommitted",
    "outdated",
    "mismatch",
    "duplicate",
    "duplicates",
    "tainted",
    "changed",
    "use",
    "full",
    "managed",
    "private",
    "limited",
    "throttled",
    "blocked",
    "locked",
    "corrupt",
    "corrupted",
    "unhealthy",
];

/// Reads the yes/no facts of a state: a key whose words name a problem (`lock_held`,
/// `token_expired`) is bad news when true; any other yes/no key (`venv_active`,
/// `prefix_writable`) is bad news when false. Other values are not judged.
pub fn state_polarity(state: &std::collections::BTreeMap<String, String>) -> Polarity {
    let (mut problems, mut clear) = (0, 0);
    for (key, value) in state {
        let truth = match value.trim().to_lowercase().as_str() {
            "true" | "yes" => true,
            "false" | "no" => false,
            _ => continue,
        };
        let bad_key = key
            .to_lowercase()
            .split(['_', '-', '.'])
            .any(|w| BAD_WORDS.contains(&w));
        if truth == bad_key {
            problems += 1;
        } else {
            clear += 1;
        }
    }
    match (problems, clear) {
        (0, 0) => Polarity::Silent,
        (0, _) => Polarity::AllClear,
        _ => Polarity::Problem,
    }
}

/// The first command quoted in backticks in the resolution.
pub fn suggested_command(e: &Episode) -> Option<String> {
    let r = e.resolution()?;
    r.split('`')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .find(|c| c.contains(' ') && c.len() <= 400)
        .map(str::to_owned)
}

/// The first sentence (at most 300 bytes).
pub fn first_sentence(text: Option<&str>) -> Option<String> {
    let text = text?.trim();
    if text.is_empty() {
        return None;
    }
    let mut end = text.len();
    let bytes = text.as_bytes();
    let mut in_code = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'`' {
            in_code = !in_code;
        }
        if !in_code && b == b'.' && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            end = i + 1;
            break;
        }
    }
    let mut s = &text[..end];
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s = &s[..cut];
    }
    Some(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EpisodeFields;

    fn ep(action: &str, class: &str, resolution: &str) -> Episode {
        Episode::parse(EpisodeFields {
            goal: Some("goal".into()),
            actions_taken: vec![action.into()],
            error_class: Some(class.into()),
            resolution: Some(resolution.into()),
            ..Default::default()
        })
        .expect("valid in this test")
    }

    fn req(action: &str, context: &str, state: &[(&str, &str)]) -> GateRequest {
        GateRequest {
            proposed_action: action.into(),
            goal: String::new(),
            context: context.into(),
            tool: None,
            current_state: state
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            environment: Default::default(),
        }
    }

    fn decide_one(r: &GateRequest, e: &Episode, sim: f32) -> Verdict {
        decide(
            r,
            &[Match {
                id: "ep-1",
                episode: e,
                similarity: sim,
            }],
            &GateSettings::default(),
        )
    }

    #[test]
    fn command_words_stop_at_arguments() {
        assert_eq!(
            command_words("sudo FOO=1 kubectl apply -f x.yaml"),
            ["kubectl", "apply"]
        );
        assert_eq!(
            command_words("helm upgrade api ./chart"),
            ["helm", "upgrade", "api"]
        );
        assert!(same_operation(
            "kubectl apply -f a.yaml",
            &["kubectl apply -f b.yaml".into()]
        ));
        assert!(!same_operation(
            "kubectl get pods",
            &["kubectl apply -f b.yaml".into()]
        ));
        assert!(is_read_only("kubectl get pods -n x"));
        assert!(is_read_only("terraform plan --dry-run"));
        assert!(is_read_only("mvn -v"));
        assert!(!is_read_only("kubectl apply -f x"));
        assert!(is_destructive("git push --force origin main"));
        assert!(is_destructive("terraform apply -lock=false"));
    }

    #[test]
    fn each_rule_fires() {
        let fixable = ep(
            "npm install -D eslint@9",
            "dependency_error",
            "Pinned `npm install -D eslint@8.57.0` until the config supports 9.",
        );
        let outside = ep(
            "npm publish",
            "permission_error",
            "The token was read-only; created an automation token with publish rights.",
        );
        // 1. nothing similar.
        let v = decide_one(&req("npm install -D eslint@9", "", &[]), &fixable, 0.3);
        assert_eq!(v.recommendation, Recommendation::Proceed);
        assert!(v.cites.is_empty());
        // 2. read-only.
        let v = decide_one(&req("npm ls eslint", "", &[]), &fixable, 0.8);
        assert_eq!(v.recommendation, Recommendation::Proceed);
        // 3. different operation, strong match → hint; weak → proceed.
        let v = decide_one(&req("npm ci", "", &[]), &fixable, 0.8);
        assert_eq!(v.recommendation, Recommendation::Hint);
        let v = decide_one(&req("npm ci", "", &[]), &fixable, 0.6);
        assert_eq!(v.recommendation, Recommendation::Proceed);
        // 4. unknown state → hint.
        let v = decide_one(
            &req("npm install -D eslint@9", "", &[("peer", "unknown")]),
            &fixable,
            0.8,
        );
        assert_eq!(v.recommendation, Recommendation::Hint);
        // 5. outside remedy → block, citing the episode.
        let v = decide_one(&req("npm publish --access public", "", &[]), &outside, 0.8);
        assert_eq!(v.recommendation, Recommendation::Block);
        assert!(v.rationale.contains("ep-1"));
        // The state says the cause is gone → proceed.
        let v = decide_one(
            &req(
                "npm install -D eslint@9",
                "",
                &[("flat_config", "true"), ("lock_held", "false")],
            ),
            &fixable,
            0.8,
        );
        assert_eq!(v.recommendation, Recommendation::Proceed);
        // Destructive with a relevant failure → block even as a different operation.
        let v = decide_one(&req("npm publish --force", "", &[]), &fixable, 0.6);
        assert_eq!(v.recommendation, Recommendation::Block);
        // 6. rewrite with the stored command.
        let v = decide_one(&req("npm install -D eslint@9", "", &[]), &fixable, 0.8);
        assert_eq!(v.recommendation, Recommendation::Rewrite);
        assert_eq!(
            v.suggested_action.as_deref(),
            Some("npm install -D eslint@8.57.0")
        );
    }

    #[test]
    fn state_polarity_reads_yes_no_facts() {
        let state = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            state_polarity(&state(&[("venv_active", "true")])),
            Polarity::AllClear
        );
        assert_eq!(
            state_polarity(&state(&[("lock_held", "false")])),
            Polarity::AllClear
        );
        assert_eq!(
            state_polarity(&state(&[("lock_held", "true")])),
            Polarity::Problem
        );
        assert_eq!(
            state_polarity(&state(&[
                ("prefix_writable", "false"),
                ("venv_active", "true")
            ])),
            Polarity::Problem
        );
        assert_eq!(
            state_polarity(&state(&[("replicas", "6")])),
            Polarity::Silent
        );
    }

    #[test]
    fn first_sentence_skips_dots_in_code() {
        assert_eq!(
            first_sentence(Some("Ran `kubectl apply -f a.yaml`. Then waited.")).as_deref(),
            Some("Ran `kubectl apply -f a.yaml`.")
        );
        assert_eq!(first_sentence(Some("  ")), None);
    }
}
