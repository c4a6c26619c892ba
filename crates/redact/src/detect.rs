//! Detectors. Each one appends raw spans `(start, end, kind)` (byte offsets of
//! the part to replace) to a list; [`crate::scan`] then merges them.
//!
//! All regexes are compiled once. Word boundaries are ASCII (`(?-u:\b)`) so the
//! lazy DFA never has to fall back to the slow engine on non-ASCII text.

use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};

use crate::SecretKind;

/// A detected span before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub start: usize,
    pub end: usize,
    pub kind: SecretKind,
}

fn re(pattern: &str) -> Regex {
    match Regex::new(pattern) {
        Ok(r) => r,
        // The patterns are constants covered by unit tests; a typo is a bug
        // that the very first test run reports.
        Err(e) => panic!("redact: invalid built-in pattern {pattern:?}: {e}"),
    }
}

/// Literal-prefixed token formats whose whole match is the secret.
static TOKENS: LazyLock<Vec<(Regex, SecretKind)>> = LazyLock::new(|| {
    vec![
        (
            re(concat!(
                r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}={0,2}\.eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]*",
                r"|(?-u:\b)eyJ[A-Za-z0-9_-]{17,}={0,2}(?:\.[A-Za-z0-9_-]+={0,2}){0,2}",
            )),
            SecretKind::Jwt,
        ),
        (
            re(r"(?-u:\b)em_(?:live|test)_[A-Za-z0-9]{1,64}_[A-Za-z0-9_-]{8,}"),
            SecretKind::EmApiKey,
        ),
        (
            re(r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
            SecretKind::GithubToken,
        ),
        (
            re(r"(?-u:\b)gl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt|agent)-[A-Za-z0-9_-]{10,}"),
            SecretKind::GitlabToken,
        ),
        (
            re(r"(?-u:\b)xox[abposrce]-[A-Za-z0-9-]{10,}|(?-u:\b)xapp-[0-9]-[A-Za-z0-9-]{10,}"),
            SecretKind::SlackToken,
        ),
        (
            re(r"(?-u:\b)(?:(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})"),
            SecretKind::StripeKey,
        ),
        (
            re(r"(?-u:\b)AIza[0-9A-Za-z_-]{30,}"),
            SecretKind::GoogleApiKey,
        ),
        (re(r"(?-u:\b)npm_[A-Za-z0-9]{20,}"), SecretKind::NpmToken),
        // Other registry/API tokens with unmistakable prefixes: Hugging Face,
        // PyPI, Docker Hub PAT, DigitalOcean, Vault, Artifactory.
        (
            re(concat!(
                r"(?-u:\b)(?:hf_[A-Za-z0-9]{30,}|pypi-AgE[A-Za-z0-9_-]{40,}|dckr_pat_[A-Za-z0-9_-]{20,}",
                r"|dop_v1_[a-f0-9]{64}|hvs\.[A-Za-z0-9_-]{24,}|AKCp[A-Za-z0-9]{60,})",
            )),
            SecretKind::Token,
        ),
        (
            re(r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)"),
            SecretKind::AwsAccessKey,
        ),
    ]
});

/// OpenAI-style keys need an extra check (mixed letters and digits) so that
/// long kebab-case names starting with `sk-` survive.
static OPENAI: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?-u:\b)sk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]{1,10}-)?[A-Za-z0-9_-]{20,}")
});

static SLACK_WEBHOOK: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)hooks\.slack\.com/(?P<v>(?:services|workflows|triggers)/[A-Za-z0-9/_-]{10,})")
});

static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    // The password may itself contain `@` (`u:p@ss@host`): extend to the last
    // `@` of the authority, but not across `/`, `?`, `:` or `,` after an `@`.
    re(concat!(
        r#"(?i)(?-u:\b)[a-z][a-z0-9+.-]{0,30}://[^\s:/@'"<>`]*:"#,
        r#"(?P<v>[^\s/@'"<>`]+(?:@[^\s/@'"<>`:?,]+)*)@"#,
    ))
});

/// Maximal runs of >= 40 base64 characters (candidates for AWS secret keys).
static B64_40: LazyLock<Regex> = LazyLock::new(|| re(r"[A-Za-z0-9/+]{40,}"));

