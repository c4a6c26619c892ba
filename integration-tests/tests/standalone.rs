//! The `episodic-memory` binary — gateway, embedder and ingest-writer in one process over
//! SQLite, the embedded bus and the embedded index — on a temporary data directory.
//!
//! The binary must be built (`cargo build --workspace`; `cargo test --workspace` and
//! `cargo nextest run --workspace` do it).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use integration_tests::leaks::{Leak, Secrets, assert_no_leaks};
use integration_tests::standalone::{Standalone, create_tenant};
use integration_tests::{PIPELINE_TIMEOUT, sample_episode};
use reqwest::StatusCode;
use test_support::services::serial;

/// The promise of the README: a captured episode is readable (stored) within a second.
const READABLE_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_episode_is_stored_within_one_second() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("data dir");
    let tenant = create_tenant(dir.path(), "acme").await;
    let app = Standalone::start(dir.path()).await;

    // The first capture pays for verifying the key (argon2, before the 202) and for ONNX
    // Runtime's first inference (after it); the next ones are the steady state.
    let mut times = Vec::new();
    for i in 0..6 {
        let sent = Instant::now();
        let id = app
            .api
            .capture(&tenant.key, &sample_episode(i), None)
            .await
            .episode_id();
        let accepted = Instant::now();
        // Poll well past the deadline, so a slow store is measured rather than timed out.
        let (view, _) = app
            .api
            .wait_stored(
                &tenant.key,
                &id,
                Duration::from_secs(30),
                Duration::from_millis(5),
            )
            .await;
        assert_eq!(view["episode_id"], id.as_str());
        assert_eq!(view["processing"]["text_embedding"]["dimension"], 384);
        times.push((sent.elapsed(), accepted.elapsed()));
    }
    eprintln!("(since the request was sent, since its 202) until GET says stored: {times:.1?}");
    for (i, (since_sent, since_accepted)) in times.iter().enumerate() {
        assert!(
            *since_accepted < READABLE_WITHIN,
            "episode {i} was stored {since_accepted:?} after its 202 (all: {times:.1?})"
        );
        assert!(
            i == 0 || *since_sent < READABLE_WITHIN,
            "episode {i} was stored {since_sent:?} after it was sent (all: {times:.1?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_202_loses_no_accepted_episode() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("data dir");
    let tenant = create_tenant(dir.path(), "acme").await;
    let mut app = Standalone::start(dir.path()).await;
    // Verify the key once, so the burst below is only captures.
    let warm = app.api.capture(&tenant.key, &sample_episode(0), None).await;
    let warm_id = warm.episode_id();
    app.api
        .wait_stored(
            &tenant.key,
            &warm_id,
            PIPELINE_TIMEOUT,
            Duration::from_millis(10),
        )
        .await;

    const BURST: usize = 60;
    let bodies: Vec<_> = (1..=BURST).map(sample_episode).collect();
    let replies = futures::future::join_all(
        bodies
            .iter()
            .map(|body| app.api.capture(&tenant.key, body, None)),
    )
    .await;
    // kill -9 the moment the last 202 arrived: most are still in the pipeline.
    app.kill9();
    let accepted: BTreeSet<String> = replies.iter().map(|r| r.episode_id()).collect();
    assert_eq!(accepted.len(), BURST);

    let stored_before = {
        let db = app.open_db().await;
        let n = db.count_all_episodes().await.expect("count") - 1;
        db.close();
        n
    };

    app.restart().await;
    for id in &accepted {
        app.api
            .wait_stored(&tenant.key, id, PIPELINE_TIMEOUT, Duration::from_millis(20))
            .await;
    }
    // Let the pipeline go quiet, then stop the process and read the system of record.
    app.kill9();
    let db = app.open_db().await;
    let mut stored = Vec::new();
    let mut after = None;
    loop {
        let page = db.scan_episodes(after, 500).await.expect("scan");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        stored.extend(page);
    }
    db.close();
    let ids: Vec<String> = stored.iter().map(|e| e.id.to_string()).collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "an episode is stored twice");
    let mut expected = accepted.clone();
    expected.insert(warm_id);
    assert_eq!(
        unique, expected,
        "the stored episodes are not exactly the accepted ones"
    );
    eprintln!(
        "kill -9 right after {BURST} × 202: {stored_before} were stored before the kill; \
         after the restart all {BURST} are stored exactly once"
    );
}

/// Every file under `dir`, raw.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read data dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_of_the_dev_set_is_never_stored_or_logged() {
    let _serial = serial().await;
    let episodes = test_support::eval::dev_episodes();
    let secrets = Secrets::new(episodes.iter().flat_map(|e| e.pii.iter()));
    assert!(
        secrets.len() >= 20,
        "the dev set lists {} secrets",
        secrets.len()
    );

    let dir = tempfile::tempdir().expect("data dir");
    let tenant = create_tenant(dir.path(), "pii").await;
    let mut app = Standalone::start(dir.path()).await;
    let ids: Vec<(String, String)> = futures::stream::iter(&episodes)
        .map(|e| {
            let (api, key) = (&app.api, &tenant.key);
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

    let mut leaks: Vec<Leak> = Vec::new();
    for (dev_id, id) in &ids {
        let (view, _) = app
            .api
            .wait_stored(&tenant.key, id, PIPELINE_TIMEOUT, Duration::from_millis(20))
            .await;
        leaks.extend(secrets.find(&format!("GET {id} ({dev_id})"), &view.to_string()));
    }
    // Stop the process, then read every byte it wrote: the database, the bus, the indexes.
    app.kill9();
    let written = files(dir.path());
    assert!(
        written.iter().any(|(p, _)| p.ends_with("episodic.db")),
        "no database among {:?}",
        written.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &written {
        leaks.extend(secrets.find_bytes(path, bytes));
    }
    let lines = app.process.texts();
    for line in &lines {
        leaks.extend(secrets.find("episodic-memory log", line));
    }
    eprintln!(
        "checked {} secrets over {} episodes, {} files ({} bytes), {} log lines",
        secrets.len(),
        ids.len(),
        written.len(),
        written.iter().map(|(_, b)| b.len()).sum::<usize>(),
        lines.len()
    );
    assert_no_leaks("the standalone deployment", &leaks);
}
