//! The shared evaluation set (`/work/shared/eval/dev`): episodes with the PII substrings
//! that must never survive redaction.
//!
//! Located by `EM_EVAL_DIR`, else `<workspace>/../shared/eval/dev`, else
//! `/work/shared/eval/dev`. A missing set fails the test: it never skips silently.

use std::path::PathBuf;

use serde_json::Value;

/// Environment variable naming the evaluation set's directory.
pub const EVAL_DIR_ENV: &str = "EM_EVAL_DIR";

/// Fields of an episode line that are annotations and must not be sent to the service.
pub const ANNOTATIONS: [&str; 3] = ["id", "pii", "cluster"];

/// One line of `episodes.jsonl`.
#[derive(Debug, Clone)]
pub struct EvalEpisode {
    /// The set's id (`dev-ep-001`), for messages only.
    pub id: String,
    /// Exactly the capture fields (annotations removed): the body to POST.
    pub capture: Value,
    /// Exact substrings that must not be stored, published or logged.
    pub pii: Vec<String>,
}

/// The evaluation set's directory.
///
/// # Panics
/// If none of the candidate directories holds `episodes.jsonl`.
pub fn eval_dir() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os(EVAL_DIR_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            crate::model::workspace_root().join("../shared/eval/dev"),
            PathBuf::from("/work/shared/eval/dev"),
        ],
    };
    candidates
        .iter()
        .find(|dir| dir.join("episodes.jsonl").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "evaluation set not found (looked for episodes.jsonl in {candidates:?}); \
                 set {EVAL_DIR_ENV} to its directory"
            )
        })
}

/// Every episode of the set's `episodes.jsonl`.
///
/// # Panics
/// If the file cannot be read or a line is not a JSON object.
pub fn dev_episodes() -> Vec<EvalEpisode> {
    let path = eval_dir().join("episodes.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let mut value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), n + 1));
            let object = value
                .as_object_mut()
                .unwrap_or_else(|| panic!("{}:{}: not an object", path.display(), n + 1));
            let id = object
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let pii = object
                .get("pii")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            for annotation in ANNOTATIONS {
                object.remove(annotation);
            }
            EvalEpisode {
                id,
                capture: value,
                pii,
            }
        })
        .collect()
}
