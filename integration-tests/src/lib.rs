//! Black-box tests live in `tests/`; this library holds shared helpers:
//!
//! - [`api`]: an HTTP client of the public API (capture, read, wait until stored);
//! - [`cluster`]: the separate services (`gateway`, `embedder`, `ingest-writer`) as processes
//!   over a fresh PostgreSQL database, a fresh NATS prefix and a fake KyroDB;
//! - [`standalone`]: the `episodic-memory` binary on a temporary data directory;
//! - [`leaks`]: where a PII substring (or its JSON-escaped form) occurs in a text;
//! - [`rawdb`]: every row of every table of a PostgreSQL database, as JSON.

pub mod api;
pub mod cluster;
pub mod leaks;
pub mod rawdb;
pub mod standalone;

use std::time::Duration;

/// Bound on a service's start-up (the embedder loads the model).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a whole pipeline draining (includes one JetStream redelivery after a crash,
/// 30 s `ack_wait`, and the embedding of 1,000 episodes in a debug build on 2 cores).
pub const PIPELINE_TIMEOUT: Duration = Duration::from_secs(240);

/// One of the sample episodes used by the load tests: distinct text for each `i`.
pub fn sample_episode(i: usize) -> serde_json::Value {
    let tools = [
        "kubectl",
        "helm",
        "terraform",
        "docker",
        "npm",
        "cargo",
        "psql",
    ];
    let classes = [
        "configuration_error",
        "permission_error",
        "network_error",
        "resource_error",
        "dependency_error",
        "timeout_error",
    ];
    let tool = tools[i % tools.len()];
    serde_json::json!({
        "goal": format!("Roll out service-{i} to the staging cluster"),
        "actions_taken": [
            format!("{tool} apply -f deploy/service-{i}.yaml"),
            format!("{tool} rollout status service-{i}"),
        ],
        "error_trace": format!(
            "Error from server: service-{i} failed readiness after {} s (attempt {})",
            30 + i % 90,
            1 + i % 5
        ),
        "error_class": classes[i % classes.len()],
        "tool_chain": [tool],
        "environment": {"cluster": "staging", "region": format!("eu-{}", i % 3)},
        "resolution": format!("Raised the readiness timeout of service-{i} and redeployed"),
        "tags": ["rollout", format!("batch-{}", i % 10)],
    })
}
