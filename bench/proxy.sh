#!/usr/bin/env bash
# Proxy benchmark: the same header-keyed workload (1,000 distinct user IDs, all owned by units
# of the entry region) through no proxy, nginx (`hash $http_x_user_id consistent`), the same
# nginx adding the nine headers unitgate adds to each request (for reference: the targets are
# plain nginx and HAProxy), HAProxy (`balance hdr(X-User-Id)`), a minimal pingora proxy, a minimal hyper proxy on unitgate's own
# server and client (gateway/examples/minimal_proxy.rs, one thread: the floor under unitgate)
# and unitgate (the three-region example table, key affinity), each with WORKERS worker
# threads/processes and keep-alive upstreams.
# ROUNDS rounds, interleaved; medians and ratios go to docs/BENCHMARKS.md. Then nginx, HAProxy
# and unitgate with two workers and a new connection per request, and a zero-downtime upgrade
# of unitgate under the keep-alive load.
#
#   bench/proxy.sh                 # 1 and 2 workers, 3 rounds of 10 s
#   ROUNDS=1 DURATION=5 bench/proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
ROOT=$PWD
comparison_settings
WORKER_SETS=${WORKER_SETS:-"1 2"}
OUT=${OUT:-docs/BENCHMARKS.md}

install_missing nginx haproxy wrk cmake  # pingora builds zlib-ng with cmake
cargo build --release -q --bin unitgate --example minimal_proxy
# The pingora peer is its own workspace (it needs cmake, which the main workspace must not):
# its own lock file and target dir, named here so that CARGO_TARGET_DIR cannot move the binary.
cargo build --release -q --manifest-path bench/pingora-proxy/Cargo.toml --target-dir bench/pingora-proxy/target
PINGORA_BIN=bench/pingora-proxy/target/release/pingora-proxy-bench

make_work
PROXY_PORT=19000 ADMIN_PORT=19090
TICKS=$(getconf CLK_TCK)

prepare_origin
target/release/unitctl validate "$WORK/table.yaml" >/dev/null 2>&1 || cargo run --release -q --bin unitctl -- validate "$WORK/table.yaml"

start_proxy() { # name workers -> sets PROXY_PID
  local name=$1 workers=$2 dir="$WORK/$1"
  mkdir -p "$dir/logs"
  case $name in
    none) PROXY_PID=""; return ;;
    nginx|nginx-headers)
      # nginx-headers adds what unitgate adds to every request (values made up where nginx
      # cannot compute them): the same header work without the routing.
      local added=""
      [[ $name == nginx-headers ]] && added='proxy_set_header X-Unitgate-Unit hz-u1; proxy_set_header X-Unitgate-Slot \$http_x_user_id; proxy_set_header X-Unitgate-Region hz; proxy_set_header X-Unitgate-Class C; proxy_set_header X-Unitgate-Table-Version 1; proxy_set_header X-Unitgate-Key \$http_x_user_id; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header traceparent 00-\$request_id-00f067aa0ba902b7-01;'
      write_nginx_proxy "$dir" "$workers" "$added"
      nginx -p "$dir" -c "$dir/nginx.conf" & ;;
    haproxy)
      write_haproxy "$dir/haproxy.cfg" "$workers" "maxconn 2000"
      haproxy -f "$dir/haproxy.cfg" -db & ;;
    hyper-minimal)
      target/release/examples/minimal_proxy "127.0.0.1:$PROXY_PORT" "127.0.0.1:$ORIGIN_A,127.0.0.1:$ORIGIN_B" >"$dir/logs/out" 2>&1 & ;;
    pingora)
      printf 'version: 1\nthreads: %s\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n' "$workers" > "$dir/conf.yaml"
      "$PINGORA_BIN" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$ORIGIN_A,127.0.0.1:$ORIGIN_B" -c "$dir/conf.yaml" >"$dir/logs/out" 2>&1 & ;;
    unitgate)
      write_unitgate "$dir" "$workers"
      RUST_LOG=warn target/release/unitgate --config "$dir/gateway.yaml" 2>"$dir/logs/err" & ;;
  esac
  PROXY_PID=$!
  wait_port "$PROXY_PORT"
}

run_one() { # name workers [workload] -> prints "name rps p50_us p99_us cpu_us_per_req rss_kib errors user_us_per_req system_us_per_req"
  local name=$1 workers=$2 workload=${3:-users} port=$PROXY_PORT
  start_proxy "$name" "$workers"
  [[ $name == none ]] && port=$ORIGIN_A
  local measured; measured=$(measure_load wrk_result "$workload" "$port")
  stop_proxy
  read -r user system rss _ requests duration_us errors non2xx p50 p99 <<<"$measured"
  awk -v n="$name" -v r="$requests" -v d="$duration_us" -v u="$user" -v s="$system" -v t="$TICKS" \
      -v p50="$p50" -v p99="$p99" -v rss="$rss" -v e=$((errors + non2xx)) \
      'BEGIN { us = 1e6 / t / r; printf "%s %.0f %d %d %.2f %d %d %.2f %.2f\n", n, r / (d / 1e6), p50, p99, (u + s) * us, rss, e, u * us, s * us }'
}

