#!/usr/bin/env bash
# Soak benchmark: a normal keep-alive load through one unitgate while hostile clients hold and
# churn connections beside it, for SOAK_S seconds:
#
#   - normal load: wrk -t1 -c16 with common.sh's header-keyed workload (1,000 user IDs of hz's
#     units) against the gateway, which forwards to common.sh's nginx origin;
#   - SILENT connections that connect and send nothing, reconnecting whenever the gateway
#     closes them (timeouts.client_header_ms: 2000 cuts them);
#   - SLOW slowloris connections sending a request head one byte every 500 ms, never ending
#     it, reconnecting when closed;
#   - BAD_RATE requests/s of chunked POSTs, in turn: a chunk size `+5`, a chunk size that is
#     not hex, a body cut off mid-chunk (half-close), a body over limits.max_body_bytes, and a
#     valid chunked body as a control; their statuses are counted per kind.
#
# The attackers are one python3 asyncio script (standard library only), one process per kind.
# Before the soak, BASELINE_S seconds of the same wrk load alone give a reference p99.
# Reported: wrk's requests/s, p50/p99 and non-2xx; the gateway's RSS and open descriptors
# every second (start, max, end); from its admin /metrics, upstream errors, upstream health
# (sampled every 5 s during the run), and the client-side counters; what each attacker saw.
# Targets: normal-load p99 < 10 ms, 0 upstream errors, every upstream healthy in every sample.
# Exit status 0 when both hold, 1 when not.
#
#   bench/soak.sh                  # 60 s
#   SOAK_S=20 BASELINE_S=5 bench/soak.sh
#
# Everything listens on 127.0.0.1, ports 19300-19399 (gateway 19300, admin 19390, origin
# 19301-19302); every process started here is stopped on exit, whatever the exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
ORIGIN_A=19301 ORIGIN_B=19302   # common.sh's own ports belong to bench/proxy.sh

SOAK_S=${SOAK_S:-60}
BASELINE_S=${BASELINE_S:-10}
SILENT=${SILENT:-2000}
SLOW=${SLOW:-200}
BAD_RATE=${BAD_RATE:-5}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
MAX_BODY=${MAX_BODY:-65536}
RAMP_S=3                      # attackers reach full strength before wrk starts
P99_TARGET_US=10000
PROXY_PORT=19300 ADMIN_PORT=19390

# 2,000 silent + 200 slow + wrk's connections, on both ends, and the gateway's upstreams.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 3 * (SILENT + SLOW))); then
  echo "descriptor limit $(ulimit -n) is too low for $SILENT + $SLOW attacking connections" >&2
  exit 2
fi

install_missing nginx wrk curl
command -v python3 >/dev/null || { echo "python3 is needed for the attackers" >&2; exit 2; }
cargo build --release -q -p gateway --bin unitgate

