#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when it is missing, then runs
# every test of the workspace. Tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# (Later store tests need redis-server and PostgreSQL binaries; scripts/deps.sh finds or installs them.)
if [[ -x scripts/deps.sh ]]; then
  source scripts/deps.sh
fi

# Two cores: build with both, run at most two test binaries' threads at once.
export RUST_BACKTRACE=1
cargo test --workspace --all-targets "$@" -- --test-threads="${TEST_THREADS:-4}"
cargo test --workspace --doc
