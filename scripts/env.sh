# Sourced by the other scripts: where builds and tools live.
# Builds and tools live outside the clone so that a fresh clone (CI) reuses
# them; override with the variables below.
export TABNODE_CACHE="${TABNODE_CACHE:-$HOME/.cache/tabnode}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TABNODE_CACHE/target}"
# No incremental compilation data: every clone at a new path (CI, fresh
# checks) wrote gigabytes of it that no later build read (39 GB here by
# 2026-12-04), and a clean build gains nothing from it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export TABNODE_TOOLS="${TABNODE_TOOLS:-$TABNODE_CACHE/tools}"
export PATH="$TABNODE_TOOLS/bin:$HOME/.cargo/bin:$PATH"
# The default model file (downloaded by scripts/setup.sh).
export TABNODE_MODEL="${TABNODE_MODEL:-$TABNODE_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
# The relay serves this directory under /models/ (browsers fetch the model there).
export TABNODE_MODELS_DIR="${TABNODE_MODELS_DIR:-$TABNODE_CACHE/models}"
TABNODE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TABNODE_ROOT
# The wasm-bindgen CLI must equal the wasm-bindgen crate in Cargo.lock.
WASM_BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$TABNODE_ROOT/Cargo.lock")"
export WASM_BINDGEN_VERSION
