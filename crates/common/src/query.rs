//! Search and gate (`reflect`): the wire shapes agents send (`SearchFields`, `GateFields`),
//! the validated requests they parse into (`SearchRequest`, `GateRequest`), and the results.
//!
//! The validated requests and the results are also the payloads of the retriever's
//! request-reply subjects (`<prefix>.v1.rpc.retriever.{search,reflect}`, see
//! [`crate::events::Topology`]), wrapped in [`RetrieverCall`] / [`RetrieverReply`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::episode::{Episode, ErrorClass, FieldError};
use crate::ids::{EpisodeId, TenantId};

/// Documented limits of search and gate requests (docs/API.md).
pub mod limits {
    /// `query` / `goal` of a search.
    pub const QUERY_BYTES: usize = 4_000;
    pub const K_MIN: usize = 1;
    pub const K_MAX: usize = 50;
    pub const K_DEFAULT: usize = 5;
    /// `proposed_action` of a gate request.
    pub const ACTION_BYTES: usize = 4_000;
    /// `goal` of a gate request.
    pub const GOAL_BYTES: usize = 2_000;
    /// `context` (prose) of a gate request.
    pub const CONTEXT_BYTES: usize = 8_000;
    pub const TOOL_BYTES: usize = 64;
    pub const TAGS_MAX: usize = 20;
    pub const TAG_BYTES: usize = 64;
    /// Entries of `environment` / `current_state`.
    pub const MAP_MAX: usize = 50;
    pub const KEY_BYTES: usize = 128;
    pub const VALUE_BYTES: usize = 1_024;
}

/// Search filters as sent. Unknown keys are rejected (422 naming the key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFields {
    /// The episode's tool chain contains this tool.
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub error_class: Option<String>,
    /// The episode carries every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The episode's environment has each key with exactly this value (`"*"`: any value).
    #[serde(default, deserialize_with = "state_values")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_after: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_before: Option<OffsetDateTime>,
}

/// `POST /api/v1/search` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFields {
    /// What the agent would type: an error line, a goal, a description. `goal` is an alias
    /// accepted when `query` is absent.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub goal: Option<String>,
    #[serde(default)]
    pub k: Option<i64>,
    #[serde(default)]
    pub min_similarity: Option<f64>,
    #[serde(default)]
    pub filters: FilterFields,
    /// Soft context for precondition matching (not a filter).
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default, deserialize_with = "state_values")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "state_values")]
    pub current_state: BTreeMap<String, String>,
    #[serde(default)]
    pub include_reflection: bool,
}

/// `POST /api/v1/reflect` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateFields {
    #[serde(default)]
    pub proposed_action: Option<String>,
    #[serde(default)]
    pub goal: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default, deserialize_with = "state_values")]
    pub current_state: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "state_values")]
    pub environment: BTreeMap<String, String>,
}

/// Validated search filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchFilters {
    pub tool: Option<String>,
    pub error_class: Option<ErrorClass>,
    pub tags: Vec<String>,
    pub environment: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_before: Option<OffsetDateTime>,
}

impl SearchFilters {
    /// Whether an episode captured at `captured_at` passes every filter (the retriever also
    /// pushes tool, class, tags and time down to the vector store).
    pub fn matches(&self, episode: &Episode, captured_at: OffsetDateTime) -> bool {
        self.tool
            .as_ref()
            .is_none_or(|t| episode.tool_chain().iter().any(|x| x == t))
            && self.error_class.is_none_or(|c| episode.error_class() == c)
            && self.tags.iter().all(|t| episode.tags().contains(t))
            && self.environment.iter().all(|(k, v)| {
                episode
                    .environment()
                    .get(k)
                    .is_some_and(|actual| v == "*" || actual.eq_ignore_ascii_case(v))
            })
            && self.created_after.is_none_or(|t| captured_at >= t)
            && self.created_before.is_none_or(|t| captured_at < t)
    }
}

/// What the agent knows about where it is about to act; compared with each episode's
/// preconditions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryContext {
    pub tool: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub current_state: BTreeMap<String, String>,
}

/// A validated search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    pub text: String,
    pub k: usize,
    /// Hits whose similarity is below this are not returned.
    pub min_similarity: Option<f32>,
    pub filters: SearchFilters,
    pub context: QueryContext,
    pub include_reflection: bool,
}

