#!/usr/bin/env bash
# TLS and HTTP/2 benchmark: unitgate against nginx, both serving HTTPS on 127.0.0.1 with the
# same self-signed ECDSA P-256 certificate (made here with openssl), TLS 1.3 only, ALPN h2 and
# http/1.1, and proxying to the plain-HTTP origin of bench/common.sh (nginx on two ports) with
# keep-alive upstreams. The same header-keyed workload as bench/proxy.sh; rows:
#   tls-keepalive  wrk over HTTPS, HTTP/1.1 keep-alive (users.lua: 1,000 user IDs in turn)
#   tls-close      wrk over HTTPS, a new TLS connection per request (users-close.lua); wrk keeps
#                  its SSL object between connections (SSL_clear), so it offers the session it
#                  got last time: the report says how many of nginx's handshakes were resumed
#   h2             h2load, HTTP/2 over TLS (ALPN h2), H2_CLIENTS connections x H2_STREAMS
#                  concurrent streams, one user ID for every request (h2load sends the same
#                  headers each time); p50/p99 from h2load's per-request log
# each with 1 and 2 workers (unitgate `threads:`, nginx `worker_processes`), ROUNDS rounds
# interleaved, DURATION seconds each after a 2 s warm-up. Reported: requests/s, p50/p99, the
# proxy's CPU (utime+stime of all its processes, from /proc) per request, its RSS after the
# run, and CPU and RSS against nginx's; medians over rounds. /proc/loadavg before and after.
#
#   bench/tls.sh                              # 3 rounds of 10 s; report on stdout
#   ROUNDS=5 DURATION=8 bench/tls.sh
#   ROWS="h2" WORKER_SETS=2 bench/tls.sh      # only some rows / worker counts
#   UNITGATE_BASE=/tmp/unitgate-old bench/tls.sh   # one more target, "unitgate-base": another
#                                             # unitgate binary, to measure a change
#   UNITGATE_ENV="MIMALLOC_ALLOW_THP=0" bench/tls.sh   # one more target, "unitgate-env": the
#                                             # same unitgate with that environment
#   OUT=/tmp/tls.md bench/tls.sh              # the report also goes to that file
#   BUILD=0 bench/tls.sh                      # use target/release/unitgate as it is
#   UNITGATE_BIN=/tmp/unitgate BUILD=0 bench/tls.sh   # another unitgate binary
#
# Ports 19400-19499 only (origin 19401/19402, proxy 19443, admin 19490), so that it can run
# beside bench/proxy.sh. Installs nginx, wrk, h2load (nghttp2-client) and openssl when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
comparison_settings
H2_CLIENTS=${H2_CLIENTS:-32}
H2_STREAMS=${H2_STREAMS:-10}
H2_USER=${H2_USER:-10003}  # slot 3: hz's unit u01, like the first of users.lua's IDs
WORKER_SETS=${WORKER_SETS:-"1 2"}
ROWS=${ROWS:-"tls-keepalive tls-close h2"}
BUILD=${BUILD:-1}
UNITGATE_BIN=${UNITGATE_BIN:-target/release/unitgate}
UNITGATE_BASE=${UNITGATE_BASE:-}
UNITGATE_ENV=${UNITGATE_ENV:-}
OUT=${OUT:-}

install_missing nginx wrk h2load:nghttp2-client openssl
[[ $BUILD == 0 ]] || cargo build --release -q --bin unitgate --bin unitctl

make_work
ORIGIN_A=19401 ORIGIN_B=19402  # not common.sh's: this may run beside bench/proxy.sh
PROXY_PORT=19443 ADMIN_PORT=19490
TICKS=$(getconf CLK_TCK)

prepare_origin
target/release/unitctl validate "$WORK/table.yaml" >/dev/null

# One certificate for both: ECDSA P-256 (what most sites serve now; an RSA key would make the
# handshake rows mostly a measure of RSA signing), for localhost and 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

start_proxy() { # name workers [access log format] -> sets PROXY_PID
  local name=$1 workers=$2 log=${3:-} dir="$WORK/$1"
  mkdir -p "$dir/logs"
  case $name in
    nginx)
      local access="access_log off;"
      [[ -n $log ]] && access="log_format probe '$log'; access_log $dir/logs/access.log probe;"
      # TLS as unitgate has it: TLS 1.3 only, ALPN h2 and http/1.1 (nginx offers h2 by ALPN on
      # an `http2` listener), session tickets on (nginx's default; rustls resumes too).
      cat > "$dir/nginx.conf" <<CONF
