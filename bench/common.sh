# Shared by the proxy benchmarks: sourced, not run, from the repository's root; WORK is their
# work directory (make_work).
# shellcheck shell=bash

ORIGIN_A=19101
ORIGIN_B=19102

# Installs the missing commands with apt-get (COMMAND:PACKAGE: the package is named otherwise).
install_missing() { # command...
  local need=() tool
  for tool in "$@"; do command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}"); done
  if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# A fresh WORK directory; whatever the exit, nothing of the run is left behind (remove_work).
make_work() {
  WORK=$(mktemp -d)
  PIDS=()
  trap remove_work EXIT
}

# make_work's exit: the processes in PIDS and PROXY_PID stopped, WORK removed.
remove_work() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -n ${PROXY_PID:-} ]] && kill -KILL "$PROXY_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

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

# What every benchmark runs against: the origin (its pid in PIDS), the workload and the table.
prepare_origin() {
  start_origin "$WORK"
  PIDS+=("$ORIGIN_PID")
  write_workload "$WORK"
  write_table "$WORK"
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

# A comparison's ROUNDS rounds of DURATION s on CONNECTIONS connections, unless already set.
comparison_settings() {
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-10}
  CONNECTIONS=${CONNECTIONS:-32}
}

# One measured run: LOAD warms PROXY_PID up for 2 s, then runs DURATION s with its CPU counted.
measure_load() { # load... (seconds appended) -> "user_ticks system_ticks rss_kib load_output"
  "$@" 2 >/dev/null  # warm-up
  local pids="" user0 system0 user1 system1 output
  [[ -z ${PROXY_PID:-} ]] || pids=$(pids_of "$PROXY_PID")
  read -r user0 system0 < <(cpu_ticks "$pids")
  output=$("$@" "$DURATION")
  read -r user1 system1 < <(cpu_ticks "$pids")
  echo "$((user1 - user0)) $((system1 - system0)) $(rss_kib "$pids") $output"
}

# wrk's RESULT line (write_workload) for SECONDS of WORKLOAD on CONNECTIONS connections to PORT.
wrk_result() { # workload port seconds
  wrk -t1 -c"$CONNECTIONS" -d"$3s" -s "$WORK/$1.lua" "http://127.0.0.1:$2/" | awk '/^RESULT/'
}

# awk's median(name, col) over row_name[1..rows], row[i, col]: reports give medians over rounds.
MEDIAN_AWK='
    function median(name, col,   n, i, j, t, v) {
      n = 0; for (i = 1; i <= rows; i++) if (row_name[i] == name) v[++n] = row[i, col]
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return v[int((n + 1) / 2)]
    }'

# The threads of PID and its children that strace can attach to (not io_uring's iou-* workers).
traced_tasks() { # pid
  local pid task
  for pid in "$1" $(pgrep -P "$1" || true); do
    for task in $(ls "/proc/$pid/task" 2>/dev/null); do
      [[ $(cat "/proc/$pid/task/$task/comm" 2>/dev/null) == iou-* ]] || echo "$task"
    done
  done
}

# wrk's requests in 5 s with `strace -c -f` on PID for that run only (strace slows everything).
strace_wrk() { # pid strace_file workload connections -> requests
  local attach=() task tracer
  for task in $(traced_tasks "$1"); do attach+=(-p "$task"); done
  strace -c -f -o "$2" "${attach[@]}" 2>/dev/null &
  tracer=$!
  sleep 1   # strace attaches asynchronously; the run starts once it has
  wrk -t1 -c"$4" -d5s -s "$WORK/$3.lua" "http://127.0.0.1:$PROXY_PORT/" \
    | awk '/ requests in / { print $1 }'
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
}

# Calls per request in strace_wrk's summary, and every call made at least MIN times a request.
syscalls_per_request() { # strace_file requests min -> "calls_per_request name=per_request..."
  awk -v r="$2" -v min="$3" '
    $NF == "total" { total = $4 }
    $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { calls[$NF] = $4 }
    END {
      top = ""; for (c in calls) if (calls[c] / r >= min) top = top sprintf(" %s=%.2f", c, calls[c] / r)
      printf "%.2f%s\n", total / r, top
    }' "$1"
}

# bench/proxy.sh's nginx in DIR (DIR/nginx.conf, logs in DIR/logs): WORKERS processes on
# 127.0.0.1:PROXY_PORT, `hash $http_x_user_id consistent` over the origin with keep-alive
# upstreams; EXTRA goes into the location (more proxy_set_header lines), MAIN into the main
# context.
write_nginx_proxy() { # dir workers [extra] [main]
  local dir=$1 workers=$2 extra=${3:-} main=${4:-}
  mkdir -p "$dir/logs"
  cat > "$dir/nginx.conf" <<CONF
daemon off;${main:+ $main} worker_processes $workers; error_log $dir/logs/error.log; pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream origin { hash \$http_x_user_id consistent; server 127.0.0.1:$ORIGIN_A; server 127.0.0.1:$ORIGIN_B; keepalive 256; }
  server { listen 127.0.0.1:$PROXY_PORT; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; $extra } }
}
CONF
}

# bench/proxy.sh's HAProxy (`balance hdr(X-User-Id)`, keep-alive upstreams) on PROXY_PORT.
write_haproxy() { # file threads [line of its global section...]
  local file=$1 threads=$2 line
  shift 2
  {
    echo "global"
    echo "  nbthread $threads"
    for line in "$@"; do echo "  $line"; done
    cat <<CONF
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:$PROXY_PORT
  default_backend origin
backend origin
  balance hdr(X-User-Id)
  hash-type consistent
  server a 127.0.0.1:$ORIGIN_A
  server b 127.0.0.1:$ORIGIN_B
CONF
  } > "$file"
}

# A unitgate config for region hz of WORK/table.yaml, admin on ADMIN_PORT, without access log.
write_gateway() { # file threads listen [line of its own...]
  local file=$1 threads=$2 listen=$3
  shift 3
  mkdir -p "${file%/*}"
  {
    cat <<CONF
region: hz
threads: $threads
listen: $listen
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
table: { file: $WORK/table.yaml }
hop_secret: benchmark-secret-0123456789abcdef0123
access_log: false
CONF
    if (($#)); then printf '%s\n' "$@"; fi
  } > "$file"
}

# bench/proxy.sh's unitgate in DIR (DIR/gateway.yaml, logs in DIR/logs), with an upgrade socket.
write_unitgate() { # dir workers
  mkdir -p "$1/logs"
  write_gateway "$1/gateway.yaml" "$2" "{ http: [\"127.0.0.1:$PROXY_PORT\"] }" \
    "upgrade_socket: $1/upgrade.sock"
}