WORK=$(mktemp -d "${TMPDIR:-/tmp}/unitgate-soak.XXXXXX")
PIDS=()
cleanup() {
  local pid children=()
  trap - INT TERM HUP
  # The pids started here, and their children (nginx's workers, `timeout`'s child).
  for pid in "${PIDS[@]}"; do
    while read -r child; do [[ -n $child ]] && children+=("$child"); done < <(pgrep -P "$pid" || true)
  done
  for pid in "${PIDS[@]}" "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    local alive=0
    for pid in "${PIDS[@]}" "${children[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.05
  done
  for pid in "${PIDS[@]}" "${children[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ss -Htan 2>/dev/null | awk '$1 != "TIME-WAIT" { print $4; print $5 }' | grep -qE ':193[0-9][0-9]$'; then
    echo "warning: sockets on ports 19300-19399 are still open:" >&2
    ss -tanp | grep -E ':193[0-9][0-9]\b' | grep -v TIME-WAIT >&2 || true
  fi
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

metrics() { curl -sf --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics"; }

prepare_origin
# Every local pool on the origin, so every endpoint the gateway health-checks is up.
sed -i -e "s/127.0.0.1:18102/127.0.0.1:$ORIGIN_A/" -e "s/127.0.0.1:18103/127.0.0.1:$ORIGIN_B/" "$WORK/table.yaml"
wait_port "$ORIGIN_A"

write_gateway "$WORK/gw/gateway.yaml" "$THREADS" "{ http: [\"127.0.0.1:$PROXY_PORT\"] }" \
  "timeouts: { client_header_ms: 2000, read_ms: 2000 }" \
  "limits: { max_connections_per_ip: 0, max_body_bytes: $MAX_BODY }" \
  "health_check: { interval_ms: 500 }"
RUST_LOG=warn target/release/unitgate --config "$WORK/gw/gateway.yaml" 2>"$WORK/gw/err" &
GW=$!
PIDS+=("$GW")
wait_port "$PROXY_PORT"
wait_port "$ADMIN_PORT"
for _ in $(seq 1 100); do curl -sf --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.05; done
# Every local endpoint checked healthy once before anything starts.
sleep 1

cat > "$WORK/attack.py" <<'PY'
"""Hostile clients against one address; prints a JSON summary of what they saw at the end."""
import asyncio, json, random, sys, time

mode, port, count, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HOST = "127.0.0.1"
RAMP = 2.0
stats = {"mode": mode, "connects": 0, "connect_errors": {}, "closed_by_gateway": 0, "resets": 0,
         "responses": {}, "open_at_end": 0}
lifetimes = []


def bump(table, key):
    stats[table][key] = stats[table].get(key, 0) + 1


def status_of(data):
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return parts[1] if len(parts) > 1 and line.startswith("HTTP/") else "garbage:" + line[:20]


async def connect():
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except Exception as e:  # refused, timed out, out of descriptors
        bump("connect_errors", type(e).__name__)
        await asyncio.sleep(0.1)
        return None
    stats["connects"] += 1
    return reader, writer


def close(writer):
    try:
        writer.transport.abort()
    except Exception:
        pass


async def silent(i, stop):
    """Connect, send nothing, wait for the gateway to close; again."""
    await asyncio.sleep(RAMP * i / count)
    while time.monotonic() < stop:
        conn = await connect()
        if conn is None:
            continue
        reader, writer = conn
        opened = time.monotonic()
        try:
            data = await asyncio.wait_for(reader.read(4096), max(0.0, stop - opened))
            if data:
                bump("responses", status_of(data))
                while await asyncio.wait_for(reader.read(4096), max(0.0, stop - time.monotonic())):
                    pass
            stats["closed_by_gateway"] += 1
            lifetimes.append(time.monotonic() - opened)
        except asyncio.TimeoutError:
            stats["open_at_end"] += 1
        except (ConnectionResetError, BrokenPipeError):
            stats["resets"] += 1
            lifetimes.append(time.monotonic() - opened)
        finally:
            close(writer)


HEAD = (b"GET /cart/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: 42\r\n"
        + b"".join(b"X-Slow-%d: %s\r\n" % (n, b"x" * 40) for n in range(200)))


async def slowloris(i, stop):
    """Send a request head one byte every 500 ms, never finishing it; again when closed."""
    await asyncio.sleep(RAMP * i / count)
    while time.monotonic() < stop:
        conn = await connect()
        if conn is None:
            continue
        reader, writer = conn
        opened = time.monotonic()
        sent = 0
        try:
            while True:
                if time.monotonic() >= stop:
                    stats["open_at_end"] += 1
                    break
                writer.write(HEAD[sent % len(HEAD):sent % len(HEAD) + 1])
                sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(4096), 0.5)
                except asyncio.TimeoutError:
                    continue
                if data:
                    bump("responses", status_of(data))
                    while await asyncio.wait_for(reader.read(4096), 5):
                        pass
                stats["closed_by_gateway"] += 1
                lifetimes.append(time.monotonic() - opened)
                stats.setdefault("bytes_sent", []).append(sent)
                break
        except (ConnectionResetError, BrokenPipeError, asyncio.TimeoutError):
            stats["resets"] += 1
            lifetimes.append(time.monotonic() - opened)
            stats.setdefault("bytes_sent", []).append(sent)
        finally:
            close(writer)


BAD_HEAD = (b"POST /cart/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: 42\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")


def body_of(kind, limit):
    if kind == "plus_size":
        return BAD_HEAD + b"+5\r\nhello\r\n0\r\n\r\n", False
    if kind == "not_hex":
        return BAD_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", False
    if kind == "cut_off":
        return BAD_HEAD + b"10\r\nhello", True
    if kind == "oversize":
        chunk = b"2000\r\n" + b"a" * 0x2000 + b"\r\n"
        return BAD_HEAD + chunk * (limit // 0x2000 + 2) + b"0\r\n\r\n", False
    return BAD_HEAD + b"5\r\nhello\r\n0\r\n\r\n", False  # valid: the control


async def bad_one(kind, limit):
    conn = await connect()
    if conn is None:
        bump("responses", kind + " connect_error")
        return
    reader, writer = conn
    request, half_close = body_of(kind, limit)
    started = time.monotonic()
    try:
        writer.write(request)
        await asyncio.wait_for(writer.drain(), 5)
        if half_close:
            writer.write_eof()
    except (ConnectionResetError, BrokenPipeError, asyncio.TimeoutError):
        pass  # the gateway may answer and close before the whole body is sent
    try:
        data = await asyncio.wait_for(reader.read(4096), 5)
        bump("responses", kind + " " + (status_of(data) if data else "closed_without_response"))
    except asyncio.TimeoutError:
        bump("responses", kind + " no_response_in_5s")
    except (ConnectionResetError, BrokenPipeError):
        bump("responses", kind + " reset")
    lifetimes.append(time.monotonic() - started)
    close(writer)


async def bad(stop):
    kinds = ["plus_size", "not_hex", "cut_off", "oversize", "valid"]
    tasks, n = [], 0
    while time.monotonic() < stop:
        tasks.append(asyncio.ensure_future(bad_one(kinds[n % len(kinds)], count)))
        n += 1
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 3)


async def main():
    stop = time.monotonic() + duration
    if mode == "silent":
        await asyncio.gather(*(silent(i, stop) for i in range(count)))
    elif mode == "slowloris":
        await asyncio.gather(*(slowloris(i, stop) for i in range(count)))
    else:
        await bad(stop)
    stats["lifetime_s"] = {"p50": pct(lifetimes, 50), "p99": pct(lifetimes, 99),
                           "max": pct(lifetimes, 100)}
    if "bytes_sent" in stats:
        sent = stats.pop("bytes_sent")
        stats["bytes_sent_per_connection"] = {"p50": pct(sent, 50), "max": max(sent)}
    print(json.dumps(stats, sort_keys=True))


rate = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
asyncio.run(main())
PY

# The gateway's RSS and descriptors every second; upstream health every 5 s.
sampler() {
  local t=0
  while kill -0 "$GW" 2>/dev/null; do
    local rss fds
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$GW/status" 2>/dev/null || echo 0)
    fds=$(find "/proc/$GW/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "$t $rss $fds" >> "$WORK/samples"
    if ((t % 5 == 0)); then
      metrics 2>/dev/null | awk -v t="$t" '/^unitgate_upstream_healthy/ { print t, $0 }' >> "$WORK/health" || true
    fi
    t=$((t + 1))
    sleep 1
  done
}

cpu_total() { # utime+stime of the given pids (common.sh's cpu_ticks, summed)
  local user system
  read -r user system < <(cpu_ticks "$1")
  echo $((user + system))
}
cpu_snapshot() { # "machine_busy machine_all irq_softirq gateway origin attackers", in ticks
  echo "$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $7 + $8 }' /proc/stat)" \
    "$(cpu_total "$GW") $(cpu_total "$ORIGIN_PIDS") $(cpu_total "$ATTACKER_PIDS")"
}
children_cpu_ms() { # user+system CPU of this shell's reaped children, in ms (wrk's, across run_wrk)
  times > "$WORK/times"  # in this shell: a command substitution would report its own children
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60000 + a[2] * 1000 } printf "%.0f\n", t }' "$WORK/times"
}
run_wrk() { # seconds output
  # In the background and waited for: a signal stops the script now, not when wrk ends.
  timeout $(($1 + 30)) wrk -t1 -c"$CONNECTIONS" -d"$1s" --latency \
    -s "$WORK/users.lua" "http://127.0.0.1:$PROXY_PORT/" > "$2" &
  PIDS+=("$!")
  wait "$!"
}

