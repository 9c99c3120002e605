#!/usr/bin/env bash
# System calls per proxied request, counted by `strace -c -f`, and TCP segments per request:
# where the kernel time of a request goes, for unitgate and its peers behind the same
# header-keyed workload as bench/proxy.sh (one worker each, keep-alive, then a new connection
# per request). strace is attached to every thread for the measured 5 s only; it slows every
# process down, so only the counts per request mean anything, not the times. Segments are the
# kernel's TcpOutSegs over a 5 s run before that (machine-wide, so the client's, the proxy's
# and the origin's together; on loopback each one costs its sender the receiver's work too).
#   bench/syscalls.sh            (installs strace, nginx, haproxy and wrk if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
install_missing strace nginx haproxy wrk
cargo build --release -q --bin unitgate
make_work
PROXY_PORT=19000 ADMIN_PORT=19090
prepare_origin
write_gateway "$WORK/gateway.yaml" 1 "{ http: [\"127.0.0.1:$PROXY_PORT\"] }" "health_check: { interval_ms: 0 }"
write_nginx_proxy "$WORK/nginx" 1 "" "master_process off;"
write_haproxy "$WORK/haproxy.cfg" 1
out_segments() { awk '/^Tcp:/ && ++n == 2 { print $12 }' /proc/net/snmp; }
count() { # name workload command... -> "name workload syscalls_per_request top_calls segments=N"
  local name=$1 workload=$2; shift 2
  "$@" >/dev/null 2>&1 &
  PROXY_PID=$!
  wait_port "$PROXY_PORT"
  wrk -t1 -c8 -d2s -s "$WORK/$workload.lua" "http://127.0.0.1:$PROXY_PORT/" >/dev/null   # warm-up
  local requests segments before
  before=$(out_segments)
  requests=$(wrk -t1 -c8 -d5s -s "$WORK/$workload.lua" "http://127.0.0.1:$PROXY_PORT/" | awk '/ requests in / { print $1 }')
  segments=$(awk -v s=$(($(out_segments) - before)) -v r="$requests" 'BEGIN { printf "%.2f", s / r }')
  requests=$(strace_wrk "$PROXY_PID" "$WORK/$name.strace" "$workload" 8)
  stop_proxy
  echo "$name $workload $(syscalls_per_request "$WORK/$name.strace" "$requests" 0.05) segments=$segments"
}
for workload in users users-close; do
  count unitgate "$workload" target/release/unitgate --config "$WORK/gateway.yaml"
  count nginx "$workload" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
  count haproxy "$workload" haproxy -f "$WORK/haproxy.cfg" -db
done
