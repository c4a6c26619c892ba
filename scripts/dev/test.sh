#!/usr/bin/env bash
# Runs every test of the workspace against the real servers started by services.sh and
# the model fetched by scripts/model/prepare.sh. Uses cargo-nextest when installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --config-file .config/nextest.toml "$@"
  # nextest does not run doctests
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
