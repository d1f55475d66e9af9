#!/usr/bin/env bash
# The main job on this machine with local files under ./data (see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

atelier_build
exec "$CARGO_TARGET_DIR/release/atelier" local "$@"
