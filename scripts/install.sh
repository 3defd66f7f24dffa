#!/usr/bin/env bash
# Builds release binaries of the relay and the native node and installs
# them with the site, for a public relay (README: "Operating a public
# relay"):
#   PREFIX/bin/tabnode-relay, PREFIX/bin/tabnode-node
#   PREFIX/share/tabnode/{www,pkg,worker}   (www with its npm libraries)
# The relay finds the site there by itself (next to its binary: ../share/
# tabnode); its state goes in --data-dir, models in --models-dir.
#   scripts/install.sh [PREFIX]     default /usr/local; DESTDIR is honoured
# Release builds (the `dist` profile: release with link-time optimisation
# across crates) go to $TABNODE_CACHE/target-release (their own directory:
# the dev builds of the tests stay as they are).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$TABNODE_ROOT"
PREFIX="${1:-/usr/local}"
DEST="${DESTDIR:-}$PREFIX"

# The wasm toolchain and the site's npm libraries; models are the
# operator's (fetch-model.py ID into the relay's --models-dir).
TABNODE_NO_MODELS=1 scripts/setup.sh
scripts/build.sh --wasm
RELEASE_TARGET="${TABNODE_RELEASE_TARGET:-$TABNODE_CACHE/target-release}"
echo "== cargo build --profile dist (tabnode-relay, tabnode-node) into $RELEASE_TARGET"
CARGO_TARGET_DIR="$RELEASE_TARGET" cargo build --profile dist --locked -p tabnode-relay -p tabnode-node --bins

echo "== installing into $DEST"
install -d "$DEST/bin" "$DEST/share/tabnode"
install -s -m 0755 "$RELEASE_TARGET/dist/tabnode-relay" "$RELEASE_TARGET/dist/tabnode-node" "$DEST/bin/"
site="$DEST/share/tabnode"
rm -rf "$site/www" "$site/pkg" "$site/worker"
cp -R www pkg worker "$site/"
echo "installed: $DEST/bin/tabnode-relay (site: $site)"
echo "try: $DEST/bin/tabnode-relay --print-config"
