#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script and nothing else).
#
# Starts the test servers that can run here (moto for DynamoDB; see tests/servers.sh), then runs
# unit, property, layer, simulation, adapter and benchmark-smoke tests, doc tests, formatting and
# lints. Tests that need Docker live in testcontainers/ and say what they skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/servers.sh
start_moto
# With the servers up, an adapter test that cannot reach its server fails instead of skipping.
export RYW_REQUIRE_SERVERS=1

cargo test --workspace --all-targets
cargo test --workspace --doc
# The examples run: the quickstart on the simulated store, the DynamoDB scenario on moto.
cargo run --quiet --example quickstart
DYNAMODB_ENDPOINT="$RYW_DYNAMODB_ENDPOINT" cargo run --quiet --example dynamodb
# The Docker suites compile here and print what they skipped (they run where Docker exists).
cargo test -p ryw-testcontainers --features docker -- --nocapture
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "run-all: every step passed"
