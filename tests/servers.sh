# Sourced by tests/run-all.sh: installs and starts the test servers that can run on this machine,
# on 127.0.0.1 only, and stops them when the script exits.
#
# - moto's server (DynamoDB), from PyPI, in a virtual environment under target/ci-tools, handling
#   one request at a time (tests/moto_atomic.py);
# - SecantusDB (a MongoDB-wire-compatible single-node replica set), from PyPI, likewise.

TOOLS="${RYW_TOOLS_DIR:-$PWD/target/ci-tools}"
MOTO_VERSION="5.2.5"
SECANTUS_VERSION="0.7.0b3"
mkdir -p "$TOOLS"
SERVER_PIDS=()

stop_servers() {
  for pid in "${SERVER_PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  done
}
trap stop_servers EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # url, seconds
  local deadline=$((SECONDS + $2))
  until curl -sf -X POST "$1" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then return 1; fi
    sleep 0.3
  done
}

start_moto() {
  local venv="$TOOLS/moto-$MOTO_VERSION"
  if [[ ! -x "$venv/bin/moto_server" ]]; then
    echo "servers: installing moto[server]==$MOTO_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  local port
  port=$(free_port)
  # One request at a time, so that conditional writes are atomic as in DynamoDB (see the script).
  "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_atomic.py" -H 127.0.0.1 -p "$port" \
    >"$TOOLS/moto.log" 2>&1 &
  SERVER_PIDS+=($!)
  if ! wait_http "http://127.0.0.1:$port/moto-api/reset" 60; then
    echo "servers: moto did not start; its log:" >&2
    cat "$TOOLS/moto.log" >&2
    return 1
  fi
  export RYW_DYNAMODB_ENDPOINT="http://127.0.0.1:$port"
  echo "servers: moto (DynamoDB) on $RYW_DYNAMODB_ENDPOINT"
}

start_secantus() {
  local venv="$TOOLS/secantus-$SECANTUS_VERSION"
  if [[ ! -x "$venv/bin/secantusd-py" ]]; then
    echo "servers: installing secantusdb==$SECANTUS_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "secantusdb==$SECANTUS_VERSION"
  fi
  local port
  port=$(free_port)
  "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path :memory: \
    --enable-test-commands >"$TOOLS/secantus.log" 2>&1 &
  SERVER_PIDS+=($!)
  local deadline=$((SECONDS + 60))
  until grep -q "listening on" "$TOOLS/secantus.log" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "servers: SecantusDB did not start; its log:" >&2
      cat "$TOOLS/secantus.log" >&2
      return 1
    fi
    sleep 0.3
  done
  export RYW_MONGODB_URI="mongodb://127.0.0.1:$port/?replicaSet=secantus"
  # The outage test starts (and kills, and restarts) its own SecantusDB on an on-disk path.
  export RYW_SECANTUS_BIN="$venv/bin/secantusd-py"
  echo "servers: SecantusDB (MongoDB) on $RYW_MONGODB_URI"
}

# Headless Chromium (Debian's package), to render ryw-probe's HTML report in a test.
install_chromium() {
  local bin
  bin=$(command -v chromium || true)
  if [[ -z "$bin" ]]; then
    echo "tools: installing chromium (Debian)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    bin=$(command -v chromium || true)
  fi
  if [[ -z "$bin" ]]; then
    echo "tools: chromium could not be installed" >&2
    return 1
  fi
  export RYW_CHROMIUM="$bin"
  echo "tools: chromium at $RYW_CHROMIUM"
}

# promtool (Debian's prometheus package), to check and unit-test deploy/prometheus's alert rules.
# Installs nothing when promtool is already on PATH. Runs as root (CI's containers), no sudo.
install_promtool() {
  local bin
  bin=$(command -v promtool || true)
  if [[ -z "$bin" ]]; then
    echo "tools: installing promtool (Debian's prometheus package): apt-get update && apt-get install -y prometheus"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    bin=$(command -v promtool || true)
  fi
  if [[ -z "$bin" ]]; then
    echo "tools: promtool could not be installed" >&2
    return 1
  fi
  export RYW_PROMTOOL="$bin"
  echo "tools: $("$bin" --version 2>&1 | head -n 1) at $RYW_PROMTOOL"
}