static PEM_BEGIN: LazyLock<Regex> =
    LazyLock::new(|| re(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"));
static PEM_END: LazyLock<Regex> =
    LazyLock::new(|| re(r"\A-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"));

/// `key=value`, `key: value`, `"key": "value"`, `KEY_PASSWORD=…`, `--password=…`.
/// The key must END with one of the keywords (so `passwordFile`, `tokens`,
/// `secretName` are not keys of this kind).
static KV: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r#"(?i)(?-u:\b)(?P<key>[a-z0-9_.-]*(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|private[_-]?key[_-]?id|account[_-]?key|signing[_-]?key|encryption[_-]?key|master[_-]?key|(?-i:pwd)))"#,
        r#"(?:\\?["'])?[ \t]*(?P<sep>:=|=>|=|:)[ \t]*"#,
        r#"(?:\\"(?P<edq>[^"\\\r\n]*)\\"|"(?P<dq>(?:[^"\\\r\n]|\\.)*)"|'(?P<sq>[^'\r\n]*)'|(?P<bare>[^\s"'`,;&]+))"#,
    ))
});

/// `--password value`, `--token value` (space-separated CLI flags).
static FLAG: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r#"(?i)(?:^|[^a-z0-9_-])--?(?P<key>[a-z0-9-]*(?:password|passwd|passphrase|pwd|secret|token|api-?key|access-key|private-key))[ \t]+"#,
        r#"(?:"(?P<dq>[^"\r\n]*)"|'(?P<sq>[^'\r\n]*)'|(?P<bare>[^\s"'`,;&]+))"#,
    ))
});

/// Password arguments of well-known commands and `.netrc` entries:
/// `docker login -u x -p VALUE`, `mysql -uroot -pVALUE`, `login x password VALUE`.
static CLI_PASSWORDS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    vec![
        re(r#"(?-u:\b)docker[ \t]+login(?-u:\b)[^\n|;&]*?[ \t]-p[ \t=]*(?P<v>[^\s"'`-][^\s"'`]*)"#),
        re(r#"(?-u:\b)mysql(?:dump|admin|sh)?(?-u:\b)[^\n|;&]*?[ \t]-p(?P<v>[^\s"'`-][^\s"'`]*)"#),
        re(r#"(?i)(?-u:\b)login[ \t\r\n]+[^\s]+[ \t\r\n]+password[ \t]+(?P<v>[^\s"'`]+)"#),
    ]
});

/// `aws_secret_access_key VALUE` as in `aws configure set` (space separator).
static AWS_SET: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?-u:\b)aws_secret_access_key[ \t]+(?P<v>[A-Za-z0-9/+=]{16,})"));

static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r#"(?i)(?-u:\b)authorization\\?["']?[ \t]*[:=][ \t]*\\?["']?"#,
        r#"(?:(?:bearer|basic|token|digest|bot)[ \t]+)?(?P<v>[^\s"'\\,;]{8,})"#,
    ))
});

static BEARER: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?-u:\b)(?:bearer|basic)[ \t]+(?P<v>[A-Za-z0-9._~+/-]{12,}=*)"));

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"(?-u:\b)(?P<local>[A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@",
        r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,24})(?-u:\b)",
    ))
});

/// Maximal sequences of >= 13 digits, possibly grouped by one space or dash.
static DIGIT_GROUPS: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,}(?-u:\b)"));

/// Phone shapes, each with an anchored twin used to validate shortened matches.
static PHONES: LazyLock<Vec<(Regex, Regex)>> = LazyLock::new(|| {
    [
        // E.164, compact: +14155550139
        r"\+[1-9][0-9]{7,14}",
        // +CC and groups: +1 415-555-0139, +44 20 7946 0958, +1 (415) 555-0139
        r"\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,8}(?:[ .-][0-9]{1,8}){1,4}",
        // (415) 555-0139, 1 (415) 555-0139
        r"(?:1[ .-]?)?\([2-9][0-9]{2}\)[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}",
        // 415-555-0139, 1-800-555-0199, 415.555.0139
        r"(?:1-)?[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}|[2-9][0-9]{2}\.[2-9][0-9]{2}\.[0-9]{4}",
    ]
    .iter()
    .map(|p| (re(p), re(&format!(r"\A(?:{p})\z"))))
    .collect()
});

