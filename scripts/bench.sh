#!/usr/bin/env bash
# Benchmarks (loopback): round-trip latency through the relay, native and
# in headless Chromium. Results go in BENCHMARKS.md by hand, with this command.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TABNODE_ROOT"
scripts/setup.sh --test
scripts/build.sh >/dev/null
echo "== native <-> native (cargo run --example rtt)"
cargo run -q -p tabnode-node --example rtt -- "${ROUNDS:-2000}" "${PAYLOAD:-64}"
echo "== tab <-> tab (e2e/bench/rtt.mjs)"
node e2e/bench/rtt.mjs "${TAB_ROUNDS:-300}" "${PAYLOAD:-64}"
echo "== Proof-of-FLOPS kernel vs CPU sgemm, verifier vs prover (native)"
cargo run -q -p tabnode-pof --example pof_bench -- "${KERNEL_SIZES:-256,512,1024}" "${VERIFY_SIZES:-1024,2048,4096}"
echo "== WGSL kernels in Chromium (e2e/bench/kernels.mjs)"
node e2e/bench/kernels.mjs "${BROWSER_SIZES:-128,256,512}" 3
