#!/usr/bin/env bash
# Where the gateway's time goes (README "Benchmark"): builds `tollgate` with the `profiling`
# cargo profile (release + debug symbols), runs it under `valgrind --tool=callgrind` over a fixed
# number of non-streamed and streamed requests (`tollgate-bench profile`), and prints the share of
# instructions by category (JSON, protobuf, ledger, logging, allocation, hyper/axum, ...) and the
# dearest functions. Arguments go to `tollgate-bench profile` (e.g. `--requests 1000`). The raw
# output and the summary are left in target/profile/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is missing: apt-get install -y valgrind" >&2
    exit 1
fi
cargo build --profile profiling --bin tollgate --bin tollgate-bench
exec target/profiling/tollgate-bench profile --tollgate target/profiling/tollgate "$@"
