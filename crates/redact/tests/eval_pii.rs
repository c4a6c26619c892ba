//! Redaction against the annotated dev set: no `pii` substring may survive in
//! any field, and episodes without PII must stay (almost) untouched.
//!
//! The set is found via `EM_EVAL_DIR` (a directory holding `episodes.jsonl`),
//! else `<workspace>/../shared/eval/dev`, else `/work/shared/eval/dev`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

fn eval_file() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("EM_EVAL_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    candidates.push(workspace.join("../shared/eval/dev"));
    candidates.push(PathBuf::from("/work/shared/eval/dev"));
    for dir in &candidates {
        let f = dir.join("episodes.jsonl");
        if f.is_file() {
            return f;
        }
    }
    panic!(
        "eval set not found: no episodes.jsonl in any of {candidates:?}; \
         set EM_EVAL_DIR to the directory holding episodes.jsonl"
    );
}

struct Episode {
    id: String,
    pii: Vec<String>,
    /// (field name, text) for every text the service stores.
    fields: Vec<(String, String)>,
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn load() -> Vec<Episode> {
    let path = eval_file();
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (n, line) in raw.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: bad JSON: {e}", path.display(), n + 1));
        let mut fields = Vec::new();
        for name in ["goal", "error_trace", "error_class", "resolution"] {
            if let Some(x) = v.get(name).filter(|x| !x.is_null()) {
                fields.push((name.to_string(), as_text(x)));
            }
        }
        for name in ["actions_taken", "tool_chain", "tags"] {
            for (i, x) in v[name].as_array().into_iter().flatten().enumerate() {
                fields.push((format!("{name}[{i}]"), as_text(x)));
            }
        }
        for (k, x) in v["environment"].as_object().into_iter().flatten() {
            fields.push((format!("environment key {k:?}"), k.clone()));
            fields.push((format!("environment[{k:?}]"), as_text(x)));
        }
        out.push(Episode {
            id: as_text(&v["id"]),
            pii: v["pii"]
                .as_array()
                .into_iter()
                .flatten()
                .map(as_text)
                .collect(),
            fields,
        });
    }
    assert!(!out.is_empty(), "{} holds no episodes", path.display());
    out
}

#[test]
fn no_pii_survives_redaction() {
    let episodes = load();
    let mut leaks = Vec::new();
    let mut checked = 0;
    for ep in episodes.iter().filter(|e| !e.pii.is_empty()) {
        let redacted: Vec<(String, String)> = ep
            .fields
            .iter()
            .map(|(n, t)| (n.clone(), redact::redact(t).text.into_owned()))
            .collect();
        let kinds: Vec<String> = ep
            .fields
            .iter()
            .flat_map(|(_, t)| redact::redact(t).findings)
            .map(|f| format!("{}x{}", f.kind, f.count))
            .collect();
        println!("{}: {}", ep.id, kinds.join(" "));
        for p in &ep.pii {
            checked += 1;
            // Each listed substring must occur in the raw episode...
            assert!(
                ep.fields.iter().any(|(_, t)| t.contains(p.as_str())),
                "{}: pii {p:?} not in the raw episode (bad annotation or loader)",
                ep.id
            );
            // ...and in no redacted field.
            for (name, text) in &redacted {
                if text.contains(p.as_str()) {
                    leaks.push(format!("{} {name}: {p:?} survives in {text:?}", ep.id));
                }
            }
        }
    }
    println!("checked {checked} pii substrings");
    assert!(checked > 0, "the eval set has no pii annotations");
    assert!(
        leaks.is_empty(),
        "{} leak(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

/// Upper bound on spans redacted in episodes whose `pii` is empty, set after
/// looking at what is found there (see the printed list).
const MAX_FINDINGS_IN_CLEAN_EPISODES: usize = 1;

#[test]
fn over_redaction_on_clean_episodes() {
    let episodes = load();
    let clean: Vec<&Episode> = episodes.iter().filter(|e| e.pii.is_empty()).collect();
    let mut found = Vec::new();
    let mut changed_fields = 0;
    let mut total_fields = 0;
    for ep in &clean {
        for (name, text) in &ep.fields {
            total_fields += 1;
            let spans = redact::scan(text);
            if !spans.is_empty() {
                changed_fields += 1;
            }
            for m in spans {
                found.push(format!(
                    "{} {name}: {} {:?}",
                    ep.id,
                    m.kind,
                    &text[m.range.clone()]
                ));
            }
        }
    }
    println!(
        "over-redaction: {} span(s) in {changed_fields}/{total_fields} fields of {} clean episodes",
        found.len(),
        clean.len()
    );
    for f in &found {
        println!("  {f}");
    }
    assert!(
        found.len() <= MAX_FINDINGS_IN_CLEAN_EPISODES,
        "too much over-redaction ({} > {MAX_FINDINGS_IN_CLEAN_EPISODES}):\n{}",
        found.len(),
        found.join("\n")
    );
}
