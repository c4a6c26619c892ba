//! Embedding inference with ONNX Runtime (text: all-MiniLM-L6-v2; images: a
//! configurable CLIP-style vision encoder).
//!
//! * The ONNX Runtime shared library is loaded at run time (`ort`'s
//!   `load-dynamic`), once per process, from the configured path or
//!   `ORT_DYLIB_PATH`; see [`ort_environment`]. `make model`
//!   (`scripts/model/prepare.sh`) puts it under `.cache/onnxruntime/lib/`.
//! * [`TextModel`] and [`ImageModel`] are `Send + Sync`. Running an ONNX
//!   session needs exclusive access, so each model holds a small pool of
//!   sessions, each behind its own `Mutex` (the pool size is
//!   `TextModelConfig::sessions`, default 1 — with a single session calls are
//!   serialised, which on a 2-core machine is usually what you want).
//! * Session options: `intra_threads` intra-op threads (default 1), one
//!   inter-op thread, thread spinning off (on a busy 2-core machine one
//!   non-spinning thread beats two spinning ones).

mod image;
mod runtime;
mod text;

use std::path::PathBuf;

pub use self::image::{CLIP_MEAN, CLIP_STD, ImageModel, ImageModelConfig};
pub use self::runtime::{ORT_DYLIB_ENV, ort_environment};
pub use self::text::{MINILM_DIM, TextModel, TextModelConfig};

/// Errors of the embedding models. Bad input never panics: it is one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The ONNX Runtime shared library is not configured or could not be loaded.
    #[error(
        "ONNX Runtime library unavailable: {reason} (run `make model` and set {env}=<.cache/onnxruntime/lib/libonnxruntime.so>)",
        env = ORT_DYLIB_ENV
    )]
    OrtLibrary { reason: String },

    /// A model file (ONNX graph, tokenizer, ...) is missing.
    #[error("model file not found: {} (run `make model`)", path.display())]
    MissingFile { path: PathBuf },

    /// The model does not have the expected inputs/outputs/dimensions.
    #[error("unexpected model {}: {reason}", path.display())]
    BadModel { path: PathBuf, reason: String },

    /// An ONNX Runtime call failed.
    #[error("onnx runtime error while {context}: {message}")]
    Ort {
        context: &'static str,
        message: String,
    },

    /// Loading the tokenizer or tokenizing a text failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// The image bytes could not be decoded (not a PNG/JPEG, corrupt, too big...).
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// The configuration is invalid.
    #[error("invalid model configuration: {0}")]
    Config(String),

    /// The model produced an output of an unexpected shape.
    #[error("unexpected model output: {0}")]
    Output(String),
}

impl ModelError {
    pub(crate) fn ort<R>(context: &'static str) -> impl FnOnce(ort::Error<R>) -> Self {
        move |e| Self::Ort {
            context,
            message: e.to_string(),
        }
    }
}

/// L2-normalise in place, like `torch.nn.functional.normalize` (eps 1e-12).
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}
