#!/usr/bin/env bash
# `make bench`: measures the capture path on this machine and rewrites docs/BENCHMARKS.md.
#
#  1. builds release binaries (loadgen, standalone, gateway, embedder, ingest-writer);
#  2. standalone mode: `episodic-memory serve` on a fresh data directory;
#  3. services mode: gateway + embedder + ingest-writer over NATS (a unique subject prefix)
#     and PostgreSQL (a fresh database), with the fake KyroDB served by `loadgen infra`;
#  4. in each mode: open loop at a rate the pipeline sustains (capture→stored latency), a
#     closed-loop burst (pipeline/embedder throughput under saturation), the same burst with
#     the embedder on 2 intra-op threads, and open loop at BENCH_OPEN rates, above the
#     pipeline's capacity (gateway latency only);
#  5. raw model throughput: the embedder's criterion bench (short texts) and `loadgen model`
#     (the dev set's composed episode texts);
#  6. `loadgen report` → docs/BENCHMARKS.md (prose from scripts/bench/interpretation.md).
#
# Needs the servers (`make services`) and the model (`make model`); `make bench` runs both.
#  7. search and gate: a tenant seeded with BENCH_QUERY_EPISODES (10,000) stored episodes
#     (`loadgen seed`), then open-loop `loadgen query` for search and reflect, every request
#     distinct (no cache help) at BENCH_QUERY_RATES, and repeated at BENCH_REPEAT_RATES.
# Knobs (env): BENCH_PARTS="capture query", BENCH_MODES="standalone services", BENCH_STEADY=4:30s (rate:duration),
# BENCH_OPEN="50:10s 200:5s", BENCH_BURST=600, BENCH_CONCURRENCY=32, BENCH_THREADS2=1,
# BENCH_CRITERION=1 (0 skips the model bench), BENCH_OUT=docs/BENCHMARKS.md.
# Everything it starts is stopped and deleted on exit; the raw results and logs are kept
# in target/bench/latest/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