/// A validated gate request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRequest {
    pub proposed_action: String,
    pub goal: String,
    pub context: String,
    pub tool: Option<String>,
    pub current_state: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if value.contains('\0') {
            self.errors.push(FieldError::new(
                field,
                "nul_byte",
                "must not contain NUL bytes",
            ));
        } else if value.len() > max {
            self.errors.push(FieldError::new(
                field,
                "too_long",
                format!("must be at most {max} bytes"),
            ));
        } else if required && value.trim().is_empty() {
            self.errors
                .push(FieldError::new(field, "empty", "must not be empty"));
        }
    }

    fn name(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        let value = value?;
        self.text(field, &value, max, true);
        Some(value.trim().to_lowercase())
    }

    fn map(&mut self, field: &str, map: &BTreeMap<String, String>) {
        if map.len() > limits::MAP_MAX {
            self.errors.push(FieldError::new(
                field,
                "too_many",
                format!("must have at most {} entries", limits::MAP_MAX),
            ));
            return;
        }
        for (k, v) in map {
            let path = format!("{field}.{k}");
            if k.trim().is_empty() {
                self.errors
                    .push(FieldError::new(field, "empty", "keys must not be empty"));
            }
            self.text(&path, k, limits::KEY_BYTES, false);
            self.text(&path, v, limits::VALUE_BYTES, false);
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

fn lower_keys(map: BTreeMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect()
}

impl SearchRequest {
    /// Validates a search body, collecting every error (each names its field).
    pub fn parse(fields: SearchFields) -> Result<Self, Vec<FieldError>> {
        let mut c = Checker { errors: Vec::new() };
        let (field, text) = match (fields.query, fields.goal) {
            (Some(q), _) => ("query", q),
            (None, Some(g)) => ("goal", g),
            (None, None) => {
                c.errors.push(FieldError::new(
                    "query",
                    "required",
                    "query (or goal) is required",
                ));
                ("query", String::new())
            }
        };
        if !c.errors.iter().any(|e| e.field == "query") {
            c.text(field, &text, limits::QUERY_BYTES, true);
        }
        let k = match fields.k {
            None => limits::K_DEFAULT,
            Some(k) if (limits::K_MIN as i64..=limits::K_MAX as i64).contains(&k) => k as usize,
            Some(_) => {
                c.errors.push(FieldError::new(
                    "k",
                    "out_of_range",
                    format!("must be between {} and {}", limits::K_MIN, limits::K_MAX),
                ));
                limits::K_DEFAULT
            }
        };
        let min_similarity = match fields.min_similarity {
            None => None,
            Some(s) if (0.0..=1.0).contains(&s) => Some(s as f32),
            Some(_) => {
                c.errors.push(FieldError::new(
                    "min_similarity",
                    "out_of_range",
                    "must be between 0 and 1",
                ));
                None
            }
        };
        let f = fields.filters;
        let tool = c.name("filters.tool", f.tool, limits::TOOL_BYTES);
        let error_class = match f.error_class {
            None => None,
            Some(s) => match s.parse::<ErrorClass>() {
                Ok(class) => Some(class),
                Err(_) => {
                    c.errors.push(FieldError::new(
                        "filters.error_class",
                        "invalid_value",
                        format!(
                            "must be one of {}",
                            ErrorClass::ALL.map(ErrorClass::as_str).join(", ")
                        ),
                    ));
                    None
                }
            },
        };
        if f.tags.len() > limits::TAGS_MAX {
            c.errors.push(FieldError::new(
                "filters.tags",
                "too_many",
                format!("must have at most {} entries", limits::TAGS_MAX),
            ));
        }
        let tags = f
            .tags
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| c.name(&format!("filters.tags[{i}]"), Some(t), limits::TAG_BYTES))
            .collect();
        c.map("filters.environment", &f.environment);
        if let (Some(a), Some(b)) = (f.created_after, f.created_before)
            && a >= b
        {
            c.errors.push(FieldError::new(
                "filters.created_before",
                "invalid_value",
                "must be later than created_after",
            ));
        }
        let context_tool = c.name("tool", fields.tool, limits::TOOL_BYTES);
        c.map("environment", &fields.environment);
        c.map("current_state", &fields.current_state);
        let request = SearchRequest {
            text,
            k,
            min_similarity,
            filters: SearchFilters {
                tool,
                error_class,
                tags,
                environment: lower_keys(f.environment),
                created_after: f.created_after,
                created_before: f.created_before,
            },
            context: QueryContext {
                tool: context_tool,
                environment: lower_keys(fields.environment),
                current_state: lower_keys(fields.current_state),
            },
            include_reflection: fields.include_reflection,
        };
        c.finish(request)
    }
}

impl GateRequest {
    /// Validates a gate body, collecting every error (each names its field).
    pub fn parse(fields: GateFields) -> Result<Self, Vec<FieldError>> {
        let mut c = Checker { errors: Vec::new() };
        let proposed_action = match fields.proposed_action {
            Some(a) => {
                c.text("proposed_action", &a, limits::ACTION_BYTES, true);
                a
            }
            None => {
                c.errors.push(FieldError::new(
                    "proposed_action",
                    "required",
                    "proposed_action is required",
                ));
                String::new()
            }
        };
        let goal = fields.goal.unwrap_or_default();
        c.text("goal", &goal, limits::GOAL_BYTES, false);
        let context = fields.context.unwrap_or_default();
        c.text("context", &context, limits::CONTEXT_BYTES, false);
        let tool = c.name("tool", fields.tool, limits::TOOL_BYTES);
        c.map("current_state", &fields.current_state);
        c.map("environment", &fields.environment);
        c.finish(GateRequest {
            proposed_action,
            goal,
            context,
            tool,
            current_state: lower_keys(fields.current_state),
            environment: lower_keys(fields.environment),
        })
    }
}

/// `current_state` / `environment` values: strings as they are; numbers, booleans and null
/// as their JSON text; lists of scalars joined with ", "; anything else (objects, nested
/// lists) as compact JSON text.
fn state_values<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let map = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = scalar_text(&v)
                .or_else(|| match &v {
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(scalar_text)
                        .collect::<Option<Vec<_>>>()
                        .map(|v| v.join(", ")),
                    _ => None,
                })
                .unwrap_or_else(|| v.to_string());
            (k, text)
        })
        .collect())
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => Some("null".to_owned()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why a hit ranks where it does: the weighted parts of its score (docs/RETRIEVAL.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreParts {
    /// Cosine similarity of the query and the episode (0..1 in practice); `min_similarity`
    /// and the no-result threshold apply to it.
    pub similarity: f32,
    /// Cosine similarity of the episode and the query expanded with its best first-pass
    /// matches (pseudo-relevance feedback); ranking uses this one, so the other members of
    /// a recurring failure rank next to the best match.
    pub expanded_similarity: f32,
    /// Lexical (BM25) match on the episode's words and error signatures, 0..1 relative to
    /// the best candidate.
    pub lexical: f32,
    /// How well the request's tool, environment and state fit the episode's preconditions
    /// (0..1; 0.5 when nothing can be compared).
    pub precondition: f32,
    /// Recency decay, 1 for a fresh episode, 0.5 after one half-life.
    pub recency: f32,
    /// Confirmed helpfulness from feedback, -1..1 (0 without feedback).
    pub usage: f32,
}

/// One compared precondition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionCheck {
    /// `tool`, or `environment.<key>`.
    pub key: String,
    /// What the episode had.
    pub expected: String,
    /// What the request says (absent when the request says nothing about it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    pub outcome: PreconditionOutcome,
    /// A hard precondition excludes the episode when it does not hold.
    pub hard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreconditionOutcome {
    Match,
    Mismatch,
    Unknown,
}

/// One ranked search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub episode_id: EpisodeId,
    /// The redacted episode (without screenshot bytes).
    pub episode: Episode,
    #[serde(with = "time::serde::rfc3339")]
    pub captured_at: OffsetDateTime,
    pub score: f32,
    pub parts: ScoreParts,
    #[serde(default)]
    pub preconditions: Vec<PreconditionCheck>,
}

/// Search results, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
    /// How many candidates the vector store returned before ranking and filtering.
    pub candidates: usize,
}

