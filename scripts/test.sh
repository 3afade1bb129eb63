#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need when it is missing, then runs
# every test of the workspace. Tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server and the PostgreSQL binaries: found, or installed from Debian's packages.
source scripts/deps.sh

# Two cores: tests spawn servers and gateways, so keep the number of test threads modest.
export RUST_BACKTRACE=1
# RUST_TEST_THREADS rather than --test-threads: Criterion's bench binaries (run once each by
# --all-targets) refuse libtest's flags.
export RUST_TEST_THREADS="${TEST_THREADS:-4}"
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
