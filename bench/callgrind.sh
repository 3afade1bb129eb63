#!/usr/bin/env bash
# Instructions per request of the gateway's own process (user space), counted by callgrind: a
# figure that repeats to within ~1 % whatever else the machine does, for comparing two builds
# where a throughput A/B drowns in this VM's ±5 % noise. Not a throughput measure: the kernel
# (about half of a request's CPU here) is not counted, and sha2 runs its portable code under
# valgrind (no SHA-NI), so hashing weighs ~10x more than it does natively.
#
#   bench/callgrind.sh                                   # memory store, modes unique and none
#   MODES="unique fixed none" STORE=DIR bench/callgrind.sh
#   BIN=/tmp/idemgate-old bench/callgrind.sh             # another build
#
# Environment: BIN (default target/release/idemgate), STORE (memory; DIR = a fresh directory),
#   MODES (idem.lua modes, default "unique none"), SECS (measured seconds per mode, default 8),
#   CONNS (4), BASE_PORT (18990), GW_LOG (warn), KEEP=1 keeps the callgrind files.
# For each mode: a 3 s warm-up, callgrind's counters zeroed, a wrk run, a dump; the figure is the
# dump's instructions divided by the requests wrk completed. Needs valgrind (apt) and the builds
# that bench/run.sh makes (the release gateway and bench/upstream).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${BIN:-$ROOT/target/release/idemgate}" UP="$HERE/upstream/target/release/bench-upstream"
STORE="${STORE:-memory}" MODES="${MODES:-unique none}" SECS="${SECS:-8}" CONNS="${CONNS:-4}"
BASE_PORT="${BASE_PORT:-18990}" GW_LOG="${GW_LOG:-warn}"
P_UP=$BASE_PORT P_GW=$((BASE_PORT + 1))
for bin in "$BIN" "$UP"; do [[ -x "$bin" ]] || { echo "missing $bin (run bench/run.sh once)" >&2; exit 1; }; done
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
WORK="$(mktemp -d /tmp/idemgate-cg.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && echo "callgrind files kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

"$UP" "127.0.0.1:$P_UP" > "$WORK/upstream.log" 2>&1 & PIDS+=($!)
wait_port "$P_UP"
echo "binary: $BIN  store: $STORE  wrk -t1 -c$CONNS, ${SECS}s per mode"
for mode in $MODES; do
  store="${STORE//DIR/$WORK/data-$mode}"
  out="$WORK/cg-$mode.out"
  IDEMGATE_LOG="$GW_LOG" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" serve --upstream "http://127.0.0.1:$P_UP" --listen "127.0.0.1:$P_GW" --store "$store" --threads 1 \
    > "$WORK/gw-$mode.log" 2>&1 &
  vg=$!
  wait_port "$P_GW"
  IDEM_MODE=$mode wrk -t1 -c"$CONNS" -d3s -s "$HERE/idem.lua" "http://127.0.0.1:$P_GW/payments" > /dev/null 2>&1
  callgrind_control -z "$vg" > /dev/null 2>&1
  IDEM_MODE=$mode wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$HERE/idem.lua" "http://127.0.0.1:$P_GW/payments" > "$WORK/wrk-$mode.txt" 2>&1
  callgrind_control -d "$vg" > /dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  n=$(awk '/requests in/{print $1}' "$WORK/wrk-$mode.txt")
  ir=$(grep -hE '^(summary|totals):' "$out".* | awk '{print $2}' | sort -n | tail -1)
  printf '%-8s requests %8d  instructions/request %8d\n' "$mode" "$n" $((ir / n))
done
