//! Sentence embeddings with all-MiniLM-L6-v2 (BERT encoder in ONNX + mean
//! pooling + L2 normalisation, as sentence-transformers does).

use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, ValueType};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::runtime::{SessionPool, build_session, ort_environment};
use super::{ModelError, l2_normalize};

/// Embedding dimension of all-MiniLM-L6-v2.
pub const MINILM_DIM: usize = 384;

/// Texts are run through the model in chunks of at most this many, sorted by
/// length so that little padding is computed.
const MAX_CHUNK: usize = 32;

const OUTPUT_NAME: &str = "last_hidden_state";

/// Configuration of [`TextModel`].
#[derive(Debug, Clone)]
pub struct TextModelConfig {
    /// Directory holding `model.onnx` and `tokenizer.json`
    /// (`make model` → `.cache/models/all-MiniLM-L6-v2`, env `EM_MODEL_DIR`).
    pub model_dir: PathBuf,
    /// `libonnxruntime.so` to load; `None` = `$ORT_DYLIB_PATH`.
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads per session (default 1).
    pub intra_threads: usize,
    /// Token limit including `[CLS]`/`[SEP]`; longer texts are truncated
    /// (default 256, like sentence-transformers' `max_seq_length`).
    pub max_tokens: usize,
    /// Number of ONNX sessions in the pool, i.e. how many `embed` calls can run
    /// at the same time (default 1). Each costs about 100 MB.
    pub sessions: usize,
}

impl Default for TextModelConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from(".cache/models/all-MiniLM-L6-v2"),
            ort_dylib: None,
            intra_threads: 1,
            max_tokens: 256,
            sessions: 1,
        }
    }
}

/// all-MiniLM-L6-v2 text embedder. `Send + Sync`: share it (e.g. in an `Arc`)
/// between threads; concurrent calls use the session pool (see the module docs).
pub struct TextModel {
    tokenizer: Tokenizer,
    pool: SessionPool,
    has_token_type_ids: bool,
    output_index: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("max_tokens", &self.max_tokens)
            .field("has_token_type_ids", &self.has_token_type_ids)
            .finish_non_exhaustive()
    }
}

impl TextModel {
    /// Loads the tokenizer and the ONNX model and checks that it produces
    /// 384-dimensional token embeddings.
    pub fn load(config: &TextModelConfig) -> Result<Self, ModelError> {
        if config.max_tokens < 2 {
            return Err(ModelError::Config(format!(
                "max_tokens must be at least 2, got {}",
                config.max_tokens
            )));
        }
        if config.sessions == 0 {
            return Err(ModelError::Config("sessions must be at least 1".into()));
        }
        let model_path = config.model_dir.join("model.onnx");
        let tokenizer =
            load_tokenizer(&config.model_dir.join("tokenizer.json"), config.max_tokens)?;
        // Check the model file before loading the runtime, for the clearer error.
        if !model_path.is_file() {
            return Err(ModelError::MissingFile { path: model_path });
        }
        let env = ort_environment(config.ort_dylib.as_deref())?;
        let sessions = (0..config.sessions)
            .map(|_| build_session(&env, &model_path, config.intra_threads))
            .collect::<Result<Vec<_>, _>>()?;
        let (has_token_type_ids, output_index) = check_signature(&sessions[0], &model_path)?;
        let model = Self {
            tokenizer,
            pool: SessionPool::new(sessions),
            has_token_type_ids,
            output_index,
            max_tokens: config.max_tokens,
        };
        // The declared shape may be symbolic: check the real one too.
        let probe = model.embed(&["dimension probe"])?;
        if probe.first().map(Vec::len) != Some(MINILM_DIM) {
            return Err(ModelError::BadModel {
                path: model_path,
                reason: format!(
                    "expected {MINILM_DIM}-dim embeddings, got {:?}",
                    probe.first().map(Vec::len)
                ),
            });
        }
        Ok(model)
    }

    /// Embedding dimension (384).
    pub fn dim(&self) -> usize {
        MINILM_DIM
    }

    /// Number of ONNX sessions, i.e. how many [`TextModel::embed`] calls run at the same
    /// time (the rest wait for a session).
    pub fn sessions(&self) -> usize {
        self.pool.len()
    }

