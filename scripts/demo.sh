#!/usr/bin/env bash
# The demo: start `quarry up` on a fresh data directory, ingest Quarry's own documentation
# (demo/corpus.jsonl), ask a few questions, print the answers with their sources, and stop.
set -euo pipefail
cd "$(dirname "$0")/.."

QUARRY=${QUARRY:-target/debug/quarry}
LISTEN=${DEMO_LISTEN:-127.0.0.1:7700}
ADDR="http://$LISTEN"
DATA=target/demo-data

rm -rf "$DATA"
"$QUARRY" up --listen "$LISTEN" --data-dir "$DATA" --shards 2 2>target/demo-quarry.log &
QUARRY_PID=$!
trap 'kill -TERM $QUARRY_PID 2>/dev/null || true; wait $QUARRY_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if "$QUARRY" status --addr "$ADDR" >/dev/null 2>&1; then break; fi
  if ! kill -0 $QUARRY_PID 2>/dev/null; then
    echo "quarry up failed to start (is $LISTEN taken? set DEMO_LISTEN):"; cat target/demo-quarry.log; exit 1
  fi
  sleep 0.2
done

echo "== quarry status"
"$QUARRY" status --addr "$ADDR"
echo
echo "== quarry ingest demo/corpus.jsonl"
"$QUARRY" ingest demo/corpus.jsonl --addr "$ADDR"

ask() {
  echo
  echo "== quarry ask \"$1\""
  "$QUARRY" ask "$1" --addr "$ADDR"
}
ask "How does Quarry make BM25 scores independent of the number of shards?"
ask "What happens when a shard does not answer?"
ask "How do I call the API from Python?"
ask "Which command runs the whole cluster on a laptop?"

echo
echo "== quarry search \"write-ahead log fsync\" --k 3"
"$QUARRY" search "write-ahead log fsync" --k 3 --addr "$ADDR"