MODES=${BENCH_MODES:-standalone services}
PARTS=${BENCH_PARTS:-capture query}
QUERY_EPISODES=${BENCH_QUERY_EPISODES:-10000}
QUERY_RATES=${BENCH_QUERY_RATES:-50,100,150,200}
REPEAT_RATES=${BENCH_REPEAT_RATES:-500,1000,1500}
QUERY_DURATION=${BENCH_QUERY_DURATION:-10s}
STEADY=${BENCH_STEADY:-4:30s}
OPEN=${BENCH_OPEN:-50:10s 200:5s}
BURST=${BENCH_BURST:-600}
THREADS2=${BENCH_THREADS2:-1}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
CRITERION=${BENCH_CRITERION:-1}
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}
DATASET=${BENCH_DATASET:-$ROOT/../shared/eval/dev/episodes.jsonl}
NATS_URL=${BENCH_NATS_URL:-nats://127.0.0.1:4222}
EVAL_SET=$(dirname "$DATASET")

# Machine facts first, before our own builds load the machine.
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
NPROC=$(nproc)
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
CPU=${CPU:-$(uname -m)}
MEM=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
DATE=$(date -u +"%Y-%m-%d %H:%M UTC")
GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then GIT="$GIT+dirty"; fi
START=$(date +%s)

if [ -f .cache/model.env ]; then
  # shellcheck disable=SC1091
  source .cache/model.env
fi
export EM_MODEL_DIR ORT_DYLIB_PATH
: "${EM_MODEL_DIR:?run make model}" "${ORT_DYLIB_PATH:?run make model}"
[ -f "$DATASET" ] || { echo "error: dataset $DATASET not found (BENCH_DATASET)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/em-bench.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
PIDS=()

stop_pid() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  # Stop in reverse start order: services before the infra helper that owns their state.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
  mkdir -p target/bench
  rm -rf target/bench/latest
  cp -r "$WORK" target/bench/latest 2>/dev/null || true
  rm -rf target/bench/latest/*-data
  rm -rf "$WORK"
  if [ $status -ne 0 ]; then
    echo "bench failed (exit $status); logs in target/bench/latest/" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo; echo "==> $*"; }
# Records a command for docs/BENCHMARKS.md (the API key never is).
record() { echo "$*" | sed -E "s#$ROOT/##g; s#$WORK/#\$WORK/#g" >>"$RESULTS/commands.txt"; }

# wait_for <seconds> <pid> <command...>: until the command succeeds, the pid dies, or time runs out.
wait_for() {
  local seconds=$1 pid=$2
  shift 2
  for _ in $(seq 1 $((seconds * 10))); do
    if "$@"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then echo "error: process $pid exited" >&2; return 1; fi
    sleep 0.1
  done
  echo "error: timed out waiting for: $*" >&2
  return 1
}

LOADGEN=target/release/loadgen

# scenario <mode> <name> <what> -- <loadgen capture args...>: one measurement, with the
# current $URL, $KEY and $WATCH (name=pid of every process under test).
scenario() {
  local mode=$1 name=$2 what=$3
  shift 4
  step "$mode: $what"
  record "loadgen capture --url \$URL --key \$KEY --dataset $DATASET $*   # $mode, $name"
  local watch=()
  for w in "${WATCH[@]}"; do watch+=(--watch "$w"); done
  LOADGEN_KEY=$KEY "$LOADGEN" capture --url "$URL" --dataset "$DATASET" --label "$name" \
    "${watch[@]}" --out "$RESULTS/$mode.$name.json" "$@" >/dev/null
  summarize "$RESULTS/$mode.$name.json"
}

# One line per scenario on the console (jq when present).
summarize() {
  if command -v jq >/dev/null 2>&1; then
    jq -c '{accepted, errors, rps: .throughput_rps, p50: .latency.p50_ms, p99: .latency.p99_ms,
            stored_p50: .stored.capture_to_stored.p50_ms, stored_p99: .stored.capture_to_stored.p99_ms,
            eps: .stored.pipeline_eps, drain_eps: .stored.drain_eps}' "$1"
  else
    cat "$1"
  fi
}

# The scenarios of one mode. `restart_embedder <intra-op threads>` must restart the
# embedding model of that mode (and update URL/WATCH).
run_scenarios() {
  local mode=$1
  scenario "$mode" steady "open loop, $STEADY (within the pipeline's capacity)" -- \
    --rate "${STEADY%%:*}" --duration "${STEADY#*:}" --wait-stored
  scenario "$mode" burst "burst of $BURST captures, $CONCURRENCY in flight" -- \
    --concurrency "$CONCURRENCY" --count "$BURST" --wait-stored
  if [ "$THREADS2" = 1 ]; then
    restart_embedder 2
    scenario "$mode" burst_threads2 "burst of $BURST, embedder with 2 intra-op threads" -- \
      --concurrency "$CONCURRENCY" --count "$BURST" --wait-stored
    restart_embedder 1
  fi
  # Above the pipeline's capacity: gateway latency only (the backlog is discarded with
  # the mode's data directory / NATS streams).
  for spec in $OPEN; do
    local rate=${spec%%:*} duration=${spec#*:}
    scenario "$mode" "rate$rate" "open loop, $rate req/s for $duration (gateway latency)" -- \
      --rate "$rate" --duration "$duration"
  done
}

start_standalone() {
  local threads=$1
  record "EM_STANDALONE__MODEL__INTRA_THREADS=$threads episodic-memory --data-dir \$WORK/standalone-data serve --addr 127.0.0.1:0"
  : >"$WORK/standalone.out"
  EM_STANDALONE__MODEL__INTRA_THREADS=$threads target/release/episodic-memory \
    --data-dir "$WORK/standalone-data" serve --addr 127.0.0.1:0 \
    >"$WORK/standalone.out" 2>>"$WORK/standalone.log" &
  STANDALONE_PID=$!
  PIDS+=("$STANDALONE_PID")
  wait_for 120 "$STANDALONE_PID" grep -q 'is running on http://' "$WORK/standalone.out"
  URL=$(grep -o 'http://[0-9.:]*' "$WORK/standalone.out" | head -n1)
  WATCH=("episodic-memory=$STANDALONE_PID")
  echo "standalone at $URL (pid $STANDALONE_PID, $threads intra-op thread(s))"
}

bench_standalone() {
  step "standalone: fresh data directory, tenant, server"
  record "episodic-memory --data-dir \$WORK/standalone-data tenant create --name bench"
  KEY=$(target/release/episodic-memory --data-dir "$WORK/standalone-data" tenant create --name bench \
    2>>"$WORK/standalone.log" | awk '/^api_key:/ {print $2}')
  [ -n "$KEY" ] || { echo "error: no api key from tenant create" >&2; return 1; }
  restart_embedder() {
    stop_pid "$STANDALONE_PID"
    start_standalone "$1"
  }
  start_standalone 1
  run_scenarios standalone
  stop_pid "$STANDALONE_PID"
}

start_embedder() {
  local threads=$1
  record "EM_EMBEDDER__EVENTS__PREFIX=\$PREFIX EM_EMBEDDER__MODEL__INTRA_THREADS=$threads embedder"
  : >"$WORK/embedder.log.ready"
  EM_EMBEDDER__MODEL__INTRA_THREADS=$threads target/release/embedder 2>"$WORK/embedder.log.ready" &
  EMBEDDER_PID=$!
  PIDS+=("$EMBEDDER_PID")
  wait_for 120 "$EMBEDDER_PID" grep -q 'embedder ready' "$WORK/embedder.log.ready"
  echo "embedder pid $EMBEDDER_PID ($threads intra-op thread(s))"
}

bench_services() {
  local prefix
  prefix="bench_$(date +%s)_$$"
  step "services: fresh PostgreSQL database, fake KyroDB, NATS prefix $prefix"
  record "loadgen infra --env-file \$WORK/infra.env --nats-prefix \$PREFIX   # fresh PostgreSQL database + fake KyroDB; PREFIX=$prefix"
  "$LOADGEN" infra --env-file "$WORK/infra.env" --nats-prefix "$prefix" --nats-url "$NATS_URL" \
    2>>"$WORK/infra.log" &
  local infra=$!
  PIDS+=("$infra")
  wait_for 60 "$infra" test -f "$WORK/infra.env"
  # shellcheck disable=SC1091
  source "$WORK/infra.env"

  export EM_GATEWAY__DATABASE__URL=$EM_BENCH_DB_URL EM_GATEWAY__EVENTS__PREFIX=$prefix
  export EM_GATEWAY__NATS__URL=$NATS_URL EM_GATEWAY__HTTP__ADDR=127.0.0.1:0
  export EM_EMBEDDER__EVENTS__PREFIX=$prefix EM_EMBEDDER__NATS__URL=$NATS_URL
  export EM_INGEST_WRITER__DATABASE__URL=$EM_BENCH_DB_URL EM_INGEST_WRITER__EVENTS__PREFIX=$prefix
  export EM_INGEST_WRITER__NATS__URL=$NATS_URL EM_INGEST_WRITER__KYRODB__TEXT__URL=$EM_BENCH_KYRODB_URL
  record "EM_GATEWAY__DATABASE__URL=\$DB EM_GATEWAY__EVENTS__PREFIX=\$PREFIX gateway create-tenant --name bench"
  KEY=$(target/release/gateway create-tenant --name bench 2>>"$WORK/gateway.log" | awk '/^api_key:/ {print $2}')
  [ -n "$KEY" ] || { echo "error: no api key from gateway create-tenant" >&2; return 1; }

  record "EM_GATEWAY__DATABASE__URL=\$DB EM_GATEWAY__EVENTS__PREFIX=\$PREFIX EM_GATEWAY__HTTP__ADDR=127.0.0.1:0 gateway"
  target/release/gateway 2>>"$WORK/gateway.log" &
  local gw=$!
  PIDS+=("$gw")
  record "EM_INGEST_WRITER__DATABASE__URL=\$DB EM_INGEST_WRITER__EVENTS__PREFIX=\$PREFIX EM_INGEST_WRITER__KYRODB__TEXT__URL=\$FAKE_KYRODB ingest-writer"
  target/release/ingest-writer 2>>"$WORK/ingest-writer.log" &
  local iw=$!
  PIDS+=("$iw")
  start_embedder 1

  wait_for 60 "$gw" grep -q 'gateway listening' "$WORK/gateway.log"
  URL="http://$(grep 'gateway listening' "$WORK/gateway.log" | grep -o '"addr":"[^"]*"' | head -n1 | cut -d'"' -f4)"
  wait_for 60 "$iw" grep -q 'consumer started' "$WORK/ingest-writer.log"
  echo "gateway at $URL (pid $gw), ingest-writer pid $iw"
  local nats
  nats=$(pgrep -xo nats-server || true)
  watch_services() {
    WATCH=("gateway=$gw" "embedder=$EMBEDDER_PID" "ingest-writer=$iw")
    if [ -n "$nats" ]; then WATCH+=("nats-server=$nats"); fi
  }
  restart_embedder() {
    stop_pid "$EMBEDDER_PID"
    cat "$WORK/embedder.log.ready" >>"$WORK/embedder.log"
    start_embedder "$1"
    watch_services
  }
  watch_services
  run_scenarios services
  stop_pid "$EMBEDDER_PID"
  cat "$WORK/embedder.log.ready" >>"$WORK/embedder.log"
  rm -f "$WORK/embedder.log.ready"
  stop_pid "$iw"
  stop_pid "$gw"
  stop_pid "$infra" # deletes the streams and drops the database
  grep -h 'loadgen infra' "$WORK/infra.log" || true
}

# query_scenarios <mode>: search and reflect load against $URL with $KEY.
query_scenarios() {
  local mode=$1 endpoint kind rates
  mkdir -p "$RESULTS/query"
  for endpoint in search reflect; do
    for kind in distinct repeated; do
      rates=$QUERY_RATES
      [ "$kind" = repeated ] && rates=$REPEAT_RATES
      step "$mode: $endpoint, $kind requests, open loop at $rates req/s for $QUERY_DURATION each"
      record "loadgen query --url \$URL --key \$KEY --set $EVAL_SET --endpoint $endpoint --mode $kind --rates $rates --duration $QUERY_DURATION   # $mode"
      LOADGEN_KEY=$KEY "$LOADGEN" query --url "$URL" --set "$EVAL_SET" --endpoint "$endpoint" \
        --mode "$kind" --rates "$rates" --duration "$QUERY_DURATION" --label "$mode $endpoint $kind" \
        --out "$RESULTS/query/$mode.$endpoint.$kind.json" >/dev/null
    done
  done
}

bench_queries_standalone() {
  local data=$WORK/query-standalone-data out tenant
  step "standalone: $QUERY_EPISODES stored episodes for search and gate"
  out=$(target/release/episodic-memory --data-dir "$data" tenant create --name bench-query 2>>"$WORK/standalone.log")
  tenant=$(echo "$out" | awk '/^tenant_id:/ {print $2}')
  KEY=$(echo "$out" | awk '/^api_key:/ {print $2}')
  record "loadgen seed --tenant \$TENANT --count $QUERY_EPISODES --dataset $DATASET --data-dir \$DATA"
  "$LOADGEN" seed --tenant "$tenant" --count "$QUERY_EPISODES" --dataset "$DATASET" --data-dir "$data" 2>>"$WORK/seed.log"
  : >"$WORK/standalone.out"
  target/release/episodic-memory --data-dir "$data" serve --addr 127.0.0.1:0 \
    >"$WORK/standalone.out" 2>>"$WORK/standalone.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_for 120 "$pid" grep -q 'is running on http://' "$WORK/standalone.out"
  URL=$(grep -o 'http://[0-9.:]*' "$WORK/standalone.out" | head -n1)
  query_scenarios standalone
  stop_pid "$pid"
}

bench_queries_services() {
  local prefix
  prefix="benchq_$(date +%s)_$$"
  step "services: $QUERY_EPISODES stored episodes in PostgreSQL + fake KyroDB; NATS prefix $prefix"
  rm -f "$WORK/infra-q.env"
  "$LOADGEN" infra --env-file "$WORK/infra-q.env" --nats-prefix "$prefix" --nats-url "$NATS_URL" \
    2>>"$WORK/infra.log" &
  local infra=$!
  PIDS+=("$infra")
  wait_for 60 "$infra" test -f "$WORK/infra-q.env"
  # shellcheck disable=SC1091
  source "$WORK/infra-q.env"
  export EM_GATEWAY__DATABASE__URL=$EM_BENCH_DB_URL EM_GATEWAY__EVENTS__PREFIX=$prefix
  export EM_GATEWAY__NATS__URL=$NATS_URL EM_GATEWAY__HTTP__ADDR=127.0.0.1:0
  export EM_EMBEDDER__EVENTS__PREFIX=$prefix EM_EMBEDDER__NATS__URL=$NATS_URL
  export EM_RETRIEVER__DATABASE__URL=$EM_BENCH_DB_URL EM_RETRIEVER__EVENTS__PREFIX=$prefix
  export EM_RETRIEVER__NATS__URL=$NATS_URL EM_RETRIEVER__KYRODB__URL=$EM_BENCH_KYRODB_URL
  local out tenant
  out=$(target/release/gateway create-tenant --name bench-query 2>>"$WORK/gateway.log")
  tenant=$(echo "$out" | awk '/^tenant_id:/ {print $2}')
  KEY=$(echo "$out" | awk '/^api_key:/ {print $2}')
  record "loadgen seed --tenant \$TENANT --count $QUERY_EPISODES --dataset $DATASET --db-url \$DB --kyrodb-url \$FAKE_KYRODB"
  "$LOADGEN" seed --tenant "$tenant" --count "$QUERY_EPISODES" --dataset "$DATASET" \
    --db-url "$EM_BENCH_DB_URL" --kyrodb-url "$EM_BENCH_KYRODB_URL" 2>>"$WORK/seed.log"
  : >"$WORK/gateway-q.log"
  target/release/gateway 2>>"$WORK/gateway-q.log" &
  local gw=$!
  PIDS+=("$gw")
  target/release/retriever 2>>"$WORK/retriever.log" &
  local rt=$!
  PIDS+=("$rt")
  start_embedder 0
  wait_for 60 "$gw" grep -q 'gateway listening' "$WORK/gateway-q.log"
  URL="http://$(grep 'gateway listening' "$WORK/gateway-q.log" | grep -o '"addr":"[^"]*"' | head -n1 | cut -d'"' -f4)"
  wait_for 60 "$rt" grep -q 'retriever serving' "$WORK/retriever.log"
  query_scenarios services
  stop_pid "$EMBEDDER_PID"
  stop_pid "$rt"
  stop_pid "$gw"
  stop_pid "$infra"
}

step "building release binaries"
cargo build --release --workspace --bins
if [ "$CRITERION" = 1 ]; then
  cargo bench --workspace --bench embed --no-run
fi

for part in $PARTS; do
  for mode in $MODES; do
    case $part:$mode in
      capture:standalone) bench_standalone ;;
      capture:services) bench_services ;;
      query:standalone) bench_queries_standalone ;;
      query:services) bench_queries_services ;;
      *) echo "error: unknown part:mode $part:$mode" >&2; exit 1 ;;
    esac
  done
done

if [ "$CRITERION" = 1 ]; then
  step "raw model throughput (criterion)"
  rm -rf target/criterion/embed
  record "cargo bench -p embedder --bench embed"
  cargo bench --workspace --bench embed 2>&1 | tee "$WORK/criterion.log" | grep -E 'embed/|thrpt' || true
fi

step "raw model throughput on the dev set's episode texts"
record "loadgen model --dataset $DATASET --threads 1,2 --batch 32"
"$LOADGEN" model --dataset "$DATASET" --threads 1,2 --batch 32 --out "$RESULTS/model.json" >/dev/null

ELAPSED=$(( $(date +%s) - START ))
step "writing $OUT"
"$LOADGEN" report --results "$RESULTS" --criterion target/criterion \
  --notes scripts/bench/interpretation.md --out "$OUT" \
  --machine "date=$DATE" --machine "cpu=$CPU" --machine "nproc=$NPROC" \
  --machine "memory=$MEM" --machine "loadavg=$LOADAVG" --machine "git=$GIT" \
  --machine "elapsed=$((ELAPSED / 60)) min $((ELAPSED % 60)) s"
