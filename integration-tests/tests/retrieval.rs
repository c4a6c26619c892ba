//! Search and gate end to end, in both deployments: the `episodic-memory` binary (embedded
//! index) and the separate services (gateway → NATS → retriever → embedder, KyroDB over
//! gRPC, PostgreSQL).
//!
//! Tenant scoping: two tenants hold near-identical episodes; every search and gate of one
//! returns only its own.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::PIPELINE_TIMEOUT;
use integration_tests::api::{Api, Tenant};
use integration_tests::cluster::{Cluster, ClusterOptions};
use integration_tests::standalone::{Standalone, create_tenant};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::services::serial;

/// Near-identical episodes: the same failures, one marker word apart per tenant.
fn episodes(marker: &str) -> Vec<Value> {
    vec![
        json!({
            "goal": format!("Roll out the {marker} api chart with renamed labels"),
            "actions_taken": [format!("helm upgrade {marker}-api ./charts/api -n prod")],
            "error_trace": "Error: UPGRADE FAILED: cannot patch \"api\" with kind Deployment: spec.selector: Invalid value: field is immutable",
            "error_class": "validation_error",
            "tool_chain": ["helm", "kubectl"],
            "environment": {"cluster": "prod-gke"},
            "resolution": "A Deployment's selector is immutable. Ran `kubectl delete deployment api -n prod --cascade=orphan`, then the upgrade recreated it.",
            "tags": ["helm", "immutable"]
        }),
        json!({
            "goal": format!("Publish the {marker} icons package to npm"),
            "actions_taken": ["npm publish --access public"],
            "error_trace": "npm ERR! code E404\nnpm ERR! 404 Not Found - PUT https://registry.npmjs.org/@acme%2ficons - Not found",
            "error_class": "permission_error",
            "tool_chain": ["npm"],
            "environment": {"ci": "github-actions"},
            "resolution": "The CI token was read-only; created an automation token with publish rights and stored it as NPM_TOKEN.",
            "tags": ["npm", "publish"]
        }),
        json!({
            "goal": format!("Install the httpie CLI on the {marker} jump host"),
            "actions_taken": ["pip install httpie"],
            "error_trace": "error: externally-managed-environment\nThis environment is externally managed",
            "error_class": "configuration_error",
            "tool_chain": ["pip"],
            "environment": {"os": "ubuntu-24.04"},
            "resolution": "System Python is externally managed (PEP 668). Ran `pipx install httpie` instead.",
            "tags": ["pip", "pep668"]
        }),
    ]
}

