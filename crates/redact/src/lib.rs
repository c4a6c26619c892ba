//! Secret and PII redaction for episode text (pure logic, no IO).
//!
//! Everything an episode carries is passed through [`redact`] at the gateway
//! before it is published, stored, embedded or logged. Each detected span is
//! replaced by `[REDACTED:<label>]`; for key/value pairs, flags and URLs only
//! the value is replaced, so `password=hunter2` becomes
//! `password=[REDACTED:password]` and `postgres://app:pw@db` becomes
//! `postgres://app:[REDACTED:url_password]@db`.
//!
//! | kind ([`SecretKind`]) | replacement | what is matched |
//! |---|---|---|
//! | `PrivateKey` | `[REDACTED:private_key]` | `-----BEGIN … PRIVATE KEY-----` … `-----END … PRIVATE KEY-----` (PEM, OpenSSH, PGP; lines split by newlines, spaces or `\n`); a block cut off without END is redacted to the end of its base64 body |
//! | `Jwt` | `[REDACTED:jwt]` | `eyJ….eyJ….sig` and a bare `eyJ…` segment of 20+ characters |
//! | `EmApiKey` | `[REDACTED:em_api_key]` | our own keys `em_live_<id>_<secret>`, `em_test_…` |
//! | `GithubToken` | `[REDACTED:github_token]` | `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_` |
//! | `GitlabToken` | `[REDACTED:gitlab_token]` | `glpat-`, `gldt-`, `glrt-`, `glptt-`, `glcbt-`, … |
//! | `OpenaiKey` | `[REDACTED:openai_key]` | `sk-…`, `sk-proj-…` (20+ chars with letters and digits) |
//! | `SlackToken` | `[REDACTED:slack_token]` | `xoxb-`, `xoxp-`, `xoxa-`, `xoxs-`, `xoxr-`, `xapp-` |
//! | `SlackWebhook` | `[REDACTED:slack_webhook]` | path of `hooks.slack.com/services/…` (host kept) |
//! | `StripeKey` | `[REDACTED:stripe_key]` | `sk_live_`, `rk_live_`, `pk_live_`, `*_test_`, `whsec_` |
//! | `GoogleApiKey` | `[REDACTED:google_api_key]` | `AIza…` |
//! | `NpmToken` | `[REDACTED:npm_token]` | `npm_…` (20+ alphanumerics) |
//! | `AwsAccessKey` | `[REDACTED:aws_access_key]` | `AKIA…`/`ASIA…` access key ids |
//! | `AwsSecretKey` | `[REDACTED:aws_secret_key]` | 40-char base64 (mixed case + digit) after `aws`/`secret` on the same line; `aws_secret_access_key VALUE` |
//! | `UrlPassword` | `[REDACTED:url_password]` | the password in `scheme://user:password@host` |
//! | `Authorization` | `[REDACTED:authorization]` | value of `Authorization:` headers, `Bearer …`, `Basic …` |
//! | `Password` | `[REDACTED:password]` | value of `password`, `passwd`, `pwd`, `passphrase` keys (`DB_PASSWORD=…`, `"password": "…"`, `--password …`), `docker login -p …`, `mysql -p…`, `.netrc` `password …` |
//! | `Token` | `[REDACTED:token]` | value of `token`, `access_token`, `_authToken`, `GITHUB_TOKEN`, … keys and `--token`; prefixed registry tokens `hf_`, `pypi-AgE…`, `dckr_pat_`, `dop_v1_`, `hvs.`, `AKCp…` |
//! | `ApiKey` | `[REDACTED:api_key]` | value of `api_key`, `apikey`, `X-Api-Key` keys |
//! | `Secret` | `[REDACTED:secret]` | value of `secret`, `client_secret`, `secret_key`, `private_key(_id)`, `access_key`, `AccountKey`, `signing_key`, … keys |
//! | `Email` | `[REDACTED:email]` | e-mail addresses with a real TLD; keeps `git@github.com`, `user@host`, `deploy@web-03.acme.internal` |
//! | `CreditCard` | `[REDACTED:credit_card]` | 13–19 digits (groups split by spaces or dashes), card-network prefix, Luhn-valid |
//! | `Phone` | `[REDACTED:phone]` | `+14155550139`, `+1 415-555-0139`, `+44 20 7946 0958`, `(415) 555-0139`, `415-555-0139` |
//!
//! Guarantees: [`redact`] never panics, is idempotent
//! (`redact(redact(x).text) == redact(x).text`), returns the input borrowed when
//! nothing was found, and runs in time linear in the input (regexes compiled
//! once). Key/value values that are references rather than secrets
//! (`${DB_PASSWORD}`, `$TOKEN`, `<password>`, `***`, `null`, …) are kept.
//!
//! ```
//! let r = redact::redact("psql postgres://app:hunter2@db:5432/x password=s3cret");
//! assert_eq!(
//!     r.text,
//!     "psql postgres://app:[REDACTED:url_password]@db:5432/x password=[REDACTED:password]"
//! );
//! assert_eq!(r.findings.len(), 2);
//! assert!(matches!(redact::redact("nothing here").text, std::borrow::Cow::Borrowed(_)));
//! ```

