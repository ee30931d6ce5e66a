#!/usr/bin/env bash
# `just load [--dev] SERVICE [SCENARIO] [OPTIONS]`: builds the release
# binaries, then runs `freshet-load SERVICE [SCENARIO] [OPTIONS]`.
#
# Without --dev it expects a running Freshet (`just dev`, or the addresses
# in --target / FRESHET_*_ADDR / FRESHET_FRONTEND_ENDPOINT). With --dev it
# starts deploy/dev.sh itself from target/release on free loopback ports,
# with a database, Redis prefix and data directory of its own, runs the
# load test against it and stops it (SIGTERM) afterwards. Service settings
# pass through the environment, e.g.
#   FRESHET_SHARD_WRITE_RECORDS_PER_SEC=0 just load --dev storage-worker append
set -euo pipefail
cd "$(dirname "$0")/../.."

dev=0
if [ "${1:-}" = --dev ]; then
  dev=1
  shift
fi
if [ $# -eq 0 ]; then
  echo "usage: just load [--dev] SERVICE [SCENARIO] [OPTIONS]   (just load --help: every option)" >&2
  exit 2
fi

cargo build --release --workspace --bins
if [ "$dev" = 0 ]; then
  exec target/release/freshet-load "$@"
fi

# A block of 14 free loopback ports: internal gRPC ports base..base+12,
# the frontend at base+13.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=
for _ in $(seq 1 50); do
  candidate=$((20000 + RANDOM % 20000))
  ok=1
  for offset in $(seq 0 13); do
    if ! port_free $((candidate + offset)); then ok=0; break; fi
  done
  if [ "$ok" = 1 ]; then base=$candidate; break; fi
done
if [ -z "$base" ]; then
  echo "no block of 14 free ports found" >&2
  exit 1
fi

mkdir -p target
data_dir=$(mktemp -d target/load-dev.XXXXXX)
log="$data_dir/topology.log"
database="freshet_load_$$"
prefix="freshet-load-$$:"
pg_server=${FRESHET_PG_SERVER:-postgres://postgres@127.0.0.1:5432}

FRESHET_BIN_DIR=target/release FRESHET_DEV_DIR="$data_dir" \
  FRESHET_DEV_BASE_PORT="$base" FRESHET_DEV_PORT=$((base + 13)) \
  FRESHET_DEV_DATABASE="$database" FRESHET_REDIS_PREFIX="$prefix" \
  FRESHET_DEV_METRICS_PORT=off RUST_LOG="${RUST_LOG:-warn}" \
  deploy/dev.sh > "$log" 2>&1 &
topology=$!

stop_topology() {
  trap - EXIT INT TERM
  kill -TERM "$topology" 2>/dev/null || true
  wait "$topology" 2>/dev/null || true
  psql "$pg_server/postgres" -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli --scan --pattern "$prefix*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  fi
  rm -rf "$data_dir"
}
trap stop_topology EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 900); do
  if grep -q "Freshet is ready" "$log"; then break; fi
  if ! kill -0 "$topology" 2>/dev/null; then
    echo "deploy/dev.sh exited during start-up:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 0.1
done
if ! grep -q "Freshet is ready" "$log"; then
  echo "the topology was not ready within 90 s:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
echo "topology ready on 127.0.0.1:$base.. (frontend :$((base + 13))), log $log" >&2

export FRESHET_TIMER_ADDR="127.0.0.1:$base"
export FRESHET_MEMBERSHIP_ADDR="127.0.0.1:$((base + 1))"
export FRESHET_CACHE_ADDR="127.0.0.1:$((base + 2))"
export FRESHET_CONTROL_PLANE_ADDR="127.0.0.1:$((base + 3))"
export FRESHET_FRONTEND_ENDPOINT="http://127.0.0.1:$((base + 13))"
status=0
target/release/freshet-load "$@" || status=$?
exit "$status"
