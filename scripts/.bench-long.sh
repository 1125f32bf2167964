#!/usr/bin/env bash
# The IM core's benchmark pass (issue 13's "Measure"): each HTTP scenario RUNS times
# (default 5) on a fresh server and store, printing every run's key=value figures
# prefixed by the scenario, for medians. Loopback only; ports 18831/18081.
#   scripts/bench-im.sh [RUNS] [SCENARIO...]
# SCENARIO: send1 send16 send64 send64-interval batch batch-interval lat1000 lat5000 drain
#   group: 1,000 members, 200 online (mqtt.max_queued = 20000); presence: 10,000
#   users x 20 watchers (not in the default list: each takes a minute or more)
#   sdk5000: latency at 5,000/s received by rumqttc, then by the client library,
#   alternating in each run (the client library's cost over a raw subscriber)
#   send64d batch4d batch8d: as send64 and batch, with --distinct (every message
#   to a recipient of its own: a new conversation each); batch8: 8 senders
#   hook64 hookbatch: send64 and batch twice in each run, without a webhook and
#   then with a message.stored webhook posting to the bench's own receiver (port
#   18090; events/s and commit-to-POST latency), lines prefixed "nohook-"/"hook-"
# BEFORE=path/to/another/imqtt runs that build too, alternating run by run, its
# lines prefixed "before-", to compare two builds in one pass (BEFORE_CONFIG: the
# config file that build reads, default config/imqtt.toml).
# STORE=postgres runs every server on PostgreSQL (fsync and synchronous_commit
# on): the script starts its own from Debian's postgresql on port 15432 (as the
# postgres user when run as root) and gives each run a new database.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"; shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(send1 send16 send64 send64-interval batch batch-interval lat1000 lat5000 drain)
# BENCH_BIN: a directory holding imqtt and imqtt-bench (another build to compare).
bin=${BENCH_BIN:-target/release}
[ -n "${BENCH_BIN:-}" ] || cargo build --release -q --bin imqtt --bin imqtt-bench
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

store_env=()
if [ "${STORE:-sled}" = postgres ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
  pgdir=$(mktemp -d); as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pgdir"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U imqtt --auth=trust --no-sync >/dev/null
  "${as_pg[@]}" "$pgbin/postgres" -D "$pgdir/data" -p 15432 -k "$pgdir" -h 127.0.0.1 \
    -c fsync=on -c synchronous_commit=on -c max_connections=200 >"$pgdir/log" 2>&1 &
  pgpid=$!
  trap 'kill $pgpid 2>/dev/null; wait $pgpid 2>/dev/null; rm -rf "$pgdir"' EXIT
  for _ in $(seq 100); do "${as_pg[@]}" "$pgbin/pg_isready" -q -h 127.0.0.1 -p 15432 && break; sleep 0.1; done
  pgdbs=0
fi

run_one() { # name flush bench-args...
  config=config/imqtt.toml run_with "$bin/imqtt" "$@"
  [ -z "${BEFORE:-}" ] || { local name=$1; shift; config=${BEFORE_CONFIG:-config/imqtt.toml} run_with "$BEFORE" "before-$name" "$@"; }
}

run_with() { # server-binary name flush bench-args...
  local server=$1 name=$2 flush=$3; shift 3
  local data; data=$(mktemp -d)
  if [ "${STORE:-sled}" = postgres ]; then
    pgdbs=$((pgdbs + 1))
    "${as_pg[@]}" "$pgbin/createdb" -h 127.0.0.1 -p 15432 -U imqtt "bench$pgdbs"
    store_env=(IMQTT_STORE__ENGINE=postgres "IMQTT_STORE__URL=postgres://imqtt@127.0.0.1:15432/bench$pgdbs")
  fi
  env "${store_env[@]}" IMQTT_AUTH__JWT_SECRET=$secret IMQTT_MQTT__TCP=127.0.0.1:18831 IMQTT_MQTT__WS="" \
    IMQTT_HTTP__LISTEN=127.0.0.1:18081 IMQTT_STORE__PATH="$data/db" IMQTT_STORE__FLUSH=$flush \
    IMQTT_LIMITS__RATE_PER_USER=0 RUST_LOG=warn \
    "$server" --config "$config" --print-addrs >"$data/addrs" 2>"$data/log" &
  local pid=$!
  for _ in $(seq 100); do grep -q '^http=' "$data/addrs" 2>/dev/null && break; sleep 0.1; done
  $bin/imqtt-bench --port 18831 --http-port 18081 --jwt-secret "$secret" --server-pid $pid \
    --data-dir "$data" "$@" 2>/dev/null | grep '=' | sed "s/^/$name /" || echo "$name FAILED"
  kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
  rm -rf "$data"
}

# The default config with a message.stored webhook to the bench's receiver.
hook_config=$(mktemp)
trap 'rm -f "$hook_config"; [ -z "${pgpid:-}" ] || { kill $pgpid 2>/dev/null; wait $pgpid 2>/dev/null; rm -rf "$pgdir"; }' EXIT
{ cat config/imqtt.toml; printf '\n[[webhooks]]\nurl = "http://127.0.0.1:18090/hook"\nsecret = "bench"\nevents = ["message.stored"]\n'; } >"$hook_config"
hook_pair() { # name bench-args...
  local name=$1; shift
  config=config/imqtt.toml run_with "$bin/imqtt" "nohook-$name" always "$@"
  config=$hook_config run_with "$bin/imqtt" "hook-$name" always "$@" --webhook-sink 18090
}

for s in "${scenarios[@]}"; do
  for _ in $(seq "$runs"); do
    case $s in
      send1) run_one "$s" always --scenario send --senders 1 --messages 5000 ;;
      send16) run_one "$s" always --scenario send --senders 16 --messages 20000 ;;
      send64) run_one "$s" always --scenario send --senders 64 --messages 100000 ;;
      send64-interval) run_one "$s" interval --scenario send --senders 64 --messages 100000 ;;
      send64d) run_one "$s" always --scenario send --senders 64 --messages 20000 --distinct ;;
      batch) run_one "$s" always --scenario batch --senders 4 --batch-size 1000 --messages 200000 ;;
      batch8) run_one "$s" always --scenario batch --senders 8 --batch-size 1000 --messages 200000 ;;
      batch4d) run_one "$s" always --scenario batch --senders 4 --batch-size 1000 --messages 200000 --distinct ;;
      batch8d) run_one "$s" always --scenario batch --senders 8 --batch-size 1000 --messages 200000 --distinct ;;
      batch-interval) run_one "$s" interval --scenario batch --senders 4 --batch-size 1000 --messages 200000 ;;
      lat1000) run_one "$s" always --scenario latency --rate 1000 --messages 10000 ;;
      lat5000) run_one "$s" always --scenario latency --rate 5000 --messages 25000 ;;
      drain) run_one "$s" always --scenario drain --messages 100000 ;;
      group) IMQTT_MQTT__MAX_QUEUED=20000 run_one "$s" always --scenario group ;;
      presence) run_one "$s" always --scenario presence ;;
      hook64) hook_pair send64 --scenario send --senders 64 --messages 100000 ;;
      hookbatch) hook_pair batch --scenario batch --senders 4 --batch-size 1000 --messages 200000 ;;
      sdk5000)
        run_one lat5000-rumqttc always --scenario latency --rate 5000 --messages 25000 --receiver rumqttc
        run_one lat5000-sdk always --scenario latency --rate 5000 --messages 25000 --receiver sdk ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done
