//! Property tests: generated secrets never survive, redaction is idempotent,
//! never panics, and leaves secret-free technical text untouched.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;

/// A generated secret: the text to embed and the substrings that must not
/// survive redaction.
#[derive(Debug, Clone)]
struct Secret {
    kind: &'static str,
    text: String,
    must_vanish: Vec<String>,
}

fn secret(kind: &'static str, text: String, must_vanish: Vec<String>) -> Secret {
    Secret {
        kind,
        text,
        must_vanish,
    }
}

fn whole(kind: &'static str) -> impl Fn(String) -> Secret {
    move |t: String| secret(kind, t.clone(), vec![t])
}

fn has_digit(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
}

fn email() -> impl Strategy<Value = Secret> {
    (
        "[a-z][a-z0-9]{0,8}(\\.[a-z0-9]{1,8})?",
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        select(vec!["com", "org", "io", "net", "de", "co.uk", "dev"]),
    )
        .prop_filter("git@ is kept by design", |(l, _, _)| l != "git")
        .prop_map(|(l, d, t)| {
            let e = format!("{l}@{d}.{t}");
            secret("email", e.clone(), vec![e])
        })
}

fn aws_secret() -> impl Strategy<Value = Secret> {
    (
        "[A-Za-z0-9+][A-Za-z0-9/+]{39}",
        select(vec![
            "aws_secret_access_key = ",
            "AWS_SECRET_ACCESS_KEY=",
            "aws configure set aws_secret_access_key ",
            "aws secret: ",
        ]),
    )
        .prop_filter("mixed case and digit", |(s, _)| {
            has_digit(s)
                && s.bytes().any(|b| b.is_ascii_uppercase())
                && s.bytes().any(|b| b.is_ascii_lowercase())
        })
        .prop_map(|(s, p)| secret("aws_secret_key", format!("{p}{s}"), vec![s]))
}

fn jwt() -> impl Strategy<Value = Secret> {
    (
        "eyJ[A-Za-z0-9_-]{20,60}",
        "eyJ[A-Za-z0-9_-]{20,200}",
        "[A-Za-z0-9_-]{43}",
        any::<bool>(),
    )
        .prop_map(|(h, p, s, bare)| {
            if bare {
                secret("jwt", p.clone(), vec![p])
            } else {
                let t = format!("{h}.{p}.{s}");
                secret("jwt", t.clone(), vec![t, p, s])
            }
        })
}

fn kv() -> impl Strategy<Value = Secret> {
    (
        select(vec![
            "password",
            "passwd",
            "pwd",
            "DB_PASSWORD",
            "client_secret",
            "access_token",
            "api_key",
            "apikey",
            "token",
            "secret",
            "_authToken",
        ]),
        0..6usize,
        "[A-Za-z0-9!#^*@+/~]{7,20}",
    )
        .prop_filter("values carry a digit", |(_, _, v)| has_digit(v))
        .prop_map(|(k, form, v)| {
            let t = match form {
                0 => format!("{k}={v}"),
                1 => format!("{k}: {v}"),
                2 => format!("\"{k}\": \"{v}\""),
                3 => format!("{k} = '{v}'"),
                4 => format!("--{} {v}", k.trim_start_matches('_').replace('_', "-")),
                _ => format!("{{\\\"{k}\\\": \\\"{v}\\\"}}"),
            };
            secret("kv", t, vec![v])
        })
}

fn cli_password() -> impl Strategy<Value = Secret> {
    ("[A-Za-z0-9!#^*@+/~]{7,20}", 0..3usize)
        .prop_filter("values carry a digit", |(v, _)| has_digit(v))
        .prop_map(|(v, form)| {
            let t = match form {
                0 => format!("docker login -u ci -p {v} registry.acme.io"),
                1 => format!("mysql -uroot -p{v} -h db"),
                _ => format!("machine nexus.acme.io login deploy password {v}"),
            };
            secret("cli_password", t, vec![v])
        })
}

fn url_password() -> impl Strategy<Value = Secret> {
    (
        select(vec![
            "postgres",
            "postgresql",
            "https",
            "redis",
            "mysql",
            "amqp",
        ]),
        "[a-z_]{0,8}",
        "[A-Za-z0-9#!%*^~$]{5,16}",
        "[a-z]{2,10}(\\.[a-z]{2,5}){0,2}",
        "(:[0-9]{2,5})?/[a-z]{0,8}",
    )
        .prop_filter(
            "passwords carry a digit, start with no $",
            |(_, _, p, _, _)| has_digit(p) && !p.starts_with('$'),
        )
        .prop_map(|(s, u, p, h, rest)| {
            secret(
                "url_password",
                format!("{s}://{u}:{p}@{h}{rest}"),
                vec![format!(":{p}@")],
            )
        })
}

