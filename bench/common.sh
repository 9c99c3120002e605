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
