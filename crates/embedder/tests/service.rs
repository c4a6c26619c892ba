//! The embedder service with the real model, on the embedded durable bus: captured
//! episodes become `episode.embedded` events, and query texts are answered over
//! request-reply, micro-batched.

use std::sync::Arc;
use std::time::Duration;

use bus::{BatchHandler, Bus, EmbeddedBus, EmbeddedBusConfig, Incoming, Outcome};
use common::events::{
    EmbedTextReply, Envelope, EpisodeCaptured, EpisodeEmbedded, ImageStatus, Topology,
};
use common::{Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use embedder::batch::{BatchError, QueryBatcher};
use embedder::service::{CapturedHandler, EmbedTextResponder};
use embedder::{EmbedderDeps, ImageModelSettings, ModelSettings, Models, QueryBatchSettings};
use tokio_util::sync::CancellationToken;

fn settings(image: bool) -> ModelSettings {
    ModelSettings {
        dir: Some(test_support::model::model_dir()),
        ort_dylib: Some(test_support::model::ort_dylib()),
        image: image.then(|| ImageModelSettings {
            path: test_support::model::test_vision_model(),
            name: "test-vision".into(),
            input_name: "pixel_values".into(),
            output_name: "image_embeds".into(),
            image_size: 224,
            mean: None,
            std: None,
        }),
        ..ModelSettings::default()
    }
}

async fn models(image: bool) -> Models {
    let s = settings(image);
    tokio::task::spawn_blocking(move || s.load())
        .await
        .expect("task")
        .expect("model")
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn captured(tenant: TenantId, goal: &str, screenshot: Option<&[u8]>) -> Envelope<EpisodeCaptured> {
    use base64::Engine as _;
    let episode_id = EpisodeId::new();
    let episode = Episode::parse(EpisodeFields {
        goal: Some(goal.into()),
        error_trace: "Error: EACCES: permission denied, mkdir '/usr/lib/node_modules'".into(),
        tool_chain: vec!["npm".into()],
        screenshot: screenshot.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        ..Default::default()
    })
    .expect("valid");
    Envelope::new(
        tenant,
        EpisodeCaptured {
            episode_id,
            vector_id: VectorId::for_episode(tenant, episode_id),
            captured_at: common::time_util::now_micros(),
            episode,
            redactions: vec![],
        },
        common::time_util::now_micros(),
    )
}

struct Env {
    bus: EmbeddedBus,
    topology: Topology,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(dir.path().join("bus.db"), EmbeddedBusConfig::default())
        .await
        .expect("bus");
    let topology = Topology::new("te").expect("prefix");
    bus::ensure_topology(&bus, &topology)
        .await
        .expect("topology");
    Env {
        bus,
        topology,
        _dir: dir,
    }
}

/// Reads every `episode.embedded` event the handler published, in the order of `sent`
/// (publishes run concurrently, so stream order is arbitrary).
async fn embedded_events(
    env: &Env,
    sent: &[Envelope<EpisodeCaptured>],
) -> Vec<Envelope<EpisodeEmbedded>> {
    let n = sent.len();
    let spec = env.topology.ingest_writer_consumer();
    let mut sub = env.bus.subscribe(&spec).await.expect("subscribe");
    let mut out: Vec<Envelope<EpisodeEmbedded>> = Vec::new();
    while out.len() < n {
        let batch = sub.fetch(n, Duration::from_secs(5)).await.expect("fetch");
        assert!(!batch.is_empty(), "expected {n} events, got {}", out.len());
        for d in batch {
            out.push(serde_json::from_slice(&d.payload).expect("embedded event"));
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(out.len(), n, "no extra events");
    sent.iter()
        .map(|e| {
            out.iter()
                .find(|o| o.data.episode_id == e.data.episode_id)
                .cloned()
                .expect("an embedded event for every captured one")
        })
        .collect()
}

#[tokio::test]
async fn captured_episodes_are_embedded_with_the_real_model() {
    let env = env().await;
    let models = models(false).await;
    let handler = CapturedHandler::new(EmbedderDeps {
        bus: Arc::new(env.bus.clone()),
        topology: env.topology.clone(),
        models: models.clone(),
    });
    let tenant = TenantId::new();
    let events = [
        captured(tenant, "Install eslint globally", None),
        captured(tenant, "Publish the icons package", Some(&png())),
        captured(tenant, "Bake bread", None),
    ];
    let batch = events
        .iter()
        .map(|e| Incoming {
            event: e.clone(),
            subject: "s".into(),
            headers: vec![],
            delivered: 1,
            stream_sequence: 1,
        })
        .collect();
    let outcomes = handler.handle(batch).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack)),
        "{outcomes:?}"
    );

    let published = embedded_events(&env, &events).await;
    for (sent, got) in events.iter().zip(&published) {
        assert_eq!(got.data.episode_id, sent.data.episode_id);
        assert_eq!(got.data.text.model, "all-MiniLM-L6-v2");
        assert_eq!(got.data.text.vector.dim(), 384);
        // The published vector is the model's embedding of the composed text.
        let direct = models
            .embed_texts(vec![embedder::compose::episode_text(&sent.data.episode)])
            .await
            .expect("embed");
        assert!(got.data.text.vector.cosine(&direct[0]) > 0.9999);
    }
    assert_eq!(published[0].data.image_status, ImageStatus::None);
    // No image model configured: stored, marked, nothing fails.
    assert_eq!(published[1].data.image_status, ImageStatus::NotConfigured);
    assert!(published[1].data.image.is_none());
    assert!(published[1].data.episode.screenshot().is_some());
    // Semantics: the two npm permission failures are closer to each other than to bread.
    let (a, b, c) = (
        &published[0].data.text.vector,
        &published[1].data.text.vector,
        &published[2].data.text.vector,
    );
    assert!(a.cosine(b) > a.cosine(c));
}

#[tokio::test]
async fn screenshots_are_embedded_when_an_image_model_is_configured() {
    let env = env().await;
    let handler = CapturedHandler::new(EmbedderDeps {
        bus: Arc::new(env.bus.clone()),
        topology: env.topology.clone(),
        models: models(true).await,
    });
    let tenant = TenantId::new();
    // A PNG signature followed by garbage: accepted at capture, undecodable here.
    let mut broken = b"\x89PNG\r\n\x1a\n".to_vec();
    broken.extend_from_slice(&[7u8; 64]);
    let events = [
        captured(tenant, "with image", Some(&png())),
        captured(tenant, "with broken image", Some(&broken)),
    ];
    let outcomes = handler
        .handle(
            events
                .iter()
                .map(|e| Incoming {
                    event: e.clone(),
                    subject: "s".into(),
                    headers: vec![],
                    delivered: 1,
                    stream_sequence: 1,
                })
                .collect(),
        )
        .await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack)),
        "{outcomes:?}"
    );
    let published = embedded_events(&env, &events).await;
    assert_eq!(published[0].data.image_status, ImageStatus::Embedded);
    let image = published[0].data.image.as_ref().expect("image vector");
    assert_eq!(image.vector.dim(), 512);
    assert_eq!(image.model, "test-vision");
    assert_eq!(published[1].data.image_status, ImageStatus::Failed);
    assert!(published[1].data.image.is_none());
}

