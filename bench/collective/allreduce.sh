#!/usr/bin/env bash
# CPU ring all-reduce against torch.distributed's gloo on loopback, in one
# run: the same sizes, ranks and integer-valued data, alternating atelier and
# gloo for ROUNDS rounds; prints each table and the median bus bandwidth
# ratio per size. Usage: bench/collective/allreduce.sh [WORLDS] [SIZES_MB] [ROUNDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/scripts/setup.sh"
WORLDS="${1:-2 4}"
SIZES="${2:-1,4,16,64,256}"
ROUNDS="${3:-3}"
ITERS=5
cargo build --release -q -p atelier-collective --example allreduce
RING="$CARGO_TARGET_DIR/release/examples/allreduce"
OUT="$(mktemp -d)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)'), one thread per rank"
for world in $WORLDS; do
  for round in $(seq "$ROUNDS"); do
    "$RING" ring "$world" "$SIZES" "$ITERS" | tee "$OUT/atelier-$world-$round.txt"
    python "$ROOT/bench/collective/allreduce_gloo.py" "$world" "$SIZES" "$ITERS" | tee "$OUT/gloo-$world-$round.txt"
  done
done
python - "$OUT" <<'PY'
import glob, statistics, sys, collections
out = sys.argv[1]
bw = collections.defaultdict(list)
for path in glob.glob(f"{out}/*.txt"):
    name = path.rsplit("/", 1)[1][:-4]
    who, world, _ = name.split("-")
    for line in open(path):
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit():
            bw[(int(world), int(parts[0]), who)].append(float(parts[3]))
print()
print(f"{'ranks':>5} {'MB':>5} {'atelier busbw':>14} {'gloo busbw':>11} {'ratio':>6}")
for world, mb in sorted({(w, m) for w, m, _ in bw}):
    a = statistics.median(bw[(world, mb, "atelier")])
    g = statistics.median(bw[(world, mb, "gloo")])
    print(f"{world:>5} {mb:>5} {a:>11.3f} GB/s {g:>6.3f} GB/s {a / g:>5.2f}x")
PY
