//! The embedder service: consumes `episode.captured` in batches, embeds each episode's text
//! (and screenshot, when an image model is configured) on the blocking pool, publishes
//! `episode.embedded`, then acks. It also answers query-embedding requests over
//! request-reply (`<prefix>.v1.rpc.embed.text`) for the retriever, micro-batched by
//! [`QueryBatcher`].

use std::sync::Arc;

use async_trait::async_trait;
use bus::{BatchHandler, Bus, Incoming, OutboundMessage, Outcome, RequestHandler};
use bytes::Bytes;
use common::events::{
    EmbedTextReply, EmbedTextRequest, Envelope, EpisodeCaptured, EpisodeEmbedded, ImageStatus,
    ModelEmbedding, Topology,
};
use common::{Embedding, IMAGE_DIM, TEXT_DIM};
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchError, QueryBatchSettings, QueryBatcher};
use crate::compose::episode_text;
use crate::model::{ImageModel, ModelError, TextModel};

/// Name recorded with every text embedding.
pub const TEXT_MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The loaded models.
#[derive(Clone)]
pub struct Models {
    pub text: Arc<TextModel>,
    /// `None` when no image model is configured: screenshots are then stored and marked
    /// `not_configured`.
    pub image: Option<(Arc<ImageModel>, String)>,
}

impl Models {
    /// Embeds texts on the blocking pool and validates every vector.
    pub async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        let model = Arc::clone(&self.text);
        let raw = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs)
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))??;
        raw.into_iter()
            .map(|v| {
                Embedding::with_dim(v, TEXT_DIM).map_err(|e| EmbedError::Invalid(e.to_string()))
            })
            .collect()
    }

    async fn embed_image(&self, bytes: Vec<u8>) -> (ImageStatus, Option<ModelEmbedding>) {
        let Some((model, name)) = &self.image else {
            return (ImageStatus::NotConfigured, None);
        };
        let model = Arc::clone(model);
        let result = tokio::task::spawn_blocking(move || model.embed_image(&bytes)).await;
        match result {
            Ok(Ok(v)) => match Embedding::with_dim(v, IMAGE_DIM) {
                Ok(vector) => (
                    ImageStatus::Embedded,
                    Some(ModelEmbedding {
                        model: name.clone(),
                        vector,
                    }),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "image model returned an invalid vector");
                    (ImageStatus::Failed, None)
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "screenshot could not be embedded");
                (ImageStatus::Failed, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "image embedding task failed");
                (ImageStatus::Failed, None)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("embedding task failed: {0}")]
    Task(String),
    #[error("model produced an invalid vector: {0}")]
    Invalid(String),
}

/// What the embedder needs.
#[derive(Clone)]
pub struct EmbedderDeps {
    pub bus: Arc<dyn Bus>,
    pub topology: Topology,
    pub models: Models,
}

/// The `episode.captured` handler.
pub struct CapturedHandler {
    deps: EmbedderDeps,
}

impl CapturedHandler {
    pub fn new(deps: EmbedderDeps) -> Self {
        Self { deps }
    }
}

#[async_trait]
impl BatchHandler for CapturedHandler {
    type Event = Envelope<EpisodeCaptured>;

    async fn handle(&self, batch: Vec<Incoming<Self::Event>>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        let mut slots = Vec::new();
        let mut texts = Vec::new();
        for (slot, incoming) in batch.iter().enumerate() {
            match incoming.event.check() {
                Ok(()) => {
                    slots.push(slot);
                    texts.push(episode_text(&incoming.event.data.episode));
                }
                Err(reason) => outcomes[slot] = Some(Outcome::Reject(reason)),
            }
        }
        let vectors = match self.deps.models.embed_texts(texts).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "text embedding failed");
                return outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or_else(|| Outcome::Retry(e.to_string())))
                    .collect();
            }
        };
        let work = slots.into_iter().zip(vectors).map(|(slot, vector)| {
            let env = &batch[slot].event;
            async move { (slot, self.publish_embedded(env, vector).await) }
        });
        for (slot, outcome) in futures::future::join_all(work).await {
            outcomes[slot] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not processed".to_owned())))
            .collect()
    }
}