daemon off; worker_processes $workers; error_log $dir/logs/error.log; pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  $access keepalive_requests 1000000;
  upstream origin { hash \$http_x_user_id consistent; server 127.0.0.1:$ORIGIN_A; server 127.0.0.1:$ORIGIN_B; keepalive 256; }
  server {
    listen 127.0.0.1:$PROXY_PORT ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.3;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
      nginx -p "$dir" -c "$dir/nginx.conf" >/dev/null & ;;
    unitgate|unitgate-base|unitgate-env)
      local bin=$UNITGATE_BIN env=()
      [[ $name == unitgate-base ]] && bin=$UNITGATE_BASE
      [[ $name == unitgate-env ]] && read -r -a env <<<"$UNITGATE_ENV"
      write_gateway "$dir/gateway.yaml" "$workers" \
        "{ https: [{ address: \"127.0.0.1:$PROXY_PORT\", cert: $WORK/cert.pem, key: $WORK/key.pem }] }" \
        "upgrade_socket: $dir/upgrade.sock"
      env "${env[@]}" RUST_LOG=warn "$bin" --config "$dir/gateway.yaml" >/dev/null 2>"$dir/logs/err" & ;;
  esac
  PROXY_PID=$!
  wait_port "$PROXY_PORT"
}

# One load of `row` against the running proxy for `secs` seconds; prints
# "requests duration_us errors p50_us p99_us" (p50/p99 0 where the tool cannot tell).
load() {
  local row=$1 secs=$2 url="https://127.0.0.1:$PROXY_PORT/cart/items"
  case $row in
    tls-keepalive|tls-close)
      local script=users
      [[ $row == tls-close ]] && script=users-close
      wrk -t1 -c"$CONNECTIONS" -d"${secs}s" -s "$WORK/$script.lua" "$url" \
        | awk '/^RESULT/ { print $2, $3, $4 + $5, $6, $7 }' ;;
    h2)
      local log="$WORK/h2.log"
      rm -f "$log"
      h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D "$secs" -H "x-user-id: $H2_USER" \
        --log-file="$log" "$url" > "$WORK/h2.out"
      # h2load prints no percentiles: its log has a line per request (start, status, µs).
      local p50 p99
      read -r p50 p99 < <(cut -f3 "$log" | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.5) + 1] + 0, v[int(NR * 0.99) + 1] + 0 }')
      awk -v secs="$secs" -v p50="$p50" -v p99="$p99" '
        /^requests:/ { done = $8; failed = $10 + $12 + $14 }
        /^status codes:/ { non2xx = $5 + $7 + $9 }
        /^finished in/ { d = $3; sub(/s,$/, "", d); if (d ~ /ms/) { sub(/ms/, "", d); d /= 1000 } }
        END { printf "%d %d %d %d %d\n", done, d * 1e6, failed + non2xx, p50, p99 }' "$WORK/h2.out" ;;
  esac
}

run_one() { # name workers row -> "name rps p50_us p99_us cpu_us_per_req rss_kib errors"
  local name=$1 workers=$2 row=$3
  start_proxy "$name" "$workers"
  local measured; measured=$(measure_load load "$row")
  stop_proxy
  read -r user system rss requests duration_us errors p50 p99 <<<"$measured"
  awk -v n="$name" -v r="$requests" -v d="$duration_us" -v c=$((user + system)) -v t="$TICKS" \
      -v p50="$p50" -v p99="$p99" -v rss="$rss" -v e="$errors" \
      'BEGIN { printf "%s %.0f %d %d %.2f %d %d\n", n, r / (d / 1e6), p50, p99, (c / t * 1e6) / r, rss, e }'
}

# The markdown table of a results file (a line per run_one), medians over its rounds.
table() {
  echo "| target | requests/s | p50 | p99 | proxy CPU per request | CPU vs nginx | RSS | RSS vs nginx | errors |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk "$MEDIAN_AWK"'
    { rows++; row_name[rows] = $1; for (c = 2; c <= 7; c++) row[rows, c] = $c; if (!(($1) in order)) { order[$1] = ++k; names[k] = $1 } }
    END {
      ng = median("nginx", 5); ngr = median("nginx", 6)
      for (i = 1; i <= k; i++) {
        n = names[i]; cpu = median(n, 5); rss = median(n, 6)
        printf "| %s | %d | %.2f ms | %.2f ms | %.1f µs | %.2fx | %.1f MiB | %.2fx | %d |\n", n, median(n, 2), median(n, 3) / 1000, median(n, 4) / 1000, cpu, cpu / ng, rss / 1024, rss / ngr, median(n, 7)
      }
    }' "$1"
}

