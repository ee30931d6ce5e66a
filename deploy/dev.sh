#!/usr/bin/env bash
# Runs the whole Freshet topology as local processes: timer, membership,
# cache, control plane, three storage workers (az-a, az-b, az-c) and the
# frontend. Logs are prefixed by service; Ctrl-C (or SIGTERM) stops all.
# Ready when ListStreams answers on the frontend and all three workers
# have registered with membership.
#
# `just dev` builds the binaries and runs this. Everything is overridable
# through the environment (the test suite runs it on free ports):
#   FRESHET_BIN_DIR        where the binaries are        (target/debug)
#   FRESHET_DEV_DIR        worker data directories        (.dev)
#   FRESHET_DEV_PORT       frontend port                  (4567)
#   FRESHET_DEV_TLS_PORT   frontend HTTPS port (4568; `off` for none): a
#                          development CA and certificate for localhost are
#                          made once in $FRESHET_DEV_DIR/tls (trust ca.pem)
#   FRESHET_DEV_BASE_PORT  first internal gRPC port       (7051)
#   FRESHET_DEV_METRICS_PORT  first metrics port (9150): GET /metrics on
#                          frontend +0, timer +1, membership +2, cache +3,
#                          control plane +4, workers +10..+12; `off` for none
#   FRESHET_DEV_DATABASE   Postgres database, created if missing (freshet)
#   FRESHET_PG_SERVER      Postgres server URL without a database
#                          (postgres://postgres@127.0.0.1:5432)
#   FRESHET_DEV_RESTART    1: a service that exits is started again after
#                          FRESHET_DEV_RESTART_DELAY seconds (0.5), as
#                          Kubernetes restarts a pod (0)
#   FRESHET_DEV_CONTROL_PLANES  2: a second control plane on the port after
#                          the first's, started once the first is active
#                          and standing by while it is (1); the frontend
#                          talks to the first
#   REDIS_URL, FRESHET_REDIS_PREFIX, OTEL_EXPORTER_OTLP_ENDPOINT, RUST_LOG
# Secure mode (docs/security.md) passes through the environment as well:
#   FRESHET_AUTH=sigv4 FRESHET_MASTER_KEY FRESHET_INTERNAL_TOKEN
#   FRESHET_ITERATOR_SECRET FRESHET_BOOTSTRAP_ACCESS_KEY FRESHET_BOOTSTRAP_SECRET_KEY
#   FRESHET_ADMIN_TOKEN (the control plane's; freshet-admin presents it)
set -euo pipefail

