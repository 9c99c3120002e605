#!/usr/bin/env bash
# Push latency: 100 gateway table sources (the gateway's code, one process) follow a real
# control-plane process on loopback; time from each flip request until the last of them
# applied the flip's final version. 50 emergency flips (one version each) and 50 planned flips
# (freeze, switch, unfreeze: three versions, each waited for). Writes the table into
# docs/BENCHMARKS.md between the converge-bench markers.
# Usage: bench/converge.sh [GATEWAYS] [FLIPS]
set -euo pipefail
cd "$(dirname "$0")/.."
gateways=${1:-100}
flips=${2:-50}
cargo build --release -q -p control-plane --bin unitgate-control --example converge
report=$(mktemp)
trap 'rm -f "$report"' EXIT
{
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, by \`bench/converge.sh $gateways $flips\`:"
  echo
  target/release/examples/converge target/release/unitgate-control "$gateways" "$flips"
  echo
} > "$report"
cat "$report"
out=docs/BENCHMARKS.md
awk -v report="$report" '
  /<!-- converge-bench:start -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
  /<!-- converge-bench:end -->/ { skip = 0 }
  !skip { print }' "$out" > "$out.tmp" && mv "$out.tmp" "$out"
