//! Reading a stored resolution against a proposed action. Pure.
//!
//! A resolution says what fixed a failure and, often, what *not* to do ("kept frozen-lockfile
//! rather than switching to `--no-frozen-lockfile`", "did not chmod the socket", "following
//! the hint (`git pull`) would have merged the old commits back"). [`Lesson`] splits its words
//! into those said positively (the fix) and those said under a negation (the anti-pattern),
//! and keeps the commands it quotes as fixes, in order. The gate asks two questions with it:
//! does the proposed action *apply the stored fix* ([`Lesson::applied_by`]), and does it
//! *repeat what the lesson warns against* ([`Lesson::warned_tokens`])?

use std::collections::HashSet;

/// Cues that make the rest of their clause a thing not to do.
const TAIL_NEGATIONS: [&str; 4] = ["instead of", "rather than", "in place of", "not by"];

/// Cues that make their whole clause a thing not to do.
const CLAUSE_NEGATIONS: [&str; 12] = [
    "did not",
    "didn't",
    "do not",
    "don't",
    "never ",
    "would have",
    "avoid",
    "no need",
    "not needed",
    "must not",
    "should not",
    "no longer use",
];

/// Words too common to say anything about an action.
const STOP: [&str; 24] = [
    "the", "and", "with", "for", "then", "that", "this", "from", "into", "was", "were", "had",
    "has", "have", "not", "but", "its", "it's", "also", "which", "sudo", "run", "ran", "&&",
];

/// The words of a resolution, split by how they are said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lesson {
    /// Words said as part of the fix.
    pub positive: HashSet<String>,
    /// Words said only under a negation.
    pub negative: HashSet<String>,
    /// Quoted commands said as part of the fix, in order.
    pub fixes: Vec<String>,
}

impl Lesson {
    pub fn parse(resolution: &str) -> Self {
        let mut lesson = Self::default();
        for clause in clauses(resolution) {
            let lc = clause.to_lowercase();
            let negated_from = if CLAUSE_NEGATIONS.iter().any(|c| lc.contains(c)) {
                Some(0)
            } else {
                TAIL_NEGATIONS.iter().filter_map(|c| lc.find(c)).min()
            };
            let (pos, neg) = match negated_from {
                Some(at) => clause.split_at(floor_boundary(clause, at)),
                None => (clause, ""),
            };
            lesson.positive.extend(tokens(pos));
            lesson.negative.extend(tokens(neg));
            lesson.fixes.extend(
                code_spans(pos)
                    .into_iter()
                    .filter(|s| tokens(s).len() >= 2 || s.contains(['@', '/', '='])),
            );
        }
        let positive = lesson.positive.clone();
        lesson.negative.retain(|t| !positive.contains(t));
        lesson
    }

    /// The action applies the first quoted fix: same executable, most of what the fix adds
    /// to the failed commands (every added flag among it) is in the action, and the action
    /// adds little the fix does not say.
    pub fn applied_by(&self, action: &str, failed: &[String]) -> bool {
        let Some(fix) = self.fixes.first() else {
            return false;
        };
        let action_tokens = tokens(action);
        let fix_added = new_tokens(fix, failed);
        if fix_added.is_empty() || action_tokens.is_empty() {
            return false;
        }
        let single = tokens(fix).len() == 1;
        if !single && first_word(fix) != first_word(action) {
            return false;
        }
        let covered = fix_added
            .iter()
            .filter(|t| action_tokens.contains(*t))
            .count();
        let flags_kept = fix_added
            .iter()
            .filter(|t| t.starts_with('-'))
            .all(|t| action_tokens.contains(t));
        let new = new_tokens(action, failed);
        let new_in_fix = new.iter().filter(|t| fix_added.contains(*t)).count();
        let novelty_explained = !new.is_empty() && new_in_fix * 2 >= new.len();
        flags_kept
            && novelty_explained
            && if single {
                covered == 1
            } else {
                covered as f32 >= 0.6 * fix_added.len() as f32
            }
    }

    /// Words the action adds to what failed that the lesson only says under a negation.
    pub fn warned_tokens(&self, action: &str, failed: &[String]) -> Vec<String> {
        new_tokens(action, failed)
            .into_iter()
            .filter(|t| self.negative.contains(t))
            .collect()
    }
}

/// Longer words that say nothing about a situation.
const SITUATION_STOP: [&str; 34] = [
    "then", "that", "this", "from", "into", "were", "have", "also", "which", "when", "after",
    "before", "only", "shows", "show", "still", "just", "about", "what", "there", "their", "they",
    "them", "been", "being", "does", "done", "same", "would", "should", "could", "agent", "true",
    "with",
];

/// The words of the agent's situation: its context and current state, minus the action's
/// own words. Compound words count whole and by their parts (`proxy_pass` → `proxy_pass`,
/// `proxy`, `pass`).
pub struct Situation(HashSet<String>);

impl Situation {
    pub fn of(
        action: &str,
        context: &str,
        state: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let mut text = String::from(context);
        for (k, v) in state {
            text.push(' ');
            text.push_str(k);
            text.push(' ');
            text.push_str(v);
        }
        let mut said = word_parts(&text);
        for w in word_parts(action) {
            said.remove(&w);
        }
        Situation(said)
    }

    /// How many of these words the stored failure's circumstances (goal, error trace,
    /// resolution, minus its commands' words) also use.
    pub fn overlap(&self, episode: &common::Episode) -> usize {
        let mut circumstances = word_parts(episode.goal());
        circumstances.extend(word_parts(episode.error_trace()));
        circumstances.extend(word_parts(episode.resolution().unwrap_or("")));
        for a in episode.actions_taken() {
            for w in word_parts(a) {
                circumstances.remove(&w);
            }
        }
        self.0.intersection(&circumstances).count()
    }
}

