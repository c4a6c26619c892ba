//! Request bodies from an evaluation set (`episodes.jsonl`): only the capture fields are
//! sent (annotations such as `id`, `pii` and `cluster` never are), one episode after the
//! other, each body made unique by an extra `environment` entry.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

/// The fields an agent POSTs to `/api/v1/capture`.
pub const CAPTURE_FIELDS: [&str; 8] = [
    "goal",
    "actions_taken",
    "error_trace",
    "error_class",
    "tool_chain",
    "environment",
    "resolution",
    "tags",
];

/// The `environment` key that makes every body unique (not part of the embedded text).
pub const SEQ_KEY: &str = "loadgen_seq";

pub struct Dataset {
    episodes: Vec<Map<String, Value>>,
}

impl Dataset {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading dataset {}", path.display()))?;
        let mut episodes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
            let Value::Object(all) = value else {
                bail!("{}:{}: not a JSON object", path.display(), n + 1);
            };
            let capture: Map<String, Value> = all
                .into_iter()
                .filter(|(k, v)| CAPTURE_FIELDS.contains(&k.as_str()) && !v.is_null())
                .collect();
            episodes.push(capture);
        }
        if episodes.is_empty() {
            bail!("dataset {} holds no episodes", path.display());
        }
        Ok(Self { episodes })
    }

    pub fn len(&self) -> usize {
        self.episodes.len()
    }

    /// The body of request `seq` of run `run`: episode `seq mod len`, unique per request.
    pub fn body(&self, run: &str, seq: u64) -> Vec<u8> {
        let index = usize::try_from(seq).unwrap_or(0) % self.episodes.len();
        let mut episode = self.episodes[index].clone();
        let env = episode
            .entry("environment")
            .or_insert_with(|| Value::Object(Map::new()));
        if !env.is_object() {
            *env = Value::Object(Map::new());
        }
        if let Value::Object(env) = env {
            env.insert(SEQ_KEY.to_owned(), Value::String(format!("{run}-{seq}")));
        }
        serde_json::to_vec(&Value::Object(episode)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_capture_fields_and_varies_bodies() {
        let dir = std::env::temp_dir().join(format!("loadgen-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("e.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"x\",\"goal\":\"g\",\"error_trace\":\"t\",\"error_class\":\"unknown\",\"pii\":[\"a\"],\"cluster\":null}\n",
        )
        .expect("write");
        let ds = Dataset::load(&path).expect("load");
        let a: Value = serde_json::from_slice(&ds.body("r", 0)).expect("json");
        let b: Value = serde_json::from_slice(&ds.body("r", 1)).expect("json");
        assert!(a.get("id").is_none() && a.get("pii").is_none() && a.get("cluster").is_none());
        assert_eq!(a["goal"], "g");
        assert_eq!(a["environment"][SEQ_KEY], "r-0");
        assert_ne!(a, b);
        let _ = std::fs::remove_dir_all(dir);
    }
}
