#!/usr/bin/env bash
# How much CPU per proxied request io_uring could save: the same minimal keep-alive proxy
# (bench/uring-floor: find the request head, pick upstream A or B by X-User-Id, add three
# header lines, forward, read the Content-Length response, send it back) on tokio/epoll
# (floor-epoll) and on one io_uring ring (floor-uring: SINGLE_ISSUER + DEFER_TASKRUN, a
# registered ring fd, each send linked to the recv after it; floor-uring-plain: a default ring,
# no links) and on the monoio runtime (floor-monoio: its default ring; floor-monoio-defer: with
# SINGLE_ISSUER + DEFER_TASKRUN; floor-monoio-legacy: its epoll driver, for where io_uring is
# refused), beside nginx and unitgate with one worker each, behind bench/proxy.sh's origin and
# header-keyed workload. ROUNDS rounds, interleaved; user and system CPU per request are taken
# apart (utime and stime of /proc/PID/stat). Then system calls per request of each floor and of
# unitgate by `strace -c -f` (counts only: strace slows everything down).
#
#   bench/uring.sh                   # 3 rounds of 10 s, report on stdout
#   ROUNDS=1 DURATION=5 bench/uring.sh
#   TARGETS="floor-epoll floor-monoio-defer floor-monoio-legacy" ROUNDS=7 bench/uring.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
comparison_settings
TARGETS=${TARGETS:-"nginx floor-epoll floor-uring floor-uring-plain unitgate"}

install_missing nginx wrk strace
cargo build --release -q --bin unitgate
# Its own workspace, lock file and target dir, named here so that CARGO_TARGET_DIR cannot move
# the binaries.
cargo build --release -q --manifest-path bench/uring-floor/Cargo.toml --target-dir bench/uring-floor/target
FLOOR=bench/uring-floor/target/release

make_work
PROXY_PORT=19000 ADMIN_PORT=19090
TICKS=$(getconf CLK_TCK)

prepare_origin

UPSTREAMS="127.0.0.1:$ORIGIN_A,127.0.0.1:$ORIGIN_B"
start_proxy() { # name -> sets PROXY_PID
  local name=$1 dir="$WORK/$1"
  mkdir -p "$dir/logs"
  case $name in
    nginx)
      # bench/proxy.sh's nginx, one worker.
      write_nginx_proxy "$dir" 1
      nginx -p "$dir" -c "$dir/nginx.conf" & ;;
    floor-epoll) "$FLOOR/floor-epoll" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" 2>"$dir/logs/err" & ;;
    floor-uring) "$FLOOR/floor-uring" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" 2>"$dir/logs/err" & ;;
    floor-uring-plain) "$FLOOR/floor-uring" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" plain 2>"$dir/logs/err" & ;;
    floor-monoio) "$FLOOR/floor-monoio" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" 2>"$dir/logs/err" & ;;
    floor-monoio-defer) "$FLOOR/floor-monoio" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" defer 2>"$dir/logs/err" & ;;
    floor-monoio-legacy) "$FLOOR/floor-monoio" "127.0.0.1:$PROXY_PORT" "$UPSTREAMS" legacy 2>"$dir/logs/err" & ;;
    unitgate)
      # bench/proxy.sh's unitgate, one worker thread.
      write_unitgate "$dir" 1
      RUST_LOG=warn target/release/unitgate --config "$dir/gateway.yaml" 2>"$dir/logs/err" & ;;
  esac
  PROXY_PID=$!
  wait_port "$PROXY_PORT"
}

run_one() { # name -> prints "name rps p99_us user_us_per_req sys_us_per_req errors"
  local name=$1
  start_proxy "$name"
  local measured; measured=$(measure_load wrk_result users "$PROXY_PORT")
  stop_proxy
  read -r user system _ _ requests duration_us errors non2xx _ p99 <<<"$measured"
  awk -v n="$name" -v r="$requests" -v d="$duration_us" -v u="$user" -v s="$system" -v t="$TICKS" \
      -v p99="$p99" -v e=$((errors + non2xx)) \
      'BEGIN { printf "%s %.0f %d %.2f %.2f %d\n", n, r / (d / 1e6), p99, (u / t * 1e6) / r, (s / t * 1e6) / r, e }'
}

results="$WORK/results"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  for name in $TARGETS; do
    line=$(run_one "$name")
    echo "round=$round $line" >&2
    echo "$round $line" >> "$results"
  done
done

# Medians over rounds, ratios of the medians; then every round's values.
summary() {
  awk -v targets="$TARGETS" "$MEDIAN_AWK"'
    function ratio(a, b) { return b > 0 ? sprintf("%.2fx", a / b) : "-" }
    { rows++; row_name[rows] = $2; for (c = 3; c <= 7; c++) row[rows, c] = $c; round_of[rows] = $1 }
    END {
      k = split(targets, names, " ")
      for (i = 1; i <= k; i++) { n = names[i]; u[n] = median(n, 5); s[n] = median(n, 6); tot[n] = u[n] + s[n] }
      print "| target | requests/s | p99 | user µs/req | system µs/req | total µs/req | user vs nginx | system vs nginx | total vs nginx | user vs floor-epoll | system vs floor-epoll | total vs floor-epoll | errors |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= k; i++) {
        n = names[i]
        printf "| %s | %d | %.2f ms | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %d |\n", n, median(n, 3), median(n, 4) / 1000, u[n], s[n], tot[n],
          ratio(u[n], u["nginx"]), ratio(s[n], s["nginx"]), ratio(tot[n], tot["nginx"]),
          ratio(u[n], u["floor-epoll"]), ratio(s[n], s["floor-epoll"]), ratio(tot[n], tot["floor-epoll"]), median(n, 7)
      }
      print ""
      print "Every round (requests/s, p99 ms, user µs/req, system µs/req):"
      print ""
      print "| round | target | requests/s | p99 | user µs/req | system µs/req |"
      print "|---|---|---|---|---|---|"
      for (i = 1; i <= rows; i++) printf "| %d | %s | %d | %.2f ms | %.2f | %.2f |\n", round_of[i], row_name[i], row[i, 3], row[i, 4] / 1000, row[i, 5], row[i, 6]
    }' "$1"
}

# System calls per request: strace attached to every thread of the proxy (not to io_uring's
# kernel workers, which cannot be traced) for a 5 s run at the same concurrency.
count() { # name -> "| name | requests | syscalls_per_request | top_calls |"
  local name=$1
  start_proxy "$name"
  wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/users.lua" "http://127.0.0.1:$PROXY_PORT/" >/dev/null   # warm-up
  local requests per_request top
  requests=$(strace_wrk "$PROXY_PID" "$WORK/$name.strace" users "$CONNECTIONS")
  stop_proxy
  read -r per_request top < <(syscalls_per_request "$WORK/$name.strace" "$requests" 0.01)
  echo "| $name | $requests | $per_request |${top:+ $top} |"
}

{
  echo "Run on $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) vCPUs, kernel $(uname -r), wrk -t1 -c$CONNECTIONS, $ROUNDS rounds of ${DURATION} s interleaved (after a 2 s warm-up each), one worker per proxy; medians over rounds, ratios of medians."
  echo
  summary "$results"
  echo
  echo "System calls per request, strace -c -f, wrk -t1 -c$CONNECTIONS for 5 s:"
  echo
  echo "| target | requests (under strace) | syscalls/req | per request (≥ 0.01) |"
  echo "|---|---|---|---|"
  for name in $TARGETS; do
    [[ $name == nginx ]] && continue
    count "$name"
  done
}
