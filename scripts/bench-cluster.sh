#!/usr/bin/env bash
# The cluster pass, on the local three-node cluster of scripts/cluster.sh (all on
# this machine, loopback only), beside one node without NATS on the same
# PostgreSQL:
#   - latency at 1,000 and 5,000 msg/s, HTTP on node-1 and the subscriber on
#     node-1 (same node) or node-2 (cross-node), and on the lone node;
#   - the server CPU per message routed in each of those runs (every imqtt node
#     and nats-server, from /proc);
#   - a group's fan-out with its online members spread over the three nodes;
#   - the fanout of CLIENTS (default 19,000) clients spread over three nodes,
#     beside one node.
#   [PARTS="latency group fanout"] scripts/bench-cluster.sh [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-19000}"
# A fresh cluster (database included) for every pass.
dir="$(mktemp -d /tmp/imqtt-bench-cluster.XXXXXX)"
chmod 755 "$dir"  # PostgreSQL runs as its own user
export IMQTT_CLUSTER_DIR="$dir"
cargo build --release -q -p im-bridge -p imqtt-bench
bin="$PWD/target/release"
export IMQTT_BIN="$bin/imqtt"
# Measure the server, not the per-user send limit.
export IMQTT_LIMITS__RATE_PER_USER=0
scripts/cluster.sh start >/dev/null
lone=""
cleanup() {
  [ -z "$lone" ] || { kill -TERM "$lone" 2>/dev/null; wait "$lone" 2>/dev/null || true; }
  scripts/cluster.sh stop >/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
secret="$(cat "$dir/secret")"

# One node alone on the same database (a database of its own), no [cluster].
"$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/createdb" -h 127.0.0.1 -p 5433 -U imqtt imqtt_lone 2>/dev/null || true
mkdir -p "$dir/lone"
cat >"$dir/lone/imqtt.toml" <<EOF
[mqtt]
tcp = "127.0.0.1:1893"
ws = ""
[http]
listen = "127.0.0.1:8090"
[auth]
jwt_secret = "$secret"
[store]
engine = "postgres"
url = "postgres://imqtt@127.0.0.1:5433/imqtt_lone"
EOF
"$bin/imqtt" --config "$dir/lone/imqtt.toml" >"$dir/lone/imqtt.log" 2>&1 &
lone=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:8090/readyz >/dev/null 2>&1 && break; sleep 0.1; done

nodes="$(cat "$dir"/node-*/pid) $(cat "$dir/nats.pid")"
# CPU seconds (user + system) of the given pids.
cpu() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t $(getconf CLK_TCK)" | awk '{printf "%.3f", $1 / $2}'
}
# run NAME PIDS MESSAGES -- BENCH ARGS: the bench's summary keys, and the CPU
# of PIDS per message routed.
run() {
  local name=$1 pids=$2 msgs=$3
  shift 4
  local before after out
  before=$(cpu $pids)
  out=$("$bin/imqtt-bench" --jwt-secret "$secret" "$@" 2>&1) || true
  after=$(cpu $pids)
  echo "$out" | grep -E '^(latency_delivery_p50_ms|latency_delivery_p99_ms|latency_achieved_per_sec|group_throughput_durable_messages_per_sec|group_throughput_deliveries_per_sec|group_throughput_delivery_p50_ms|group_throughput_delivery_p99_ms|group_throughput_lost|group_latency_delivery_p50_ms|group_latency_delivery_p99_ms|fanout_.*per_sec|fanout_delivered|complete)=' |
    sed "s/^/$name /"
  echo "$out" | grep -E '^error=' | sed "s/^/$name /" || true
  echo "$name server_cpu_secs=$(echo "$after $before" | awk '{printf "%.2f", $1 - $2}') per_message_us=$(echo "$after $before $msgs" | awk '{printf "%.1f", ($1 - $2) * 1e6 / $3}')"
}

# PARTS="latency group fanout" (the default) picks what runs.
parts="${PARTS:-latency group fanout}"
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

want latency && for rate in 1000 5000; do
  n=$((rate * 5))
  run "lone-$rate" "$lone" $n -- --scenario latency --port 1893 --http-port 8090 --rate $rate --messages $n --fsync-probe-secs 0
  run "same-node-$rate" "$nodes" $n -- --scenario latency --port 1883 --http-port 8080 --rate $rate --messages $n --fsync-probe-secs 0
  run "cross-node-$rate" "$nodes" $n -- --scenario latency --port 1884 --http-port 8080 --rate $rate --messages $n --fsync-probe-secs 0
done
want group && run "group-lone" "$lone" 600000 -- --scenario group --port 1893 --http-port 8090 --members 300 --online 300 --messages 2000 --fsync-probe-secs 0
want group && run "group-3-nodes" "$nodes" 600000 -- --scenario group --port 1883 --spread-ports 1884,1885 --http-port 8080 --members 300 --online 300 --messages 2000 --fsync-probe-secs 0
want fanout && run "fanout-lone" "$lone" "$clients" -- --scenario fanout --port 1893 --client-role admin --clients "$clients" --server-pid "$lone"
want fanout && run "fanout-3-nodes" "$nodes" "$clients" -- --scenario fanout --port 1883 --spread-ports 1884,1885 --client-role admin --clients "$clients"
