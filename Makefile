# EpisodicMemory — the two commands that matter: `make run` and `make test`.
# Every target delegates to a script or cargo; see README.md.

SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export EM_CACHE_DIR := $(CACHE)
export EM_MODEL_DIR ?= $(CACHE)/models/all-MiniLM-L6-v2
export ORT_DYLIB_PATH ?= $(CACHE)/onnxruntime/lib/libonnxruntime.so
export EM_TEST_VISION_MODEL ?= $(CACHE)/models/test-vision/model.onnx
CARGO ?= cargo
# The evaluation set `make eval` scores (any directory in the same format).
EVAL ?= $(CURDIR)/../shared/eval/dev

.PHONY: help run model services build lint test test-only bench eval clean-data

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

run: model ## build and start the whole product in one process on 127.0.0.1:8080
	@scripts/dev/run.sh

model: ## fetch and cache the embedding model and ONNX Runtime (pinned by sha256)
	@scripts/model/prepare.sh

services: ## start PostgreSQL, Redis and NATS (JetStream) when absent
	@scripts/dev/services.sh

build: ## debug build of every crate
	$(CARGO) build --workspace --all-targets

lint: ## formatting, clippy (warnings denied) and dependency boundaries
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@scripts/dev/check-boundaries.sh

test: services model lint test-only ## everything CI runs

test-only: ## unit and integration tests (servers and model must be up)
	@scripts/dev/test.sh

bench: services model ## benchmarks; results go to docs/BENCHMARKS.md
	@scripts/bench/run.sh

eval: model ## score search and the gate on $(EVAL) in a fresh embedded instance (dev set: rewrites docs/EVALUATION.md)
	@scripts/dev/eval.sh "$(EVAL)"

clean-data: ## delete the standalone data directory
	rm -rf data
