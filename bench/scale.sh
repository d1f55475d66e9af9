#!/usr/bin/env bash
# Issue-4 scale benchmark: the coordinator with a 10^6-item catalogue (250
# Parquet files) and 1,000 simulated workers over gRPC on this machine.
# Figures in BENCHMARKS.md.
#
#   bench/scale.sh                        # the libtorch-free atelier-coordinator
#   COORDINATOR=atelier bench/scale.sh    # `atelier coordinator`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
cargo build --release -q -p atelier-coordinator --bins --example scale
# 1,000 workers hold 1,000 connections, plus the coordinator's side of them.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$CARGO_TARGET_DIR/release/examples/scale" "$CARGO_TARGET_DIR/release/${COORDINATOR:-atelier-coordinator}" "$ATELIER_CACHE/bench/scale"
