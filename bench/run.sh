#!/usr/bin/env bash
# idemgate benchmark harness (issue 7): one command, bounded in time, loopback only.
#
#   bench/run.sh                 # full run (defaults below: ~15 min on the 2-core machine)
#   QUICK=1 bench/run.sh         # smoke run, <= ~2 min
#
# What it does, in one run:
#   1. builds the release gateway (cargo build --release -p idemgate), the fixed upstream
#      (bench/upstream, own target dir) and the axum-idempotent peer (bench/peers, own target dir);
#      npm-installs the express peer into the cache dir; installs wrk / nginx with apt when missing.
#   2. starts, on 127.0.0.1 and private ports (BASE_PORT+offset), every target:
#        direct     the upstream alone (the limit)                         BASE_PORT+0
#        nginx      nginx proxy_pass -> upstream (bench/nginx.conf)         BASE_PORT+80
#        memory     idemgate --store memory                                 BASE_PORT+81  (admin +181)
#        embedded   idemgate --store DIR (record log, fdatasync, group commit) BASE_PORT+82  (admin +182)
#        redis      idemgate --store redis://  (private redis-server +379)  BASE_PORT+83  (admin +183)
#        postgres   idemgate --store postgres:// (private initdb, +432)     BASE_PORT+84  (admin +184)
#        express    express + express-idempotency, same handler (peer)      BASE_PORT+101
#        axum_idempotent  axum + axum-idempotent, same handler (peer)       BASE_PORT+102
#        axum_idemgate    axum + idemgate-tower's layer (memory store), same handler,
#                         in-process like axum-idempotent (bench/peers/axum-idemgate)   BASE_PORT+103
#   3. for each workload, ROUNDS alternating rounds (the target order rotates every round) of wrk
#      -t$THREADS -c$CONNS -d$DURATION with bench/idem.lua; after each run it samples the RSS of the
#      target (and of its store server) and the store round trips per request (see below).
#   4. bench/report.py writes $OUT/summary.md and $OUT/throughput.png, and copies both to
#      bench/results/ (the latest run; the files to commit).
#
# Environment (all optional):
#   QUICK=1          DURATION=1s ROUNDS=1 WARMUP=0 and TIME_LIMIT=150 unless set explicitly
#   DURATION=5s      length of every wrk run
#   ROUNDS=3         alternating rounds per workload
#   WORKLOADS="new replay mix bypass body4k body256k"
#                    new: fresh key per request (every request executes); replay: one key (all but
#                    the first are replays); mix: 80 % new, 20 % retries of completed keys;
#                    bypass: no key (forwarded untouched); body4k / body256k: new keys with 4 KiB /
#                    256 KiB request bodies
#   TARGETS="direct nginx memory embedded redis postgres express axum_idempotent axum_idemgate"
#                    direct and nginx are always added (they are the ratio baselines)
#   PEERS=1          0: leave out the express / axum peers (also skipped when node/npm is missing)
#   THREADS=1 CONNS=32 TIMEOUT=5s   wrk settings
#   WARMUP=1s        one unmeasured new-key wrk run per target before the first workload (0: none)
#   RESTART=1        restart every stateful target (gateways, peers) before each of its runs so each
#                    run starts from an empty store (redis FLUSHALL, postgres TRUNCATE); 0: keep state
#   TIME_LIMIT=1800  seconds of measuring (counted after the builds and the servers' start); no
#                    new wrk run starts after it. The report covers what ran and says what was
#                    skipped; bench/results/ keeps the previous full run's summary then
#   LATEST=auto      copy summary.md and throughput.png to bench/results/ (the committed latest):
#                    auto = only for a complete run that is not QUICK; 1 always; 0 never
#   BASE_PORT=19000  port base (see above)
#   PG_OPTS=         the PostgreSQL store's URL options, e.g. "batch_size=1" (no batching) or
#                    "batches=2&pool_size=8" (crates/idemgate-store-postgres)
#   GW_LOG=          IDEMGATE_LOG for the gateways (empty: the gateway's default, info per request)
#   CO=1             coordinated-omission-corrected pass: open loop at a fixed rate (CO_PCT=50 % of
#                    the target's median req/s, or CO_RATE req/s for every target: the same offered
#                    load), one run per target and workload of CO_WORKLOADS
#                    (default "new replay"), with wrk2 -R when a `wrk2` binary exists, else with
#                    idemgate-load (crates/idemgate-bench, built here; wrk2's flags, idem.lua's
#                    requests, latency counted from each request's due time)
#   OUT=bench/results/run-YYYYmmdd-HHMMSS   raw output (runs.jsonl, wrk output, logs)
#   CACHE=bench/results/.cache              node_modules, matplotlib venv
#   NO_BUILD=1       skip the cargo builds (binaries must exist)
#
# Store round trips per request (column "store ops/req" and "server cmds/req"):
#   store ops/req   = delta of sum(idemgate_store_seconds_count{op=claim|complete|release}) over
#                     the run / delta of sum(idemgate_requests_total) (the gateway's /metrics on its
#                     admin listener); the number of store calls the engine made per request.
#   server cmds/req = what the store server itself counted, per gateway request: for Redis the delta
#                     of the calls of script invocations (EVALSHA/EVAL/FCALL) and of the commands the
#                     store's Lua scripts never call (INFO commandstats; the harness's INFO excluded), for
#                     PostgreSQL the delta of sum(calls) in pg_stat_statements (track=all, the
#                     harness's own queries excluded). This counts network round trips of the
#                     protocol's commands/statements, not TCP packets.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
START_TS=$(date +%s)

QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
  DURATION="${DURATION:-1s}" ROUNDS="${ROUNDS:-1}" WARMUP="${WARMUP:-0}" TIME_LIMIT="${TIME_LIMIT:-150}"
fi
DURATION="${DURATION:-5s}" ROUNDS="${ROUNDS:-3}" WARMUP="${WARMUP:-1s}" TIME_LIMIT="${TIME_LIMIT:-1800}"
THREADS="${THREADS:-1}" CONNS="${CONNS:-32}" TIMEOUT="${TIMEOUT:-5s}"
WORKLOADS="${WORKLOADS:-new replay mix bypass body4k body256k}"
TARGETS="${TARGETS:-direct nginx memory embedded redis postgres express axum_idempotent axum_idemgate}"
PEERS="${PEERS:-1}" RESTART="${RESTART:-1}" BASE_PORT="${BASE_PORT:-19000}" CO="${CO:-1}" CO_PCT="${CO_PCT:-50}"
OUT="${OUT:-$HERE/results/run-$(date +%Y%m%d-%H%M%S)}"
CACHE="${CACHE:-$HERE/results/.cache}"
export IDEMGATE_SCOPE_SECRET="${IDEMGATE_SCOPE_SECRET:-bench-scope-secret-0123456789abcdef}"

mkdir -p "$OUT/wrk" "$CACHE"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/idemgate-bench.XXXXXX)"
mkdir -p "$WORK/pids" "$WORK/logs"
chmod 755 "$WORK"   # the postgres OS user must reach $WORK/pg
RUNS="$OUT/runs.jsonl"; : > "$RUNS"
log() { printf '[bench %4ds] %s\n' "$(( $(date +%s) - START_TS ))" "$*" >&2; }

P_UP=$((BASE_PORT)); P_NGINX=$((BASE_PORT + 80))
P_REDIS=$((BASE_PORT + 379)); P_PG=$((BASE_PORT + 432))
P_EXPRESS=$((BASE_PORT + 101)); P_AXUM=$((BASE_PORT + 102)); P_AXUM_IDEMGATE=$((BASE_PORT + 103))
declare -A GW_PORT=([memory]=$((BASE_PORT + 81)) [embedded]=$((BASE_PORT + 82)) [redis]=$((BASE_PORT + 83)) [postgres]=$((BASE_PORT + 84)))
declare -A ADMIN_PORT=([memory]=$((BASE_PORT + 181)) [embedded]=$((BASE_PORT + 182)) [redis]=$((BASE_PORT + 183)) [postgres]=$((BASE_PORT + 184)))

