//! The failure episode: what an AI tool reports when something went wrong.
//!
//! [`EpisodeFields`] is the wire shape (JSON, strict: unknown fields are rejected).
//! [`Episode`] is the validated domain type; the only ways to get one are
//! [`Episode::parse`] (and serde, which goes through it), so every `Episode` in the system
//! respects the documented [`limits`]. Redaction ([`Episode::map_text`]) keeps them too.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Documented input limits (see docs/API.md). Lengths are in bytes of UTF-8.
pub mod limits {
    /// Whole request body.
    pub const BODY_BYTES: usize = 1024 * 1024;
    pub const GOAL_BYTES: usize = 2_000;
    pub const ACTIONS_MAX: usize = 50;
    pub const ACTION_BYTES: usize = 4_000;
    pub const ERROR_TRACE_BYTES: usize = 64 * 1024;
    pub const TOOLS_MAX: usize = 20;
    pub const TOOL_BYTES: usize = 64;
    pub const ENV_MAX: usize = 50;
    pub const ENV_KEY_BYTES: usize = 128;
    pub const ENV_VALUE_BYTES: usize = 1_024;
    pub const RESOLUTION_BYTES: usize = 8_000;
    pub const TAGS_MAX: usize = 20;
    pub const TAG_BYTES: usize = 64;
    pub const CODE_DIFF_BYTES: usize = 128 * 1024;
    /// Decoded screenshot size.
    pub const SCREENSHOT_BYTES: usize = 640 * 1024;
}

/// A validation failure, naming the offending field with a JSON path (`actions_taken[2]`,
/// `environment.os`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    /// Machine-readable reason: `required`, `empty`, `too_long`, `too_many`, `nul_byte`,
    /// `invalid_value`, `invalid_format`.
    pub code: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    ConfigurationError,
    PermissionError,
    NetworkError,
    ResourceError,
    DependencyError,
    TimeoutError,
    ValidationError,
    Unknown,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::ConfigurationError,
        ErrorClass::PermissionError,
        ErrorClass::NetworkError,
        ErrorClass::ResourceError,
        ErrorClass::DependencyError,
        ErrorClass::TimeoutError,
        ErrorClass::ValidationError,
        ErrorClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ConfigurationError => "configuration_error",
            ErrorClass::PermissionError => "permission_error",
            ErrorClass::NetworkError => "network_error",
            ErrorClass::ResourceError => "resource_error",
            ErrorClass::DependencyError => "dependency_error",
            ErrorClass::TimeoutError => "timeout_error",
            ErrorClass::ValidationError => "validation_error",
            ErrorClass::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorClass {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                FieldError::new(
                    "error_class",
                    "invalid_value",
                    format!(
                        "unknown error_class {s:?}; expected one of: {}",
                        ErrorClass::ALL.map(ErrorClass::as_str).join(", ")
                    ),
                )
            })
    }
}

/// The kind of episode. Only failures are accepted today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeType {
    #[default]
    Failure,
}

/// Image formats accepted for screenshots (detected from the bytes, not trusted from a name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreenshotFormat {
    Png,
    Jpeg,
}

impl ScreenshotFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            ScreenshotFormat::Png => "image/png",
            ScreenshotFormat::Jpeg => "image/jpeg",
        }
    }

    fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ScreenshotFormat::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ScreenshotFormat::Jpeg)
        } else {
            None
        }
    }
}

/// A decoded, size-checked PNG or JPEG screenshot.
#[derive(Clone, PartialEq, Eq)]
pub struct Screenshot {
    format: ScreenshotFormat,
    bytes: Vec<u8>,
}

