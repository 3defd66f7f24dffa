#!/usr/bin/env bash
# Sets up (toolchain target, wasm-bindgen CLI, Debian's Chromium,
# playwright-core) and runs every test: formatting and lints (native and
# wasm32), unit and integration tests (native), and the end-to-end tests in
# headless Chromium against the real relay and node binaries.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TABNODE_ROOT"

scripts/setup.sh --test
scripts/build.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (native, then wasm32)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --target wasm32-unknown-unknown -p tabnode-core -p tabnode-pof -p tabnode-infer -p tabnode-flows -p tabnode-web -p tabnode-worker -- -D warnings

echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test (unit + integration, native)"
cargo test --workspace
# The vendored WebRTC stream framing (FIN_ACK state machine): not a member.
cargo test -p libp2p-webrtc-utils --lib

echo "== scripts (model fetching: pieces, hashes)"
python3 -m unittest discover -s scripts/tests

echo "== e2e (headless Chromium, WebGPU on SwiftShader)"
cd e2e
node --test --test-concurrency=1 .