# The markdown table of a results file (a line per run_one), medians over its rounds.
table() {
  echo "| target | requests/s | p50 | p99 | proxy CPU per request | of which user / system | CPU vs nginx | CPU vs HAProxy | RSS | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  awk "$MEDIAN_AWK"'
    { rows++; row_name[rows] = $1; for (c = 2; c <= 9; c++) row[rows, c] = $c; seen[$1] = 1; if (!(($1) in order)) { order[$1] = ++k; names[k] = $1 } }
    END {
      ng = median("nginx", 5); hp = median("haproxy", 5)
      for (i = 1; i <= k; i++) {
        n = names[i]; cpu = median(n, 5)
        if (n == "none") { printf "| %s (wrk to the origin) | %d | %.2f ms | %.2f ms | - | - | - | - | - | %d |\n", n, median(n, 2), median(n, 3) / 1000, median(n, 4) / 1000, median(n, 7); continue }
        printf "| %s | %d | %.2f ms | %.2f ms | %.1f µs | %.1f / %.1f µs | %.2fx | %.2fx | %.1f MiB | %d |\n", n, median(n, 2), median(n, 3) / 1000, median(n, 4) / 1000, cpu, median(n, 8), median(n, 9), cpu / ng, cpu / hp, median(n, 6) / 1024, median(n, 7)
      }
    }' "$1"
}

REPORT="$WORK/report.md"
{
  echo "Run on $(date -u +%Y-%m-%d), $(nproc) cores, wrk -t1 -c$CONNECTIONS, $ROUNDS rounds of ${DURATION} s interleaved (after a 2 s warm-up each); figures are medians over rounds."
  echo "CPU is the proxy's utime+stime (all its processes) per request, split into user (utime) and system (stime) time; RSS after the run. nginx $(nginx -v 2>&1 | sed 's/.*\///'), HAProxy $(haproxy -v | awk 'NR==1 { print $3 }'), pingora 0.9."
  echo
} > "$REPORT"
for workers in $WORKER_SETS; do
  results="$WORK/results-$workers"
  : > "$results"
  for round in $(seq 1 "$ROUNDS"); do
    for name in none nginx nginx-headers haproxy pingora hyper-minimal unitgate; do
      line=$(run_one "$name" "$workers")
      echo "workers=$workers round=$round $line" >&2
      echo "$line" >> "$results"
    done
  done
  {
    echo "### $workers worker thread(s) per proxy"
    echo
    table "$results"
    echo
  } >> "$REPORT"
done

# Short connections: a new connection per request, two workers; the same rounds, interleaved.
results="$WORK/results-close"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for name in nginx haproxy unitgate; do
    line=$(run_one "$name" 2 users-close)
    echo "close round=$round $line" >&2
    echo "$line" >> "$results"
  done
done
{
  echo "### Short connections"
  echo
  echo "2 worker threads per proxy; every request on a new connection (\`Connection: close\`), so accepting, setting up and closing connections is most of the work."
  echo
  table "$results"
  echo
} >> "$REPORT"

# Zero-downtime upgrade under load: a new unitgate takes the sockets over mid-run.
start_proxy unitgate 1
old=$PROXY_PID
wrk -t1 -c"$CONNECTIONS" -d8s -s "$WORK/users.lua" "http://127.0.0.1:$PROXY_PORT/" > "$WORK/upgrade.wrk" &
wrk_pid=$!
sleep 3
RUST_LOG=warn target/release/unitgate --config "$WORK/unitgate/gateway.yaml" --upgrade 2>"$WORK/unitgate/logs/new" &
new=$!
PIDS+=("$new")
wait "$old" 2>/dev/null || true
PROXY_PID=""  # gone: the new process, in PIDS, has its sockets
wait "$wrk_pid"
read -r _ requests _ errors non2xx _ _ < <(awk '/^RESULT/' "$WORK/upgrade.wrk")
kill "$new" 2>/dev/null || true
{
  echo "### Zero-downtime upgrade under load"
  echo
  echo "wrk -t1 -c$CONNECTIONS for 8 s against unitgate; 3 s in, a new unitgate process takes the listening sockets over (\`unitgate --upgrade\`) and the old one drains and exits: $requests requests, $errors socket errors (connect, read, write, timeout), $non2xx non-2xx responses."
  echo
} >> "$REPORT"

cat "$REPORT"
# Replace the generated section of the benchmarks document.
awk -v report="$REPORT" '
  /<!-- proxy-bench:start -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
  /<!-- proxy-bench:end -->/ { skip = 0 }
  !skip { print }' "$OUT" > "$WORK/out.md" && cp "$WORK/out.md" "$OUT"
