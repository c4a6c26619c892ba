#!/usr/bin/env bash
# `make eval [EVAL=<dir>]`: builds em-eval and scores search and the gate on an evaluation
# set (episodes.jsonl, search_queries.jsonl, gate_probes.jsonl) in a fresh embedded
# instance, through the public HTTP API. For the repository's dev set it also rewrites
# docs/EVALUATION.md. The last line of the output is the summary:
#   recall@5=… mrr@10=… no_result_precision=… gate_accuracy=… false_block=… missed_block=…
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=${1:-../shared/eval/dev}
[ -f "$SET/episodes.jsonl" ] || { echo "error: $SET/episodes.jsonl not found" >&2; exit 1; }
if [ -f .cache/model.env ]; then
  # shellcheck disable=SC1091
  source .cache/model.env
fi
cargo build --workspace --bins --release >&2
ARGS=(--set "$SET")
if [ "$(cd "$SET" && pwd -P)" = "$(cd ../shared/eval/dev 2>/dev/null && pwd -P || true)" ]; then
  ARGS+=(--out docs/EVALUATION.md)
fi
exec target/release/em-eval "${ARGS[@]}"
