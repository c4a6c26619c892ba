//! NATS subject rules: tokens separated by `.`, `*` matches one token, `>` (last token only)
//! matches one or more tokens.

/// Whether the concrete `subject` matches the `pattern` (which may contain `*` and `>`).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern_tokens = pattern.split('.');
    let mut subject_tokens = subject.split('.');
    loop {
        match (pattern_tokens.next(), subject_tokens.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(p), Some(s)) => {
                if p != "*" && p != s {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether two patterns can match a common subject (used to reject overlapping streams).
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) => {
                if x != "*" && y != "*" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subject one may publish to: non-empty tokens, no wildcards, no whitespace.
pub(crate) fn is_valid_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b.is_ascii_whitespace())
        })
}

/// A subject pattern: non-empty tokens, `>` only last, no whitespace.
pub(crate) fn is_valid_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    !pattern.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.bytes().any(|b| b.is_ascii_whitespace())
                && (*t != ">" || i + 1 == tokens.len())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("a.b.c", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.x.c"));
        assert!(!subject_matches("a.*.c", "a.x.y.c"));
        assert!(subject_matches("a.>", "a.b"));
        assert!(subject_matches("a.>", "a.b.c.d"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "a"));
        assert!(subject_matches(
            "p.v1.episodes.captured.*",
            "p.v1.episodes.captured.t1"
        ));
        assert!(!subject_matches(
            "p.v1.episodes.captured.*",
            "p.v1.episodes.embedded.t1"
        ));
    }

    #[test]
    fn overlap_is_symmetric_and_wildcard_aware() {
        assert!(subjects_overlap("a.>", "a.b.*"));
        assert!(subjects_overlap("a.b.*", "a.>"));
        assert!(subjects_overlap("a.*", "a.b"));
        assert!(!subjects_overlap("a.*", "b.*"));
        assert!(!subjects_overlap("a.*", "a.b.c"));
        assert!(!subjects_overlap("x.v1.episodes.>", "x.v1.dlq.>"));
    }

    #[test]
    fn validity() {
        assert!(is_valid_publish_subject("a.b.c"));
        assert!(!is_valid_publish_subject("a..c"));
        assert!(!is_valid_publish_subject("a.*"));
        assert!(!is_valid_publish_subject("a b"));
        assert!(!is_valid_publish_subject(""));
        assert!(is_valid_pattern("a.*.>"));
        assert!(!is_valid_pattern("a.>.b"));
    }
}
