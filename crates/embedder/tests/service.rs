//! The embedder service with the real model, on the embedded durable bus: captured
//! episodes become `episode.embedded` events, and query texts are answered over
//! request-reply.

use std::sync::Arc;
use std::time::Duration;

use bus::{BatchHandler, Bus, EmbeddedBus, EmbeddedBusConfig, Incoming, Outcome};
use common::events::{
    EmbedTextReply, Envelope, EpisodeCaptured, EpisodeEmbedded, ImageStatus, Topology,
};
use common::{Episode, EpisodeFields, EpisodeId, TenantId, VectorId};
use embedder::service::{CapturedHandler, EmbedTextResponder};
use embedder::{EmbedderDeps, ImageModelSettings, ModelSettings, Models};
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
            Arc::new(EmbedTextResponder::new(models.clone())),
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