#[tokio::test]
async fn query_texts_are_answered_over_request_reply() {
    let env = env().await;
    let models = models(false).await;
    let shutdown = CancellationToken::new();
    let server = env
        .bus
        .serve(
            &env.topology.embed_text_subject(),
            &env.topology.embed_queue_group(),
            Arc::new(EmbedTextResponder::new(
                &models,
                &QueryBatchSettings::default(),
            )),
            shutdown.clone(),
        )
        .await
        .expect("serve");
    let ask = |payload: &'static str| {
        let bus = env.bus.clone();
        let subject = env.topology.embed_text_subject();
        async move {
            let reply = bus
                .request(&subject, payload.into(), Duration::from_secs(10))
                .await
                .expect("reply");
            serde_json::from_slice::<EmbedTextReply>(&reply).expect("reply json")
        }
    };
    match ask(r#"{"texts": ["npm EACCES permission denied", "docker pull unauthorized"]}"#).await {
        EmbedTextReply::Ok {
            model,
            dimension,
            embeddings,
        } => {
            assert_eq!(
                (model.as_str(), dimension, embeddings.len()),
                ("all-MiniLM-L6-v2", 384, 2)
            );
            let direct = models
                .embed_texts(vec!["docker pull unauthorized".into()])
                .await
                .expect("embed");
            assert!(embeddings[1].cosine(&direct[0]) > 0.9999);
        }
        other => panic!("expected ok, got {other:?}"),
    }
    for bad in [
        r#"{"texts": []}"#,
        "not json",
        r#"{"texts": ["x"], "extra": 1}"#,
    ] {
        match ask(bad).await {
            EmbedTextReply::Error { code, .. } => assert_eq!(code, "invalid_request", "{bad}"),
            other => panic!("{bad}: expected an error, got {other:?}"),
        }
    }
    shutdown.cancel();
    let _ = server.await;
}