if ((BASELINE_S > 0)); then
  echo "baseline: wrk alone for ${BASELINE_S}s" >&2
  run_wrk "$BASELINE_S" "$WORK/baseline.wrk"
fi

sampler &
SAMPLER=$!
PIDS+=("$SAMPLER")
sleep 1.5  # a first RSS sample with only the normal connections' memory behind it
ATTACK_S=$((SOAK_S + RAMP_S + 2))
echo "soak: $SILENT silent, $SLOW slowloris, $BAD_RATE bad bodies/s, wrk -c$CONNECTIONS for ${SOAK_S}s" >&2
timeout $((ATTACK_S + 30)) python3 "$WORK/attack.py" silent "$PROXY_PORT" "$SILENT" "$ATTACK_S" > "$WORK/silent.json" &
PIDS+=("$!")
timeout $((ATTACK_S + 30)) python3 "$WORK/attack.py" slowloris "$PROXY_PORT" "$SLOW" "$ATTACK_S" > "$WORK/slowloris.json" &
PIDS+=("$!")
timeout $((ATTACK_S + 30)) python3 "$WORK/attack.py" bad "$PROXY_PORT" "$MAX_BODY" "$ATTACK_S" "$BAD_RATE" > "$WORK/bad.json" &
PIDS+=("$!")
ATTACKERS=("${PIDS[@]: -3}")
sleep "$RAMP_S"
ORIGIN_PIDS="$ORIGIN_PID $(pgrep -P "$ORIGIN_PID" | tr '\n' ' ')"
ATTACKER_PIDS="$(for pid in "${ATTACKERS[@]}"; do pgrep -P "$pid"; done | tr '\n' ' ')"
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
SOAK_FROM=$(wc -l < "$WORK/samples")
metrics > "$WORK/metrics.before" || true
children_cpu_ms > "$WORK/wrk.before"
CPU_BEFORE="$(cpu_snapshot) $(cat "$WORK/wrk.before")"
run_wrk "$SOAK_S" "$WORK/soak.wrk"
children_cpu_ms > "$WORK/wrk.after"
CPU_AFTER="$(cpu_snapshot) $(cat "$WORK/wrk.after")"
SOAK_TO=$(wc -l < "$WORK/samples")
for pid in "${ATTACKERS[@]}"; do wait "$pid" || echo "attacker $pid exited with $?" >&2; done
sleep 2.5  # the gateway notices the attackers' closes; RSS settles
metrics > "$WORK/metrics" || echo "metrics could not be fetched" >&2
kill "$SAMPLER" 2>/dev/null || true

