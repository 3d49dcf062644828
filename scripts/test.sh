#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test, then the end-to-end suite that drives
# the real `tollgate` binary with the official OpenAI Python SDK and a grpcio client against a
# mock upstream, and a smoke run of the benchmark (bench/). Installs what it needs (a Python venv
# under .venv); runs unattended.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test (the fuzz tests run TOLLGATE_FUZZ_SECS each, 20 s unless set)"
TOLLGATE_FUZZ_SECS="${TOLLGATE_FUZZ_SECS:-20}" cargo test --workspace --all-targets

echo "==> PostgreSQL and Redis (scripts/services.sh)"
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop "$TOLLGATE_SERVICES_DIR"' EXIT

echo "==> cargo test: the PostgreSQL tests"
cargo test -p tollgate-billing --test postgres --test postgres_keys_reporting --test money \
    --test key_refresh -- --ignored

echo "==> cargo test: the Redis tests (deployment cooldown shared by replicas)"
cargo test -p tollgate-inference --lib -- --ignored on_redis

echo "==> end-to-end (OpenAI SDK, grpcio)"
scripts/e2e.sh "$@"

echo "==> benchmark smoke (debug build: every path and phase works; the figures mean nothing)"
BENCH_PROFILE=dev scripts/bench.sh --smoke --out target/bench/report-smoke.json