impl fmt::Debug for Screenshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Screenshot")
            .field("format", &self.format)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Screenshot {
    /// Parses base64 (standard alphabet, optionally as a `data:image/...;base64,` URL).
    pub fn from_base64(field: &str, input: &str) -> Result<Self, FieldError> {
        let payload = match input.strip_prefix("data:") {
            Some(rest) => rest
                .split_once(";base64,")
                .map(|(_, data)| data)
                .ok_or_else(|| {
                    FieldError::new(field, "invalid_format", "data URL must be base64-encoded")
                })?,
            None => input,
        };
        let compact: String = payload.split_ascii_whitespace().collect();
        // Reject before decoding anything oversized.
        if compact.len() / 4 * 3 > limits::SCREENSHOT_BYTES + 3 {
            return Err(too_long(field, limits::SCREENSHOT_BYTES, "decoded bytes"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| {
                FieldError::new(field, "invalid_format", format!("invalid base64: {e}"))
            })?;
        Self::from_bytes(field, bytes)
    }

    pub fn from_bytes(field: &str, bytes: Vec<u8>) -> Result<Self, FieldError> {
        if bytes.len() > limits::SCREENSHOT_BYTES {
            return Err(too_long(field, limits::SCREENSHOT_BYTES, "decoded bytes"));
        }
        let format = ScreenshotFormat::sniff(&bytes).ok_or_else(|| {
            FieldError::new(
                field,
                "invalid_format",
                "screenshot must be a PNG or JPEG image",
            )
        })?;
        Ok(Self { format, bytes })
    }

    pub fn format(&self) -> ScreenshotFormat {
        self.format
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

/// The wire shape of an episode, as agents POST it and as events carry it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeFields {
    pub goal: Option<String>,
    #[serde(default)]
    pub actions_taken: Vec<String>,
    #[serde(default)]
    pub error_trace: String,
    #[serde(default)]
    pub error_class: Option<String>,
    #[serde(default)]
    pub tool_chain: Vec<String>,
    /// String values; numbers and booleans (as agents send them) are kept as their JSON
    /// text (`300`, `true`).
    #[serde(default, deserialize_with = "environment_values")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Base64 PNG/JPEG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_state_diff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_type: Option<String>,
}

/// `environment` values: a string, or a number or boolean kept as its JSON text. Anything
/// else (null, arrays, objects) is an error at `environment.<key>`.
fn environment_values<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Value(String);

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Value;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
                    Ok(Value(v.to_owned()))
                }
                fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
                    Ok(Value(v))
                }
                fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
                    Ok(Value(v.to_string()))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
                    Ok(Value(v.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                    Ok(Value(v.to_string()))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
                    Ok(Value(v.to_string()))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }

    let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A validated failure episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "EpisodeFields", into = "EpisodeFields")]
pub struct Episode {
    goal: String,
    actions_taken: Vec<String>,
    error_trace: String,
    error_class: ErrorClass,
    tool_chain: Vec<String>,
    environment: BTreeMap<String, String>,
    resolution: Option<String>,
    tags: Vec<String>,
    screenshot: Option<Screenshot>,
    code_state_diff: Option<String>,
    episode_type: EpisodeType,
}

/// All validation errors of one episode, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct EpisodeErrors(pub Vec<FieldError>);

impl EpisodeErrors {
    /// The first error (there is always at least one).
    pub fn first(&self) -> Option<&FieldError> {
        self.0.first()
    }
}

fn too_long(field: &str, max: usize, unit: &str) -> FieldError {
    FieldError::new(field, "too_long", format!("must be at most {max} {unit}"))
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn text(&mut self, field: &str, value: &str, max: usize) {
        if value.contains('\0') {
            self.errors.push(FieldError::new(
                field,
                "nul_byte",
                "must not contain NUL bytes",
            ));
        } else if value.len() > max {
            self.errors.push(too_long(field, max, "bytes"));
        }
    }

    fn non_empty_text(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.errors
                .push(FieldError::new(field, "empty", "must not be empty"));
        } else {
            self.text(field, value, max);
        }
    }

    fn list(&mut self, field: &str, values: &[String], max_items: usize, max_bytes: usize) {
        if values.len() > max_items {
            self.errors.push(FieldError::new(
                field,
                "too_many",
                format!("must have at most {max_items} items"),
            ));
            return;
        }
        for (i, v) in values.iter().enumerate() {
            self.non_empty_text(&format!("{field}[{i}]"), v, max_bytes);
        }
    }
}

/// Normalises a tool or tag name: trimmed, lower-case.
fn normalise_name(s: &str) -> String {
    s.trim().to_lowercase()
}