    /// Token limit (texts are truncated to it).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of tokens `text` would be fed to the model as, after truncation
    /// (including `[CLS]` and `[SEP]`).
    pub fn token_count(&self, text: &str) -> Result<usize, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().len())
    }

    /// Embeds texts: unit-length 384-dim vectors, in input order. An empty
    /// batch gives an empty result; an empty string is a valid text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut encoded = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            encoded.push((i, enc.get_ids().to_vec()));
        }
        // Longest first, so each chunk pads to about its own length.
        encoded.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in encoded.chunks(MAX_CHUNK) {
            let ids: Vec<&[u32]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
            let vectors = self.run_chunk(&ids)?;
            for ((i, _), v) in chunk.iter().zip(vectors) {
                out[*i] = v;
            }
        }
        Ok(out)
    }

    fn run_chunk(&self, ids: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let batch = ids.len();
        let seq = ids.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let mut input_ids = vec![0i64; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (b, row) in ids.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                input_ids[b * seq + t] = i64::from(id);
                mask[b * seq + t] = 1;
            }
        }
        let shape = [batch, seq];
        let ctx = "creating input tensors";
        let mut inputs: Vec<(&'static str, SessionInputValue<'_>)> = vec![
            (
                "input_ids",
                Tensor::from_array((shape, input_ids))
                    .map_err(ModelError::ort(ctx))?
                    .into(),
            ),
            (
                "attention_mask",
                Tensor::from_array((shape, mask.clone()))
                    .map_err(ModelError::ort(ctx))?
                    .into(),
            ),
        ];
        if self.has_token_type_ids {
            inputs.push((
                "token_type_ids",
                Tensor::from_array((shape, vec![0i64; batch * seq]))
                    .map_err(ModelError::ort(ctx))?
                    .into(),
            ));
        }

        let mut session = self.pool.get();
        let outputs = session
            .run(inputs)
            .map_err(ModelError::ort("running the text model"))?;
        let (out_shape, hidden) = outputs[self.output_index]
            .try_extract_tensor::<f32>()
            .map_err(ModelError::ort("reading the text model output"))?;
        let dims: &[i64] = out_shape;
        let expected = [batch as i64, seq as i64, MINILM_DIM as i64];
        if dims != expected || hidden.len() != batch * seq * MINILM_DIM {
            return Err(ModelError::Output(format!(
                "text model output shape {dims:?}, expected {expected:?}"
            )));
        }
        Ok(mean_pool(hidden, &mask, batch, seq))
    }
}

/// Masked mean over the sequence (sentence-transformers' pooling, clamp 1e-9)
/// followed by L2 normalisation.
fn mean_pool(hidden: &[f32], mask: &[i64], batch: usize, seq: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut acc = vec![0f32; MINILM_DIM];
        let mut count = 0f32;
        for t in 0..seq {
            if mask[b * seq + t] == 0 {
                continue;
            }
            count += 1.0;
            let row = &hidden[(b * seq + t) * MINILM_DIM..(b * seq + t + 1) * MINILM_DIM];
            for (a, h) in acc.iter_mut().zip(row) {
                *a += h;
            }
        }
        let count = count.max(1e-9);
        for a in acc.iter_mut() {
            *a /= count;
        }
        l2_normalize(&mut acc);
        out.push(acc);
    }
    out
}

fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
    // The shipped tokenizer.json pads every input to 128 and truncates at 128:
    // we pad ourselves (to the longest in the chunk) and truncate like
    // sentence-transformers (longest-first, right side, specials included).
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// Checks the model's inputs and outputs. Returns whether it takes
/// `token_type_ids` and the index of the token-embedding output.
fn check_signature(session: &Session, path: &Path) -> Result<(bool, usize), ModelError> {
    let bad = |reason: String| ModelError::BadModel {
        path: path.to_path_buf(),
        reason,
    };
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for required in ["input_ids", "attention_mask"] {
        if !names.contains(&required) {
            return Err(bad(format!(
                "missing input `{required}` (inputs: {names:?})"
            )));
        }
    }
    if let Some(other) = names
        .iter()
        .find(|n| !matches!(**n, "input_ids" | "attention_mask" | "token_type_ids"))
    {
        return Err(bad(format!("unsupported input `{other}`")));
    }
    let outputs = session.outputs();
    let index = outputs
        .iter()
        .position(|o| o.name() == OUTPUT_NAME)
        .or(if outputs.is_empty() { None } else { Some(0) })
        .ok_or_else(|| bad("the model has no outputs".into()))?;
    if let ValueType::Tensor { shape, .. } = outputs[index].dtype() {
        let dims: &[i64] = shape;
        match dims {
            [_, _, d] if *d == MINILM_DIM as i64 || *d < 0 => {}
            _ => {
                return Err(bad(format!(
                    "output `{}` has shape {dims:?}, expected [batch, seq, {MINILM_DIM}] \
                     (is this all-MiniLM-L6-v2?)",
                    outputs[index].name()
                )));
            }
        }
    } else {
        return Err(bad(format!(
            "output `{}` is not a tensor",
            outputs[index].name()
        )));
    }
    Ok((names.contains(&"token_type_ids"), index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_padding_and_normalises() {
        let seq = 3;
        let mut hidden = vec![0f32; 2 * seq * MINILM_DIM];
        // row 0: tokens 0 and 1 valid, token 2 is padding with huge values
        hidden[0] = 1.0;
        hidden[MINILM_DIM] = 3.0;
        hidden[2 * MINILM_DIM] = 1000.0;
        hidden[2 * MINILM_DIM + 1] = 1000.0;
        // row 1: only token 0 valid
        hidden[seq * MINILM_DIM + 5] = -2.0;
        let mask = [1, 1, 0, 1, 0, 0];
        let out = mean_pool(&hidden, &mask, 2, seq);
        assert_eq!(out.len(), 2);
        assert!((out[0][0] - 1.0).abs() < 1e-6 && out[0][1].abs() < 1e-6);
        assert!((out[1][5] + 1.0).abs() < 1e-6);
    }
}