/// Order of the patterns in [`PREFILTER`] after the [`TOKENS`] entries.
const P_OPENAI: usize = 0;
const P_SLACK_WEBHOOK: usize = 1;
const P_URL_PASSWORD: usize = 2;
const P_B64_40: usize = 3;
const P_PEM: usize = 4;
const P_KV: usize = 5;
const P_FLAG: usize = 6;
const P_AWS_SET: usize = 7;
const P_AUTH_HEADER: usize = 8;
const P_BEARER: usize = 9;
const P_EMAIL: usize = 10;
const P_DIGITS: usize = 11;
const P_PHONES: usize = 12;
const N_PHONES: usize = 4;
const P_CLI: usize = P_PHONES + N_PHONES;

fn prefilter_patterns() -> Vec<&'static Regex> {
    let mut v: Vec<&'static Regex> = TOKENS.iter().map(|(r, _)| r).collect();
    v.extend([
        &*OPENAI,
        &*SLACK_WEBHOOK,
        &*URL_PASSWORD,
        &*B64_40,
        &*PEM_BEGIN,
        &*KV,
        &*FLAG,
        &*AWS_SET,
        &*AUTH_HEADER,
        &*BEARER,
        &*EMAIL,
        &*DIGIT_GROUPS,
    ]);
    v.extend(PHONES.iter().map(|(r, _)| r));
    v.extend(CLI_PASSWORDS.iter());
    v
}

/// One pass over the text tells which detectors can match at all; on clean
/// text that single pass is nearly all the work.
static PREFILTER: LazyLock<Option<RegexSet>> =
    LazyLock::new(|| RegexSet::new(prefilter_patterns().iter().map(|r| r.as_str())).ok());

/// Run every detector over `text`.
pub(crate) fn detect_all(text: &str, out: &mut Vec<Raw>) {
    let hits = PREFILTER.as_ref().map(|set| set.matches(text));
    let n = TOKENS.len();
    let on = |i: usize| hits.as_ref().is_none_or(|h| h.matched(i));
    if !hits.as_ref().is_none_or(regex::SetMatches::matched_any) {
        return;
    }
    if on(n + P_PEM) {
        detect_pem(text, out);
    }
    for (i, (regex, kind)) in TOKENS.iter().enumerate() {
        if !on(i) {
            continue;
        }
        for m in regex.find_iter(text) {
            out.push(Raw {
                start: m.start(),
                end: m.end(),
                kind: *kind,
            });
        }
    }
    if on(n + P_OPENAI) {
        detect_openai(text, out);
    }
    if on(n + P_SLACK_WEBHOOK) {
        detect_group(&SLACK_WEBHOOK, text, out, |_| {
            Some(SecretKind::SlackWebhook)
        });
    }
    if on(n + P_URL_PASSWORD) {
        detect_group(&URL_PASSWORD, text, out, |v| {
            (!is_placeholder_value(v)).then_some(SecretKind::UrlPassword)
        });
    }
    if on(n + P_B64_40) {
        detect_aws_secret(text, out);
    }
    if on(n + P_AWS_SET) {
        detect_group(&AWS_SET, text, out, |_| Some(SecretKind::AwsSecretKey));
    }
    if on(n + P_KV) {
        detect_kv(text, out);
    }
    if on(n + P_FLAG) {
        detect_flags(text, out);
    }
    if on(n + P_AUTH_HEADER) {
        detect_group(&AUTH_HEADER, text, out, |v| {
            (looks_credential(v) && !is_placeholder_value(v)).then_some(SecretKind::Authorization)
        });
    }
    if on(n + P_BEARER) {
        detect_group(&BEARER, text, out, |v| {
            looks_credential(v).then_some(SecretKind::Authorization)
        });
    }
    if on(n + P_EMAIL) {
        detect_email(text, out);
    }
    if on(n + P_DIGITS) {
        detect_cards(text, out);
    }
    for (i, pair) in PHONES.iter().enumerate() {
        if on(n + P_PHONES + i) {
            detect_phone(pair, text, out);
        }
    }
    for (i, regex) in CLI_PASSWORDS.iter().enumerate() {
        if on(n + P_CLI + i) {
            detect_group(regex, text, out, |v| {
                (!is_placeholder_value(v)).then_some(SecretKind::Password)
            });
        }
    }
}

/// For patterns with a named group `v`: the group is the span.
fn detect_group(
    regex: &Regex,
    text: &str,
    out: &mut Vec<Raw>,
    mut accept: impl FnMut(&str) -> Option<SecretKind>,
) {
    for caps in regex.captures_iter(text) {
        if let Some(v) = caps.name("v")
            && let Some(kind) = accept(v.as_str())
        {
            out.push(Raw {
                start: v.start(),
                end: v.end(),
                kind,
            });
        }
    }
}