# ---------------------------------------------------------------- process bookkeeping and cleanup
# Every process this script starts is recorded in $WORK/pids/NAME.pid and stopped by PID.
PG_BIN=""
stop_pid() { # name [signal]
  local f="$WORK/pids/$1.pid" sig="${2:-TERM}"; [[ -f $f ]] || return 0
  local pid; pid=$(cat "$f"); rm -f "$f"
  [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]] || return 0
  kill -s "$sig" "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for f in "$WORK"/pids/*.pid; do
    [[ -e $f ]] || continue
    local n; n=$(basename "$f" .pid)
    case $n in
      postgres) stop_pid "$n" QUIT ;;       # immediate shutdown, ends its backends
      nginx) stop_pid "$n" QUIT ;;          # graceful: the master stops its workers
      *) stop_pid "$n" ;;
    esac
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_tcp() { # port [tries]
  for _ in $(seq "${2:-200}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2; return 1
}
wait_http() { # url
  for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "$1 not ready" >&2; return 1
}
start_bg() { # name cmd...   (stdout/stderr to $WORK/logs/name.log)
  local name=$1; shift
  "$@" >> "$WORK/logs/$name.log" 2>&1 &
  echo $! > "$WORK/pids/$name.pid"
}
pid_of() { cat "$WORK/pids/$1.pid" 2>/dev/null || true; }
rss_kib() { # pid: VmRSS of the process and its direct children (nginx workers, postgres backends)
  local pid=$1 total=0 v c
  [[ -n "$pid" ]] || { echo 0; return; }
  for c in "$pid" $(pgrep -P "$pid" 2>/dev/null || true); do
    v=$(awk '/^VmRSS:/{print $2}' "/proc/$c/status" 2>/dev/null || true)
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# ---------------------------------------------------------------- tools and builds
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
TARGETS=" $TARGETS "
for base in nginx direct; do has_target $base || TARGETS=" $base$TARGETS"; done
apt_install() { # package...
  log "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } > "$WORK/logs/apt.log" 2>&1 ||
    { cat "$WORK/logs/apt.log" >&2; echo "apt-get install $* failed" >&2; exit 2; }
}
command -v wrk >/dev/null || apt_install wrk
command -v nginx >/dev/null || apt_install nginx
if has_target redis && ! command -v redis-server >/dev/null; then apt_install redis-server; fi
if has_target postgres; then
  if [[ -n "${IDEMGATE_PG_BIN:-}" ]]; then PG_BIN="$IDEMGATE_PG_BIN"
  else PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"; fi
  if [[ -z "$PG_BIN" ]]; then apt_install postgresql; PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"; fi
fi
WRK2=""
CO_WORKLOADS="${CO_WORKLOADS:-new replay}"
if [[ "$CO" == 1 ]]; then
  WRK2="$(command -v wrk2 || true)"
  if [[ -z "$WRK2" ]] && apt-cache show wrk2 >/dev/null 2>&1; then apt_install wrk2; WRK2="$(command -v wrk2 || true)"; fi
  # Debian has no wrk2: the workspace's own open-loop generator (built below).
  [[ -n "$WRK2" ]] || WRK2="$ROOT/target/release/idemgate-load"
fi
if [[ "$PEERS" == 1 ]] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
  log "node/npm missing: the express peer is skipped"; TARGETS="${TARGETS/ express / }"
fi
[[ "$PEERS" == 1 ]] || TARGETS="${TARGETS/ express / }"
[[ "$PEERS" == 1 ]] || TARGETS="${TARGETS/ axum_idempotent / }"
[[ "$PEERS" == 1 ]] || TARGETS="${TARGETS/ axum_idemgate / }"

GW_BIN="$ROOT/target/release/idemgate"
UP_BIN="$HERE/upstream/target/release/bench-upstream"
AXUM_BIN="$HERE/peers/axum-idempotent/target/release/axum-idempotent-peer"
AXUM_IDEMGATE_BIN="$HERE/peers/axum-idemgate/target/release/axum-idemgate-peer"
if [[ "${NO_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p idemgate)
  if [[ "$CO" == 1 ]]; then (cd "$ROOT" && cargo build --release -q -p idemgate-bench --bin idemgate-load); fi
  (cd "$HERE/upstream" && cargo build --release -q)
  if has_target axum_idempotent; then (cd "$HERE/peers/axum-idempotent" && cargo build --release -q); fi
  if has_target axum_idemgate; then (cd "$HERE/peers/axum-idemgate" && cargo build --release -q); fi
fi
if has_target express; then
  mkdir -p "$CACHE/express"
  cp "$HERE/peers/express-idempotency/"{server.js,package.json} "$CACHE/express/"
  [[ -d "$CACHE/express/node_modules/express-idempotency" ]] ||
    (cd "$CACHE/express" && npm install --no-audit --no-fund -q > "$WORK/logs/npm.log" 2>&1) ||
    { log "npm install failed (see below): the express peer is skipped"; cat "$WORK/logs/npm.log" >&2; TARGETS="${TARGETS/ express / }"; }
fi

# ---------------------------------------------------------------- servers
start_upstream() {
  start_bg upstream "$UP_BIN" "127.0.0.1:$P_UP"; wait_tcp "$P_UP"
}
start_nginx() {
  mkdir -p "$WORK/nginx"
  sed -e "s/@NGINX_PORT@/$P_NGINX/" -e "s/@UPSTREAM_PORT@/$P_UP/" "$HERE/nginx.conf" > "$WORK/nginx/nginx.conf"
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e stderr 2>> "$WORK/logs/nginx.log" ||
    { cat "$WORK/logs/nginx.log" >&2; exit 1; }
  for _ in $(seq 100); do [[ -s "$WORK/nginx/nginx.pid" ]] && break; sleep 0.05; done
  cp "$WORK/nginx/nginx.pid" "$WORK/pids/nginx.pid"
  wait_tcp "$P_NGINX"
}
start_redis() {
  mkdir -p "$WORK/redis"
  (cd "$WORK/redis" && start_bg redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save '' --appendonly no)
  wait_tcp "$P_REDIS"
}
start_postgres() {
  # PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` OS user and
  # initdb/postgres run as that user (setpriv execs in place, so the recorded PID is the postmaster).
  local dir="$WORK/pg" as=()
  mkdir -p "$dir"
  if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$dir"; as=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  "${as[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C > "$WORK/logs/initdb.log" 2>&1 ||
    { cat "$WORK/logs/initdb.log" >&2; exit 1; }
  start_bg postgres "${as[@]}" "$PG_BIN/postgres" -D "$dir/data" -p "$P_PG" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=128MB \
    -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all
  for _ in $(seq 300); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$P_PG" -U postgres && break; sleep 0.1; done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$P_PG" -U postgres || { cat "$WORK/logs/postgres.log" >&2; exit 1; }
  psql_q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null || log "pg_stat_statements unavailable"
}
psql_q() { "$PG_BIN/psql" -h 127.0.0.1 -p "$P_PG" -U postgres -d postgres -X -q -A -t -c "$1" 2>/dev/null; }

store_spec() { # store -> --store value
  case $1 in
    memory) echo memory ;;
    embedded) echo "$WORK/embedded" ;;
    redis) echo "redis://127.0.0.1:$P_REDIS" ;;
    postgres) echo "postgres://postgres@127.0.0.1:$P_PG/postgres${PG_OPTS:+?$PG_OPTS}" ;;
  esac
}
start_gateway() { # store
  local s=$1
  case $s in
    embedded) rm -rf "$WORK/embedded" ;;
    redis) redis-cli -p "$P_REDIS" flushall > /dev/null ;;
    postgres) psql_q "TRUNCATE idemgate_records" > /dev/null || true ;;
  esac
  local env=(env)
  [[ -n "${GW_LOG:-}" ]] && env+=(IDEMGATE_LOG="$GW_LOG")
  start_bg "gw_$s" "${env[@]}" "$GW_BIN" serve --upstream "http://127.0.0.1:$P_UP" \
    --listen "127.0.0.1:${GW_PORT[$s]}" --admin-listen "127.0.0.1:${ADMIN_PORT[$s]}" --store "$(store_spec "$s")"
  wait_http "http://127.0.0.1:${ADMIN_PORT[$s]}/readyz" || { tail -20 "$WORK/logs/gw_$s.log" >&2; exit 1; }
}
start_express() {
  (cd "$CACHE/express" && PORT=$P_EXPRESS start_bg express node server.js); wait_tcp "$P_EXPRESS"
}
start_axum() {
  PORT=$P_AXUM start_bg axum_idempotent "$AXUM_BIN"; wait_tcp "$P_AXUM"
  # axum-idempotent caches only for a client holding a ruts session: get one, send its cookie
  local c
  c=$(curl -si -H "Idempotency-Key: sess-$RANDOM$RANDOM" "http://127.0.0.1:$P_AXUM/session" |
      grep -i '^set-cookie' | sed -E 's/^[Ss]et-[Cc]ookie: *([^;]+).*/\1/' | tr -d '\r')
  [[ -n "$c" ]] || { echo "no session cookie from the axum peer" >&2; exit 1; }
  echo "Cookie: $c" > "$WORK/axum-cookie.txt"
}
start_axum_idemgate() {
  PORT=$P_AXUM_IDEMGATE start_bg axum_idemgate "$AXUM_IDEMGATE_BIN"; wait_tcp "$P_AXUM_IDEMGATE"
}
is_gateway() { [[ -n "${GW_PORT[$1]:-}" ]]; }
restart_target() { # target: fresh state before a run
  case $1 in
    memory|embedded|redis|postgres) stop_pid "gw_$1"; start_gateway "$1" ;;
    express) stop_pid express; start_express ;;
    axum_idempotent) stop_pid axum_idempotent; start_axum ;;
    axum_idemgate) stop_pid axum_idemgate; start_axum_idemgate ;;
  esac
}
url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$P_UP/payments" ;;
    nginx) echo "http://127.0.0.1:$P_NGINX/payments" ;;
    express) echo "http://127.0.0.1:$P_EXPRESS/payments" ;;
    axum_idempotent) echo "http://127.0.0.1:$P_AXUM/payments" ;;
    axum_idemgate) echo "http://127.0.0.1:$P_AXUM_IDEMGATE/payments" ;;
    *) echo "http://127.0.0.1:${GW_PORT[$1]}/payments" ;;
  esac
}
proc_of() { case $1 in direct) echo upstream ;; memory|embedded|redis|postgres) echo "gw_$1" ;; *) echo "$1" ;; esac; }

