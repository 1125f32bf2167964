#!/usr/bin/env bash
# A local three-node imqtt cluster: one PostgreSQL, one nats-server, three nodes.
#
#   scripts/cluster.sh start    # builds the release binary if needed, starts all
#   scripts/cluster.sh status   # what runs, and the live nodes as node-1 sees them
#   scripts/cluster.sh stop     # stops the nodes (SIGTERM, drained), NATS, PostgreSQL
#
# Everything lives in $IMQTT_CLUSTER_DIR (default /tmp/imqtt-cluster): the
# database, each node's config and log. Ports, all on 127.0.0.1:
#   node-1  MQTT 1883  WebSocket 8083  HTTP 8080
#   node-2  MQTT 1884  WebSocket 8084  HTTP 8081
#   node-3  MQTT 1885  WebSocket 8085  HTTP 8082
#   NATS 4222, PostgreSQL 5433
# Needs Debian's postgresql and nats-server. Tokens: `imqtt token` with the
# config of any node (they share the secret in $DIR/secret).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${IMQTT_CLUSTER_DIR:-/tmp/imqtt-cluster}"
bin="${IMQTT_BIN:-$PWD/target/release/imqtt}"
pg_port=5433
nats_port=4222

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
as_pg() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ -n "${IMQTT_BIN:-}" ] || cargo build --release -q -p im-bridge --bin imqtt
  local pgb
  pgb="$(pg_bin)"
  [ -n "$pgb" ] || { echo "PostgreSQL not installed (apt-get install postgresql)" >&2; exit 1; }
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] ||
    { echo "nats-server not installed (apt-get install nats-server)" >&2; exit 1; }
  mkdir -p "$dir"
  [ -f "$dir/secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret"

  if [ ! -d "$dir/pg" ]; then
    mkdir -p "$dir/pg"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pg"
    as_pg "$pgb/initdb" -D "$dir/pg/data" -U imqtt --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_pg "$pgb/pg_ctl" -D "$dir/pg/data" status >/dev/null 2>&1; then
    as_pg "$pgb/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w \
      -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null
    as_pg "$pgb/psql" -h 127.0.0.1 -p $pg_port -U imqtt -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'imqtt'" | grep -q 1 ||
      as_pg "$pgb/createdb" -h 127.0.0.1 -p $pg_port -U imqtt imqtt
  fi
  echo "PostgreSQL on 127.0.0.1:$pg_port"

  if ! alive "$dir/nats.pid"; then
    "$(command -v nats-server || echo /usr/sbin/nats-server)" -a 127.0.0.1 -p $nats_port \
      >"$dir/nats.log" 2>&1 &
    echo $! >"$dir/nats.pid"
  fi
  echo "NATS on 127.0.0.1:$nats_port"

  for i in 1 2 3; do
    local node="node-$i" mqtt=$((1882 + i)) ws=$((8082 + i)) http=$((8079 + i))
    mkdir -p "$dir/$node"
    cat >"$dir/$node/imqtt.toml" <<EOF
[mqtt]
tcp = "127.0.0.1:$mqtt"
ws = "127.0.0.1:$ws"
[http]
listen = "127.0.0.1:$http"
[auth]
jwt_secret = "$(cat "$dir/secret")"
accounts = true
[store]
engine = "postgres"
url = "postgres://imqtt@127.0.0.1:$pg_port/imqtt"
[cluster]
nats = "nats://127.0.0.1:$nats_port"
node = "$node"
EOF
    if ! alive "$dir/$node/pid"; then
      "$bin" --config "$dir/$node/imqtt.toml" >"$dir/$node/imqtt.log" 2>&1 &
      echo $! >"$dir/$node/pid"
    fi
    for _ in $(seq 100); do
      curl -fs "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 ||
      { echo "$node did not start; its log:" >&2; tail -20 "$dir/$node/imqtt.log" >&2; exit 1; }
    echo "$node: MQTT 127.0.0.1:$mqtt, WebSocket 127.0.0.1:$ws, HTTP http://127.0.0.1:$http"
  done
}

status() {
  alive "$dir/nats.pid" && echo "NATS runs" || echo "NATS stopped"
  for i in 1 2 3; do
    alive "$dir/node-$i/pid" && echo "node-$i runs" || echo "node-$i stopped"
  done
  if alive "$dir/node-1/pid"; then
    local token
    token="$("$bin" --config "$dir/node-1/imqtt.toml" token root --role admin --ttl 60s)"
    curl -fs -H "authorization: Bearer $token" http://127.0.0.1:8080/v1/admin/cluster && echo
  fi
}

stop() {
  for i in 1 2 3; do
    local pidfile="$dir/node-$i/pid"
    if alive "$pidfile"; then
      kill -TERM "$(cat "$pidfile")"
      while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.1; done
      echo "node-$i stopped"
    fi
    rm -f "$pidfile"
  done
  if alive "$dir/nats.pid"; then
    kill -TERM "$(cat "$dir/nats.pid")"
    while kill -0 "$(cat "$dir/nats.pid")" 2>/dev/null; do sleep 0.1; done
    echo "NATS stopped"
  fi
  rm -f "$dir/nats.pid"
  local pgb
  pgb="$(pg_bin)"
  if [ -n "$pgb" ] && [ -d "$dir/pg/data" ] &&
    as_pg "$pgb/pg_ctl" -D "$dir/pg/data" status >/dev/null 2>&1; then
    as_pg "$pgb/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null
    echo "PostgreSQL stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