fn has_digit(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
}

fn has_upper(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase())
}

fn has_lower(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_lowercase())
}

/// A header/bearer credential: digits, or long and mixed-case (not a word
/// such as "Authentication").
fn looks_credential(v: &str) -> bool {
    has_digit(v) || (v.len() >= 20 && has_upper(v) && has_lower(v))
}

fn detect_openai(text: &str, out: &mut Vec<Raw>) {
    for m in OPENAI.find_iter(text) {
        let body = &m.as_str()[3..];
        if has_digit(body) && (has_upper(body) || has_lower(body)) {
            out.push(Raw {
                start: m.start(),
                end: m.end(),
                kind: SecretKind::OpenaiKey,
            });
        }
    }
}

/// 40-character base64 strings with upper case, lower case and a digit
/// (so hex SHAs never qualify), preceded on the same line by `aws` or `secret`.
fn detect_aws_secret(text: &str, out: &mut Vec<Raw>) {
    for m in B64_40.find_iter(text) {
        let cand = m.as_str();
        if cand.len() != 40 || cand.starts_with('/') {
            continue;
        }
        if !(has_digit(cand) && has_upper(cand) && has_lower(cand)) {
            continue;
        }
        let bytes = text.as_bytes();
        // Part of a longer identifier (`x_…`, `a.…`) rather than a value.
        if matches!(
            m.start().checked_sub(1).map(|i| bytes[i]),
            Some(b'_' | b'-' | b'.')
        ) {
            continue;
        }
        if bytes.get(m.end()) == Some(&b'=') {
            continue;
        }
        let mut ctx_start = m.start().saturating_sub(100);
        while !text.is_char_boundary(ctx_start) {
            ctx_start += 1;
        }
        let ctx = &text[ctx_start..m.start()];
        let ctx = ctx.rsplit('\n').next().unwrap_or(ctx).to_ascii_lowercase();
        if ctx.contains("aws") || ctx.contains("secret") {
            out.push(Raw {
                start: m.start(),
                end: m.end(),
                kind: SecretKind::AwsSecretKey,
            });
        }
    }
}

fn kv_kind(key: &str) -> SecretKind {
    let k = key.to_ascii_lowercase().replace('-', "_");
    if k.ends_with("password")
        || k.ends_with("passwd")
        || k.ends_with("pwd")
        || k.ends_with("passphrase")
    {
        SecretKind::Password
    } else if k.ends_with("token") {
        SecretKind::Token
    } else if k.ends_with("api_key") || k.ends_with("apikey") {
        SecretKind::ApiKey
    } else {
        SecretKind::Secret
    }
}

/// Values that are references or stand-ins, not secrets.
fn is_placeholder_value(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    v.starts_with("[REDACTED:")
        || v.starts_with('$')
        || v.starts_with("{{")
        || (v.starts_with('<') && v.ends_with('>'))
        || (v.len() > 2
            && v.starts_with('%')
            && v.ends_with('%')
            && v[1..v.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !v.as_bytes()[1].is_ascii_digit())
        || v.bytes()
            .all(|b| matches!(b, b'*' | b'x' | b'X' | b'.' | b'-' | b'#'))
        || !v.chars().any(char::is_alphanumeric)
        || matches!(
            lower.as_str(),
            "null"
                | "none"
                | "nil"
                | "true"
                | "false"
                | "undefined"
                | "empty"
                | "redacted"
                | "required"
                | "optional"
                | "string"
                | "str"
                | "bool"
                | "n/a"
        )
}

/// Trailing punctuation that usually closes the surrounding text, not the value.
fn trim_bare(v: &str) -> &str {
    v.trim_end_matches([')', ']', '}', '>', '.'])
}

fn kv_value<'t>(caps: &Captures<'t>) -> Option<(regex::Match<'t>, bool)> {
    for name in ["edq", "dq", "sq"] {
        if let Some(m) = caps.name(name) {
            return Some((m, true));
        }
    }
    caps.name("bare").map(|m| (m, false))
}

