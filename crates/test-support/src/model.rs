//! Where the real embedding model and ONNX Runtime are (fetched by `make model`).
//!
//! Env vars win (`EM_MODEL_DIR`, `ORT_DYLIB_PATH`, `EM_TEST_VISION_MODEL`); otherwise the
//! workspace's `.cache`. A missing file fails the test with instructions: tests that need
//! the model never skip silently.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `crates/test-support`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required(var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} does not exist: run `make model` (or set {var})",
        path.display()
    );
    path
}

/// Directory with `model.onnx` and `tokenizer.json` of all-MiniLM-L6-v2.
pub fn model_dir() -> PathBuf {
    required(
        "EM_MODEL_DIR",
        workspace_root().join(".cache/models/all-MiniLM-L6-v2"),
    )
}

/// `libonnxruntime.so`.
pub fn ort_dylib() -> PathBuf {
    required(
        "ORT_DYLIB_PATH",
        workspace_root().join(".cache/onnxruntime/lib/libonnxruntime.so"),
    )
}

/// The tiny generated vision model (512-dim output) used to test the image path.
pub fn test_vision_model() -> PathBuf {
    required(
        "EM_TEST_VISION_MODEL",
        workspace_root().join(".cache/models/test-vision/model.onnx"),
    )
}