fn pem() -> impl Strategy<Value = Secret> {
    (
        select(vec!["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ", ""]),
        prop::collection::vec("[A-Za-z0-9+/]{64}", 1..6),
        "[A-Za-z0-9+/]{16,60}={0,2}",
        select(vec!["\n", " ", "\\n", "\r\n"]),
        any::<bool>(),
    )
        .prop_map(|(ty, mut lines, last, sep, end)| {
            lines.push(last);
            let mut t = format!("-----BEGIN {ty}PRIVATE KEY-----{sep}{}", lines.join(sep));
            if end {
                t.push_str(&format!("{sep}-----END {ty}PRIVATE KEY-----"));
            }
            secret("private_key", t, lines)
        })
}

fn luhn_complete(mut digits: Vec<u8>) -> String {
    // Append the check digit that makes the number Luhn-valid.
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    digits.push(((10 - sum % 10) % 10) as u8);
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

fn card() -> impl Strategy<Value = Secret> {
    (
        select(vec![
            ("4", 16usize),
            ("4", 13),
            ("4", 19),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("6011", 16),
            ("65", 19),
            ("34", 15),
            ("37", 15),
            ("36", 14),
            ("35", 16),
        ]),
        prop::collection::vec(0u8..10, 19),
        select(vec!["", " ", "-"]),
    )
        .prop_map(|((prefix, len), rand, sep)| {
            let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            d.extend_from_slice(&rand[..len - 1 - d.len()]);
            let num = luhn_complete(d);
            let shown = if sep.is_empty() {
                num.clone()
            } else if len == 15 {
                format!("{}{sep}{}{sep}{}", &num[..4], &num[4..10], &num[10..])
            } else {
                num.as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(sep)
            };
            secret("credit_card", shown.clone(), vec![shown, num])
        })
}

fn phone() -> impl Strategy<Value = Secret> {
    ("[2-9][0-9]{2}", "[2-9][0-9]{2}", "[0-9]{4}", 0..7usize).prop_map(|(a, e, l, form)| {
        let t = match form {
            0 => format!("+1{a}{e}{l}"),
            1 => format!("+1 {a}-{e}-{l}"),
            2 => format!("({a}) {e}-{l}"),
            3 => format!("{a}-{e}-{l}"),
            4 => format!("+1 ({a}) {e}-{l}"),
            5 => format!("+44 20 {e}{} {l}", &a[..1]),
            _ => format!("1-{a}-{e}-{l}"),
        };
        secret("phone", t.clone(), vec![t])
    })
}

fn any_secret() -> impl Strategy<Value = Secret> {
    prop_oneof![
        email(),
        "(AKIA|ASIA)[A-Z0-9]{16}".prop_map(whole("aws_access_key")),
        aws_secret(),
        "gh[pousr]_[A-Za-z0-9]{36}".prop_map(whole("github_token")),
        "github_pat_[A-Za-z0-9_]{82}".prop_map(whole("github_token")),
        "sk-(proj-)?[A-Za-z0-9]{30,48}"
            .prop_filter("digit", |s| has_digit(&s[3..]))
            .prop_map(whole("openai_key")),
        "xox[bpas]-[0-9]{10,12}-[0-9]{10,12}-[A-Za-z0-9]{24}".prop_map(whole("slack_token")),
        "T[A-Z0-9]{8}/B[A-Z0-9]{8}/[A-Za-z0-9]{24}".prop_map(|p| secret(
            "slack_webhook",
            format!("https://hooks.slack.com/services/{p}"),
            vec![p]
        )),
        "(sk|rk|pk)_(live|test)_[A-Za-z0-9]{24,99}".prop_map(whole("stripe_key")),
        "AIza[0-9A-Za-z_-]{35}".prop_map(whole("google_api_key")),
        "npm_[A-Za-z0-9]{36}".prop_map(whole("npm_token")),
        "gl(pat|dt|rt)-[A-Za-z0-9_-]{20}".prop_map(whole("gitlab_token")),
        jwt(),
        "em_(live|test)_[a-z0-9]{6,12}_[A-Za-z0-9]{24,32}".prop_map(whole("em_api_key")),
        kv(),
        cli_password(),
        "(hf_[A-Za-z0-9]{34}|dckr_pat_[A-Za-z0-9_-]{27}|hvs\\.[A-Za-z0-9_-]{24,90}|pypi-AgE[A-Za-z0-9_-]{60,120})"
            .prop_map(whole("registry_token")),
        url_password(),
        pem(),
        card(),
        phone(),
    ]
}

/// Delimiters that can surround any secret in real text.
fn delim() -> impl Strategy<Value = &'static str> {
    select(vec![
        " ", "\n", "\t", "\"", "'", "(", ")", "[", "]", "<", ">", ", ", "; ", " | ", "`", "{", "}",
        "\r\n", ": ",
    ])
}

