#!/usr/bin/env bash
# Sets up, builds, and runs a local tabnode network: the relay (which also
# serves the site) and one native node. Prints the URL to open; Ctrl-C stops.
# Environment: TABNODE_HTTP (default 127.0.0.1:8080), TABNODE_DATA (.data).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TABNODE_ROOT"

scripts/setup.sh
scripts/build.sh

data="${TABNODE_DATA:-$TABNODE_ROOT/.data}"
mkdir -p "$data"
rm -f "$data/bootstrap.json"
bin="$CARGO_TARGET_DIR/debug"

"$bin/tabnode-relay" --data-dir "$data/relay" --site-root "$TABNODE_ROOT" \
  --bootstrap-file "$data/bootstrap.json" &
relay=$!
trap 'kill $relay ${node:-} 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 100); do
  [ -s "$data/bootstrap.json" ] && break
  kill -0 $relay 2>/dev/null || { echo "the relay exited" >&2; exit 1; }
  sleep 0.1
done
[ -s "$data/bootstrap.json" ] || { echo "the relay did not come up" >&2; exit 1; }

# The native node serves the models too (SmolLM2, Qwen2.5-Coder-0.5B and
# the base model Gemma 3 270M for /v1/completions), so the chat works from
# the start.
"$bin/tabnode-node" --bootstrap-file "$data/bootstrap.json" --key-file "$data/node/identity.key" \
  --model "$TABNODE_MODEL" --model "$TABNODE_MODELS_DIR/Qwen2.5-Coder-0.5B-Instruct.gguf" \
  --model "$TABNODE_MODELS_DIR/gemma-3-270m-q4_k_m.gguf" \
  --embed "$TABNODE_MODELS_DIR/all-minilm-l6-v2" &
node=$!

echo
echo "tabnode network is up. Open: http://${TABNODE_HTTP:-127.0.0.1:8080}/"
echo "(chat: /chat.html — flows: /flows.html — the network live: /network.html — OpenAI API: /v1/chat/completions, /v1/completions, /v1/models — /api/network /api/stats /api/ledger /metrics — Ctrl-C to stop)"
wait $relay
