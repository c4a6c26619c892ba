//! Logging set-up shared by every binary: JSON lines in production, human-readable text
//! for local runs. Filter with `RUST_LOG` (default `info`).
//!
//! Never log secrets or episode text: log ids, counts, sizes and error kinds.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Installs the global subscriber (call once, from `main`). `EM_LOG_FORMAT=text|json`
/// overrides `format`.
pub fn init(service: &'static str, format: LogFormat) {
    let format = match std::env::var("EM_LOG_FORMAT").as_deref() {
        Ok("text") => LogFormat::Text,
        Ok("json") => LogFormat::Json,
        _ => format,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Json => fmt()
            .json()
            .with_current_span(false)
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    if result.is_ok() {
        tracing::info!(service, "logging initialised");
    }
}