impl Episode {
    /// Validates wire fields into an episode, collecting every error.
    pub fn parse(fields: EpisodeFields) -> Result<Self, EpisodeErrors> {
        let mut c = Checker { errors: Vec::new() };
        let goal = match fields.goal {
            Some(goal) => {
                c.non_empty_text("goal", &goal, limits::GOAL_BYTES);
                goal
            }
            None => {
                c.errors
                    .push(FieldError::new("goal", "required", "goal is required"));
                String::new()
            }
        };
        c.list(
            "actions_taken",
            &fields.actions_taken,
            limits::ACTIONS_MAX,
            limits::ACTION_BYTES,
        );
        c.text(
            "error_trace",
            &fields.error_trace,
            limits::ERROR_TRACE_BYTES,
        );
        let error_class = match fields.error_class.as_deref() {
            None => ErrorClass::Unknown,
            Some(s) => s.parse().unwrap_or_else(|e| {
                c.errors.push(e);
                ErrorClass::Unknown
            }),
        };
        let tool_chain: Vec<String> = fields
            .tool_chain
            .iter()
            .map(|t| normalise_name(t))
            .collect();
        c.list(
            "tool_chain",
            &tool_chain,
            limits::TOOLS_MAX,
            limits::TOOL_BYTES,
        );
        for (i, t) in tool_chain.iter().enumerate() {
            if t.chars().any(char::is_whitespace) {
                c.errors.push(FieldError::new(
                    format!("tool_chain[{i}]"),
                    "invalid_format",
                    "a tool name must not contain whitespace",
                ));
            }
        }
        if fields.environment.len() > limits::ENV_MAX {
            c.errors.push(FieldError::new(
                "environment",
                "too_many",
                format!("must have at most {} entries", limits::ENV_MAX),
            ));
        } else {
            for (k, v) in &fields.environment {
                c.non_empty_text(&format!("environment.{k}"), k, limits::ENV_KEY_BYTES);
                c.text(&format!("environment.{k}"), v, limits::ENV_VALUE_BYTES);
            }
        }
        if let Some(r) = &fields.resolution {
            c.text("resolution", r, limits::RESOLUTION_BYTES);
        }
        let tags: Vec<String> = fields.tags.iter().map(|t| normalise_name(t)).collect();
        c.list("tags", &tags, limits::TAGS_MAX, limits::TAG_BYTES);
        if let Some(d) = &fields.code_state_diff {
            c.text("code_state_diff", d, limits::CODE_DIFF_BYTES);
        }
        let episode_type = match fields.episode_type.as_deref() {
            None | Some("failure") => EpisodeType::Failure,
            Some(other) => {
                c.errors.push(FieldError::new(
                    "episode_type",
                    "invalid_value",
                    format!("unsupported episode_type {other:?}; only \"failure\" is accepted"),
                ));
                EpisodeType::Failure
            }
        };
        let screenshot = match fields.screenshot.as_deref() {
            None => None,
            Some(b64) => Screenshot::from_base64("screenshot", b64)
                .map_err(|e| c.errors.push(e))
                .ok(),
        };
        if !c.errors.is_empty() {
            return Err(EpisodeErrors(c.errors));
        }
        Ok(Episode {
            goal,
            actions_taken: fields.actions_taken,
            error_trace: fields.error_trace,
            error_class,
            tool_chain: dedup(tool_chain),
            environment: fields.environment,
            resolution: fields.resolution.filter(|r| !r.trim().is_empty()),
            tags: dedup(tags),
            screenshot,
            code_state_diff: fields.code_state_diff.filter(|d| !d.is_empty()),
            episode_type,
        })
    }

    pub fn goal(&self) -> &str {
        &self.goal
    }
    pub fn actions_taken(&self) -> &[String] {
        &self.actions_taken
    }
    pub fn error_trace(&self) -> &str {
        &self.error_trace
    }
    pub fn error_class(&self) -> ErrorClass {
        self.error_class
    }
    pub fn tool_chain(&self) -> &[String] {
        &self.tool_chain
    }
    pub fn environment(&self) -> &BTreeMap<String, String> {
        &self.environment
    }
    pub fn resolution(&self) -> Option<&str> {
        self.resolution.as_deref()
    }
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    pub fn screenshot(&self) -> Option<&Screenshot> {
        self.screenshot.as_ref()
    }
    pub fn code_state_diff(&self) -> Option<&str> {
        self.code_state_diff.as_deref()
    }
    pub fn episode_type(&self) -> EpisodeType {
        self.episode_type
    }

    /// The same episode without its screenshot (events after embedding carry no image bytes).
    pub fn without_screenshot(mut self) -> Self {
        self.screenshot = None;
        self
    }