fn detect_kv(text: &str, out: &mut Vec<Raw>) {
    for caps in KV.captures_iter(text) {
        let (Some(key), Some(sep), Some((val, quoted))) =
            (caps.name("key"), caps.name("sep"), kv_value(&caps))
        else {
            continue;
        };
        // `/usr/bin/pwd: …`, `/run/secrets/token: …`: a path, not a key.
        if key.start() > 0 && text.as_bytes()[key.start() - 1] == b'/' {
            continue;
        }
        let mut v = val.as_str();
        if !quoted {
            v = trim_bare(v);
        }
        if v.is_empty() || is_placeholder_value(v) || is_placeholder_value(val.as_str()) {
            continue;
        }
        if sep.as_str() == ":" && !quoted {
            // "invalid token: expired", "secret: error: …" are prose, not pairs.
            let w = v.strip_suffix(':').unwrap_or(v);
            let word = w.bytes().all(|b| b.is_ascii_alphabetic())
                && (w.len() < v.len() || !w.bytes().skip(1).any(|b| b.is_ascii_uppercase()));
            // "retries: 3", "version: 1.14.2" shapes after a keyword are not secrets.
            let small_number_or_version = v.len() <= 12
                && v.trim_start_matches('v').split('.').all(|p| {
                    !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit())
                });
            if word || small_number_or_version {
                continue;
            }
        }
        out.push(Raw {
            start: val.start(),
            end: val.start() + v.len(),
            kind: kv_kind(key.as_str()),
        });
    }
}

fn detect_flags(text: &str, out: &mut Vec<Raw>) {
    for caps in FLAG.captures_iter(text) {
        let Some(key) = caps.name("key") else {
            continue;
        };
        let (val, quoted) = match (caps.name("dq"), caps.name("sq"), caps.name("bare")) {
            (Some(m), _, _) | (_, Some(m), _) => (m, true),
            (_, _, Some(m)) => (m, false),
            _ => continue,
        };
        let mut v = val.as_str();
        if !quoted {
            v = trim_bare(v);
        }
        if v.is_empty()
            || v.starts_with('-')
            || is_placeholder_value(v)
            || is_placeholder_value(val.as_str())
        {
            continue;
        }
        out.push(Raw {
            start: val.start(),
            end: val.start() + v.len(),
            kind: kv_kind(&key.as_str().replace('-', "_")),
        });
    }
}

/// Common generic top-level domains; any two-letter (country) TLD is also
/// accepted except a few that are usually file extensions.
const GENERIC_TLDS: &[&str] = &[
    "com",
    "net",
    "org",
    "edu",
    "gov",
    "mil",
    "int",
    "info",
    "biz",
    "name",
    "pro",
    "io",
    "ai",
    "app",
    "dev",
    "cloud",
    "tech",
    "online",
    "site",
    "xyz",
    "email",
    "mail",
    "systems",
    "solutions",
    "company",
    "agency",
    "digital",
    "network",
    "services",
    "software",
    "global",
    "group",
    "team",
    "studio",
    "design",
    "media",
    "news",
    "blog",
    "shop",
    "store",
    "live",
    "life",
    "today",
    "world",
    "space",
    "website",
    "zone",
    "works",
    "tools",
    "page",
    "health",
    "finance",
    "capital",
    "consulting",
    "engineering",
    "codes",
    "run",
    "sh",
    "co",
    "inc",
    "ltd",
    "llc",
    "biz",
    "coop",
    "museum",
    "mobi",
    "travel",
    "jobs",
    "asia",
    "eu",
    "academy",
    "institute",
    "university",
    "school",
    "care",
    "clinic",
    "legal",
    "law",
    "money",
    "bank",
    "insurance",
    "energy",
    "games",
    "social",
    "chat",
    "link",
    "click",
    "one",
    "plus",
    "top",
];
const EXTENSION_LIKE_CC: &[&str] = &[
    "py", "rs", "md", "so", "mk", "cc", "hh", "js", "ts", "gz", "xz", "db", "rb", "cs", "hs", "ml",
    "el", "go", "pb", "pm", "lo", "rc",
];

fn is_email_tld(tld: &str) -> bool {
    let t = tld.to_ascii_lowercase();
    if GENERIC_TLDS.contains(&t.as_str()) {
        return true;
    }
    t.len() == 2 && !EXTENSION_LIKE_CC.contains(&t.as_str())
}