async fn load(api: &Api, tenant: &Tenant, marker: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for body in episodes(marker) {
        let reply = api.capture(&tenant.key, &body, None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        ids.insert(reply.episode_id());
    }
    for id in &ids {
        api.wait_stored(&tenant.key, id, PIPELINE_TIMEOUT, Duration::from_millis(50))
            .await;
    }
    ids
}

fn returned_ids(reply: &Value, list: &str) -> Vec<String> {
    reply[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {reply}"))
        .iter()
        .map(|h| h["episode_id"].as_str().expect("episode_id").to_owned())
        .collect()
}

/// Every search and gate of each tenant returns its own episodes only, and finds them.
async fn assert_scoped(api: &Api, tenants: [(&Tenant, &BTreeSet<String>); 2]) {
    let searches = [
        json!({"query": "helm upgrade says the deployment selector field is immutable", "k": 10}),
        json!({"query": "npm publish returns 404 not found", "k": 50, "filters": {"tool": "npm"}}),
        json!({"query": "externally-managed-environment when installing a CLI with pip"}),
        json!({"goal": "install a python tool", "min_similarity": 0.1}),
    ];
    let gates = [
        json!({"proposed_action": "helm upgrade web-api ./charts/api -n prod", "goal": "rename labels", "tool": "helm"}),
        json!({"proposed_action": "npm publish --access public", "goal": "publish a package", "tool": "npm", "context": "same read-only CI token"}),
        json!({"proposed_action": "pip install httpie", "goal": "install httpie", "tool": "pip", "current_state": {"os": "ubuntu-24.04"}}),
    ];
    for (tenant, own) in tenants {
        for body in &searches {
            let reply = api.post(&tenant.key, "/api/v1/search", body).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            let ids = returned_ids(&reply.json, "results");
            assert!(!ids.is_empty(), "nothing found for {body}: {}", reply.text);
            for id in &ids {
                assert!(
                    own.contains(id),
                    "tenant {} got a foreign episode {id}",
                    tenant.id
                );
            }
            let first = &reply.json["results"][0];
            for part in ["similarity", "lexical", "precondition", "recency", "usage"] {
                assert!(
                    first["parts"][part].is_number(),
                    "score part {part} missing: {first}"
                );
            }
        }
        for body in &gates {
            let reply = api.post(&tenant.key, "/api/v1/reflect", body).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            let ids = returned_ids(&reply.json, "matched_episodes");
            for id in &ids {
                assert!(
                    own.contains(id),
                    "tenant {} gate cited a foreign episode {id}",
                    tenant.id
                );
            }
            let rationale = reply.json["rationale"].as_str().expect("rationale");
            for other in tenants.iter().filter(|(t, _)| t.id != tenant.id) {
                for id in other.1 {
                    assert!(!rationale.contains(id.as_str()), "rationale cites {id}");
                }
            }
        }
        // The same failure again: the gate does not wave it through.
        let reply = api
            .post(
                &tenant.key,
                "/api/v1/reflect",
                &json!({"proposed_action": "pip install httpie", "goal": "Install the httpie CLI on the jump host", "tool": "pip"}),
            )
            .await;
        let recommendation = reply.json["recommendation"].as_str().unwrap_or_default();
        assert_ne!(recommendation, "proceed", "{}", reply.text);
        assert!(
            reply.json["suggested_action"]
                .as_str()
                .is_some_and(|s| s.contains("pipx")),
            "{}",
            reply.text
        );
    }
}

/// A deleted episode disappears from search and gate at once, cached answers included.
async fn assert_deleted_never_returned(api: &Api, tenant: &Tenant, own: &BTreeSet<String>) {
    let body =
        json!({"query": "helm upgrade says the deployment selector field is immutable", "k": 10});
    let gate = json!({"proposed_action": "helm upgrade web-api ./charts/api -n prod", "goal": "rename labels", "tool": "helm"});
    let before = api.post(&tenant.key, "/api/v1/search", &body).await;
    let victim = returned_ids(&before.json, "results")[0].clone();
    assert!(own.contains(&victim));
    let _ = api.post(&tenant.key, "/api/v1/reflect", &gate).await;
    let deleted = api
        .delete(&tenant.key, &format!("/api/v1/episodes/{victim}"))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let after = api.post(&tenant.key, "/api/v1/search", &body).await;
    assert!(
        !returned_ids(&after.json, "results").contains(&victim),
        "{}",
        after.text
    );
    let gated = api.post(&tenant.key, "/api/v1/reflect", &gate).await;
    assert!(
        !returned_ids(&gated.json, "matched_episodes").contains(&victim),
        "{}",
        gated.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_search_and_gate_never_cross_tenants() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("data dir");
    let a = create_tenant(dir.path(), "tenant-a").await;
    let b = create_tenant(dir.path(), "tenant-b").await;
    let app = Standalone::start(dir.path()).await;
    let a_ids = load(&app.api, &a, "alpha").await;
    let b_ids = load(&app.api, &b, "beta").await;
    assert_scoped(&app.api, [(&a, &a_ids), (&b, &b_ids)]).await;
    assert_deleted_never_returned(&app.api, &a, &a_ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_search_and_gate_never_cross_tenants_and_fail_fast_without_a_retriever() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let a = cluster.create_tenant("tenant-a").await;
    let b = cluster.create_tenant("tenant-b").await;
    let a_ids = load(&cluster.api, &a, "alpha").await;
    let b_ids = load(&cluster.api, &b, "beta").await;
    assert_scoped(&cluster.api, [(&a, &a_ids), (&b, &b_ids)]).await;
    assert_deleted_never_returned(&cluster.api, &b, &b_ids).await;

    // The retriever goes away: a JSON 503 at once, never a hang.
    cluster.retriever.as_mut().expect("retriever").kill9();
    let started = std::time::Instant::now();
    let reply = cluster
        .api
        .post(
            &a.key,
            "/api/v1/search",
            &json!({"query": "helm upgrade immutable"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"]["code"], "service_unavailable");
    assert!(reply.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
