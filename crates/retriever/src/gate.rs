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

use crate::lesson::{Lesson, Situation};

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
    /// Words of the agent's context and state that a stored failure's circumstances must
    /// share for its lesson to apply to a different command.
    pub situation_matches: usize,
    /// At or below this many shared words, the same operation is judged to run outside the
    /// stored failure's circumstances (proceed, unless the state shows a problem).
    pub situation_absent: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            relevant_similarity: 0.55,
            strong_similarity: 0.72,
            matches: 3,
            situation_matches: 4,
            situation_absent: 1,
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
    // How much of the agent's situation each match's circumstances share, computed once.
    let agent = Situation::of(action, &req.context, &req.current_state);
    let situations: Vec<usize> = matches.iter().map(|m| agent.overlap(m.episode)).collect();
    let situation = |i: usize| situations[i];
    let relevant: Vec<usize> = (0..matches.len())
        .filter(|&i| matches[i].similarity >= s.relevant_similarity)
        .collect();
    let Some(&best_i) = relevant.first() else {
        // Less similar, but the agent does not know a fact a stored failure with its
        // circumstances depended on: go ahead, carefully.
        if state_is_uncertain(req)
            && let Some(i) = (0..matches.len()).find(|&i| situation(i) > s.situation_absent)
        {
            let m = matches[i];
            return Verdict {
                recommendation: Recommendation::Hint,
                confidence: clamp(m.similarity),
                rationale: format!(
                    "A stored failure in similar circumstances ({}, similarity {:.2}) depended on something the current state does not know: {} Check it first.",
                    m.id,
                    m.similarity,
                    lesson(m.episode)
                ),
                suggested_action: first_sentence(m.episode.resolution()),
                cites: vec![i],
            };
        }
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
    let lessons: Vec<(usize, Lesson)> = relevant
        .iter()
        .map(|&i| {
            (
                i,
                Lesson::parse(matches[i].episode.resolution().unwrap_or("")),
            )
        })
        .collect();
    if let Some((i, warned)) = lessons.iter().find_map(|(i, l)| {
        let w = l.warned_tokens(action, matches[*i].episode.actions_taken());
        (!w.is_empty()).then_some((*i, w))
    }) {
        let m = matches[i];
        let deletes = command_words(action)
            .iter()
            .any(|w| ["rm", "delete", "drop", "prune", "purge"].contains(&w.as_str()));
        let recommendation = if deletes {
            Recommendation::Block
        } else {
            Recommendation::Rewrite
        };
        return Verdict {
            recommendation,
            confidence: clamp(m.similarity + 0.1),
            rationale: format!(
                "A stored failure ({}, similarity {:.2}) warns against this (`{}`): {}",
                m.id,
                m.similarity,
                warned.join("`, `"),
                lesson(m.episode)
            ),
            suggested_action: suggested_command(m.episode)
                .or_else(|| first_sentence(m.episode.resolution())),
            cites: vec![i],
        };
    }
    if !destructive
        && !operation_running(req)
        && let Some(&(i, _)) = lessons.iter().find(|(i, l)| {
            let failed = matches[*i].episode.actions_taken();
            l.applied_by(action, failed) && l.warned_tokens(action, failed).is_empty()
        })
    {
        let m = matches[i];
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: clamp(m.similarity),
            rationale: format!(
                "This is what fixed a stored failure ({}, similarity {:.2}): {}",
                m.id,
                m.similarity,
                lesson(m.episode)
            ),
            suggested_action: None,
            cites: vec![i],
        };
    }
    // A read-only command that itself failed before, in a situation like this one.
    let failed_itself = relevant
        .iter()
        .any(|&i| only_command_is(action, matches[i].episode.actions_taken()) && situation(i) >= 2);
    if is_read_only(action) && !destructive && !failed_itself {
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
    // The match the lesson comes from: the same operation in a situation like this one;
    // else a different command whose circumstances are the agent's (`kubectl apply` after a
    // `helm upgrade` broke on the same secret); else the same operation.
    let same = |i: usize| same_operation(action, matches[i].episode.actions_taken());
    let same_op = relevant
        .iter()
        .copied()
        .find(|&i| same(i) && situation(i) > s.situation_absent)
        .or_else(|| {
            relevant
                .iter()
                .copied()
                .find(|&i| situation(i) >= s.situation_matches)
        })
        .or_else(|| relevant.iter().copied().find(|&i| same(i)));
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
    // Only when the agent described its situation: saying nothing is not evidence that the
    // stored failure's circumstances are absent.
    let described = !req.context.trim().is_empty() || !req.current_state.is_empty();
    if described
        && situation(m_i) <= s.situation_absent
        && !state_is_uncertain(req)
        && state_polarity(&req.current_state) != Polarity::Problem
    {
        let m = matches[m_i];
        return Verdict {
            recommendation: Recommendation::Proceed,
            confidence: 0.6,
            rationale: format!(
                "The same operation failed before ({}), but nothing in the current context or state resembles that failure's circumstances: {}",
                m.id,
                lesson(m.episode)
            ),
            suggested_action: None,
            cites: vec![m_i],
        };
    }
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
    let problem_shown = state_polarity(&req.current_state) == Polarity::Problem
        || situation(m_i) >= s.situation_matches;
    let substitute = suggested_command(m.episode);
    let why = if operation_running(req) {
        Some("Another operation is still running; wait for it to finish.")
    } else if is_retry(action) && problem_shown {
        Some("Retrying does not change what failed.")
    } else if m.episode.error_class() == ErrorClass::PermissionError && substitute.is_none() {
        Some("The fix lay outside the command itself.")
    } else {
        None
    };
    if let Some(why) = why {
        return Verdict {
            recommendation: Recommendation::Block,
            confidence: clamp(m.similarity + 0.1),
            rationale: format!(
                "{why} This failed before under similar conditions ({}, similarity {:.2}): {}",
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
/// flag, path, URL, assignment or quoted argument (at most four), lower-cased; `sudo` and
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
    let mut out: Vec<String> = Vec::new();
    while let Some(w) = words.next() {
        // `redis-cli -h host INFO`, `kubectl -n ns get`: before the subcommand, a short
        // flag and its value are skipped.
        if out.len() == 1 && ["-h", "-H", "-n", "-C", "-p", "-u"].contains(&w) {
            words.next_if(|v| !v.starts_with('-'));
            continue;
        }
        let stop = w.starts_with('-')
            || w.contains([
                '=', '/', '.', ':', '$', '"', '\'', '@', '|', '&', ';', '<', '>',
            ])
            || w.chars().next().is_some_and(|c| c.is_ascii_digit());
        if stop {
            break;
        }
        out.push(w.to_lowercase());
        // Runners: the command is what they run (`npx prisma migrate status`,
        // `poetry run pytest`, `python -m pip install`).
        let runner = matches!(
            out.as_slice(),
            [r] if ["npx", "pnpx", "bunx"].contains(&r.as_str())
        ) || matches!(
            out.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            ["pnpm" | "bundle", "exec"] | ["poetry" | "uv" | "pipenv", "run"]
        );
        if runner {
            out.clear();
            continue;
        }
        if out.len() == 1 && (out[0] == "python" || out[0] == "python3") {
            if words.next_if(|v| *v == "-m").is_some() {
                out.clear();
            }
            continue;
        }
        if out.len() == 4 {
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

/// The action retries without changing anything: a restart, recreating pods, starting the
/// unit again.
pub fn is_retry(action: &str) -> bool {
    let words = command_words(action);
    let has = |w: &str| words.iter().any(|x| x == w);
    has("restart")
        || (has("delete") && (has("pod") || has("pods") || has("po")))
        || (has("systemctl") && has("start"))
        || has("rerun")
        || has("retry")
}

/// The state says another operation is still running (`lock_holder_active: true`,
/// `helm_process_running: true`): whatever failed because of it must wait.
pub fn operation_running(req: &GateRequest) -> bool {
    req.current_state.iter().any(|(k, v)| {
        let k = k.to_lowercase();
        v.trim().eq_ignore_ascii_case("true")
            && ["running", "active", "in_progress"]
                .iter()
                .any(|w| k.ends_with(w))
            && ["holder", "process", "job", "operation", "apply", "upgrade"]
                .iter()
                .any(|w| k.contains(w))
    })
}

/// The episode ran exactly one command (notes in parentheses aside) and it was this
/// operation: the command itself is what failed, read-only or not.
pub fn only_command_is(action: &str, episode_actions: &[String]) -> bool {
    let mut commands = episode_actions
        .iter()
        .filter(|a| !a.trim_start().starts_with('('));
    match (commands.next(), commands.next()) {
        (Some(only), None) => {
            command_words(action).len() >= 2
                && command_words(only).len() >= 2
                && same_operation(action, std::slice::from_ref(only))
        }
        _ => false,
    }
}

const READ_ONLY: [&str; 37] = [
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
    "fetch",
];

/// Reads or checks without changing anything.
pub fn is_read_only(cmd: &str) -> bool {
    let lc = cmd.to_lowercase();
    let sql_read = [
        "-c \"select ",
        "-c 'select ",
        "-c \"show ",
        "-c 'show ",
        "-c \"explain ",
    ]
    .iter()
    .any(|q| lc.contains(q));
    if lc.contains("--dry-run")
        || lc.contains(" --version")
        || lc.ends_with(" -v")
        || lc.contains(" --list")
        || sql_read
    {
        return true;
    }
    let words = command_words(cmd);
    match words.as_slice() {
        [] => false,
        [_] => ["-v", "--version", "--help"]
            .iter()
            .any(|f| lc.split_whitespace().nth(1) == Some(*f)),
        [_, rest @ ..] => rest.iter().any(|w| READ_ONLY.contains(&w.as_str())),
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
    let lc = cmd.to_lowercase().replace("--force-with-lease", "");
    let prints = [
        "cat ", "echo ", "printf ", "printenv", "head ", "tail ", "less ",
    ]
    .iter()
    .any(|p| lc.contains(p));
    let key_material = [
        "id_rsa",
        "id_ed25519",
        ".pem",
        ".key",
        "private_key",
        "deploy_key",
    ]
    .iter()
    .any(|k| lc.contains(k));
    // Printing key material (not writing it to a file).
    DESTRUCTIVE.iter().any(|p| lc.contains(p)) || (prints && key_material && !lc.contains('>'))
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

/// Words in a state key that make `true` good news.
const GOOD_WORDS: [&str; 29] = [
    "valid",
    "active",
    "installed",
    "exists",
    "exist",
    "enabled",
    "writable",
    "updated",
    "authenticated",
    "sync",
    "synced",
    "found",
    "configured",
    "present",
    "healthy",
    "ready",
    "ok",
    "succeeded",
    "success",
    "matches",
    "allowed",
    "granted",
    "cached",
    "logged",
    "clean",
    "committed",
    "pushed",
    "resolved",
    "reachable",
];

/// Reads the yes/no facts of a state: a key whose words name a problem (`lock_held`,
/// `token_expired`) is bad news when true; a key whose words name a good condition
/// (`venv_active`, `prefix_writable`) is bad news when false. Other keys (`just_rebased`,
/// `uses_openssl_sys`) say nothing by their name and are not judged.
pub fn state_polarity(state: &std::collections::BTreeMap<String, String>) -> Polarity {
    let (mut problems, mut clear) = (0, 0);
    for (key, value) in state {
        let key = key.to_lowercase();
        let words: Vec<&str> = key.split(['_', '-', '.']).collect();
        let bad_key = words.iter().any(|w| BAD_WORDS.contains(w));
        let good_key = words.iter().any(|w| GOOD_WORDS.contains(w));
        let value = value.trim().to_lowercase();
        let truth = match value.as_str() {
            "true" | "yes" => true,
            "false" | "no" => false,
            // A count of something bad (`behind: 2`, `duplicates_remaining: 14`).
            n if bad_key && !good_key => match n.parse::<f64>() {
                Ok(n) => n > 0.0,
                Err(_) => continue,
            },
            _ => continue,
        };
        if bad_key && good_key || (!bad_key && !good_key && truth) {
            continue;
        }
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

/// The first command the resolution quotes as part of the fix (not one it warns against).
pub fn suggested_command(e: &Episode) -> Option<String> {
    Lesson::parse(e.resolution()?)
        .fixes
        .into_iter()
        .find(|c| c.contains(' '))
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
        assert!(!is_destructive("git push --force-with-lease origin feat"));
        assert!(is_destructive("cat /tmp/deploy_key"));
        assert!(!is_destructive("echo \"$KEY\" > /tmp/deploy_key"));
        assert_eq!(
            command_words("redis-cli -h cache-01 INFO memory"),
            ["redis-cli", "info", "memory"]
        );
        assert_eq!(
            command_words("npx prisma migrate status"),
            ["prisma", "migrate", "status"]
        );
        assert_eq!(command_words("python -m pytest -x"), ["pytest"]);
        assert!(is_read_only("npx prisma migrate status"));
        assert!(is_read_only("gcloud run services list --project p"));
        assert!(is_read_only("psql -h db -c \"select 1\""));
        assert!(is_retry("kubectl delete pod -l app=x"));
        assert!(!is_retry("kubectl delete deployment x"));
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
        let v = decide_one(
            &req(
                "npm publish --access public",
                "The token is read-only.",
                &[],
            ),
            &outside,
            0.8,
        );
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
        let pinned = "The config supports 8 until the pinned upgrade.";
        let v = decide_one(&req("npm install -D eslint@9", pinned, &[]), &fixable, 0.8);
        assert_eq!(v.recommendation, Recommendation::Rewrite);
        assert_eq!(
            v.suggested_action.as_deref(),
            Some("npm install -D eslint@8.57.0")
        );
        // Without any context the same operation is not waved through.
        let v = decide_one(&req("npm install -D eslint@9", "", &[]), &fixable, 0.8);
        assert_eq!(v.recommendation, Recommendation::Rewrite);
        // The same operation with nothing of the failure's circumstances → proceed.
        let v = decide_one(
            &req("npm install -D eslint@9", "Monthly review.", &[]),
            &fixable,
            0.8,
        );
        assert_eq!(v.recommendation, Recommendation::Proceed);
    }

    #[test]
    fn lessons_of_the_resolution_decide() {
        let rebased = Episode::parse(EpisodeFields {
            goal: Some("Update the feature branch".into()),
            actions_taken: vec!["git fetch origin".into(), "git rebase origin/main".into()],
            error_trace: "! [rejected] feature/x -> feature/x (non-fast-forward)".into(),
            error_class: Some("validation_error".into()),
            resolution: Some(
                "The rebase rewrote the commits. Following the hint (`git pull`) would have \
                 merged the old commits back in. Used `git push --force-with-lease origin \
                 feature/x`."
                    .into(),
            ),
            ..Default::default()
        })
        .expect("valid in this test");
        let ctx = "Just rebased feature/x; the remote rejected the push as non-fast-forward.";
        // The stored fix itself → proceed (and --force-with-lease is not a destructive force).
        let v = decide_one(
            &req("git push --force-with-lease origin feature/x", ctx, &[]),
            &rebased,
            0.7,
        );
        assert_eq!(v.recommendation, Recommendation::Proceed, "{}", v.rationale);
        // What the lesson warns against → rewrite, suggesting the fix.
        let v = decide_one(&req("git pull origin feature/x", ctx, &[]), &rebased, 0.7);
        assert_eq!(v.recommendation, Recommendation::Rewrite, "{}", v.rationale);
        assert_eq!(
            v.suggested_action.as_deref(),
            Some("git push --force-with-lease origin feature/x")
        );
    }

    #[test]
    fn retries_and_busy_states_block() {
        let pull = ep(
            "kubectl rollout restart deployment/orders -n orders",
            "configuration_error",
            "The namespace had no pull secret; created it with `kubectl create secret docker-registry ghcr-pull -n orders`.",
        );
        let ctx = "Pods are in ImagePullBackOff; the pull secret is missing in the namespace.";
        let v = decide_one(
            &req(
                "kubectl rollout restart deployment/orders -n orders",
                ctx,
                &[("pull_secret_in_namespace", "false")],
            ),
            &pull,
            0.8,
        );
        assert_eq!(v.recommendation, Recommendation::Block, "{}", v.rationale);
        let lock = ep(
            "terraform apply tfplan",
            "resource_error",
            "A teammate was applying; waited for her apply, then ran `terraform plan -lock-timeout=10m -out tfplan`.",
        );
        let v = decide_one(
            &req(
                "terraform apply tfplan",
                "The state lock is held by a teammate's apply.",
                &[("lock_held", "true"), ("lock_holder_active", "true")],
            ),
            &lock,
            0.8,
        );
        assert_eq!(v.recommendation, Recommendation::Block, "{}", v.rationale);
    }

    #[test]
    fn an_unknown_precondition_earns_a_hint_below_the_similarity_bar() {
        let secret = ep(
            "kubectl apply -k overlays/eu",
            "configuration_error",
            "The ExternalSecret pointed at a SecretStore that did not exist in the namespace.",
        );
        let v = decide_one(
            &req(
                "kubectl apply -k overlays/ap",
                "The overlay uses an ExternalSecret.",
                &[("secretstore_exists", "unknown")],
            ),
            &secret,
            0.4,
        );
        assert_eq!(v.recommendation, Recommendation::Hint, "{}", v.rationale);
        let v = decide_one(
            &req("kubectl apply -k overlays/ap", "Routine rollout.", &[]),
            &secret,
            0.4,
        );
        assert_eq!(v.recommendation, Recommendation::Proceed);
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
        // A count of something bad, and names that say nothing.
        assert_eq!(
            state_polarity(&state(&[("behind", "2")])),
            Polarity::Problem
        );
        assert_eq!(
            state_polarity(&state(&[("behind", "0"), ("ahead", "1")])),
            Polarity::AllClear
        );
        assert_eq!(
            state_polarity(&state(&[("just_rebased", "true")])),
            Polarity::Silent
        );
        assert_eq!(
            state_polarity(&state(&[("user_in_docker_group", "false")])),
            Polarity::Problem
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
