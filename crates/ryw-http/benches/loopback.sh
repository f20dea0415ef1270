#!/usr/bin/env bash
# Throughput over loopback: the same trivial axum app bare and behind ServerSessionLayer
# (crates/ryw-http/examples/loopback.rs), loaded by wrk with 64 connections, in alternating rounds.
#
#   bash crates/ryw-http/benches/loopback.sh [seconds per run, default 10] [rounds, default 3]
#
# Cases, for 64 clients with a session each, each measured against the bare app (without the
# layer) sent the very same requests: continue (requests
# that leave the session unchanged: each client sends the token it holds), advance (every request
# writes, and each client sends the token of its last response; the response-to-client pairing is
# approximate under pipelining, which only makes some tokens older), new (no token: a session per
# request).
# Prints per case the medians and the median over rounds of the layered/bare ratio measured back
# to back in the same round (the machine is shared: rounds drift, a round's pair much less).
# Installs wrk from the distribution's packages if it is missing (apt-get, as root).
set -euo pipefail
seconds="${1:-10}"
rounds="${2:-3}"
cd "$(dirname "$0")/../../.."
if ! command -v wrk >/dev/null; then
    apt-get install -y wrk >/dev/null
fi
cargo build --release --quiet -p ryw-http --example loopback
bare_addr=127.0.0.1:18081
layered_addr=127.0.0.1:18082
target/release/examples/loopback "$bare_addr" "$layered_addr" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    curl -s -o /dev/null "http://$layered_addr/" && break
    sleep 0.1
done
# 64 clients, each with its own session: one token each.
tokens=""
for _ in $(seq 64); do
    t="$(curl -s -D - -o /dev/null "http://$layered_addr/" | tr -d '\r' | awk -F': ' 'tolower($1) == "ryw-session" { print $2 }')"
    [ -n "$t" ] || { echo "no token from the layered app"; exit 1; }
    tokens+="\"$t\", "
done
lua_continue="$(mktemp --suffix=.lua)"
lua_advance="$(mktemp --suffix=.lua)"
# Each wrk thread cycles through the clients' tokens; continuing, a token is sent as it is, and
# advancing, each client sends the token of its own last response.
cat >"$lua_continue" <<LUA
local tokens = { $tokens }
local i = 0
request = function()
    i = i % #tokens + 1
    return wrk.format("GET", "/", { ["ryw-session"] = tokens[i] })
end
LUA
cat >"$lua_advance" <<LUA
local tokens = { $tokens }
local i = 0
local pending = {}
request = function()
    i = i % #tokens + 1
    table.insert(pending, i)
    return wrk.format("GET", "/write", { ["ryw-session"] = tokens[i] })
end
response = function(status, headers, body)
    local j = table.remove(pending, 1)
    local t = headers["ryw-session"]
    if j and t then tokens[j] = t end
end
LUA
run() { wrk -t2 -c64 -d"${seconds}s" "$@" | awk '/Requests\/sec/ { print $2 }'; }
# Each case runs against the bare app and the layered one back to back, with the same requests
# and the same wrk script: the ratio of the pair is what the layer costs.
declare -A bare layered
cases="continue advance new"
for round in $(seq "$rounds"); do
    bare[continue]+="$(run -s "$lua_continue" "http://$bare_addr/") "
    layered[continue]+="$(run -s "$lua_continue" "http://$layered_addr/") "
    bare[advance]+="$(run -s "$lua_advance" "http://$bare_addr/write") "
    layered[advance]+="$(run -s "$lua_advance" "http://$layered_addr/write") "
    bare[new]+="$(run "http://$bare_addr/") "
    layered[new]+="$(run "http://$layered_addr/") "
    echo "round $round done"
done
rm -f "$lua_continue" "$lua_advance"
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; wrk -t2 -c64 -d${seconds}s, $rounds rounds"
for case in $cases; do
    read -ra b <<<"${bare[$case]}"
    read -ra l <<<"${layered[$case]}"
    ratios=""
    for i in "${!b[@]}"; do
        ratios+="$(echo "${l[$i]} / ${b[$i]}" | bc -l) "
    done
    printf '%-9s bare median %9s req/s, layered median %9s req/s, ratio median %.3f (per round: %s)\n' \
        "$case" "$(echo "${bare[$case]}" | median)" "$(echo "${layered[$case]}" | median)" \
        "$(echo "$ratios" | median)" "$(for r in $ratios; do printf '%.2f ' "$r"; done)"
done
