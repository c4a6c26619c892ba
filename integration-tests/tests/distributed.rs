//! The separate services (`gateway`, `embedder`, `ingest-writer` binaries) over real NATS
//! JetStream and PostgreSQL and a fake KyroDB speaking gRPC on a real socket. Each test has
//! its own database, NATS prefix (streams deleted at the end) and processes.
//!
//! The binaries must be built (`cargo build --workspace`; `cargo test --workspace` and
//! `cargo nextest run --workspace` do it). nextest runs these tests one at a time (the
//! `heavy` group of .config/nextest.toml); under `cargo test` they take a lock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::events::{Stage, consumers};
use futures::StreamExt as _;
use integration_tests::api::{Api, Reply};
use integration_tests::cluster::{Cluster, ClusterOptions};
use integration_tests::leaks::{Leak, Secrets, assert_no_leaks};
use integration_tests::{PIPELINE_TIMEOUT, START_TIMEOUT, sample_episode};
use reqwest::StatusCode;
use test_support::services::{closed_port, serial, wait_until};

const N: usize = 1_000;

/// Sends `n` distinct captures, all in flight at once (every task waits on one barrier).
fn spawn_captures(api: Api, key: String, n: usize) -> tokio::task::JoinHandle<Vec<Reply>> {
    tokio::spawn(async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (api, key, barrier) = (api.clone(), key.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    api.capture(&key, &sample_episode(i), None).await
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(n);
        for task in tasks {
            replies.push(task.await.expect("capture task"));
        }
        replies
    })
}

/// Every reply is a 202 with a distinct episode id; returns the ids.
fn accepted_ids(replies: &[Reply], n: usize) -> BTreeSet<String> {
    let refused: Vec<String> = replies
        .iter()
        .filter(|r| r.status != StatusCode::ACCEPTED)
        .take(5)
        .map(|r| format!("{} {}", r.status, r.text))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {n} captures were not accepted, e.g. {refused:?}",
        replies
            .iter()
            .filter(|r| r.status != StatusCode::ACCEPTED)
            .count()
    );
    let ids: BTreeSet<String> = replies.iter().map(Reply::episode_id).collect();
    assert_eq!(ids.len(), n, "episode ids answered 202 are not distinct");
    ids
}

/// Waits until exactly `n` episodes are stored (more is an immediate failure).
async fn wait_stored_count(cluster: &Cluster, n: usize) {
    wait_until(
        &format!("{n} stored episodes"),
        PIPELINE_TIMEOUT,
        Duration::from_millis(100),
        || async {
            let count = cluster.stored_count().await;
            assert!(count <= n as i64, "{count} episodes stored, more than {n}");
            if count == n as i64 {
                Ok(())
            } else {
                Err(format!("{count} stored"))
            }
        },
    )
    .await;
}

