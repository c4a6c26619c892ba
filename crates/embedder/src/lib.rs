//! The embedder: turns episodes and query texts into vectors with a real
//! all-MiniLM-L6-v2 model (384-dim, mean-pooled, L2-normalised) on ONNX Runtime, and
//! screenshots into 512-dim vectors when an image model is configured.
//!
//! - [`model`]: inference (ORT sessions, tokenizer, image preprocessing);
//! - [`compose`]: the text an episode is embedded as;
//! - [`service`]: the `episode.captured` consumer and the query-embedding responder;
//! - [`batch`]: micro-batching of concurrent query embeddings for the responder.

pub mod batch;
pub mod compose;
pub mod model;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

pub use batch::QueryBatchSettings;
pub use service::{EmbedderDeps, Models, TEXT_MODEL_NAME, run};

use crate::model::{ImageModel, ImageModelConfig, ModelError, TextModel, TextModelConfig};

/// Everything the embedder binary reads (`EM_EMBEDDER__<SECTION>__<KEY>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub model: ModelSettings,
    /// Micro-batching of query embeddings (docs/EMBEDDING.md).
    pub query_batch: QueryBatchSettings,
    pub nats: bus::NatsConfig,
    pub events: common::events::TopologySettings,
}

/// Where the models are and how to run them (`EM_<SERVICE>__MODEL__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Directory holding `model.onnx` and `tokenizer.json` (`make model` fills
    /// `.cache/models/all-MiniLM-L6-v2`). Falls back to `$EM_MODEL_DIR`.
    pub dir: Option<PathBuf>,
    /// Path of `libonnxruntime.so`. Falls back to `$ORT_DYLIB_PATH`.
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session; 0 (the default) uses every core. Real
    /// episodes are long (~215 tokens), so inference bounds the pipeline: two threads on
    /// two cores roughly double its throughput (docs/BENCHMARKS.md).
    pub intra_threads: usize,
    /// Parallel inference sessions.
    pub sessions: usize,
    /// Tokens read per text (the model was trained with 256).
    pub max_tokens: usize,
    /// An ONNX vision model producing 512-dim image embeddings (e.g. CLIP ViT-B/32's image
    /// tower); without one, screenshots are stored and marked `not_configured`.
    pub image: Option<ImageModelSettings>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            dir: None,
            ort_dylib: None,
            intra_threads: 0,
            sessions: 1,
            max_tokens: 256,
            image: None,
        }
    }
}

/// A configurable ONNX image model (see docs/EMBEDDING.md for exporting CLIP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageModelSettings {
    pub path: PathBuf,
    /// Recorded with every image embedding.
    #[serde(default = "default_image_model_name")]
    pub name: String,
    #[serde(default = "default_input_name")]
    pub input_name: String,
    #[serde(default = "default_output_name")]
    pub output_name: String,
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Per-channel normalisation (CLIP's by default).
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

fn default_image_model_name() -> String {
    "clip-vit-b-32-image".to_owned()
}
fn default_input_name() -> String {
    "pixel_values".to_owned()
}
fn default_output_name() -> String {
    "image_embeds".to_owned()
}
fn default_image_size() -> u32 {
    224
}

impl ModelSettings {
    const DEFAULT_DIR: &'static str = ".cache/models/all-MiniLM-L6-v2";

    /// Fills unset paths from `EM_MODEL_DIR` / `ORT_DYLIB_PATH` (called by mains only).
    pub fn with_env_fallbacks(mut self) -> Self {
        if self.dir.is_none() {
            self.dir = std::env::var_os("EM_MODEL_DIR").map(PathBuf::from);
        }
        if self.ort_dylib.is_none() {
            self.ort_dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
        }
        self
    }

    /// Intra-op threads to use: the setting, or every core when it is 0.
    pub fn threads(&self) -> usize {
        match self.intra_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }

    /// Loads the text model and, if configured, the image model. CPU-heavy: call from a
    /// blocking context at start-up.
    pub fn load(&self) -> Result<Models, ModelError> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DIR));
        let text = TextModel::load(&TextModelConfig {
            model_dir: dir,
            ort_dylib: self.ort_dylib.clone(),
            intra_threads: self.threads(),
            max_tokens: self.max_tokens,
            sessions: self.sessions.max(1),
        })?;
        let image = match &self.image {
            None => None,
            Some(s) => {
                let mut config = ImageModelConfig::clip(s.path.clone());
                config.input_name = s.input_name.clone();
                config.output_name = s.output_name.clone();
                config.image_size = s.image_size;
                if let Some(mean) = s.mean {
                    config.mean = mean;
                }
                if let Some(std) = s.std {
                    config.std = std;
                }
                config.ort_dylib = self.ort_dylib.clone();
                config.intra_threads = self.threads();
                Some((Arc::new(ImageModel::load(&config)?), s.name.clone()))
            }
        };
        Ok(Models {
            text: Arc::new(text),
            image,
        })
    }
}