bin_dir=${FRESHET_BIN_DIR:-target/debug}
dev_dir=${FRESHET_DEV_DIR:-.dev}
frontend_port=${FRESHET_DEV_PORT:-4567}
tls_port=${FRESHET_DEV_TLS_PORT:-4568}
base=${FRESHET_DEV_BASE_PORT:-7051}
metrics_base=${FRESHET_DEV_METRICS_PORT:-9150}
database=${FRESHET_DEV_DATABASE:-freshet}
pg_server=${FRESHET_PG_SERVER:-postgres://postgres@127.0.0.1:5432}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export FRESHET_REDIS_PREFIX=${FRESHET_REDIS_PREFIX:-freshet:}
export DATABASE_URL="$pg_server/$database"
export FRESHET_TIMER_ADDR="127.0.0.1:$base"
export FRESHET_MEMBERSHIP_ADDR="127.0.0.1:$((base + 1))"
export FRESHET_CACHE_ADDR="127.0.0.1:$((base + 2))"
export FRESHET_CONTROL_PLANE_ADDR="127.0.0.1:$((base + 3))"

for binary in timer membership cache control-plane storage-worker frontend; do
  if [ ! -x "$bin_dir/freshet-$binary" ]; then
    echo "missing $bin_dir/freshet-$binary: run 'cargo build --workspace --bins' (just dev does)" >&2
    exit 1
  fi
done

if command -v psql >/dev/null 2>&1; then
  if ! psql "$pg_server/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
    psql "$pg_server/postgres" -qc "CREATE DATABASE \"$database\""
  fi
else
  echo "psql not found: make sure database '$database' exists on $pg_server" >&2
fi

pids=()
stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# supervise COMMAND...: runs COMMAND again whenever it exits, until this
# shell is told to stop (then it stops COMMAND and waits for it).
supervise() {
  local child=""
  trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM INT
  while true; do
    "$@" &
    child=$!
    wait "$child" || true
    echo "[dev] exited; starting it again" >&2
    sleep "${FRESHET_DEV_RESTART_DELAY:-0.5}"
  done
}

# start NAME COMMAND...: runs COMMAND with its output prefixed by [NAME]
# (restarted when it exits, with FRESHET_DEV_RESTART=1).
start() {
  local name=$1; shift
  if [ "${FRESHET_DEV_RESTART:-0}" = 1 ]; then
    supervise "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  else
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  fi
  pids+=("$!")
}

# metrics OFFSET: where a service serves GET /metrics (FRESHET_METRICS_LISTEN,
# which every service reads), OFFSET ports above the first metrics port.
metrics() {
  if [ "$metrics_base" = off ]; then echo off; else echo "127.0.0.1:$((metrics_base + $1))"; fi
}

start timer env FRESHET_METRICS_LISTEN="$(metrics 1)" \
  "$bin_dir/freshet-timer" --listen "$FRESHET_TIMER_ADDR"
start membership env FRESHET_METRICS_LISTEN="$(metrics 2)" \
  "$bin_dir/freshet-membership" --listen "$FRESHET_MEMBERSHIP_ADDR"
start cache env FRESHET_METRICS_LISTEN="$(metrics 3)" \
  "$bin_dir/freshet-cache" --listen "$FRESHET_CACHE_ADDR"
start control-plane env FRESHET_METRICS_LISTEN="$(metrics 4)" \
  "$bin_dir/freshet-control-plane" --listen "$FRESHET_CONTROL_PLANE_ADDR"
zone_index=0
for zone in az-a az-b az-c; do
  start "worker-$zone" env FRESHET_METRICS_LISTEN="$(metrics $((10 + zone_index)))" \
    OTEL_RESOURCE_ATTRIBUTES="service.instance.id=worker-$zone" \
    "$bin_dir/freshet-storage-worker" \
    --listen "127.0.0.1:$((base + 10 + zone_index))" \
    --worker-id "worker-$zone" --availability-zone "$zone" \
    --data-dir "$dev_dir/data/worker-$zone"
  zone_index=$((zone_index + 1))
done
tls_args=()
if [ "$tls_port" != off ]; then
  tls_args=(--tls-listen "127.0.0.1:$tls_port" --tls-dev-dir "$dev_dir/tls")
fi
start frontend env FRESHET_METRICS_LISTEN="$(metrics 0)" \
  "$bin_dir/freshet-frontend" --listen "127.0.0.1:$frontend_port" ${tls_args[@]+"${tls_args[@]}"}

endpoint="http://127.0.0.1:$frontend_port"
ready=0
all_running() {
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "[dev] a service exited during startup; see its log above" >&2
      return 1
    fi
  done
}
# Development mode: a ListStreams with any well-formed (unverified)
# signature proves the frontend reaches the control plane. Secure mode
# verifies signatures, so there only the health endpoint is asked.
frontend_answers() {
  if [ "${FRESHET_AUTH:-development}" = sigv4 ]; then
    curl -sf -o /dev/null "$endpoint/health"
  else
    curl -sf -o /dev/null -X POST "$endpoint/" \
      -H 'Content-Type: application/x-amz-json-1.1' \
      -H 'X-Amz-Target: Kinesis_20131202.ListStreams' \
      -H 'X-Amz-Date: 20260101T000000Z' \
      -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=$(printf '0%.0s' $(seq 1 64))" \
      -d '{}'
  fi
}
for _ in $(seq 1 300); do
  all_running || exit 1
  if frontend_answers; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "[dev] frontend did not answer ListStreams within 30s" >&2
  exit 1
fi
# Streams are placed on live workers only: wait until all three heartbeat.
if command -v psql >/dev/null 2>&1; then
  ready=0
  for _ in $(seq 1 300); do
    live=$(psql "$DATABASE_URL" -tAc "SELECT count(*) FROM workers WHERE worker_id LIKE 'worker-az-_' AND last_heartbeat_at > now() - interval '3 seconds'" 2>/dev/null || echo 0)
    if [ "$live" = 3 ]; then ready=1; break; fi
    all_running || exit 1
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    echo "[dev] the three storage workers did not register within 30s" >&2
    exit 1
  fi
else
  sleep 3
fi
# The second control plane starts once the first is active (and serving
# the frontend), so it is the one standing by.
if [ "${FRESHET_DEV_CONTROL_PLANES:-1}" = 2 ]; then
  start control-plane-2 env FRESHET_METRICS_LISTEN="$(metrics 5)" \
    "$bin_dir/freshet-control-plane" --listen "127.0.0.1:$((base + 4))"
fi
echo "[dev] Freshet is ready at $endpoint"
if [ "$tls_port" != off ]; then
  ca="$(cd "$dev_dir/tls" && pwd)/ca.pem"
  echo "[dev] and at https://localhost:$tls_port with the development CA $ca:"
  echo "[dev]   AWS_CA_BUNDLE=$ca (AWS CLI, boto3), NODE_EXTRA_CA_CERTS=$ca (JS SDK)"
fi
echo "[dev]   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test aws --region us-east-1 --endpoint-url $endpoint kinesis list-streams"
wait
