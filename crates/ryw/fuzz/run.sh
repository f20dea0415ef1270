#!/usr/bin/env bash
# Runs the token decode/verify fuzz target for a bounded time and prints how many inputs it ran.
#
#   bash crates/ryw/fuzz/run.sh [seconds]      (default 60)
#
# Installs cargo-fuzz into target/ci-tools if it is missing. cargo-fuzz needs nightly flags; the
# machine has only a stable toolchain, so the build runs with RUSTC_BOOTSTRAP=1.
set -euo pipefail
seconds="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tools="$root/target/ci-tools/cargo-fuzz"
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$tools/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
corpus="$root/target/fuzz-corpus/decode_verify"
mkdir -p "$corpus"
cd "$here/.."
log="$(mktemp)"
cargo fuzz run decode_verify "$corpus" -- -max_total_time="$seconds" -max_len=1100 2>&1 | tee "$log" | grep -E "^(#[0-9]+ +(INITED|DONE)|Done|==|SUMMARY)" || true
status="${PIPESTATUS[0]}"
runs="$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || true)"
rm -f "$log"
if [ "$status" != 0 ] || [ -z "$runs" ]; then
    echo "fuzz: FAILED (exit $status)"
    exit 1
fi
echo "fuzz: decode_verify ran $runs inputs in $seconds s with no crash"
