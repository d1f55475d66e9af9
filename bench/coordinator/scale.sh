#!/usr/bin/env bash
# The coordinator at scale: the coordinator with a 10^6-item catalogue (250
# Parquet files) and 1,000 simulated workers over gRPC on this machine.
# Figures in BENCHMARKS.md.
#
#   bench/coordinator/scale.sh                        # the libtorch-free atelier-coordinator
#   COORDINATOR=atelier bench/coordinator/scale.sh    # `atelier coordinator`
#   PIN=1 bench/coordinator/scale.sh                  # the coordinator alone on CPU 0, the
#                                         # simulated workers on the other CPUs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
cargo build --release -q -p atelier-coordinator --bins --example scale
# 1,000 workers hold 1,000 connections, plus the coordinator's side of them.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
coordinator="$CARGO_TARGET_DIR/release/${COORDINATOR:-atelier-coordinator}"
harness=("$CARGO_TARGET_DIR/release/examples/scale")
if [ "${PIN:-0}" = 1 ]; then
  # exec keeps the coordinator's pid, which the harness reads its CPU time from.
  # Named as the binary it wraps: the harness tells the two apart by name.
  mkdir -p "$ATELIER_CACHE/bench/pinned"
  wrapper="$ATELIER_CACHE/bench/pinned/$(basename "$coordinator")"
  printf '#!/bin/sh\nexec taskset -c 0 %q "$@"\n' "$coordinator" >"$wrapper"
  chmod +x "$wrapper"
  coordinator="$wrapper"
  harness=(taskset -c "1-$(($(nproc) - 1))" "${harness[@]}")
  echo "pinned: coordinator on CPU 0, simulated workers on CPUs 1-$(($(nproc) - 1))"
fi
"${harness[@]}" "$coordinator" "$ATELIER_CACHE/bench/scale"