/// The gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    /// Do not run it: it failed before under matching conditions and the remedy lies
    /// outside the action (or the action is unsafe).
    Block,
    /// Run a different action instead (the suggested action).
    Rewrite,
    /// Go ahead, with a specific caution.
    Hint,
    /// Nothing stored is relevant.
    Proceed,
}

impl Recommendation {
    pub const ALL: [Recommendation; 4] = [
        Recommendation::Block,
        Recommendation::Rewrite,
        Recommendation::Hint,
        Recommendation::Proceed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recommendation::Block => "block",
            Recommendation::Rewrite => "rewrite",
            Recommendation::Hint => "hint",
            Recommendation::Proceed => "proceed",
        }
    }
}

impl fmt::Display for Recommendation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Recommendation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown recommendation {s:?}"))
    }
}

/// The answer of `reflect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub recommendation: Recommendation,
    /// 0..1.
    pub confidence: f32,
    /// Why, citing the episodes (by id) it rests on.
    pub rationale: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_action: Option<String>,
    /// The episodes the decision considered, best first.
    pub matched_episodes: Vec<SearchHit>,
}

/// A call to the retriever over request-reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrieverCall<T> {
    pub tenant_id: TenantId,
    pub request: T,
}

/// The retriever's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RetrieverReply<T> {
    Ok {
        result: T,
    },
    Error {
        code: RetrieverErrorCode,
        message: String,
    },
}