fn detect_email(text: &str, out: &mut Vec<Raw>) {
    for caps in EMAIL.captures_iter(text) {
        let (Some(m), Some(local), Some(tld)) = (caps.get(0), caps.name("local"), caps.name("tld"))
        else {
            continue;
        };
        if !is_email_tld(tld.as_str()) || local.as_str().eq_ignore_ascii_case("git") {
            continue;
        }
        // `scheme://user@host` and `scheme://user:pw@host`: URL userinfo, not
        // an address (passwords there are handled by the URL rule).
        let before = &text[..m.start()];
        let token_start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| {
                c.is_whitespace()
                    || matches!(
                        c,
                        '"' | '\''
                            | '<'
                            | '>'
                            | '('
                            | ')'
                            | '['
                            | ']'
                            | '{'
                            | '}'
                            | ','
                            | ';'
                            | '|'
                            | '='
                            | '`'
                    )
            })
            .map_or(0, |(i, c)| i + c.len_utf8());
        if before[token_start..].contains("://") {
            continue;
        }
        out.push(Raw {
            start: m.start(),
            end: m.end(),
            kind: SecretKind::Email,
        });
    }
}

fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Issuer prefixes of the major card networks (Visa, Mastercard, Amex,
/// Diners, Discover, JCB, UnionPay, Maestro). Rules out epoch-millisecond
/// timestamps (which start with 1) and most numeric ids.
fn iin_ok(digits: &[u8]) -> bool {
    match digits.first() {
        Some(b'3' | b'4' | b'5' | b'6') => true,
        Some(b'2') => {
            let p: u32 = digits
                .iter()
                .take(4)
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
            digits.len() >= 4 && (2221..=2720).contains(&p)
        }
        _ => false,
    }
}

fn is_card(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && iin_ok(digits) && luhn_ok(digits)
}

fn detect_cards(text: &str, out: &mut Vec<Raw>) {
    for m in DIGIT_GROUPS.find_iter(text) {
        let s = m.as_str();
        if s.len() < 13 {
            continue;
        }
        // (start offset in s, digits, separator that follows)
        let mut groups: Vec<(usize, &str, Option<u8>)> = Vec::new();
        let mut off = 0;
        for part in s.split([' ', '-']) {
            let sep = s.as_bytes().get(off + part.len()).copied();
            groups.push((off, part, sep));
            off += part.len() + 1;
        }
        let mut i = 0;
        while i < groups.len() {
            let (g_off, g, _) = groups[i];
            if (13..=19).contains(&g.len()) && is_card(g.as_bytes()) {
                out.push(Raw {
                    start: m.start() + g_off,
                    end: m.start() + g_off + g.len(),
                    kind: SecretKind::CreditCard,
                });
                i += 1;
                continue;
            }
            let mut best: Option<usize> = None;
            if g.len() == 4 {
                let sep = groups[i].2;
                let mut digits: Vec<u8> = g.as_bytes().to_vec();
                let mut j = i;
                while j + 1 < groups.len() && groups[j].2 == sep {
                    let next = groups[j + 1].1;
                    if !(1..=6).contains(&next.len()) || digits.len() + next.len() > 19 {
                        break;
                    }
                    digits.extend_from_slice(next.as_bytes());
                    j += 1;
                    if is_card(&digits) {
                        best = Some(j);
                    }
                }
            }
            if let Some(j) = best {
                let (j_off, j_g, _) = groups[j];
                out.push(Raw {
                    start: m.start() + g_off,
                    end: m.start() + j_off + j_g.len(),
                    kind: SecretKind::CreditCard,
                });
                i = j + 1;
            } else {
                i += 1;
            }
        }
    }
}

fn next_char_boundary(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn phone_right_ok(bytes: &[u8], end: usize) -> bool {
    let next = bytes.get(end).copied();
    let next2 = bytes.get(end + 1).copied();
    let glued = matches!(next, Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'@'));
    let more_number =
        matches!(next, Some(b'.' | b':')) && matches!(next2, Some(b) if b.is_ascii_digit());
    !glued && !more_number
}

fn detect_phone((regex, anchored): &(Regex, Regex), text: &str, out: &mut Vec<Raw>) {
    let bytes = text.as_bytes();
    {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = regex.find_at(text, pos) else {
                break;
            };
            let prev = m.start().checked_sub(1).and_then(|i| bytes.get(i)).copied();
            let left_ok = !matches!(prev, Some(b) if b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'/' | b'+' | b'#' | b'@'));
            // The greedy match may have swallowed a following number
            // (`+44 20 7946 0958 1.2.3`): also try ending at each earlier separator.
            let ends =
                std::iter::once(m.end()).chain((m.start() + 1..m.end()).rev().filter(|&i| {
                    matches!(bytes[i], b' ' | b'.' | b'-') && bytes[i - 1].is_ascii_digit()
                }));
            let mut found = None;
            if left_ok {
                for e in ends {
                    let cand = &text[m.start()..e];
                    let digits = cand.bytes().filter(u8::is_ascii_digit).count();
                    if (8..=15).contains(&digits)
                        && phone_right_ok(bytes, e)
                        && anchored.is_match(cand)
                    {
                        found = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = found {
                out.push(Raw {
                    start: m.start(),
                    end: e,
                    kind: SecretKind::Phone,
                });
                pos = e;
            } else {
                // Patterns are short and bounded: retrying one character later
                // stays linear and finds a phone hidden behind a rejected prefix.
                pos = next_char_boundary(text, m.start() + 1);
            }
        }
    }
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// PEM/OpenSSH private keys: from the BEGIN line through the END line, or,
/// when the block is cut off, through the last line that looks like base64.
/// Lines may be separated by newlines, spaces or escaped `\n`.
fn detect_pem(text: &str, out: &mut Vec<Raw>) {
    let b = text.as_bytes();
    let mut pos = 0;
    while let Some(m) = PEM_BEGIN.find_at(text, pos) {
        let mut end = m.end();
        let mut i = m.end();
        loop {
            let mut j = i;
            loop {
                if j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                } else if j + 1 < b.len() && b[j] == b'\\' && matches!(b[j + 1], b'n' | b'r' | b't')
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if j >= b.len() {
                break;
            }
            let rest = &text[j..];
            if let Some(e) = PEM_END.find(rest) {
                end = j + e.end();
                break;
            }
            if rest.starts_with("-----BEGIN") {
                break;
            }
            if ["Proc-Type:", "DEK-Info:", "Comment:"]
                .iter()
                .any(|h| rest.starts_with(h))
            {
                let mut k = j;
                while k < b.len() && b[k] != b'\n' && b[k] != b'\\' {
                    k += 1;
                }
                end = k;
                i = k;
                continue;
            }
            let mut k = j;
            while k < b.len() && is_b64(b[k]) {
                k += 1;
            }
            let tok = &b[j..k];
            let body_like = tok.len() >= 16
                || tok
                    .iter()
                    .any(|c| c.is_ascii_digit() || matches!(c, b'+' | b'/' | b'='));
            // A short word glued to punctuation (`Error:`) ends the body.
            let glued = k < b.len() && !b[k].is_ascii_whitespace() && !matches!(b[k], b'\\' | b'-');
            if tok.is_empty() || !body_like || (glued && tok.len() < 16) {
                break;
            }
            end = k;
            i = k;
            if glued {
                break;
            }
        }
        out.push(Raw {
            start: m.start(),
            end,
            kind: SecretKind::PrivateKey,
        });
        pos = end.max(m.end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_ok(b"4539148803436467"));
        assert!(!luhn_ok(b"4539148803436468"));
        assert!(luhn_ok(b"79927398713"));
    }

    #[test]
    fn iin() {
        assert!(iin_ok(b"4111"));
        assert!(iin_ok(b"2221000000000009"));
        assert!(!iin_ok(b"1717582400000"));
        assert!(!iin_ok(b"2100000000000"));
        assert!(!iin_ok(b"9999"));
    }

    #[test]
    fn tlds() {
        assert!(is_email_tld("com"));
        assert!(is_email_tld("DE"));
        assert!(!is_email_tld("internal"));
        assert!(!is_email_tld("local"));
        assert!(!is_email_tld("py"));
    }

    #[test]
    fn all_patterns_compile() {
        LazyLock::force(&TOKENS);
        for r in [
            &*OPENAI,
            &*SLACK_WEBHOOK,
            &*URL_PASSWORD,
            &*B64_40,
            &*PEM_BEGIN,
            &*PEM_END,
            &*KV,
            &*FLAG,
            &*AWS_SET,
            &*AUTH_HEADER,
            &*BEARER,
            &*EMAIL,
            &*DIGIT_GROUPS,
        ] {
            assert!(!r.as_str().is_empty());
        }
        assert_eq!(PHONES.len(), N_PHONES);
        let set = PREFILTER.as_ref().map(RegexSet::len);
        assert_eq!(set, Some(TOKENS.len() + P_CLI + CLI_PASSWORDS.len()));
        assert_eq!(
            prefilter_patterns()[TOKENS.len() + P_DIGITS].as_str(),
            DIGIT_GROUPS.as_str()
        );
    }
}
