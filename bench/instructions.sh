#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable on a noisy
# machine where CPU time is not. Compares unitgate with the minimal hyper proxy built on the same
# server, client and runtime (gateway/examples/minimal_proxy.rs), both on one thread, behind the
# same header-keyed workload as bench/proxy.sh. The difference is the cost of the gateway's own
# work per request. Both keep-alive (users.lua) and a new connection per request
# (users-close.lua: accepting, setting up and closing the client connection each time).
# Usage: bench/instructions.sh   (installs valgrind, nginx and wrk if missing)
# PROFILE_DIR=DIR keeps the callgrind profiles (callgrind_annotate DIR/unitgate.callgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
install_missing valgrind nginx wrk
cargo build --release -q --bin unitgate --example minimal_proxy
make_work
PROXY_PORT=19000 ADMIN_PORT=19090
prepare_origin
write_gateway "$WORK/gateway.yaml" 1 "{ http: [\"127.0.0.1:$PROXY_PORT\"] }" "health_check: { interval_ms: 0 }"
count() { # name workload command... -> "name instructions_per_request"
  local name=$1 workload=$2; shift 2
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" >/dev/null 2>"$WORK/$name.err" &
  local pid=$!
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$PROXY_PORT") 2>/dev/null && break; sleep 0.1; done
  wrk -t1 -c8 -d3s -s "$WORK/$workload.lua" "http://127.0.0.1:$PROXY_PORT/" >/dev/null   # warm-up
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c8 -d10s -s "$WORK/$workload.lua" "http://127.0.0.1:$PROXY_PORT/" | awk '/ requests in / { print $1 }')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -INT "$pid"; sleep 1; kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  local instructions
  instructions=$(callgrind_annotate "$WORK/$name.out.1" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  [[ -n ${PROFILE_DIR:-} ]] && mkdir -p "$PROFILE_DIR" && cp "$WORK/$name.out.1" "$PROFILE_DIR/$name.callgrind"
  echo "$name $((instructions / requests))"
}
minimal=$(count minimal users target/release/examples/minimal_proxy "127.0.0.1:$PROXY_PORT" "127.0.0.1:$ORIGIN_A,127.0.0.1:$ORIGIN_B")
unitgate=$(count unitgate users target/release/unitgate --config "$WORK/gateway.yaml")
unitgate_close=$(count unitgate-new-connection users-close target/release/unitgate --config "$WORK/gateway.yaml")
echo "$minimal"
echo "$unitgate"
echo "$unitgate_close"
awk -v m="${minimal#* }" -v u="${unitgate#* }" 'BEGIN { printf "unitgate / minimal hyper proxy: %.2fx user-space instructions per request (%+d)\n", u / m, u - m }'