    /// Applies `f` to every free-text field (goal, actions, trace, environment keys and
    /// values, resolution, tags, code diff) — this is how redaction is applied. Results are
    /// cut back to the field's limit (at a character boundary) so the episode stays valid.
    pub fn map_text<F>(self, f: F) -> Self
    where
        F: Fn(&str) -> String,
    {
        let apply = |s: &str, max: usize| truncate_to(f(s), max);
        Episode {
            goal: apply(&self.goal, limits::GOAL_BYTES),
            actions_taken: self
                .actions_taken
                .iter()
                .map(|a| apply(a, limits::ACTION_BYTES))
                .collect(),
            error_trace: apply(&self.error_trace, limits::ERROR_TRACE_BYTES),
            error_class: self.error_class,
            tool_chain: self.tool_chain,
            environment: self
                .environment
                .iter()
                .map(|(k, v)| {
                    (
                        apply(k, limits::ENV_KEY_BYTES),
                        apply(v, limits::ENV_VALUE_BYTES),
                    )
                })
                .collect(),
            resolution: self
                .resolution
                .as_deref()
                .map(|r| apply(r, limits::RESOLUTION_BYTES)),
            tags: self
                .tags
                .iter()
                .map(|t| apply(t, limits::TAG_BYTES))
                .collect(),
            screenshot: self.screenshot,
            code_state_diff: self
                .code_state_diff
                .as_deref()
                .map(|d| apply(d, limits::CODE_DIFF_BYTES)),
            episode_type: self.episode_type,
        }
    }

    /// Every free-text value of the episode, for checks such as "no secret survived".
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.goal.as_str())
            .chain(self.actions_taken.iter().map(String::as_str))
            .chain(std::iter::once(self.error_trace.as_str()))
            .chain(self.tool_chain.iter().map(String::as_str))
            .chain(
                self.environment
                    .iter()
                    .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
            )
            .chain(self.resolution.as_deref())
            .chain(self.tags.iter().map(String::as_str))
            .chain(self.code_state_diff.as_deref())
    }
}

