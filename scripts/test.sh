#!/usr/bin/env bash
# Every test: installs what it needs (see setup.sh), builds, then runs the suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# CI caches the target directory: incremental state would only grow that cache
# (by gigabytes per run) without speeding up a build from a clean clone.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
# The real photos live beside the checkout (../shared). A clone made elsewhere
# from a local checkout finds them beside the checkout it came from.
if [ -z "${ATELIER_FASHION_DATA:-}" ] && [ ! -d ../shared/data/fashion-products ]; then
  origin="$(git remote get-url origin 2>/dev/null || true)"
  if [ -d "$origin/../shared/data/fashion-products" ]; then
    ATELIER_FASHION_DATA="$(cd "$origin/../shared/data/fashion-products" && pwd)"
    export ATELIER_FASHION_DATA
  fi
fi

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The end-to-end tests run the real `atelier` binary, so build it first; the
# release profile is the one run.sh builds, so dependencies compile once.
atelier_build
cargo test --release --workspace --no-fail-fast
