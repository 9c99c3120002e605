#!/usr/bin/env bash
# Push latency: gateway table sources (the gateway's code, one process) follow real
# control-plane processes on loopback; time from each operation's request until the last of
# them applied the operation's final version. Two control planes side by side, 100 gateways
# each:
# - the three-region example table: single-unit flips, emergency (one version) and planned
#   (freeze, switch, unfreeze: three versions, each waited for);
# - bench/five-regions-100-units.yaml (5 regions of 20 units): single-unit flips, and a whole
#   region of 20 units evacuated (emergency: one version; planned, replication delay 0: three)
#   and then restored (planned).
# Each round runs every operation once, in a rotating order, so the rows share the machine's
# load; the report adds per-round ratios. Writes the tables into docs/BENCHMARKS.md between the
# converge-bench markers.
# Usage: bench/converge.sh [GATEWAYS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
gateways=${1:-100}
rounds=${2:-100}
cargo build --release -q -p control-plane --bin unitgate-control --example converge
report=$(mktemp)
trap 'rm -f "$report"' EXIT
{
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, by \`bench/converge.sh $gateways $rounds\`:"
  echo
  target/release/examples/converge target/release/unitgate-control \
    bench/five-regions-100-units.yaml "$gateways" "$rounds"
  echo
} > "$report"
cat "$report"
out=docs/BENCHMARKS.md
awk -v report="$report" '
  /<!-- converge-bench:start -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
  /<!-- converge-bench:end -->/ { skip = 0 }
  !skip { print }' "$out" > "$out.tmp" && mv "$out.tmp" "$out"