mod detect;
mod kind;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use kind::SecretKind;

/// How many spans of one kind were redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: SecretKind,
    pub count: usize,
}

/// The result of [`redact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted<'a> {
    /// The redacted text; borrowed from the input when nothing was found.
    pub text: Cow<'a, str>,
    /// One entry per kind found (count > 0), in [`SecretKind::ALL`] order.
    pub findings: Vec<Finding>,
}

impl Redacted<'_> {
    /// True when something was redacted.
    pub fn changed(&self) -> bool {
        !self.findings.is_empty()
    }

    /// Total number of redacted spans.
    pub fn total(&self) -> usize {
        self.findings.iter().map(|f| f.count).sum()
    }
}

/// A span that [`redact`] would replace: `input[range]` is the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub kind: SecretKind,
    pub range: Range<usize>,
}

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[REDACTED:[a-z_]{1,40}\]").unwrap_or_else(|e| panic!("redact: {e}"))
});

/// Find what [`redact`] would replace (one pass), without copying anything.
/// Spans are sorted, non-overlapping, and never lie inside an existing
/// `[REDACTED:…]` placeholder. Useful for audits and over-redaction checks.
pub fn scan(input: &str) -> Vec<Match> {
    let mut raw = Vec::new();
    detect::detect_all(input, &mut raw);
    if raw.is_empty() {
        return Vec::new();
    }
    let placeholders: Vec<Range<usize>> = PLACEHOLDER.find_iter(input).map(|m| m.range()).collect();
    raw.retain(|r| {
        r.start < r.end && {
            // Placeholders are sorted and disjoint: find the last one starting at or before r.start.
            let idx = placeholders.partition_point(|p| p.start <= r.start);
            !(idx > 0 && placeholders[idx - 1].end >= r.end)
        }
    });
    raw.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut merged: Vec<Match> = Vec::with_capacity(raw.len());
    for r in raw {
        if let Some(last) = merged.last_mut()
            && r.start < last.range.end
        {
            last.range.end = last.range.end.max(r.end);
            if r.kind.priority() > last.kind.priority() {
                last.kind = r.kind;
            }
            continue;
        }
        merged.push(Match {
            kind: r.kind,
            range: r.start..r.end,
        });
    }
    merged
}

fn apply(input: &str, spans: &[Match], counts: &mut [usize; SecretKind::ALL.len()]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut pos = 0;
    for m in spans {
        out.push_str(&input[pos..m.range.start]);
        out.push_str("[REDACTED:");
        out.push_str(m.kind.label());
        out.push(']');
        pos = m.range.end;
        counts[m.kind.index()] += 1;
    }
    out.push_str(&input[pos..]);
    out
}

/// Redact every secret and piece of personal data found in `input`.
///
/// Returns the input borrowed (no allocation) when nothing was found.
pub fn redact(input: &str) -> Redacted<'_> {
    let spans = scan(input);
    if spans.is_empty() {
        return Redacted {
            text: Cow::Borrowed(input),
            findings: Vec::new(),
        };
    }
    let mut counts = [0usize; SecretKind::ALL.len()];
    let mut text = apply(input, &spans, &mut counts);
    // Replacing a span can, in rare adjacent cases, expose a new match; a few
    // more passes reach the fixed point that makes redaction idempotent.
    for _ in 0..4 {
        let again = scan(&text);
        if again.is_empty() {
            break;
        }
        text = apply(&text, &again, &mut counts);
    }
    let findings = SecretKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(k, count)| Finding { kind: *k, count })
        .collect();
    Redacted {
        text: Cow::Owned(text),
        findings,
    }
}

/// Convenience: the redacted text only.
pub fn redact_str(input: &str) -> Cow<'_, str> {
    redact(input).text
}

#[cfg(test)]
mod tests;
