#!/usr/bin/env bash
# Times `unitctl route --batch` over 1,000,000 user IDs (half numeric, half strings) on the
# three-region example: 5 runs, median wall time. Usage: bench/batch.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000000}
cargo build --release -q --bin unitctl
ids=$(mktemp)
trap 'rm -f "$ids"' EXIT
awk -v n="$count" 'BEGIN { srand(1); for (i = 0; i < n; i++) { if (i % 2) print int(rand() * 1e9); else print "user-" i } }' > "$ids"
times=()
for run in 1 2 3 4 5; do
  start=$(date +%s.%N)
  target/release/unitctl route --table deploy/examples/three-regions.yaml --region sh --batch "$ids" --output json > /dev/null
  end=$(date +%s.%N)
  times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$count" '{ t[NR] = $1 } END { printf "unitctl route --batch: %d IDs, median %.3f s over %d runs (min %.3f, max %.3f)\n", n, t[int((NR + 1) / 2)], NR, t[1], t[NR] }'
