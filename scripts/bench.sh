#!/usr/bin/env bash
# The benchmark (README "Benchmark"; bench/): builds the `tollgate` and `tollgate-bench` binaries
# and runs `tollgate-bench run` with the arguments given (`--smoke` for a few seconds; see
# `tollgate-bench run --help`). The JSON report goes to target/bench/report-<mode>.json unless
# `--out FILE` is given. BENCH_PROFILE=dev uses the debug build (CI's smoke step), else release.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${BENCH_PROFILE:-release}"
cargo build --profile "$profile" --bin tollgate --bin tollgate-bench
dir="target/$profile"
[ "$profile" = dev ] && dir=target/debug

mode=full
out=()
for arg in "$@"; do
    [ "$arg" = --smoke ] && mode=smoke
done
case " $* " in
    *" --out "* | *" --out="*) ;;
    *) out=(--out "target/bench/report-$mode.json") ;;
esac
exec "$dir/tollgate-bench" run --tollgate "$dir/tollgate" "${out[@]}" "$@"
