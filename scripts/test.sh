#!/usr/bin/env bash
# Every test: installs what it needs (see setup.sh), builds, then runs the suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# CI caches the target directory: incremental state would only grow that cache
# (by gigabytes per run) without speeding up a build from a clean clone.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

cargo fmt --all -- --check
# The end-to-end tests run the real `atelier` binary, so build it first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