/// Waits until at least `n` episodes are stored and the consumer `durable` holds a batch
/// it has not acknowledged yet: the moment to kill its process.
async fn wait_mid_run(cluster: &Cluster, n: i64, durable: &str) {
    wait_until(
        &format!("at least {n} stored episodes and a batch in {durable}'s hands"),
        PIPELINE_TIMEOUT,
        Duration::from_millis(5),
        || async {
            let count = cluster.stored_count().await;
            let unacked = cluster.unacked(durable).await;
            if count >= n && unacked > 0 {
                Ok(())
            } else {
                Err(format!("{count} stored, {unacked} unacknowledged"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_captures_are_stored_exactly_once() {
    let _serial = serial().await;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let tenant = cluster.create_tenant("acme").await;

    let started = Instant::now();
    let replies = spawn_captures(cluster.api.clone(), tenant.key.clone(), N)
        .await
        .expect("captures");
    let captured_in = started.elapsed();
    let accepted = accepted_ids(&replies, N);

    wait_stored_count(&cluster, N).await;
    let stored_in = started.elapsed();
    cluster.wait_drained(PIPELINE_TIMEOUT).await;
    cluster.assert_exactly_stored(&accepted, &tenant).await;
    eprintln!(
        "{N} concurrent captures: all 202 after {captured_in:.1?}, all stored after {stored_in:.1?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_writer_killed_mid_run_loses_and_duplicates_nothing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let tenant = cluster.create_tenant("acme").await;

    let started = Instant::now();
    let captures = spawn_captures(cluster.api.clone(), tenant.key.clone(), N);
    wait_mid_run(&cluster, 100, consumers::INGEST_WRITER).await;
    cluster.writer().kill9();
    let at_kill = cluster.stored_count().await;
    let abandoned = cluster.unacked(consumers::INGEST_WRITER).await;
    assert!(
        0 < at_kill && at_kill < N as i64,
        "the kill must land mid-run; {at_kill} of {N} were stored"
    );
    cluster.writer().restart();
    cluster
        .writer()
        .wait_for_log("consumer started", START_TIMEOUT)
        .await;

    let accepted = accepted_ids(&captures.await.expect("captures"), N);
    wait_stored_count(&cluster, N).await;
    cluster.wait_drained(PIPELINE_TIMEOUT).await;
    cluster.assert_exactly_stored(&accepted, &tenant).await;
    eprintln!(
        "ingest-writer kill -9 with {at_kill}/{N} stored and {abandoned} unacknowledged in its \
         hands; all {N} stored exactly once after {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedder_killed_mid_run_loses_and_duplicates_nothing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let tenant = cluster.create_tenant("acme").await;

    let started = Instant::now();
    let captures = spawn_captures(cluster.api.clone(), tenant.key.clone(), N);
    wait_mid_run(&cluster, 100, consumers::EMBEDDER).await;
    cluster.embedder().kill9();
    let abandoned = cluster.unacked(consumers::EMBEDDER).await;
    let embedded_at_kill = cluster.events(Stage::Embedded).await;
    let stored_at_kill = cluster.stored_count().await;
    assert!(
        0 < embedded_at_kill && embedded_at_kill < N as u64,
        "the kill must land mid-run; {embedded_at_kill} of {N} were embedded"
    );
    cluster.embedder().restart();
    cluster
        .embedder()
        .wait_for_log("consumer started", START_TIMEOUT)
        .await;

    let accepted = accepted_ids(&captures.await.expect("captures"), N);
    wait_stored_count(&cluster, N).await;
    cluster.wait_drained(PIPELINE_TIMEOUT).await;
    cluster.assert_exactly_stored(&accepted, &tenant).await;
    assert_eq!(
        cluster.events(Stage::Embedded).await,
        N as u64,
        "episode.embedded events (de-duplicated by Nats-Msg-Id)"
    );
    eprintln!(
        "embedder kill -9 with {embedded_at_kill}/{N} embedded ({stored_at_kill} stored) and \
         {abandoned} unacknowledged in its hands; \
         all {N} stored exactly once after {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_answers_503_and_stores_nothing() {
    let _serial = serial().await;
    let cluster = Cluster::start(ClusterOptions {
        services_nats_url: Some(format!("nats://127.0.0.1:{}", closed_port())),
        pipeline: false,
    })
    .await;
    let tenant = cluster.create_tenant("acme").await;

    let ready = cluster.api.get("/health/ready").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert_eq!(ready.json["checks"]["event_bus"], "unavailable");

    for i in 0..6 {
        let idempotency_key = format!("outage-{i}");
        let key = (i % 2 == 0).then_some(idempotency_key.as_str());
        let reply = cluster
            .api
            .capture(&tenant.key, &sample_episode(i), key)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "capture {i} with NATS down: {}",
            reply.text
        );
        let retry_after = reply
            .header("retry-after")
            .unwrap_or_else(|| panic!("503 without Retry-After: {:?}", reply.headers));
        assert!(
            retry_after.parse::<u64>().is_ok_and(|s| s > 0),
            "Retry-After {retry_after:?} is not a positive number of seconds"
        );
        assert!(
            reply
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "503 content type: {:?}",
            reply.header("content-type")
        );
        assert_eq!(
            reply.json["error"]["code"], "service_unavailable",
            "{}",
            reply.text
        );
        assert!(
            reply.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            reply.text
        );
        assert!(
            !reply.text.contains("127.0.0.1"),
            "a 503 body must not leak internals: {}",
            reply.text
        );
    }

    assert_eq!(cluster.stored_count().await, 0, "episodes stored");
    for stream in cluster.topo.stream_names() {
        assert!(
            cluster.js.get_stream(&stream).await.is_err(),
            "stream {stream} exists: something reached NATS"
        );
    }
    assert!(
        !cluster
            .gateway
            .texts()
            .iter()
            .any(|l| l.contains("\"status\":202")),
        "the gateway answered 202 while NATS was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_one_episode_and_refuses_another_body() {
    let _serial = serial().await;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let tenant = cluster.create_tenant("acme").await;
    let api = &cluster.api;
    let body = sample_episode(1);

    let first = api.capture(&tenant.key, &body, Some("retry-1")).await;
    let id = first.episode_id();
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = api.capture(&tenant.key, &body, Some("retry-1")).await;
    assert_eq!(
        second.episode_id(),
        id,
        "a retry must get the same episode id"
    );
    assert_eq!(second.header("idempotent-replayed"), Some("true"));

    api.wait_stored(
        &tenant.key,
        &id,
        PIPELINE_TIMEOUT,
        Duration::from_millis(50),
    )
    .await;
    let after_storage = api.capture(&tenant.key, &body, Some("retry-1")).await;
    assert_eq!(
        after_storage.episode_id(),
        id,
        "a late retry must get the same id"
    );

    let mismatch = api
        .capture(&tenant.key, &sample_episode(2), Some("retry-1"))
        .await;
    assert_eq!(
        mismatch.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        mismatch.text
    );
    assert_eq!(
        mismatch.json["error"]["code"], "idempotency_key_mismatch",
        "{}",
        mismatch.text
    );

    // Retries that race each other.
    let racing = sample_episode(3);
    let replies = futures::future::join_all(
        (0..20).map(|_| api.capture(&tenant.key, &racing, Some("retry-2"))),
    )
    .await;
    let raced: BTreeSet<String> = replies.iter().map(Reply::episode_id).collect();
    assert_eq!(
        raced.len(),
        1,
        "racing retries got different ids: {raced:?}"
    );
    let raced_id = raced.first().cloned().unwrap_or_default();
    api.wait_stored(
        &tenant.key,
        &raced_id,
        PIPELINE_TIMEOUT,
        Duration::from_millis(50),
    )
    .await;

    cluster.wait_drained(PIPELINE_TIMEOUT).await;
    let accepted = BTreeSet::from([id, raced_id]);
    cluster.assert_exactly_stored(&accepted, &tenant).await;
    assert_eq!(
        cluster.events(Stage::Captured).await,
        2,
        "episode.captured events (replays are de-duplicated)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_episode_is_not_found() {
    let _serial = serial().await;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.create_tenant("alice").await;
    let bob = cluster.create_tenant("bob").await;
    let api = &cluster.api;

    let id = api
        .capture(&alice.key, &sample_episode(7), Some("shared-key"))
        .await
        .episode_id();
    let assert_hidden = |reply: Reply, when: &str| {
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "bob reads alice's episode {when}: {}",
            reply.text
        );
        assert_eq!(reply.json["error"]["code"], "not_found", "{}", reply.text);
        assert!(
            !reply.text.contains("service-7"),
            "the 404 body leaks the episode"
        );
    };
    assert_hidden(api.episode(&bob.key, &id).await, "while processing");
    let (alices, _) = api
        .wait_stored(&alice.key, &id, PIPELINE_TIMEOUT, Duration::from_millis(50))
        .await;
    assert_eq!(alices["episode_id"], id.as_str());
    assert_hidden(api.episode(&bob.key, &id).await, "once stored");

    // Idempotency keys are per tenant: bob's "shared-key" is a different capture.
    let bobs = api
        .capture(&bob.key, &sample_episode(8), Some("shared-key"))
        .await
        .episode_id();
    assert_ne!(bobs, id);
    api.wait_stored(&bob.key, &bobs, PIPELINE_TIMEOUT, Duration::from_millis(50))
        .await;
    assert_hidden(api.episode(&bob.key, &id).await, "after bob's own capture");
    let alice_reads_bobs = api.episode(&alice.key, &bobs).await;
    assert_eq!(alice_reads_bobs.status, StatusCode::NOT_FOUND);
}

/// One message seen on `<prefix>.>`.
struct Seen {
    subject: String,
    headers: String,
    payload: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_of_the_dev_set_is_never_stored_published_or_logged() {
    let _serial = serial().await;
    let episodes = test_support::eval::dev_episodes();
    let secrets = Secrets::new(episodes.iter().flat_map(|e| e.pii.iter()));
    assert!(
        secrets.len() >= 20,
        "the dev set lists {} secrets",
        secrets.len()
    );
    // The checker is not blind: every secret is found in what is sent.
    let sent: String = episodes.iter().map(|e| e.capture.to_string()).collect();
    for secret in episodes.iter().flat_map(|e| e.pii.iter()) {
        assert!(
            !Secrets::new([secret]).find("sent", &sent).is_empty(),
            "{secret:?} is not in the capture bodies"
        );
    }

    let cluster = Cluster::start(ClusterOptions::default()).await;
    let tenant = cluster.create_tenant("pii").await;

    // A core-NATS subscriber on everything under the prefix, from before the first capture.
    let mut subscriber = cluster
        .nats
        .subscribe(cluster.topo.wildcard())
        .await
        .expect("subscribe");
    cluster.nats.flush().await.expect("flush");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let recorder = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let headers = message
                    .headers
                    .as_ref()
                    .map(|h| {
                        h.iter()
                            .map(|(k, vs)| {
                                let vs: Vec<&str> = vs.iter().map(|v| v.as_str()).collect();
                                format!("{k}: {}", vs.join(", "))
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                    subject: message.subject.to_string(),
                    headers,
                    payload: message.payload.to_vec(),
                });
            }
        })
    };

    let ids: Vec<(String, String)> = futures::stream::iter(&episodes)
        .map(|e| {
            let (api, key) = (&cluster.api, &tenant.key);
            async move {
                let reply = api.capture(key, &e.capture, None).await;
                assert_eq!(
                    reply.status,
                    StatusCode::ACCEPTED,
                    "{}: {}",
                    e.id,
                    reply.text
                );
                (e.id.clone(), reply.episode_id())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    wait_stored_count(&cluster, episodes.len()).await;
    cluster.wait_drained(PIPELINE_TIMEOUT).await;

    let mut leaks: Vec<Leak> = Vec::new();
    // Through the API.
    for (dev_id, id) in &ids {
        let reply = cluster.api.episode(&tenant.key, id).await;
        assert_eq!(reply.status, StatusCode::OK, "{dev_id}: {}", reply.text);
        assert_eq!(reply.json["status"], "stored", "{dev_id}");
        leaks.extend(secrets.find(&format!("GET {id} ({dev_id})"), &reply.text));
    }
    // The system of record, through its types and raw.
    for stored in cluster.stored_episodes().await {
        let text = format!(
            "{} {:?}",
            serde_json::to_string(&stored.episode).expect("episode json"),
            stored.redactions
        );
        leaks.extend(secrets.find(&format!("stored episode {}", stored.id), &text));
    }
    let rows = integration_tests::rawdb::dump_postgres(&cluster.db.url).await;
    assert!(
        rows.len() >= episodes.len(),
        "the raw dump saw {} rows",
        rows.len()
    );
    for (table, row) in &rows {
        leaks.extend(secrets.find(&format!("table {table}"), row));
    }
    // Vector metadata sent to KyroDB.
    for request in cluster.kyrodb.requests() {
        let text = match &request.body {
            test_support::kyrodb_fake::RecordedBody::Insert(r) => {
                format!("{} {:?}", r.namespace, r.metadata)
            }
            test_support::kyrodb_fake::RecordedBody::BulkInsert(rs) => rs
                .iter()
                .map(|r| format!("{} {:?}\n", r.namespace, r.metadata))
                .collect(),
            other => format!("{other:?}"),
        };
        leaks.extend(secrets.find(&format!("KyroDB {}", request.rpc), &text));
    }
    // Every NATS payload and header under the prefix.
    recorder.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    for stage in Stage::PIPELINE {
        let marker = format!(".episodes.{}.", stage.as_str());
        let n = seen.iter().filter(|m| m.subject.contains(&marker)).count();
        assert!(
            n >= episodes.len(),
            "the subscriber saw only {n} {} events",
            stage.as_str()
        );
    }
    for message in &seen {
        leaks.extend(secrets.find(
            &format!("NATS headers on {}", message.subject),
            &message.headers,
        ));
        leaks.extend(secrets.find_bytes(
            &format!("NATS payload on {}", message.subject),
            &message.payload,
        ));
    }
    // Every log line of every process.
    let lines = cluster.log_lines();
    assert!(!lines.is_empty());
    for (process, line) in &lines {
        leaks.extend(secrets.find(&format!("{process} log"), line));
    }
    eprintln!(
        "checked {} secrets over {} episodes, {} DB rows, {} KyroDB requests, {} NATS messages, {} log lines",
        secrets.len(),
        ids.len(),
        rows.len(),
        cluster.kyrodb.request_count(),
        seen.len(),
        lines.len()
    );
    assert_no_leaks("the distributed deployment", &leaks);
}
