# Shared by the proxy benchmarks: sourced, not run. Every function takes the work directory.
# shellcheck shell=bash

ORIGIN_A=19101
ORIGIN_B=19102

# The origin: nginx answering a small body on two ports, with two workers so it is never the
# bottleneck. Starts it in the background; its pid is in ORIGIN_PID.
start_origin() {
  local work=$1
  mkdir -p "$work/origin/logs"
  cat > "$work/origin/nginx.conf" <<CONF
daemon off; worker_processes 2; error_log $work/origin/logs/error.log; pid $work/origin/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$ORIGIN_A; listen 127.0.0.1:$ORIGIN_B; location / { return 200 "ok\n"; } }
}
CONF
  nginx -p "$work/origin" -c "$work/origin/nginx.conf" &
  ORIGIN_PID=$!
}

# The workload for wrk: 1,000 user IDs whose slots (id mod 10000) fall in hz's units (slots
# 0-3333), one request each in turn; `done` prints a RESULT line for the scripts. users.lua
# keeps connections alive; users-close.lua asks for a new connection per request.
write_workload() {
  local name extra
  for name in users users-close; do
    extra=""
    [[ $name == users-close ]] && extra=', ["Connection"] = "close"'
    cat > "$1/$name.lua" <<LUA
local ids = {}
for k = 0, 999 do ids[#ids + 1] = tostring(k * 10000 + (k * 3) % 3334) end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/cart/items", { ["X-User-Id"] = ids[(i % #ids) + 1]$extra })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
LUA
  done
}

# unitgate's table: the three-region example, with hz's cart pool on the origin and key affinity.
write_table() {
  sed -e "s/cart:  \[\"127.0.0.1:18101\"\]/cart:  [\"127.0.0.1:$ORIGIN_A\", \"127.0.0.1:$ORIGIN_B\"]/" \
      -e "0,/    missing_key: reject   # 400 naming the sources tried/s//    balance: key_affinity\n    missing_key: reject/" \
      deploy/examples/three-regions.yaml > "$1/table.yaml"
}

# A process and its children (nginx's and HAProxy's workers), one pid a line.
pids_of() {
  echo "$1"; pgrep -P "$1" || true
}

# "user system": the CPU ticks the given pids have used, summed (utime and stime of
# /proc/PID/stat; getconf CLK_TCK ticks a second).
cpu_ticks() {
  local user=0 system=0 pid u s
  for pid in $1; do
    [[ -r /proc/$pid/stat ]] || continue
    read -r u s < <(awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$pid/stat")
    user=$((user + u)) system=$((system + s))
  done
  echo "$user $system"
}

# The resident memory of the given pids, summed, in KiB.
rss_kib() {
  local total=0 pid
  for pid in $1; do
    [[ -r /proc/$pid/status ]] && total=$((total + $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")))
  done
  echo "$total"
}

# Wait until 127.0.0.1:PORT accepts connections (10 s at most).
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; return 1
}

# Stop the proxy in PROXY_PID and wait until PROXY_PORT is free again. SIGINT: a fast stop for
# every peer (pingora drains for minutes on SIGTERM); whatever is still there after 2 s is
# killed.
stop_proxy() {
  [[ -n ${PROXY_PID:-} ]] || return 0
  kill -INT "$PROXY_PID" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=""
  # nginx workers may outlive the master for a moment; the port must be free again.
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PROXY_PORT") 2>/dev/null || return 0; sleep 0.05; done
}

# bench/proxy.sh's nginx in DIR (DIR/nginx.conf, logs in DIR/logs): WORKERS processes on
# 127.0.0.1:PROXY_PORT, `hash $http_x_user_id consistent` over the origin with keep-alive
# upstreams; EXTRA goes into the location (more proxy_set_header lines).
write_nginx_proxy() { # dir workers [extra]
  local dir=$1 workers=$2 extra=${3:-}
  mkdir -p "$dir/logs"
  cat > "$dir/nginx.conf" <<CONF
daemon off; worker_processes $workers; error_log $dir/logs/error.log; pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream origin { hash \$http_x_user_id consistent; server 127.0.0.1:$ORIGIN_A; server 127.0.0.1:$ORIGIN_B; keepalive 256; }
  server { listen 127.0.0.1:$PROXY_PORT; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; $extra } }
}
CONF
}

# bench/proxy.sh's unitgate in DIR (DIR/gateway.yaml): region hz of WORK/table.yaml
# (write_table), WORKERS worker threads on 127.0.0.1:PROXY_PORT, admin on ADMIN_PORT, no
# access log, an upgrade socket.
write_unitgate() { # dir workers
  local dir=$1 workers=$2
  mkdir -p "$dir/logs"
  cat > "$dir/gateway.yaml" <<CONF
region: hz
threads: $workers
listen: { http: ["127.0.0.1:$PROXY_PORT"] }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
table: { file: $WORK/table.yaml }
hop_secret: benchmark-secret-0123456789abcdef0123
access_log: false
upgrade_socket: $dir/upgrade.sock
CONF
}