/// Secret-free technical text: versions, timestamps, paths, SHAs, UUIDs, pod
/// names, IPs and ports, ssh targets, exit codes, pids, line numbers.
fn safe_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,10}".prop_filter("no secret keywords", |w| !is_keyword(w)),
        "[A-Z][a-z]{1,8}:?".prop_filter("no secret keywords", |w| !is_keyword(w)),
        "v?[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,3}(-(rc|beta)\\.[0-9])?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{3,6})?Z",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9] \\+0000",
        "(/[a-z_]{1,8}){1,5}(\\.(py|rs|go|js|ts|c|h|java))?(:[0-9]{1,4}(:[0-9]{1,3})?)?",
        "[0-9a-f]{40}",
        "[0-9a-f]{7,12}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "(ledger-api|web|search-indexer|worker)-[0-9a-f]{8,10}-[a-z0-9]{5}",
        "(10|172|192)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{2,5})?",
        "[a-z]{2,8}@[a-z]{2,8}(-[0-9]{2})?",
        "[a-z]{2,8}@[a-z]{2,8}\\.(internal|local|lan|svc)",
        "git@github\\.com:[a-z]{2,8}/[a-z-]{2,12}\\.git",
        "(exit code|status|pid|line|port) [0-9]{1,5}",
        "(exit_code|pid|retries|port)=[0-9]{1,5}",
        "[a-z]{2,8}@[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}",
        "@[a-z]{2,8}/[a-z-]{2,10}@\\^?[0-9]{1,2}\\.[0-9]\\.[0-9]",
        "(error|warning|note)\\[E[0-9]{4}\\]:",
        "#[0-9]{1,2} [0-9]\\.[0-9]{3}",
        "sha256:[0-9a-f]{64}",
    ]
}

/// Words that make the next value a secret by definition (`token: …`).
fn is_keyword(w: &str) -> bool {
    let w = w.trim_end_matches(':').to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "key",
        "bearer",
        "basic",
    ]
    .iter()
    .any(|k| w.ends_with(k))
}

fn safe_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (safe_token(), select(vec![" ", "\n", " ", ", ", ": "])),
        0..40,
    )
    .prop_map(|parts| parts.into_iter().map(|(t, d)| t + d).collect())
}

fn surrounding() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{0,30}", safe_text()]
}

/// 512 cases per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 512;
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn embedded_secrets_never_survive(
        pre in surrounding(),
        d1 in delim(),
        s in any_secret(),
        d2 in delim(),
        post in surrounding(),
    ) {
        let input = format!("{pre}{d1}{}{d2}{post}", s.text);
        let out = redact::redact(&input);
        for v in &s.must_vanish {
            prop_assert!(
                !out.text.contains(v.as_str()),
                "{} secret {:?} survived:\n in: {:?}\nout: {:?}", s.kind, v, input, out.text
            );
        }
        prop_assert!(out.changed());
    }

    #[test]
    fn redaction_is_idempotent(
        parts in prop::collection::vec(
            prop_oneof![
                any_secret().prop_map(|s| s.text),
                safe_token(),
                "\\PC{0,12}",
                delim().prop_map(String::from),
                Just("[REDACTED:password]".to_string()),
            ],
            0..12,
        )
    ) {
        let input: String = parts.concat();
        let once = redact::redact(&input).text.into_owned();
        let twice = redact::redact(&once);
        prop_assert_eq!(&twice.text, &once, "input: {:?}", input);
        prop_assert!(matches!(twice.text, Cow::Borrowed(_)), "second pass allocated");
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let out = redact::redact(&s);
        let again = redact::redact(&out.text);
        prop_assert_eq!(&again.text, &out.text);
    }

    #[test]
    fn arbitrary_ascii_never_panics(s in "[ -~\n]{0,200}") {
        let out = redact::redact(&s);
        let again = redact::redact(&out.text);
        prop_assert_eq!(&again.text, &out.text);
    }

    #[test]
    fn safe_text_is_unchanged(text in safe_text()) {
        let out = redact::redact(&text);
        let spans: Vec<_> = redact::scan(&text)
            .into_iter()
            .map(|m| (m.kind, text[m.range].to_string()))
            .collect();
        prop_assert!(matches!(out.text, Cow::Borrowed(_)), "changed: {:?}\n{:?}", text, spans);
    }
}

#[test]
fn generators_cover_every_kind_family() {
    // Guard against a generator list silently shrinking.
    let kinds = [
        "email",
        "aws_access_key",
        "aws_secret_key",
        "github_token",
        "openai_key",
        "slack_token",
        "slack_webhook",
        "stripe_key",
        "google_api_key",
        "npm_token",
        "gitlab_token",
        "jwt",
        "em_api_key",
        "kv",
        "cli_password",
        "registry_token",
        "url_password",
        "private_key",
        "credit_card",
        "phone",
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = any_secret();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5000 {
        let s = strat.new_tree(&mut runner).unwrap().current();
        seen.insert(s.kind);
    }
    for k in kinds {
        assert!(seen.contains(k), "generator never produced {k}");
    }
}
