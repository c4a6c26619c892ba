#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on loopback:
# PostgreSQL (5432, trust auth for local TCP), Redis (6379) and NATS with JetStream (4222).
# Starts what is stopped; on a fresh Debian machine installs what is missing (apt).
# Idempotent; prints one line per service.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do
    if port_open "$port"; then return 0; fi
    sleep 0.2
  done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing postgresql (apt)..."
    apt_install postgresql
    # Tests connect as postgres over loopback TCP without a password (like CI's machines).
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_port 5432 PostgreSQL
fi
echo "postgresql: 127.0.0.1:5432"

# --- Redis ------------------------------------------------------------------
if ! port_open 6379; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis (apt)..."
    apt_install redis-server
  fi
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
fi
echo "redis: 127.0.0.1:6379"

# --- NATS with JetStream ----------------------------------------------------
if ! port_open 4222; then
  NATS_BIN="$(command -v nats-server || true)"
  if [ -z "$NATS_BIN" ]; then
    echo "installing nats-server (apt)..."
    apt_install nats-server
    NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
  fi
  $SUDO mkdir -p /var/lib/nats-server
  $SUDO start-stop-daemon --start --oknodo --background --exec "$NATS_BIN" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 NATS
fi
echo "nats: 127.0.0.1:4222 (JetStream)"