log "starting servers in $WORK (targets:$TARGETS)"
start_upstream
start_nginx
has_target redis && start_redis
has_target postgres && start_postgres
for s in memory embedded redis postgres; do has_target $s && start_gateway $s; done
has_target express && start_express
has_target axum_idempotent && start_axum
has_target axum_idemgate && start_axum_idemgate
read -r -a TLIST <<< "$TARGETS"

# ---------------------------------------------------------------- measuring
metric_sum() { # admin_port regex -> sum of the matching samples
  curl -sf "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v re="$2" '$0 !~ /^#/ && $1 ~ re { s += $NF } END { printf "%.0f\n", s + 0 }'
}
server_cmds() { # target -> the store server's own count of commands/statements
  case $1 in
    redis) # round trips: script invocations plus client commands that the store's Lua scripts never
           # call (INFO stats' total_commands_processed would also count the commands run inside
           # scripts): the scripts call GET, GETRANGE, PSETEX and DEL; a claim is a client SET
           # (the hash commands are those of the store's format 1)
      redis-cli -p "$P_REDIS" info commandstats | tr -d '\r' | awk -F'[_:=,]' '/^cmdstat_/ {
        c = tolower($2); if ($3 != "calls") c = c "_" $3
        n = 0; for (i = 3; i <= NF; i++) if ($i == "calls") { n = $(i + 1); break }
        if (c ~ /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/ || c !~ /^(del|get|getrange|psetex|hdel|hmget|hset|pexpire|hget|info|client.*)$/) s += n
      } END { printf "%.0f\n", s + 0 }' ;;
    postgres) psql_q "SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'" || echo 0 ;;
    *) echo 0 ;;
  esac
}
workload_env() { # workload -> IDEM_MODE BODY_BYTES
  case $1 in
    new) echo "unique 0" ;; replay) echo "fixed 0" ;; mix) echo "mix 0" ;; bypass) echo "none 0" ;;
    body4k) echo "unique 4096" ;; body256k) echo "unique 262144" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}