# --- report -------------------------------------------------------------------------------
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }    # µs -> ms
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }   # KiB -> MiB
wrk_line() { # file -> "rps p50_us p99_us socket_errors non2xx requests"
  awk '/^RESULT/ { printf "%.0f %d %d %d %d %d\n", $2 / ($3 / 1e6), $6, $7, $4, $5, $2 }' "$1"
}
read -r RPS P50 P99 SOCKERR NON2XX REQS <<<"$(wrk_line "$WORK/soak.wrk")"
read -r RSS_START RSS_MAX RSS_END FD_START FD_MAX FD_END <<<"$(awk '
  NR == 1 { rs = $2; fs = $3 } { if ($2 > rm) rm = $2; if ($3 > fm) fm = $3; re = $2; fe = $3 }
  END { print rs, rm, re, fs, fm, fe }' "$WORK/samples")"
UPSTREAM_ERRORS=$(awk '/^unitgate_upstream_errors_total/ { s += $2 } END { print s + 0 }' "$WORK/metrics")
UNHEALTHY=$(awk '$NF != 1 { n++ } END { print n + 0 }' "$WORK/health")
HEALTH_SAMPLES=$(awk '{ print $1 }' "$WORK/health" | sort -u | wc -l)
ENDPOINTS=$(awk '/^unitgate_upstream_healthy/' "$WORK/metrics" | wc -l)

pass=1
((P99 < P99_TARGET_US)) || pass=0
((UPSTREAM_ERRORS == 0)) || pass=0
((UNHEALTHY == 0 && ENDPOINTS > 0)) || pass=0

