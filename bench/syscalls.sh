#!/usr/bin/env bash
# System calls per proxied request, counted by `strace -c -f`: where the kernel time of a
# request goes, for unitgate and its peers behind the same header-keyed workload as
# bench/proxy.sh (one worker each, keep-alive, then a new connection per request). strace is
# attached to every thread for the measured 5 s only; it slows every process down, so only the
# counts per request mean anything, not the times.
#   bench/syscalls.sh            (installs strace, nginx, haproxy and wrk if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in strace nginx haproxy wrk; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q --bin unitgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
source bench/common.sh
start_origin "$WORK"
PIDS+=("$ORIGIN_PID")
write_workload "$WORK"
write_table "$WORK"
PORT=19000
cat > "$WORK/gateway.yaml" <<CONF
region: hz
threads: 1
listen: { http: ["127.0.0.1:$PORT"] }
admin: { listen: "127.0.0.1:19090" }
table: { file: $WORK/table.yaml }
hop_secret: benchmark-secret-0123456789abcdef0123
access_log: false
health_check: { interval_ms: 0 }
CONF
cat > "$WORK/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $WORK/nginx-error.log; pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream origin { hash \$http_x_user_id consistent; server 127.0.0.1:$ORIGIN_A; server 127.0.0.1:$ORIGIN_B; keepalive 256; }
  server { listen 127.0.0.1:$PORT; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:$PORT
  default_backend origin
backend origin
  balance hdr(X-User-Id)
  hash-type consistent
  server a 127.0.0.1:$ORIGIN_A
  server b 127.0.0.1:$ORIGIN_B
CONF
tasks() { # every thread of a process and of its children
  local pid
  for pid in "$1" $(pgrep -P "$1" || true); do ls "/proc/$pid/task" 2>/dev/null; done
}
count() { # name workload command... -> "name workload syscalls_per_request top_calls"
  local name=$1 workload=$2; shift 2
  "$@" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
  wrk -t1 -c8 -d2s -s "$WORK/$workload.lua" "http://127.0.0.1:$PORT/" >/dev/null   # warm-up
  # Attached to every thread for the measured run only; stopped (and its summary written)
  # once wrk is done.
  local attach=()
  for task in $(tasks "$pid"); do attach+=(-p "$task"); done
  strace -c -f -o "$WORK/$name.strace" "${attach[@]}" 2>/dev/null &
  local tracer=$!
  sleep 1   # strace attaches asynchronously; the run starts once it has
  local requests
  requests=$(wrk -t1 -c8 -d5s -s "$WORK/$workload.lua" "http://127.0.0.1:$PORT/" | awk '/ requests in / { print $1 }')
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null || break; sleep 0.05; done
  awk -v n="$name" -v w="$workload" -v r="$requests" '
    $NF == "total" { total = $4 }
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { calls[$NF] = $4 }
    END {
      top = ""; for (c in calls) if (calls[c] / r >= 0.05) top = top sprintf(" %s=%.2f", c, calls[c] / r)
      printf "%s %s %.2f%s\n", n, w, total / r, top
    }' "$WORK/$name.strace"
}
for workload in users users-close; do
  count unitgate "$workload" target/release/unitgate --config "$WORK/gateway.yaml"
  count nginx "$workload" nginx -p "$WORK" -c "$WORK/nginx.conf"
  count haproxy "$workload" haproxy -f "$WORK/haproxy.cfg" -db
done