/// Distinct, short, query-like texts.
fn queries(n: usize) -> Vec<String> {
    let subjects = [
        "npm install fails with EACCES permission denied",
        "docker pull unauthorized: authentication required",
        "kubectl apply forbidden for the service account",
        "cargo build cannot find the openssl headers",
        "pytest ModuleNotFoundError for a local package",
    ];
    (0..n)
        .map(|i| format!("{} (attempt {i})", subjects[i % subjects.len()]))
        .collect()
}

/// A text long enough to be truncated at 256 tokens: a batch of these keeps the worker
/// busy for a good fraction of a second.
fn long_text(i: usize) -> String {
    (0..120)
        .map(|w| format!("frame{i} at module_{w}::handler (src/worker.rs:{w})"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The un-batched embedding of one text: one model call of its own.
async fn single(models: &Models, text: &str) -> common::Embedding {
    models
        .embed_texts(vec![text.to_owned()])
        .await
        .expect("embed")
        .remove(0)
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_over_request_reply_are_batched_and_answered_in_order() {
    let env = env().await;
    let models = models(false).await;
    let shutdown = CancellationToken::new();
    let responder = Arc::new(EmbedTextResponder::new(
        &models,
        &QueryBatchSettings::default(),
    ));
    let server = env
        .bus
        .serve(
            &env.topology.embed_text_subject(),
            &env.topology.embed_queue_group(),
            responder.clone(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
    // 20 single-text requests and one carrying three texts (it joins a batch as a group).
    let mut requests: Vec<Vec<String>> = queries(20).into_iter().map(|q| vec![q]).collect();
    requests.push(vec![
        "terraform state lock timeout".into(),
        "git push rejected non-fast-forward".into(),
        "helm upgrade failed: another operation in progress".into(),
    ]);
    let asks = requests.iter().map(|texts| {
        let bus = env.bus.clone();
        let subject = env.topology.embed_text_subject();
        let payload = serde_json::to_vec(&serde_json::json!({ "texts": texts })).expect("json");
        async move {
            let reply = bus
                .request(&subject, payload.into(), Duration::from_secs(30))
                .await
                .expect("reply");
            match serde_json::from_slice::<EmbedTextReply>(&reply).expect("reply json") {
                EmbedTextReply::Ok { embeddings, .. } => embeddings,
                other => panic!("expected ok, got {other:?}"),
            }
        }
    });
    let answers = futures::future::join_all(asks).await;

    let mut expected = Vec::new();
    for texts in &requests {
        for text in texts {
            expected.push(single(&models, text).await);
        }
    }
    let got: Vec<common::Embedding> = answers.into_iter().flatten().collect();
    assert_eq!(got.len(), expected.len(), "one vector per text");
    for (i, vector) in got.iter().enumerate() {
        let own = vector.cosine(&expected[i]);
        assert!(
            own > 0.9999,
            "text {i}: cosine {own} with its own embedding"
        );
        // Distinct texts: no other text's embedding matches as well (right order).
        for (j, other) in expected.iter().enumerate() {
            if j != i {
                assert!(vector.cosine(other) < own, "text {i} looks like text {j}");
            }
        }
    }
    let stats = responder.batcher().stats();
    assert_eq!(stats.requests, 21, "{stats:?}");
    assert_eq!(stats.texts, 23, "{stats:?}");
    assert!(stats.largest_batch > 1, "no batch formed: {stats:?}");
    assert!(stats.batches < 21, "{stats:?}");
    assert_eq!(
        (stats.failed, stats.shed, stats.overloaded),
        (0, 0, 0),
        "{stats:?}"
    );
    shutdown.cancel();
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_longer_than_max_queue_wait_is_shed() {
    let models = models(false).await;
    let batcher = QueryBatcher::start(
        models.text.clone(),
        &QueryBatchSettings {
            max_batch: 8,
            max_queue_wait: Duration::from_millis(100),
            ..QueryBatchSettings::default()
        },
    );
    assert_eq!(models.text.sessions(), 1, "one worker");
    // Keep the only worker busy with a batch of long texts...
    let busy = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.embed((0..8).map(long_text).collect()).await }
    });
    until("the worker took the long batch", || {
        batcher.stats().batches == 1 && batcher.queued() == 0
    })
    .await;
    // ...so that this one waits behind it for longer than 100 ms.
    let started = std::time::Instant::now();
    let shed = batcher.embed(vec!["npm ERR! 404 Not Found".into()]).await;
    let busy = busy
        .await
        .expect("task")
        .expect("the long batch is embedded");
    assert_eq!(busy.len(), 8);
    assert!(
        started.elapsed() > Duration::from_millis(100),
        "the long batch was too quick to test shedding: {:?}",
        started.elapsed()
    );
    match shed {
        Err(BatchError::Shed { waited, limit }) => {
            assert!(waited > limit && limit == Duration::from_millis(100));
        }
        other => panic!("expected shed, got {other:?}"),
    }
    let stats = batcher.stats();
    assert_eq!((stats.shed, stats.requests), (1, 1), "{stats:?}");
    // Shedding is per request: the next one is embedded.
    let fresh = batcher
        .embed(vec!["npm ERR! 404 Not Found".into()])
        .await
        .expect("embedded");
    assert!(fresh[0].cosine(&single(&models, "npm ERR! 404 Not Found").await) > 0.9999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_at_once() {
    let models = models(false).await;
    let batcher = QueryBatcher::start(
        models.text.clone(),
        &QueryBatchSettings {
            queue_capacity: 1,
            // Never shed here: the queued request must be embedded however slow the
            // machine is.
            max_queue_wait: Duration::ZERO,
            ..QueryBatchSettings::default()
        },
    );
    let busy = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.embed((0..8).map(long_text).collect()).await }
    });
    until("the worker took the long batch", || {
        batcher.stats().batches == 1 && batcher.queued() == 0
    })
    .await;
    let queued = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.embed(vec!["queued query".into()]).await }
    });
    until("the query is queued", || batcher.queued() == 1).await;
    // The queue (capacity 1) is full: refused at once, not after the long batch.
    let refused = tokio::time::timeout(
        Duration::from_millis(200),
        batcher.embed(vec!["one too many".into()]),
    )
    .await
    .expect("answered at once");
    assert!(
        matches!(refused, Err(BatchError::Overloaded { capacity: 1 })),
        "{refused:?}"
    );
    busy.await.expect("task").expect("long batch");
    let queued = queued.await.expect("task").expect("queued query embedded");
    assert!(queued[0].cosine(&single(&models, "queued query").await) > 0.9999);
    let stats = batcher.stats();
    assert_eq!((stats.overloaded, stats.requests), (1, 2), "{stats:?}");
}

#[test]
fn callers_get_an_error_not_a_hang_when_the_workers_are_gone() {
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let models = first.block_on(models(false));
    let batcher = first.block_on(async {
        QueryBatcher::start(models.text.clone(), &QueryBatchSettings::default())
    });
    // Shutting the runtime down drops the workers (and the queue with them).
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("runtime");
    let answer = second
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), batcher.embed(vec!["x".into()])).await
        })
        .expect("answered, not hung");
    assert!(matches!(answer, Err(BatchError::Stopped)), "{answer:?}");
}