impl CapturedHandler {
    async fn publish_embedded(
        &self,
        env: &Envelope<EpisodeCaptured>,
        vector: Embedding,
    ) -> Outcome {
        let data = &env.data;
        let (image_status, image) = match data.episode.screenshot() {
            None => (ImageStatus::None, None),
            Some(shot) => self.deps.models.embed_image(shot.bytes().to_vec()).await,
        };
        let event = Envelope::new(
            env.tenant_id,
            EpisodeEmbedded {
                episode_id: data.episode_id,
                vector_id: data.vector_id,
                captured_at: data.captured_at,
                episode: data.episode.clone(),
                text: ModelEmbedding {
                    model: TEXT_MODEL_NAME.to_owned(),
                    vector,
                },
                image_status,
                image,
                redactions: data.redactions.clone(),
            },
            common::time_util::now_micros(),
        );
        match OutboundMessage::episode_event(&self.deps.topology, &event) {
            Ok(message) => {
                Outcome::after_publish(self.deps.bus.publish(message).await, "publish embedded")
            }
            Err(e) => Outcome::Reject(format!("encode embedded event: {e}")),
        }
    }
}

/// Answers `EmbedTextRequest`s through a [`QueryBatcher`], so concurrent queries share
/// model calls.
pub struct EmbedTextResponder {
    batcher: QueryBatcher,
}

impl EmbedTextResponder {
    /// Starts the query batcher's workers (one per text-model session); call inside a
    /// tokio runtime.
    pub fn new(models: &Models, settings: &QueryBatchSettings) -> Self {
        Self {
            batcher: QueryBatcher::start(Arc::clone(&models.text), settings),
        }
    }

    /// The batcher (its queue length and counters).
    pub fn batcher(&self) -> &QueryBatcher {
        &self.batcher
    }

    async fn reply(&self, payload: &[u8]) -> EmbedTextReply {
        let invalid = |message: String| EmbedTextReply::Error {
            code: "invalid_request".to_owned(),
            message,
        };
        let request: EmbedTextRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => return invalid(format!("malformed request: {e}")),
        };
        if request.texts.is_empty() || request.texts.len() > EmbedTextRequest::MAX_TEXTS {
            return invalid(format!(
                "texts must hold 1..={} entries",
                EmbedTextRequest::MAX_TEXTS
            ));
        }
        if request
            .texts
            .iter()
            .any(|t| t.len() > EmbedTextRequest::MAX_BYTES)
        {
            return invalid(format!(
                "each text must be at most {} bytes",
                EmbedTextRequest::MAX_BYTES
            ));
        }
        match self.batcher.embed(request.texts).await {
            Ok(embeddings) => EmbedTextReply::Ok {
                model: TEXT_MODEL_NAME.to_owned(),
                dimension: TEXT_DIM,
                embeddings,
            },
            Err(e) => {
                // Every failure is transient for the caller: retry later (or elsewhere).
                let code = match &e {
                    BatchError::Overloaded { .. }
                    | BatchError::Shed { .. }
                    | BatchError::Stopped
                    | BatchError::Embed(_) => "unavailable",
                };
                EmbedTextReply::Error {
                    code: code.to_owned(),
                    message: e.to_string(),
                }
            }
        }
    }
}

#[async_trait]
impl RequestHandler for EmbedTextResponder {
    async fn handle(&self, payload: Bytes) -> Bytes {
        let reply = self.reply(&payload).await;
        serde_json::to_vec(&reply)
            .unwrap_or_else(|_| {
                br#"{"status":"error","code":"unavailable","message":"encode"}"#.to_vec()
            })
            .into()
    }
}

/// Runs the consumer and the request-reply responder (batching queries with
/// `query_batch`) until `shutdown`.
pub async fn run(
    deps: EmbedderDeps,
    query_batch: &QueryBatchSettings,
    shutdown: CancellationToken,
) -> Result<(), bus::BusError> {
    let responder = deps
        .bus
        .serve(
            &deps.topology.embed_text_subject(),
            &deps.topology.embed_queue_group(),
            Arc::new(EmbedTextResponder::new(&deps.models, query_batch)),
            shutdown.clone(),
        )
        .await?;
    let spec = deps.topology.embedder_consumer();
    let topology = deps.topology.clone();
    let bus = deps.bus.clone();
    let result = bus::run_consumer(
        bus,
        &topology,
        &spec,
        Arc::new(CapturedHandler::new(deps)),
        shutdown,
    )
    .await;
    let _ = responder.await;
    result
}