run_wrk() { # target workload round tool rate -> prints the WRKJSON object (or nothing)
  local t=$1 w=$2 r=$3 tool=$4 rate=$5 mode bytes raw hdr=""
  read -r mode bytes <<< "$(workload_env "$w")"
  [[ $t == axum_idempotent ]] && hdr="@$WORK/axum-cookie.txt"
  raw="$OUT/wrk/$t-$w-r$r-$(basename "$tool").txt"
  local extra=(); [[ -n "$rate" ]] && extra=(-R "$rate")
  EXTRA_HEADERS="$hdr" LABEL="$t" WORKLOAD="$w" ROUND="$r" IDEM_MODE="$mode" BODY_BYTES="$bytes" \
    "$tool" -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout "$TIMEOUT" --latency "${extra[@]}" \
    -s "$HERE/idem.lua" "$(url_of "$t")" > "$raw" 2>&1 || true
  grep '^WRKJSON ' "$raw" | sed 's/^WRKJSON //' || true
}
measure() { # target workload round [tool rate]
  local t=$1 w=$2 r=$3 tool=${4:-wrk} rate=${5:-}
  [[ "$RESTART" == 1 ]] && restart_target "$t"
  local adm="" ops0=0 req0=0 cmd0=0 ops1=0 req1=0 cmd1=0
  if is_gateway "$t"; then
    adm=${ADMIN_PORT[$t]}
    ops0=$(metric_sum "$adm" '^idemgate_store_seconds_count'); req0=$(metric_sum "$adm" '^idemgate_requests_total')
    cmd0=$(server_cmds "$t")
  fi
  local line; line=$(run_wrk "$t" "$w" "$r" "$tool" "$rate")
  if [[ -z "$line" ]]; then log "no wrk summary for $t/$w round $r (see $OUT/wrk)"; return 0; fi
  if is_gateway "$t"; then
    ops1=$(metric_sum "$adm" '^idemgate_store_seconds_count'); req1=$(metric_sum "$adm" '^idemgate_requests_total')
    cmd1=$(server_cmds "$t")
  fi
  local rss store_rss=0
  rss=$(rss_kib "$(pid_of "$(proc_of "$t")")")
  case $t in redis) store_rss=$(rss_kib "$(pid_of redis)") ;; postgres) store_rss=$(rss_kib "$(pid_of postgres)") ;; esac
  local corrected=false; [[ -n "$rate" ]] && corrected=true
  python3 - "$line" "$t" "$rss" "$store_rss" "$ops0" "$ops1" "$req0" "$req1" "$cmd0" "$cmd1" "$corrected" "$rate" >> "$RUNS" <<'PY'
