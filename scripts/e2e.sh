#!/usr/bin/env bash
# End-to-end suite: builds the `tollgate` and `mock-upstream` binaries, prepares the Python venv
# at .venv and the Node.js grpc-web client under tests/grpc-web (npm ci), finds or installs a
# kubectl with kustomize v5 for the k8s/ manifest tests (scripts/kubectl.sh; exported as KUBECTL),
# installs Debian's chromium for the console's browser tests when missing (as root or in CI),
# starts real PostgreSQL and Redis servers
# (scripts/services.sh; unless the caller already exported TOLLGATE_TEST_POSTGRES_URL and
# TOLLGATE_TEST_REDIS_URL) and runs tests/python with pytest. Extra arguments go to pytest (e.g.
# `scripts/e2e.sh -k billing -x`). Idempotent and non-interactive.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Pinned versions: a no-op without network access when they are already installed.
.venv/bin/python -m pip install -q -r tests/python/requirements.txt
# The grpc-web client (Connect for Node.js), from its committed package-lock.json.
if [ ! -f tests/grpc-web/node_modules/.package-lock.json ] \
    || [ tests/grpc-web/package-lock.json -nt tests/grpc-web/node_modules/.package-lock.json ]; then
    (cd tests/grpc-web && npm ci --no-audit --no-fund --loglevel=error)
fi
KUBECTL="${KUBECTL:-$(scripts/kubectl.sh)}"
export KUBECTL
# The console's browser tests drive Debian's chromium (never a browser Playwright downloads).
# Installed when missing where the suite may install system packages: as root, or in CI.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null \
    && { [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; }; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

cargo build --bins

if [ -z "${TOLLGATE_TEST_POSTGRES_URL:-}" ] || [ -z "${TOLLGATE_TEST_REDIS_URL:-}" ]; then
    eval "$(scripts/services.sh start)"
    trap 'scripts/services.sh stop "$TOLLGATE_SERVICES_DIR"' EXIT
fi

export TOLLGATE_BIN="${TOLLGATE_BIN:-$ROOT/target/debug/tollgate}"
export MOCK_UPSTREAM_BIN="${MOCK_UPSTREAM_BIN:-$ROOT/target/debug/mock-upstream}"
.venv/bin/python -m pytest -q tests/python "$@" </dev/null
