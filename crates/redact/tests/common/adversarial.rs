//! Adversarial inputs (256 KiB each) for every detector family: shared by the
//! `adversarial` test (correctness) and the criterion bench (speed).
#![allow(dead_code)]

pub const SIZE: usize = 256 * 1024;

pub fn repeat_to(piece: &str) -> String {
    let mut s = piece.repeat(SIZE / piece.len() + 1);
    s.truncate(SIZE);
    while !s.is_char_boundary(s.len()) {
        s.pop();
    }
    s
}

/// `(name, input)` pairs.
pub fn cases() -> Vec<(&'static str, String)> {
    vec![
        (
            "clean trace",
            repeat_to(
                "2024-06-04T02:00:41Z ERROR at foo.rs:12:5 helm 3.14.2 pod web-58c9f7d6b-vk2rn 10.0.0.1:8080\n",
            ),
        ),
        (
            "pem headers without END",
            repeat_to("-----BEGIN RSA PRIVATE KEY----- "),
        ),
        (
            "pem body without END",
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}",
                repeat_to("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNDU2Nzg5\n")
            ),
        ),
        (
            "unterminated kv quotes",
            repeat_to("password=\"abc password: 'x token="),
        ),
        ("long kv value", format!("password={}", "A".repeat(SIZE))),
        ("at signs", repeat_to("a@b.c@d.e@")),
        ("url userinfo", repeat_to("https://u:p:q:r")),
        ("digit groups", repeat_to("4539 1488 0343 6467 ")),
        (
            "phone-ish digits",
            repeat_to("+1 415-555-01 (415) 555-01 415-555-01"),
        ),
        (
            "jwt prefixes",
            repeat_to("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."),
        ),
        ("base64 run", "Ab1/".repeat(SIZE / 4)),
        ("non-ascii", repeat_to("ünïcödé ✓ 日本語 ╰─> password=ö ")),
        (
            "secrets everywhere",
            repeat_to(
                "AKIA4QX7RZ2LMN8PWT3K j.doe@example.com ghp_R8mZ2kQ4vX9nL1tB7cW3yH6jD0fP5sA2eU8g\n",
            ),
        ),
    ]
}