import json, sys
line, t, rss, srss, ops0, ops1, req0, req1, cmd0, cmd1, corrected, rate = sys.argv[1:]
d = json.loads(line)
d["target"] = t
d["rss_kib"] = int(rss); d["store_rss_kib"] = int(srss)
dreq = int(req1) - int(req0)
d["gw_requests"] = dreq
if dreq > 0:
    d["store_ops_per_req"] = (int(ops1) - int(ops0)) / dreq
    dcmd = int(cmd1) - int(cmd0)
    if t in ("redis", "postgres"):
        d["server_cmds_per_req"] = dcmd / dreq
d["corrected"] = corrected == "true"
if rate:
    d["rate"] = int(rate)
print(json.dumps(d))
PY
  log "$(tail -1 "$RUNS" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%-16s %-8s r%d %9.0f req/s p50 %.2f p99 %.2f ms non2xx %d rss %.0f MiB%s" % (d["target"], d["workload"], d["round"], d["rps"], d["p50_ms"], d["p99_ms"], d["non2xx3xx"], d["rss_kib"]/1024, " ops/req %.2f" % d["store_ops_per_req"] if "store_ops_per_req" in d else ""))')"
}
MEASURE_TS=$(date +%s)
time_left() { (( $(date +%s) - MEASURE_TS < TIME_LIMIT )); }

if [[ "$WARMUP" != 0 ]]; then
  for t in "${TLIST[@]}"; do
    read -r mode bytes <<< "$(workload_env new)"
    IDEM_MODE=unique LABEL="$t" EXTRA_HEADERS="$([[ $t == axum_idempotent ]] && echo "@$WORK/axum-cookie.txt")" \
      wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$HERE/idem.lua" "$(url_of "$t")" > /dev/null 2>&1 || true
  done
fi

