//! Redaction throughput on a 64 KiB error trace, clean and with secrets.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "../tests/common/adversarial.rs"]
mod adversarial;

/// Realistic trace lines: versions, timestamps, paths, SHAs, pod names, IPs.
const CLEAN_LINES: &[&str] = &[
    "2024-06-04T02:00:41.381927Z ERROR ledger_api::db: connection to server at \"10.0.12.155\", port 5432 failed: FATAL:  password authentication failed for user \"app\"",
    "    at org.springframework.beans.factory.support.AbstractBeanFactory.doGetBean(AbstractBeanFactory.java:333)",
    "error[E0432]: unresolved import `tokio::sync::watch` --> src/main.rs:12:5 (rustc 1.78.0, tokio 1.37.0)",
    "Back-off restarting failed container ledger-api in pod ledger-api-58c9f7d6b-vk2rn_ledger(7f9e0c2a-1b3d-4e5f-8a9b-0c1d2e3f4a5b)",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b Author: ci <runner@gha-runner-7f9k2> exit code 137 pid 41234",
    "npm ERR! peer react@\"^17.0.0\" from @testing-library/react@12.1.5 node_modules/@testing-library/react",
    "git@github.com: Permission denied (publickey). fatal: Could not read from remote repository.",
    "  File \"/usr/lib/python3.12/site-packages/pip/_internal/cli/base_command.py\", line 180, in exc_logging_wrapper",
];

const SECRET_LINES: &[&str] = &[
    "psql \"postgresql://analytics_ro:Qz7#kLm2@analytics-db.acme.internal:5432/warehouse\" -f weekly_export.sql",
    "aws configure set aws_secret_access_key 9vJq2LmR8sT4wX6yZ0aB3cD5eF7gH1iK2jL4mN6p # AKIA4QX7RZ2LMN8PWT3K",
    "User \"maria.kowalski@acme-corp.com\" cannot create resource \"pods/exec\"; call +1 415-555-0139",
    "\"Authorization\": \"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c3JfOTE4MiJ9.PtYgjmUhBel31iEl2hpChYgCfrL1spNxnyVmihA_2O7\"",
    "DB_PASSWORD=hunter2 GITHUB_TOKEN=ghp_R8mZ2kQ4vX9nL1tB7cW3yH6jD0fP5sA2eU8g card 4539 1488 0343 6467",
];

fn build(lines: &[&[&str]], size: usize) -> String {
    let mut out = String::with_capacity(size + 256);
    let mut i = 0usize;
    while out.len() < size {
        let set = lines[i % lines.len()];
        out.push_str(set[(i / lines.len()) % set.len()]);
        out.push('\n');
        i += 1;
    }
    out.truncate(size);
    while !out.is_char_boundary(out.len()) {
        out.pop();
    }
    out
}

fn bench(c: &mut Criterion) {
    const SIZE: usize = 64 * 1024;
    let clean = build(&[CLEAN_LINES], SIZE);
    // One secret line for every four clean lines.
    let secret = build(
        &[
            CLEAN_LINES,
            CLEAN_LINES,
            CLEAN_LINES,
            CLEAN_LINES,
            SECRET_LINES,
        ],
        SIZE,
    );
    assert_eq!(
        redact::redact(&clean).total(),
        0,
        "the clean trace must stay clean"
    );
    assert!(redact::redact(&secret).total() > 100);
    let mut g = c.benchmark_group("redact_64k");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("clean", |b| {
        b.iter(|| redact::redact(black_box(&clean)).total())
    });
    g.bench_function("with_secrets", |b| {
        b.iter(|| redact::redact(black_box(&secret)).total())
    });
    g.finish();
}

/// Super-linear behaviour would show here: 256 KiB of adversarial input per detector family.
fn bench_adversarial(c: &mut Criterion) {
    let mut group = c.benchmark_group("adversarial_256k");
    group.sample_size(10);
    for (name, input) in adversarial::cases() {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| b.iter(|| redact::redact(black_box(&input))));
    }
    group.finish();
}

criterion_group!(benches, bench, bench_adversarial);
criterion_main!(benches);
