#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script and nothing else).
#
# Starts the test servers that can run here (moto for DynamoDB, SecantusDB for MongoDB; see
# tests/servers.sh), checks and unit-tests the Prometheus alert rules under deploy/ with promtool,
# then runs
# unit, property, layer, simulation, adapter, HTTP and benchmark-smoke tests, doc tests, the
# examples, a bounded fuzzing run of the token decoder, formatting and lints. Tests that need Docker live in testcontainers/: they compile here and
# print what they skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# The crates' rust-version is the toolchain this suite builds and tests with: the claim is checked
# here and nowhere else, so the suite runs on that toolchain or not at all.
msrv="$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)"
[[ "$msrv" == *.*.* ]] || msrv="$msrv.0"
if [[ "$(rustc --version)" != "rustc $msrv "* ]]; then
    if command -v rustup >/dev/null && rustup toolchain list | grep -q "^$msrv-"; then
        export RUSTUP_TOOLCHAIN="$msrv"
    else
        echo "rust-version is $msrv, and rustc is $(rustc --version | cut -d' ' -f2): install $msrv" \
            "(rustup toolchain install $msrv --component clippy,rustfmt)" >&2
        exit 1
    fi
fi

source tests/servers.sh
start_moto
start_secantus
install_chromium
install_promtool

# The alert rules parse, and fire (and stay quiet) on their unit tests' series. RYW_PROMTOOL also
# lets tests/prometheus.rs check the Grafana dashboard's queries.
promtool_started=$SECONDS
"$RYW_PROMTOOL" check rules deploy/prometheus/ryw-alerts.yml
"$RYW_PROMTOOL" test rules deploy/prometheus/ryw-alerts.test.yml
echo "tools: promtool checks took $((SECONDS - promtool_started)) s"

# With the servers up, an adapter test that cannot reach its server fails instead of skipping.
export RYW_REQUIRE_SERVERS=1
# A one-off build gains nothing from incremental artifacts; they would double the disk it needs.
export CARGO_INCREMENTAL=0

LOG="$TOOLS/test-output.log"
: >"$LOG"
run_tests() { cargo test "$@" 2>&1 | tee -a "$LOG"; }

run_tests -p ryw-testcontainers --features docker -- --nocapture
run_tests --workspace --all-targets --all-features
run_tests --workspace --all-features --doc

# The examples run: the quickstart and the web example on the simulated store; the web example,
# the DynamoDB scenario and the README's axum example (one write and one read, then it exits) on
# moto; the MongoDB scenario on SecantusDB. (The ScyllaDB example needs a real cluster: it is only
# compiled.)
cargo run --quiet --example quickstart
cargo run --quiet --example coarsening
cargo run --quiet --example adaptive
cargo run --quiet --example outbox
cargo run --quiet --example web
DYNAMODB_ENDPOINT="$RYW_DYNAMODB_ENDPOINT" cargo run --quiet --features dynamodb --example web
DYNAMODB_ENDPOINT="$RYW_DYNAMODB_ENDPOINT" cargo run --quiet --features dynamodb --example dynamodb
DYNAMODB_ENDPOINT="$RYW_DYNAMODB_ENDPOINT" cargo run --quiet --features dynamodb --example axum_dynamodb -- --check
MONGODB_URI="$RYW_MONGODB_URI" cargo run --quiet --features mongodb --example mongodb

# Fuzz the token decoder and verifier for a bounded time (installs cargo-fuzz on first use).
bash crates/ryw/fuzz/run.sh "${RYW_FUZZ_SECONDS:-30}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$LOG"
du -sh target 2>/dev/null | awk '{ print "disk used by target/: " $1 }'