n=${#TLIST[@]}
stopped=0
for w in $WORKLOADS; do
  workload_env "$w" > /dev/null
  for r in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
      t="${TLIST[$(( (k + r - 1) % n ))]}"
      if ! time_left; then stopped=1; break 3; fi
      measure "$t" "$w" "$r"
    done
  done
done
if [[ $stopped == 1 ]]; then
  log "TIME_LIMIT=${TIME_LIMIT}s reached: later runs were skipped"
  skipped="from workload $w, round $r, on: the rest of the closed-loop runs and the corrected-latency pass"
fi

# coordinated-omission-corrected pass: open loop (wrk2, else idemgate-load) at CO_PCT % of each
# target's median req/s, or at CO_RATE req/s for every target
if [[ -n "$WRK2" && -x "$WRK2" && $stopped == 0 ]]; then
  log "corrected-latency pass with $(basename "$WRK2") at $([[ -n "${CO_RATE:-}" ]] && echo "$CO_RATE req/s" || echo "$CO_PCT % of each target's median req/s")"
  for w in $WORKLOADS; do
    [[ " $CO_WORKLOADS " == *" $w "* ]] || continue
    for t in "${TLIST[@]}"; do
      time_left || { stopped=1; skipped="part of the corrected-latency pass (from $w, $t)"; break 2; }
      rate=$(python3 -c '
import json, statistics, sys
rs = [d["rps"] for d in map(json.loads, open(sys.argv[1])) if d["target"] == sys.argv[2] and d["workload"] == sys.argv[3] and not d["corrected"]]
print(int(statistics.median(rs) * float(sys.argv[4]) / 100) if rs else "")' "$RUNS" "$t" "$w" "$CO_PCT")
      [[ -n "${CO_RATE:-}" ]] && rate=$CO_RATE
      [[ -n "$rate" && "$rate" -gt 0 ]] && measure "$t" "$w" 1 "$WRK2" "$rate"
    done
  done
fi

# ---------------------------------------------------------------- machine and report
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "cpu: $(nproc) x $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
  echo "wrk: $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'); nginx: $(nginx -v 2>&1 | sed 's/.*\///')"
  has_target redis && echo "redis: $(redis-server --version | awk '{print $3}' | sed 's/v=//')"
  has_target postgres && echo "postgresql: $("$PG_BIN/postgres" --version | awk '{print $3}')"
  has_target express && echo "node: $(node --version); express-idempotency: $(node -p 'require(process.argv[1]).version' "$CACHE/express/node_modules/express-idempotency/package.json" 2>/dev/null)"
  echo "rustc: $(rustc --version | awk '{print $2}')"
  echo "latency: $([[ -n "$WRK2" && -x "$WRK2" ]] && echo "closed-loop wrk, plus an open-loop pass with $(basename "$WRK2") (corrected for coordinated omission) at $([[ -n "${CO_RATE:-}" ]] && echo "$CO_RATE req/s for every target" || echo "$CO_PCT % of each target's median req/s") on: $CO_WORKLOADS" || echo "closed-loop wrk, NOT corrected for coordinated omission (no open-loop tool)")"
  if [[ $stopped == 1 ]]; then
    echo "INCOMPLETE: TIME_LIMIT=${TIME_LIMIT}s of measuring reached; skipped $skipped"
  fi
} > "$OUT/machine.txt"
cat > "$OUT/command.txt" <<EOF
QUICK=$QUICK DURATION=$DURATION ROUNDS=$ROUNDS THREADS=$THREADS CONNS=$CONNS TIMEOUT=$TIMEOUT WARMUP=$WARMUP RESTART=$RESTART \\
  WORKLOADS="$WORKLOADS" TARGETS="$(echo $TARGETS)" bench/run.sh
EOF
LATEST="${LATEST:-auto}"
if [[ "$LATEST" == auto ]]; then
  LATEST=$([[ "$QUICK" != 1 && $stopped == 0 ]] && echo 1 || echo 0)
fi
if [[ "$LATEST" == 1 ]]; then
  python3 "$HERE/report.py" "$OUT" --cache "$CACHE" --latest "$HERE/results"
  log "done in $(( $(date +%s) - START_TS ))s: $OUT/summary.md, $OUT/throughput.png (copied to bench/results/)"
else
  python3 "$HERE/report.py" "$OUT" --cache "$CACHE"
  log "done in $(( $(date +%s) - START_TS ))s: $OUT/summary.md, $OUT/throughput.png (bench/results/ left as it was: LATEST=0, QUICK=1 or an incomplete run)"
fi