fn dedup(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl TryFrom<EpisodeFields> for Episode {
    type Error = EpisodeErrors;
    fn try_from(fields: EpisodeFields) -> Result<Self, Self::Error> {
        Episode::parse(fields)
    }
}

impl From<Episode> for EpisodeFields {
    fn from(e: Episode) -> Self {
        EpisodeFields {
            goal: Some(e.goal),
            actions_taken: e.actions_taken,
            error_trace: e.error_trace,
            error_class: Some(e.error_class.as_str().to_owned()),
            tool_chain: e.tool_chain,
            environment: e.environment,
            resolution: e.resolution,
            tags: e.tags,
            screenshot: e.screenshot.as_ref().map(Screenshot::to_base64),
            code_state_diff: e.code_state_diff,
            episode_type: Some("failure".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn minimal() -> EpisodeFields {
        EpisodeFields {
            goal: Some("deploy the api".into()),
            ..Default::default()
        }
    }

    fn first_field(r: Result<Episode, EpisodeErrors>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => e.first().map(|f| f.field.clone()).unwrap_or_default(),
        }
    }

    #[test]
    fn minimal_episode_parses_with_defaults() {
        let e = Episode::parse(minimal()).expect("valid");
        assert_eq!(e.goal(), "deploy the api");
        assert_eq!(e.error_class(), ErrorClass::Unknown);
        assert_eq!(e.episode_type(), EpisodeType::Failure);
    }

    #[test]
    fn missing_or_blank_goal_is_named() {
        assert_eq!(
            first_field(Episode::parse(EpisodeFields::default())),
            "goal"
        );
        let mut f = minimal();
        f.goal = Some("   ".into());
        assert_eq!(first_field(Episode::parse(f)), "goal");
    }

    #[test]
    fn unknown_error_class_and_type_are_rejected() {
        let mut f = minimal();
        f.error_class = Some("segfault".into());
        assert_eq!(first_field(Episode::parse(f)), "error_class");
        let mut f = minimal();
        f.episode_type = Some("success".into());
        assert_eq!(first_field(Episode::parse(f)), "episode_type");
    }

    #[test]
    fn limits_and_nul_bytes_name_the_field() {
        let mut f = minimal();
        f.actions_taken = vec!["ok".into(), "x".repeat(limits::ACTION_BYTES + 1)];
        assert_eq!(first_field(Episode::parse(f)), "actions_taken[1]");
        let mut f = minimal();
        f.error_trace = "a\0b".into();
        let err = Episode::parse(f).expect_err("nul");
        assert_eq!(err.0[0].code, "nul_byte");
        let mut f = minimal();
        f.tags = vec!["t".into(); limits::TAGS_MAX + 1];
        assert_eq!(first_field(Episode::parse(f)), "tags");
        let mut f = minimal();
        f.environment
            .insert("os".into(), "x".repeat(limits::ENV_VALUE_BYTES + 1));
        assert_eq!(first_field(Episode::parse(f)), "environment.os");
        let mut f = minimal();
        f.tool_chain = vec!["kube ctl".into()];
        assert_eq!(first_field(Episode::parse(f)), "tool_chain[0]");
    }

    #[test]
    fn tools_and_tags_are_normalised() {
        let mut f = minimal();
        f.tool_chain = vec![" Kubectl ".into(), "kubectl".into(), "helm".into()];
        let e = Episode::parse(f).expect("valid");
        assert_eq!(e.tool_chain(), ["kubectl", "helm"]);
    }

    #[test]
    fn screenshots_are_sniffed_and_bounded() {
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let mut f = minimal();
        f.screenshot = Some(format!("data:image/png;base64,{b64}"));
        let e = Episode::parse(f).expect("valid");
        assert_eq!(
            e.screenshot().map(Screenshot::format),
            Some(ScreenshotFormat::Png)
        );
        let mut f = minimal();
        f.screenshot = Some("bm90IGFuIGltYWdl".into());
        assert_eq!(first_field(Episode::parse(f)), "screenshot");
        let mut f = minimal();
        f.screenshot = Some("***".into());
        assert_eq!(first_field(Episode::parse(f)), "screenshot");
        let mut f = minimal();
        f.screenshot = Some("A".repeat(limits::SCREENSHOT_BYTES * 2));
        assert_eq!(
            Episode::parse(f).expect_err("big").0[0].code,
            "too_long".to_owned()
        );
    }

    #[test]
    fn environment_accepts_scalars_as_text() {
        let f: EpisodeFields = serde_json::from_str(
            r#"{"goal":"g","environment":{"os":"linux","max_connections":300,"buildkit":true,"gb":1.5}}"#,
        )
        .expect("scalars are accepted");
        assert_eq!(f.environment["max_connections"], "300");
        assert_eq!(f.environment["buildkit"], "true");
        assert_eq!(f.environment["gb"], "1.5");
        assert_eq!(f.environment["os"], "linux");
        for bad in [r#"null"#, r#"[1]"#, r#"{"a":1}"#] {
            let body = format!(r#"{{"goal":"g","environment":{{"os":{bad}}}}}"#);
            assert!(
                serde_json::from_str::<EpisodeFields>(&body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn serde_round_trip_revalidates() {
        let mut f = minimal();
        f.tool_chain = vec!["kubectl".into()];
        f.environment.insert("os".into(), "linux".into());
        let e = Episode::parse(f).expect("valid");
        let json = serde_json::to_string(&e).expect("serialise");
        let back: Episode = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
        assert!(serde_json::from_str::<Episode>(r#"{"goal":""}"#).is_err());
        assert!(serde_json::from_str::<Episode>(r#"{"goal":"x","extra":1}"#).is_err());
    }

    #[test]
    fn map_text_keeps_limits() {
        let mut f = minimal();
        f.goal = Some("é".repeat(limits::GOAL_BYTES / 2));
        let e = Episode::parse(f).expect("valid");
        let grown = e.map_text(|s| format!("{s}{s}"));
        assert!(grown.goal().len() <= limits::GOAL_BYTES);
        assert!(Episode::parse(EpisodeFields::from(grown)).is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(goal in ".{0,64}", trace in ".{0,256}", tool in ".{0,16}", class in ".{0,20}") {
            let f = EpisodeFields {
                goal: Some(goal),
                error_trace: trace,
                tool_chain: vec![tool],
                error_class: Some(class),
                ..Default::default()
            };
            if let Ok(e) = Episode::parse(f) {
                // Whatever parses survives a round trip through its wire form.
                prop_assert_eq!(Episode::parse(EpisodeFields::from(e.clone())).ok(), Some(e));
            }
        }
    }
}
