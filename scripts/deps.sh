#!/usr/bin/env bash
# Finds, or installs from Debian's packages, what the tests need: redis-server and redis-cli (for
# the cluster tests), the PostgreSQL server binaries (initdb, postgres) and nats-server (the
# run-once worker example). Sourced by scripts/test.sh; exports IDEMGATE_PG_BIN.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[[ -x "${IDEMGATE_NATS_SERVER:-/usr/sbin/nats-server}" ]] || command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" || ! -x "$pg_bin/postgres" ]]; then
  missing+=(postgresql)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/deps.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "scripts/deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
export IDEMGATE_PG_BIN="$pg_bin"
