#!/usr/bin/env bash
# Checks the dependency invariants written down in docs/ARCHITECTURE.md with `cargo tree`.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail=0
# Test and benchmark tooling may use anything; the invariants are about what ships.
TOOLING="test-support integration-tests loadgen"

# Shipped workspace crates that depend directly on $1 (normal dependencies only).
direct_users() {
  cargo tree --workspace --offline -i "$1" -e normal --depth 1 --prefix none 2>/dev/null \
    | tail -n +2 | grep "(/" | awk '{print $1}' | sort -u \
    | grep -vxF -f <(tr ' ' '\n' <<<"$TOOLING") | tr '\n' ' ' | sed 's/ $//'
}
expect() { # crate, allowed users
  local got
  got=$(direct_users "$1")
  if [ "$got" != "$2" ]; then
    echo "boundary violated: $1 is used by [$got], allowed: [$2]" >&2
    fail=1
  fi
}

expect prost "kyrodb-client"                 # only the KyroDB client sees prost types
expect tonic "kyrodb-client"
expect actix-web "gateway"                   # only the gateway speaks HTTP
expect async-nats "bus"                      # NATS lives behind the bus abstraction
expect ort "embedder"                        # only the embedder runs models
expect diesel-async "db"                      # the system of record is reached through db
expect redis "ratelimit"                     # Redis is reached through the rate limiter

# common depends on no IO framework (without its opt-in `runtime` feature for binaries).
if cargo tree --offline -p common -e normal --no-default-features --prefix none 2>/dev/null \
  | grep -Eq '^(tokio|actix|async-nats|diesel|tonic|reqwest|redb) '; then
  echo "boundary violated: common depends on an IO framework" >&2
  fail=1
fi

[ "$fail" -eq 0 ] && echo "dependency boundaries: ok"
exit "$fail"