# What the two servers negotiate with an OpenSSL client, and whether a second connection
# resumes the session of the first (the client waits a second for TLS 1.3's tickets).
negotiated() {
  start_proxy "$1" 1
  local first again
  first=$(sleep 1 | openssl s_client -connect "127.0.0.1:$PROXY_PORT" -alpn h2,http/1.1 -sess_out "$WORK/session" 2>/dev/null \
    | awk '/^New,/ { p = $2 " " $5 } /^ALPN protocol/ { a = $3 } /^Server Temp Key/ { k = $4 } END { sub(/,$/, "", k); printf "%s, %s, ALPN %s", p, k, a }')
  again=$(sleep 1 | openssl s_client -connect "127.0.0.1:$PROXY_PORT" -alpn http/1.1 -sess_in "$WORK/session" 2>/dev/null \
    | awk '/^Reused,/ { r = "resumes" } END { print r ? r : "does not resume" }')
  stop_proxy
  echo "$first, $again"
}
# Whether wrk resumes sessions on its new connections: nginx logs $ssl_session_reused ("r").
start_proxy nginx 1 '$ssl_session_reused'
wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/users-close.lua" "https://127.0.0.1:$PROXY_PORT/cart/items" >/dev/null
stop_proxy
RESUMED=$(awk '$1 == "r" { r++ } END { printf "%d of %d", r, NR }' "$WORK/nginx/logs/access.log")

NEGOTIATED_NGINX=$(negotiated nginx)
NEGOTIATED_UNITGATE=$(negotiated unitgate)

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
targets="nginx unitgate"
[[ -n $UNITGATE_BASE ]] && targets="$targets unitgate-base"
[[ -n $UNITGATE_ENV ]] && targets="$targets unitgate-env"
REPORT="$WORK/report.md"
for row in $ROWS; do
  for workers in $WORKER_SETS; do
    results="$WORK/results-$row-$workers"
    : > "$results"
    for round in $(seq 1 "$ROUNDS"); do
      for name in $targets; do
        line=$(run_one "$name" "$workers" "$row")
        echo "row=$row workers=$workers round=$round $line" >&2
        echo "$line" >> "$results"
      done
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "Run on $(date -u +%Y-%m-%d), $(nproc) cores (load average before $LOAD_BEFORE, after $LOAD_AFTER), $ROUNDS rounds of ${DURATION} s interleaved (after a 2 s warm-up each); figures are medians over rounds."
  echo "CPU is the proxy's utime+stime (all its processes) per request; RSS after the run (summed over nginx's processes).${UNITGATE_ENV:+ unitgate-env: unitgate with $UNITGATE_ENV in its environment.}${UNITGATE_BASE:+ unitgate-base: $UNITGATE_BASE.}"
  echo "nginx $(nginx -v 2>&1 | sed 's/.*\///') on OpenSSL $(openssl version | awk '{ print $2 }'); unitgate on rustls (ring). Negotiated with openssl s_client: nginx $NEGOTIATED_NGINX; unitgate $NEGOTIATED_UNITGATE."
  echo "wrk $(wrk -v 2>&1 | awk 'NR==1 { print $2 }') -t1 -c$CONNECTIONS; h2load $(h2load --version | awk '{ print $2 }') -t1 -c$H2_CLIENTS -m$H2_STREAMS, every request with x-user-id: $H2_USER. wrk's new connections resume the last session: $RESUMED of nginx's handshakes in a 2 s probe were resumed."
  echo
  for row in $ROWS; do
    for workers in $WORKER_SETS; do
      case $row in
        tls-keepalive) title="TLS, HTTP/1.1 keep-alive" ;;
        tls-close) title="TLS, a new connection per request" ;;
        h2) title="HTTP/2 (h2load)" ;;
      esac
      echo "#### $title, $workers worker(s)"
      echo
      table "$WORK/results-$row-$workers"
      echo
    done
  done
} > "$REPORT"
cat "$REPORT"
[[ -z $OUT ]] || cp "$REPORT" "$OUT"
