#!/usr/bin/env bash
# Runs the fuzz targets of the decoders of untrusted input for a bounded time each and prints how
# many inputs each ran:
#
# - `decode_verify` (crates/ryw/fuzz): session tokens, decoded and verified, for SECONDS;
# - `outbox_entry` (crates/ryw-outbox/fuzz): outbox entries and request encodings, SECONDS / 2.
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

fuzz() { # crate directory, target, seconds, max input length
    local crate="$1" target="$2" secs="$3" max_len="$4"
    local corpus="$root/target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    local log
    log="$(mktemp)"
    (cd "$crate" && cargo fuzz run "$target" "$corpus" -- -max_total_time="$secs" -max_len="$max_len") 2>&1 \
        | tee "$log" | grep -E "^(#[0-9]+ +(INITED|DONE)|Done|==|SUMMARY)" || true
    local status="${PIPESTATUS[0]}"
    local runs
    runs="$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || true)"
    rm -f "$log"
    if [ "$status" != 0 ] || [ -z "$runs" ]; then
        echo "fuzz: $target FAILED (exit $status)"
        exit 1
    fi
    echo "fuzz: $target ran $runs inputs in $secs s with no crash"
}

fuzz "$here/.." decode_verify "$seconds" 1100
fuzz "$root/crates/ryw-outbox" outbox_entry "$(( (seconds + 1) / 2 ))" 4096
