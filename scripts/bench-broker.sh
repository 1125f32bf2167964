#!/usr/bin/env bash
# The broker's benchmark pass (DESIGN.md §9): imqtt, mosquitto and rumqttd
# alternating, a fresh server per run, the same imqtt-bench binary; fanout at
# CLIENTS clients (default 19000), RUNS times each (default 3), then the QoS 1 and
# QoS 0 relays. Loopback only, ports 18831 (imqtt), 18832 (mosquitto), 18833
# (rumqttd). Needs mosquitto on PATH (apt-get install mosquitto). rumqttd runs when
# RUMQTTD names its binary (cargo install rumqttd --version 0.20.0 --root DIR), at
# RUMQTTD_CLIENTS clients (default 5000: its connect cost grows with the clients
# already connected, DESIGN.md §9, so 19,000 would take most of an hour).
# BEFORE=path/to/another/imqtt (BEFORE_CONFIG: the config file it reads) adds that build to each round, to compare two
# builds in one pass.  scripts/bench-broker.sh [RUNS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"; clients="${2:-19000}"
bin=${BENCH_BIN:-target/release}
[ -n "${BENCH_BIN:-}" ] || cargo build --release -q --bin imqtt --bin imqtt-bench
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
ulimit -n "$(ulimit -Hn)"

imqtt_run() { # server-binary name bench-args...
  local server=$1 name=$2; shift 2
  local data; data=$(mktemp -d)
  IMQTT_AUTH__JWT_SECRET=$secret IMQTT_MQTT__TCP=127.0.0.1:18831 IMQTT_MQTT__WS="" \
    IMQTT_HTTP__LISTEN=127.0.0.1:18081 IMQTT_STORE__PATH="$data/db" RUST_LOG=warn \
    "$server" --config "${config:-config/imqtt.toml}" --print-addrs >"$data/addrs" 2>"$data/log" &
  local pid=$!
  for _ in $(seq 100); do grep -q '^http=' "$data/addrs" 2>/dev/null && break; sleep 0.1; done
  $bin/imqtt-bench --port 18831 --jwt-secret "$secret" --client-role admin --server-pid $pid \
    "$@" 2>/dev/null | grep '=' | sed "s/^/imqtt-$name /" || echo "imqtt-$name FAILED"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$data"
}

mosquitto_run() { # name bench-args...
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  printf 'listener 18832 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\n' >"$dir/m.conf"
  mosquitto -c "$dir/m.conf" >"$dir/log" 2>&1 &
  local pid=$!
  sleep 0.5
  $bin/imqtt-bench --port 18832 --server-pid $pid "$@" 2>/dev/null | grep '=' \
    | sed "s/^/mosquitto-$name /" || echo "mosquitto-$name FAILED"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$dir"
}

rumqttd_run() { # name bench-args...
  [ -n "${RUMQTTD:-}" ] || return 0
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  printf '%s\n' 'id = 0' '[router]' 'id = 0' 'max_connections = 20010' \
    'max_outgoing_packet_count = 200' 'max_segment_size = 104857600' 'max_segment_count = 10' \
    '[v4.1]' 'name = "v4-1"' 'listen = "127.0.0.1:18833"' 'next_connection_delay_ms = 0' \
    '[v4.1.connections]' 'connection_timeout_ms = 60000' 'max_payload_size = 20480' \
    'max_inflight_count = 100' 'dynamic_filters = true' >"$dir/rumqttd.toml"
  "$RUMQTTD" -c "$dir/rumqttd.toml" >"$dir/log" 2>&1 &
  local pid=$!
  sleep 0.5
  $bin/imqtt-bench --port 18833 --server-pid $pid "$@" 2>/dev/null | grep '=' \
    | sed "s/^/rumqttd-$name /" || echo "rumqttd-$name FAILED"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$dir"
}

for _ in $(seq "$runs"); do
  imqtt_run "$bin/imqtt" fanout --clients "$clients"
  [ -z "${BEFORE:-}" ] || config=${BEFORE_CONFIG:-config/imqtt.toml} imqtt_run "$BEFORE" before-fanout --clients "$clients"
  mosquitto_run fanout --clients "$clients"
  rumqttd_run fanout --clients "${RUMQTTD_CLIENTS:-5000}" --timeout-secs 1800
done
for _ in $(seq "$runs"); do
  for q in 1 0; do
    imqtt_run "$bin/imqtt" relay-qos$q --scenario relay --qos $q --messages 50000
    [ -z "${BEFORE:-}" ] || config=${BEFORE_CONFIG:-config/imqtt.toml} imqtt_run "$BEFORE" before-relay-qos$q --scenario relay --qos $q --messages 50000
    mosquitto_run relay-qos$q --scenario relay --qos $q --messages 50000
    rumqttd_run relay-qos$q --scenario relay --qos $q --messages 50000
  done
done
