# Freshet's commands. `just --list` shows them all.
set shell := ["bash", "-euo", "pipefail", "-c"]

export FRESHET_TEST_DATABASE_URL := env_var_or_default("FRESHET_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
export FRESHET_TEST_REDIS_URL := env_var_or_default("FRESHET_TEST_REDIS_URL", "redis://127.0.0.1:6379")

default:
    @just --list

# Build everything once, then run the whole test suite against local Postgres and Redis, and 300 seeds of the simulation.
test: infra
    cargo build --workspace --all-targets
    cargo test --workspace
    target/debug/freshet-sim --seeds 300 --start 100000000

# The deterministic simulation (docs/simulation.md): 1,000 seeds; `just sim SEEDS=100000 START=0`, `just sim SEED=42` replays one (FRESHET_SIM_TRACE=1 prints it), `HOLE_1=1` / `HOLE_3=1` put hole 1 / hole 3 back.
sim *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    seeds=1000; start=0; seed=""; extra=()
    for arg in {{ARGS}}; do
        case "$arg" in
            SEEDS=*) seeds="${arg#SEEDS=}" ;;
            START=*) start="${arg#START=}" ;;
            SEED=*) seed="${arg#SEED=}" ;;
            HOLE_1=1) extra+=(--reintroduce-hole-1) ;;
            HOLE_3=1) extra+=(--reintroduce-hole-3) ;;
            *) echo "unknown argument $arg (SEEDS=, START=, SEED=, HOLE_1=1, HOLE_3=1)" >&2; exit 2 ;;
        esac
    done
    cargo build -p freshet-sim
    if [ -n "$seed" ]; then
        exec target/debug/freshet-sim --seed "$seed" "${extra[@]}"
    fi
    exec target/debug/freshet-sim --seeds "$seeds" --start "$start" "${extra[@]}"

# Run the whole topology as local processes (frontend on 127.0.0.1:4567).
dev: infra
    cargo build --workspace --bins
    deploy/dev.sh

# boto3 smoke check against a running Freshet (`just dev` in another terminal).
smoke endpoint="http://127.0.0.1:4567":
    python3 tests/smoke/boto3_smoke.py {{endpoint}}

# Make sure Postgres and Redis answer; start them from docker-compose.yml if not.
infra:
    #!/usr/bin/env bash
    set -euo pipefail
    up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
    if up 5432 && up 6379; then exit 0; fi
    echo "Postgres or Redis is not reachable: starting them with docker compose"
    docker compose up -d postgres redis
    for _ in $(seq 1 60); do
        if up 5432 && up 6379; then exit 0; fi
        sleep 1
    done
    echo "Postgres (5432) and Redis (6379) did not come up" >&2
    exit 1

# Formatting, lints and tests, as CI runs them.
ci: check test

# Formatting, lints, docs (warnings denied) and unused dependencies.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
    command -v cargo-machete >/dev/null || cargo install cargo-machete --locked
    cargo machete

fmt:
    cargo fmt --all

# Validate docker-compose.yml (needs docker-compose or docker compose).
compose-check:
    docker-compose -f docker-compose.yml config -q
    FRESHET_INTERNAL_TOKEN=check-internal-token FRESHET_ADMIN_TOKEN=check-admin-token FRESHET_MASTER_KEY=check FRESHET_BOOTSTRAP_ACCESS_KEY=AKIACHECK0000000 FRESHET_POSTGRES_PASSWORD=check \
        FRESHET_BOOTSTRAP_SECRET_KEY=check FRESHET_ITERATOR_SECRET=check \
        docker-compose -f docker-compose.yml -f deploy/compose.secure.yml config -q
    python3 -m json.tool deploy/grafana/dashboards/freshet-streams.json > /dev/null
    if command -v promtool >/dev/null; then promtool check config deploy/prometheus/prometheus.yml; else echo "promtool not installed: Prometheus config and rules not checked"; fi

# Render deploy/k8s with kubectl kustomize and validate every object (also the validator's tests and the other kustomizations; needs PyYAML).
k8s-check:
    kubectl kustomize deploy/k8s | python3 deploy/k8s/validate.py
    python3 deploy/k8s/validate_test.py -q
    kubectl kustomize deploy/k8s-single-node | python3 deploy/k8s/validate.py
    kubectl kustomize deploy/k8s/monitoring > /dev/null

# Throughput and latency through the frontend (release build, `just dev` topology); prints a table.
bench: infra
    cargo build --release --workspace --bins
    cargo run --release -p freshet-e2e --bin freshet-bench

# Load-test one service through its own API (release build), against the running `just dev` (or --target), or with --dev first against a topology of its own on free ports: `just load cache hit --rate 2000`, `just load --dev timer` (docs/load-tests.md).
[positional-arguments]
load service *args:
    tests/load/run.sh "$@"

# The viral-launch scenario twice (on-demand from 4 shards, then with warm throughput) on the `just dev` topology; writes docs/demo.md and docs/demo.svg.
demo: infra
    cargo build --release --workspace --bins
    cargo run --release -p freshet-e2e --bin freshet-demo

# Fuzz every target for SECONDS each (nightly + cargo-fuzz); new corpus
# entries land in fuzz/corpus/, which `just test` replays on stable. No
# sanitizer (`-s none`): the workspace forbids `unsafe` code, and
# AddressSanitizer's quarantine would cost a third of the speed and push
# RSS toward the 512 MB limit that catches real memory blow-ups.
fuzz seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    # shardmap_changes checks its model after every change: 256 bytes (85
    # changes over 4 streams of 4 shards) keep an input fast yet deep.
    cd fuzz && for target in types_parsers sigv4 policy frontend_inputs log_recovery shardmap_changes; do \
        max_len=65536; [ "$target" = shardmap_changes ] && max_len=256; \
        cargo +nightly fuzz run -O -s none "$target" corpus/"$target" -- -max_total_time={{seconds}} -rss_limit_mb=512 -max_len="$max_len"; \
    done
