#!/usr/bin/env bash
# Durability soak: kill -9 the server while eight senders are sending, restart it
# on the same data directory, check that every acknowledged message is there with
# contiguous seqs and no duplicates; ROUNDS times (default 50) on the release build.
#   scripts/soak.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-50}"
cargo build --release -q -p im-bridge --bin imqtt
IMQTT_BIN="$PWD/target/release/imqtt" IMQTT_CRASH_ROUNDS="$rounds" \
  cargo test -q -p imqtt-tests --test crash -- --nocapture
echo "soak: $rounds kill-and-restart rounds passed"
