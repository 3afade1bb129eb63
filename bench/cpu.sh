#!/usr/bin/env bash
# CPU time per request of two gateway builds, in alternating pairs: the gateway process's user +
# system time (/proc/PID/stat) over one wrk run divided by the requests it completed, with its
# minor page faults and RSS. Steadier than throughput on this VM (the load generator and the
# upstream share the two cores, so req/s moves ±5 % between runs; CPU per request moves ±2 %),
# and unlike callgrind it counts the kernel and runs natively. Each run starts a fresh gateway
# (memory store unless ARGS says otherwise) beside one fixed upstream.
#
#   A_BIN=/tmp/idemgate-old bench/cpu.sh                     # old build against target/release
#   MODE=fixed PAIRS=5 A_BIN=… bench/cpu.sh                  # replays
#   A_ENV="MIMALLOC_PURGE_DELAY=-1" bench/cpu.sh             # the same build, another setting
#
# Environment: A_BIN / B_BIN (default target/release/idemgate), A_ENV / B_ENV, ARGS (gateway
#   flags, default "--store memory"), MODE (idem.lua's IDEM_MODE, default unique), PAIRS (3),
#   DURATION (5s), CONNS (32), LOG (IDEMGATE_LOG, default info: the gateway's default),
#   BASE_PORT (18960). Prints one line per run and the mean per build.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
GW="$ROOT/target/release/idemgate" UP="$HERE/upstream/target/release/bench-upstream"
A_BIN="${A_BIN:-$GW}" B_BIN="${B_BIN:-$GW}" A_ENV="${A_ENV:-}" B_ENV="${B_ENV:-}"
ARGS="${ARGS:---store memory}" MODE="${MODE:-unique}" PAIRS="${PAIRS:-3}" DURATION="${DURATION:-5s}"
CONNS="${CONNS:-32}" LOG="${LOG:-info}" BASE_PORT="${BASE_PORT:-18960}"
P_UP=$BASE_PORT P_GW=$((BASE_PORT + 1))
for bin in "$A_BIN" "$B_BIN" "$UP"; do [[ -x "$bin" ]] || { echo "missing $bin (run bench/run.sh once)" >&2; exit 1; }; done
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
WORK="$(mktemp -d /tmp/idemgate-cpu.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }
secs=${DURATION%s}

"$UP" "127.0.0.1:$P_UP" > "$WORK/upstream.log" 2>&1 & PIDS+=($!)
wait_port "$P_UP"
echo "A: $A_BIN $A_ENV"
echo "B: $B_BIN $B_ENV"
echo "args: $ARGS  mode=$MODE  wrk -t1 -c$CONNS -d$DURATION  IDEMGATE_LOG=$LOG"
run() { # name binary env
  local args="${ARGS//DIR/$WORK/data-$RANDOM}"
  # shellcheck disable=SC2086
  env IDEMGATE_LOG="$LOG" $3 "$2" serve --upstream "http://127.0.0.1:$P_UP" --listen "127.0.0.1:$P_GW" $args \
    > "$WORK/gw.log" 2>&1 &
  local gw=$!
  wait_port "$P_GW"
  local f0 f1
  read -r -a f0 < "/proc/$gw/stat"
  local out n
  out=$(IDEM_MODE=$MODE wrk -t1 -c"$CONNS" -d"$DURATION" -s "$HERE/idem.lua" "http://127.0.0.1:$P_GW/payments")
  read -r -a f1 < "/proc/$gw/stat"
  n=$(awk '/requests in/{print $1}' <<< "$out")
  local rss
  rss=$(awk '/VmRSS/{print $2}' "/proc/$gw/status")
  kill "$gw"; wait "$gw" 2>/dev/null || true
  local tck; tck=$(getconf CLK_TCK)
  # stat fields 10 (minflt), 14 (utime), 15 (stime); bash arrays count from 0.
  awk -v name="$1" -v n="$n" -v secs="$secs" -v t=$(( f1[13] + f1[14] - f0[13] - f0[14] )) -v tck="$tck" \
    -v flt=$(( f1[9] - f0[9] )) -v rss="$rss" \
    'BEGIN { printf "%s  req/s %7.0f  cpu/req %6.2f us  faults/kreq %5.2f  rss %4.0f MiB\n", name, n/secs, t/tck*1e6/n, flt*1000/n, rss/1024 }' |
    tee -a "$WORK/results.txt"
}
for p in $(seq 1 "$PAIRS"); do
  if (( p % 2 )); then run A "$A_BIN" "$A_ENV"; run B "$B_BIN" "$B_ENV"; else run B "$B_BIN" "$B_ENV"; run A "$A_BIN" "$A_ENV"; fi
done
awk '{ n[$1]++; r[$1]+=$3; c[$1]+=$5 } END { for (k in n) printf "mean %s: req/s %.0f  cpu/req %.2f us\n", k, r[k]/n[k], c[k]/n[k] }' "$WORK/results.txt" | sort
