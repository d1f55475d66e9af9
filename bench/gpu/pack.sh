#!/usr/bin/env bash
# Builds the release binaries bench/gpu/all.sh runs on the GPU machine,
# stripped and gzipped into .gpu/ (about 36 MB; a device call carries 64 MiB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
cargo build --release -q -p atelier-cli -p atelier-worker --example forward \
  -p atelier-collective --example allreduce -p atelier-coordinator --bins --example scale
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
for path in atelier atelier-coordinator examples/forward examples/allreduce examples/scale; do
  name=$(basename "$path")
  strip -o ".gpu/$name" "$CARGO_TARGET_DIR/release/$path"
  gzip -f9 ".gpu/$name"
done
ls -la .gpu
