#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script and nothing else).
#
# Unit, property, layer, simulation and benchmark-smoke tests, doc tests, then formatting and
# lints. Nothing to install: the core and the simulated store need no server.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-targets
cargo test --workspace --doc
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "run-all: every step passed"
