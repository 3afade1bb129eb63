#!/usr/bin/env bash
# A/B of two gateway configurations beside nginx, in alternating rounds (a quick check of one
# change; bench/run.sh is the full harness).
#
#   bench/ab.sh                                        # A: --threads 1, B: default (memory store)
#   A_ARGS="--store memory" B_ARGS="--store DIR" bench/ab.sh
#   MODE=none bench/ab.sh                              # requests without a key (bypass)
#
# Environment: A_ARGS (default "--store memory --threads 1"), B_ARGS (default "--store memory"),
#   A_ENV / B_ENV (extra environment, e.g. "IDEMGATE_SCOPE_SECRET=..."), MODE (idem.lua's
#   IDEM_MODE: unique | fixed | mix | none; default unique), ROUNDS=3, DURATION=3s, CONNS=32,
#   BASE_PORT=18900, A_BIN / B_BIN (another gateway binary, e.g. a copy of the previous build;
#   default target/release/idemgate). A directory in *_ARGS named DIR is replaced by a fresh temporary directory.
# Needs the release gateway, bench/upstream's release binary, wrk and nginx (bench/run.sh builds
# and installs them). Prints req/s and wrk's p99 per round (direct upstream, nginx, A, B), the
# median ratios B/A, A/nginx, B/nginx, A/direct and B/direct, then median ratios of the p99s.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
A_ARGS="${A_ARGS:---store memory --threads 1}" B_ARGS="${B_ARGS:---store memory}"
A_ENV="${A_ENV:-}" B_ENV="${B_ENV:-}"
MODE="${MODE:-unique}" ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-3s}" CONNS="${CONNS:-32}"
BASE_PORT="${BASE_PORT:-18900}"
P_UP=$BASE_PORT P_NGINX=$((BASE_PORT + 1)) P_A=$((BASE_PORT + 2)) P_B=$((BASE_PORT + 3))
GW="$ROOT/target/release/idemgate" UP="$HERE/upstream/target/release/bench-upstream"
for bin in "$GW" "$UP"; do [[ -x "$bin" ]] || { echo "missing $bin (run bench/run.sh once)" >&2; exit 1; }; done
WORK="$(mktemp -d /tmp/idemgate-ab.XXXXXX)"
PIDS=()
cleanup() {
  [[ -s "$WORK/nginx/nginx.pid" ]] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

"$UP" "127.0.0.1:$P_UP" > "$WORK/upstream.log" 2>&1 & PIDS+=($!)
mkdir -p "$WORK/nginx"
sed -e "s/@NGINX_PORT@/$P_NGINX/" -e "s/@UPSTREAM_PORT@/$P_UP/" "$HERE/nginx.conf" > "$WORK/nginx/nginx.conf"
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e stderr 2> "$WORK/nginx.log"
start_gw() { # port args env name binary
  local args="${2//DIR/$WORK/$4-data}"
  # shellcheck disable=SC2086
  env IDEMGATE_LOG=warn $3 "$5" serve --upstream "http://127.0.0.1:$P_UP" --listen "127.0.0.1:$1" $args \
    > "$WORK/$4.log" 2>&1 & PIDS+=($!)
}
start_gw "$P_A" "$A_ARGS" "$A_ENV" a "${A_BIN:-$GW}"
start_gw "$P_B" "$B_ARGS" "$B_ENV" b "${B_BIN:-$GW}"
for p in $P_UP $P_NGINX $P_A $P_B; do wait_port "$p"; done

echo "A: $A_ARGS $A_ENV"
echo "B: $B_ARGS $B_ENV"
echo "mode=$MODE rounds=$ROUNDS duration=$DURATION wrk -t1 -c$CONNS"
declare -A RPS P99
names=(direct nginx A B); ports=($P_UP $P_NGINX $P_A $P_B)
for r in $(seq 1 "$ROUNDS"); do
  for k in 0 1 2 3; do
    i=$(( (k + r - 1) % 4 ))
    out=$(IDEM_MODE=$MODE wrk -t1 -c"$CONNS" -d"$DURATION" -s "$HERE/idem.lua" "http://127.0.0.1:${ports[$i]}/payments")
    rps=$(awk '/^Requests\/sec:/{print $2}' <<< "$out")
    p99=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<< "$out")
    RPS[${names[$i]},$r]=$rps P99[${names[$i]},$r]=${p99:-0}
    printf 'round %s  %-6s %10.0f req/s  p99 %6.2f ms\n' "$r" "${names[$i]}" "$rps" "${p99:-0}"
  done
done
ratios() { # num den [array]
  local -n arr=${3:-RPS}
  for r in $(seq 1 "$ROUNDS"); do echo "${arr[$1,$r]} ${arr[$2,$r]}"; done |
    awk '{print $1/$2}' | sort -g | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]}'
}
echo "median per-round ratios: B/A $(ratios B A)  A/nginx $(ratios A nginx)  B/nginx $(ratios B nginx)"
echo "                         A/direct $(ratios A direct)  B/direct $(ratios B direct)  nginx/direct $(ratios nginx direct)"
echo "p99, median per-round ratios: A/nginx $(ratios A nginx P99)  B/nginx $(ratios B nginx P99)  B/A $(ratios B A P99)"