/// Why the retriever could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrieverErrorCode {
    /// The request itself is wrong (a bug in the caller: it was validated before).
    InvalidRequest,
    /// A dependency (embedder, vector store, database) is down or slow: retry later.
    Unavailable,
    /// An unexpected failure.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(json: &str) -> Result<SearchRequest, Vec<FieldError>> {
        SearchRequest::parse(serde_json::from_str(json).expect("wire shape"))
    }

    fn first_field(r: Result<SearchRequest, Vec<FieldError>>) -> String {
        r.expect_err("invalid")[0].field.clone()
    }

    #[test]
    fn search_defaults_and_limits() {
        let r = search(r#"{"query": "helm upgrade failed"}"#).expect("valid in this test");
        assert_eq!(r.k, limits::K_DEFAULT);
        assert_eq!(r.text, "helm upgrade failed");
        let r = search(r#"{"goal": "deploy", "k": 50, "min_similarity": 0.3}"#)
            .expect("valid in this test");
        assert_eq!((r.k, r.min_similarity), (50, Some(0.3)));
        assert_eq!(first_field(search(r#"{"query": "x", "k": 0}"#)), "k");
        assert_eq!(first_field(search(r#"{"query": "x", "k": 51}"#)), "k");
        assert_eq!(first_field(search(r#"{"query": "  "}"#)), "query");
        assert_eq!(first_field(search(r#"{}"#)), "query");
        assert_eq!(
            first_field(search(r#"{"query": "x", "min_similarity": 1.5}"#)),
            "min_similarity"
        );
        let long = "a".repeat(limits::QUERY_BYTES + 1);
        assert_eq!(
            first_field(search(&format!(r#"{{"query": "{long}"}}"#))),
            "query"
        );
        assert_eq!(
            first_field(search(
                r#"{"query": "x", "filters": {"error_class": "nope"}}"#
            )),
            "filters.error_class"
        );
        assert!(
            serde_json::from_str::<SearchFields>(r#"{"query": "x", "filters": {"colour": 1}}"#)
                .is_err()
        );
    }

    #[test]
    fn filters_match_episodes() {
        let r = search(
            r#"{"query": "x", "filters": {"tool": "Kubectl", "tags": ["k8s"], "environment": {"OS": "*"}}}"#,
        )
        .expect("valid in this test");
        assert_eq!(r.filters.tool.as_deref(), Some("kubectl"));
        let episode = Episode::parse(crate::EpisodeFields {
            goal: Some("g".into()),
            tool_chain: vec!["kubectl".into()],
            tags: vec!["k8s".into()],
            environment: [("os".to_owned(), "linux".to_owned())].into(),
            ..Default::default()
        })
        .expect("valid in this test");
        let now = OffsetDateTime::now_utc();
        assert!(r.filters.matches(&episode, now));
        let mut other = r.filters.clone();
        other.tool = Some("helm".into());
        assert!(!other.matches(&episode, now));
    }

    #[test]
    fn state_values_flatten_scalars_and_lists() {
        let g: GateFields = serde_json::from_str(
            r#"{"proposed_action": "a", "current_state": {"n": 3, "b": true, "l": ["x", "y"], "z": null}}"#,
        )
        .expect("valid in this test");
        let g = GateRequest::parse(g).expect("valid in this test");
        assert_eq!(g.current_state["n"], "3");
        assert_eq!(g.current_state["l"], "x, y");
        assert_eq!(g.current_state["z"], "null");
        let nested: GateFields = serde_json::from_str(r#"{"current_state": {"o": {"a": 1}}}"#)
            .expect("valid in this test");
        assert_eq!(nested.current_state["o"], r#"{"a":1}"#);
        let missing = GateRequest::parse(GateFields::default()).expect_err("invalid in this test");
        assert_eq!(missing[0].field, "proposed_action");
    }
}
