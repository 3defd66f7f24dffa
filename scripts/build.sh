#!/usr/bin/env bash
# Builds the native binaries (dev profile) and the browser wasm (release)
# and runs wasm-bindgen into pkg/.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TABNODE_ROOT"

# The whole workspace with tests and examples: the same feature resolution
# as `cargo test --workspace`, so the tests reuse these artifacts instead of
# building every dependency a second time (that alone was ~40 min cold).
# --wasm: the browser's wasm and pkg/ only (scripts/install.sh builds its
# own native binaries, in release).
if [ "${1:-}" != "--wasm" ]; then
  echo "== cargo build (native: relay, node, tests, examples)"
  cargo build --workspace --all-targets
fi

echo "== cargo build (wasm32: page node, worker)"
cargo build --release --target wasm32-unknown-unknown -p tabnode-web -p tabnode-worker

echo "== wasm-bindgen -> pkg/"
mkdir -p pkg
for crate in tabnode_web tabnode_worker; do
  wasm-bindgen --target web --out-dir pkg \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/$crate.wasm"
done
# The chat widget and its API client, for bundlers (`tabnode/widget`).
cp www/widget.js www/client.js pkg/
ls -l pkg/*.wasm
