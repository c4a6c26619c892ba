//! Finding PII substrings in whatever a test collected: HTTP bodies, database rows, NATS
//! payloads and headers, vector metadata, log lines, raw files.
//!
//! A substring counts as leaked when it occurs verbatim, or in its JSON-escaped form (once
//! or twice escaped: an episode is JSON inside a JSON event, or JSON text inside a row), so
//! escaping can never hide a leak.

use std::collections::BTreeSet;

/// The forms in which `secret` could appear in collected text.
fn forms(secret: &str) -> BTreeSet<String> {
    let once = serde_json::to_string(secret).unwrap_or_default();
    let once = once.trim_matches('"').to_owned();
    let twice = serde_json::to_string(&once).unwrap_or_default();
    let twice = twice.trim_matches('"').to_owned();
    [secret.to_owned(), once, twice]
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect()
}

/// One leak: which secret, where, and a short excerpt around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub secret: String,
    pub place: String,
    pub excerpt: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} in {}: …{}…", self.secret, self.place, self.excerpt)
    }
}

/// The secrets of a data set, with every form they may take.
#[derive(Debug, Clone)]
pub struct Secrets {
    forms: Vec<(String, BTreeSet<String>)>,
}

impl Secrets {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = BTreeSet::new();
        let forms = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| !s.is_empty() && seen.insert(s.clone()))
            .map(|s| {
                let f = forms(&s);
                (s, f)
            })
            .collect();
        Self { forms }
    }

    pub fn len(&self) -> usize {
        self.forms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Every secret occurring in `text` (found in `place`).
    pub fn find(&self, place: &str, text: &str) -> Vec<Leak> {
        let mut leaks = Vec::new();
        for (secret, forms) in &self.forms {
            if let Some(at) = forms.iter().find_map(|f| text.find(f.as_str())) {
                leaks.push(Leak {
                    secret: secret.clone(),
                    place: place.to_owned(),
                    excerpt: excerpt(text, at, secret.len()),
                });
            }
        }
        leaks
    }

    /// [`Self::find`] over raw bytes (lossily decoded).
    pub fn find_bytes(&self, place: &str, bytes: &[u8]) -> Vec<Leak> {
        self.find(place, &String::from_utf8_lossy(bytes))
    }
}

fn excerpt(text: &str, at: usize, len: usize) -> String {
    let mut start = at.saturating_sub(40);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + len + 40).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].replace('\n', "\\n")
}

/// Panics with every leak (at most 50 listed) when there is any.
pub fn assert_no_leaks(what: &str, leaks: &[Leak]) {
    if leaks.is_empty() {
        return;
    }
    let listed: Vec<String> = leaks.iter().take(50).map(ToString::to_string).collect();
    panic!(
        "{} PII leak(s) in {what}:\n  {}",
        leaks.len(),
        listed.join("\n  ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_verbatim_and_escaped_forms() {
        let secrets = Secrets::new(["pa\"ss", "x@y.io"]);
        assert_eq!(secrets.find("t", "nothing here").len(), 0);
        assert_eq!(secrets.find("t", "mail x@y.io now").len(), 1);
        assert_eq!(secrets.find("t", r#"{"a":"pa\"ss"}"#).len(), 1);
        assert_eq!(
            secrets.find("t", r#"{"e":"{\"a\":\"pa\\\"ss\"}"}"#).len(),
            1
        );
    }
}
