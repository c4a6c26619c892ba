#!/usr/bin/env bash
# Builds the standalone binary (release) and runs the whole product in one process:
# gateway + embedder + ingest-writer, SQLite, the embedded vector index and the embedded
# durable bus, all under ./data. No servers needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "==> building the standalone binary (release; the first build takes a few minutes)"
cargo build --release -p standalone --bin episodic-memory
exec ./target/release/episodic-memory serve "$@"