fn word_parts(text: &str) -> HashSet<String> {
    let keep = |w: &str| w.chars().count() >= 4 && !SITUATION_STOP.contains(&w);
    let mut out = HashSet::new();
    for w in
        text.split(|c: char| c.is_whitespace() || matches!(c, '`' | '(' | ')' | '"' | ',' | ';'))
    {
        let w = w
            .trim_matches(|c: char| {
                matches!(c, '\'' | '.' | ':' | '!' | '?' | '[' | ']' | '{' | '}')
            })
            .to_lowercase();
        if !keep(&w) {
            continue;
        }
        for part in w.split(['_', '-', '.', '/', ':', '=', '@']) {
            if keep(part) {
                out.insert(part.to_owned());
            }
        }
        out.insert(w);
    }
    out
}

/// The action's words that none of the failed commands used.
pub fn new_tokens(action: &str, failed: &[String]) -> Vec<String> {
    let old: HashSet<String> = failed.iter().flat_map(|a| tokens(a)).collect();
    let mut seen = HashSet::new();
    tokens(action)
        .into_iter()
        .filter(|t| !old.contains(t) && seen.insert(t.clone()))
        .collect()
}

/// Lower-cased words of at least three characters, trimmed of quotes and punctuation,
/// without stop words.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '`' | '(' | ')' | '"' | ',' | ';'))
        .map(|w| {
            w.trim_matches(|c: char| matches!(c, '\'' | '.' | ':' | '!' | '?' | '[' | ']'))
                .to_lowercase()
        })
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .collect()
}

fn first_word(cmd: &str) -> Option<String> {
    cmd.split_whitespace()
        .find(|w| *w != "sudo" && (w.starts_with('-') || !w.contains('=')))
        .map(str::to_lowercase)
}

/// Sentences and `;`-separated clauses, not split inside backticks.
fn clauses(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let (mut start, mut in_code) = (0, false);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'`' {
            in_code = !in_code;
        }
        let end_of_sentence = b == b'.' && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if !in_code && (b == b';' || end_of_sentence) {
            out.push(&text[start..=i]);
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 400)
        .map(str::to_owned)
        .collect()
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(cmds: &[&str]) -> Vec<String> {
        cmds.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn negations_mark_the_anti_pattern() {
        let l = Lesson::parse(
            "Ran `pnpm install` at the workspace root to update pnpm-lock.yaml and committed it. \
             Kept frozen-lockfile in CI rather than switching to --no-frozen-lockfile.",
        );
        assert!(l.positive.contains("install"));
        assert!(l.negative.contains("--no-frozen-lockfile"));
        assert!(!l.negative.contains("install"));
        assert_eq!(l.fixes, ["pnpm install"]);
        assert_eq!(
            l.warned_tokens("pnpm install --no-frozen-lockfile", &failed(&["git push"])),
            ["--no-frozen-lockfile"]
        );
        let l = Lesson::parse("Ran `sudo usermod -aG docker $USER`; did not chmod the socket.");
        assert_eq!(
            l.warned_tokens("sudo chmod 666 /var/run/docker.sock", &[]),
            ["chmod"]
        );
    }

    #[test]
    fn the_fix_itself_is_recognised() {
        let l = Lesson::parse(
            "The image was arm64 only. Rebuilt with `docker buildx build --platform linux/amd64 \
             -t .../web:1.7.1 --push .` and deployed.",
        );
        let before = failed(&[
            "docker build -t reg/web:1.7.0 .",
            "docker push reg/web:1.7.0",
        ]);
        assert!(l.applied_by(
            "docker buildx build --platform linux/amd64 -t reg/web:1.8.1 --push .",
            &before
        ));
        assert!(!l.applied_by("docker build -t reg/web:1.8.0 .", &before));
        let l = Lesson::parse(
            "Following the hint (`git pull`) would have merged the old commits back in. Used \
             `git push --force-with-lease origin feature/x` instead.",
        );
        assert_eq!(l.fixes, ["git push --force-with-lease origin feature/x"]);
        let rebased = failed(&["git fetch origin", "git rebase origin/main"]);
        assert!(l.applied_by("git push --force-with-lease origin feature/x", &rebased));
        assert!(!l.applied_by("git pull origin feature/x", &rebased));
        assert_eq!(
            l.warned_tokens("git pull origin feature/x", &rebased),
            ["pull"]
        );
        // A single quoted package name counts when it is what the action adds.
        let l = Lesson::parse("Installed the maintained fork `@hello-pangea/dnd@16` instead.");
        assert!(l.applied_by(
            "npm install @hello-pangea/dnd@16",
            &failed(&["npm install react-beautiful-dnd@13.1.1"])
        ));
        assert!(!l.applied_by("npm install", &failed(&["npm install foo"])));
    }

    #[test]
    fn a_pull_the_lesson_warns_against_is_not_the_fix() {
        let l = Lesson::parse(
            "The rebase rewrote the branch's commits, so the remote branch looks diverged. \
             Following the hint (`git pull`) would have merged the old commits back in. Used \
             `git push --force-with-lease origin feature/tax-rules` since nobody else commits \
             to the branch.",
        );
        let failed = failed(&[
            "git fetch origin",
            "git rebase origin/main",
            "git push origin feature/tax-rules",
        ]);
        let action = "git pull origin feature/tax-rules && git push origin feature/tax-rules";
        assert_eq!(l.warned_tokens(action, &failed), ["pull"]);
        assert!(!l.applied_by(action, &failed));
    }
}