{
  echo "== unitgate soak: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, gateway threads: $THREADS"
  echo "normal load: wrk -t1 -c$CONNECTIONS -d${SOAK_S}s (keep-alive, 1,000 user IDs) beside $SILENT silent + $SLOW slowloris connections and $BAD_RATE bad chunked bodies/s"
  if [[ -s $WORK/baseline.wrk ]]; then
    read -r b_rps b_p50 b_p99 b_err b_non2xx _ <<<"$(wrk_line "$WORK/baseline.wrk")"
    printf 'baseline (wrk alone, %ss): %s req/s, p50 %s ms, p99 %s ms, socket errors %s, non-2xx %s\n' \
      "$BASELINE_S" "$b_rps" "$(ms "$b_p50")" "$(ms "$b_p99")" "$b_err" "$b_non2xx"
  fi
  printf 'soak normal load: %s requests, %s req/s, p50 %s ms, p99 %s ms, socket errors %s, non-2xx %s\n' \
    "$REQS" "$RPS" "$(ms "$P50")" "$(ms "$P99")" "$SOCKERR" "$NON2XX"
  echo "load average before the soak: $LOAD_AT_START"
  # irq/softirq time is the machine's (loopback TCP, mostly); part of it is also charged to the
  # processes it ran under, so the parts need not add up to the total.
  read -r b0 a0 i0 g0 o0 k0 w0 <<<"$CPU_BEFORE"; read -r b1 a1 i1 g1 o1 k1 w1 <<<"$CPU_AFTER"
  awk -v busy=$((b1 - b0)) -v all=$((a1 - a0)) -v irq=$((i1 - i0)) -v gw=$((g1 - g0)) -v origin=$((o1 - o0)) \
      -v attack=$((k1 - k0)) -v wrk=$((w1 - w0)) -v hz="$(getconf CLK_TCK)" -v cores="$(nproc)" -v reqs="$REQS" 'BEGIN {
    wrk = wrk / 1000 * hz
    printf "CPU over the soak, %% of %d cores: machine busy %.0f%% (irq/softirq %.0f%%); gateway %.0f%% (%.1f µs per normal request), nginx origin %.0f%%, attackers (python) %.0f%%, wrk %.0f%%\n",
      cores, 100 * busy / all, 100 * irq / all, 100 * gw / all, gw / hz * 1e6 / reqs, 100 * origin / all,
      100 * attack / all, 100 * wrk / all }'
  # The gateway's own view of the same requests: request head in to response head out.
  cat "$WORK/metrics.before" - <<<"--after--" "$WORK/metrics" | awk '
    /^--after--$/ { after = 1; next }
    /^unitgate_request_duration_seconds_bucket\{route="cart"/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      if (!after) { base[le] = $2; next }
      n++; bound[n] = le; count[n] = $2 - base[le] }
    END {
      total = count[n]; if (!total) exit
      for (i = 1; i <= n; i++) { if (!p50 && count[i] >= 0.5 * total) p50 = bound[i]; if (!p99 && count[i] >= 0.99 * total) p99 = bound[i]; if (bound[i] == "0.01") over = total - count[i] }
      printf "gateway-measured (head in to head out, route cart, %d requests during the soak): p50 <= %s ms, p99 <= %s ms (histogram bounds), %.3f%% over 10 ms\n",
        total, p50 * 1000, p99 * 1000, 100 * over / total }'
  read -r RSS_SOAK10 RSS_SOAKEND <<<"$(awk -v from="$SOAK_FROM" -v to="$SOAK_TO" 'NR == from + 10 { a = $2 } NR == to { b = $2 } END { print a + 0, b + 0 }' "$WORK/samples")"
  echo "gateway RSS during the soak: $(mib "$RSS_SOAK10") MiB 10 s in, $(mib "$RSS_SOAKEND") MiB at its end"
  echo "wrk latency distribution:"; sed -n '/Latency Distribution/,/requests in/p' "$WORK/soak.wrk" | sed '1d;$d'
  printf 'gateway RSS: start %s MiB, max %s MiB, end %s MiB; open descriptors: start %s, max %s, end %s\n' \
    "$(mib "$RSS_START")" "$(mib "$RSS_MAX")" "$(mib "$RSS_END")" "$FD_START" "$FD_MAX" "$FD_END"
  echo "upstream health: $HEALTH_SAMPLES samples of $ENDPOINTS endpoints, $UNHEALTHY not 1"
  echo "gateway /metrics after the soak:"
  grep -E '^unitgate_(upstream_errors_total|upstream_healthy|client_connections_closed_total|client_body_errors_total|connections_refused_total|malformed_requests_total|accept_errors_total|worker_connections)' "$WORK/metrics" | sed 's/^/  /'
  awk '/^unitgate_requests_total/ { split($1, a, "status=\""); split(a[2], b, "\""); n[b[1]] += $2 }
       END { printf "  requests by status:"; for (s in n) printf " %s=%d", s, n[s]; print "" }' "$WORK/metrics"
  [[ $UPSTREAM_ERRORS == 0 ]] && ! grep -q '^unitgate_upstream_errors_total' "$WORK/metrics" && echo "  (no unitgate_upstream_errors_total series: no upstream errors)"
  echo "attackers:"
  for f in silent slowloris bad; do echo "  $f: $(cat "$WORK/$f.json")"; done
  echo "gateway log (RUST_LOG=warn): $(wc -l < "$WORK/gw/err") lines; most frequent:"
  sed -E 's/^[^ ]+ +//; s/[0-9]+(\.[0-9]+)?/N/g' "$WORK/gw/err" | sort | uniq -c | sort -rn | head -5 | sed 's/^/  /'
  echo "targets: p99 $(ms "$P99") ms < 10 ms: $( ((P99 < P99_TARGET_US)) && echo held || echo MISSED ); upstream errors $UPSTREAM_ERRORS (0 wanted): $( ((UPSTREAM_ERRORS == 0)) && echo held || echo MISSED ); unhealthy samples $UNHEALTHY (0 wanted): $( ((UNHEALTHY == 0 && ENDPOINTS > 0)) && echo held || echo MISSED )"
  ((pass)) && echo "RESULT: PASS" || echo "RESULT: FAIL"
} | tee "$WORK/summary"
cp "$WORK/summary" "${SUMMARY_OUT:-/dev/null}" 2>/dev/null || true
((pass))
