#!/usr/bin/env bash
# Runs every test of the workspace against the real servers started by services.sh and
# the model fetched by scripts/model/prepare.sh. Uses cargo-nextest when installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The black-box tests run the service binaries (gateway, embedder, ingest-writer,
# episodic-memory); test builds only produce the binaries of packages that have tests.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --config-file .config/nextest.toml "$@"
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
