#!/usr/bin/env bash
# Data-parallel training on CPU: an atelier train gang of WORLD ranks (a
# coordinator and WORLD workers on loopback, the CPU ring) against the
# PyTorch DDP script (bench/training/train_peer.py --world-size, gloo), the same model,
# per-rank batch, image size, epochs and catalogue, alternating, ROUNDS times.
# Compares wall time of the whole run (start to last epoch's validation) as
# training images per second per rank.
#
#   bench/collective/train_ddp.sh [WORLD] [ITEMS] [EPOCHS] [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
world="${1:-2}"
items="${2:-2000}"
epochs="${3:-2}"
rounds="${4:-2}"
arch=resnet18
size=64
batch=32
# Compute threads per rank, the same for both: the cores split between ranks
# (more oversubscribes the cores and spin-waiting OpenMP threads slow both).
threads="${TORCH_THREADS:-$(( $(nproc) / world > 0 ? $(nproc) / world : 1 ))}"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
work="$(mktemp -d)"
catalog="$ATELIER_CACHE/bench/ddp-catalog-$items"
if [ ! -f "$catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --out "$catalog" --size 384x512 --overwrite >/dev/null
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)')"
echo "workload: pool $arch, ${size} px, batch $batch per rank, $world ranks, $epochs epochs, $items synthetic 384x512 JPEGs (10% validation), $threads compute thread(s) and 1 decode worker per rank"

export RUST_LOG=warn
"$atelier" coordinator --listen 127.0.0.1:0 --state "$work/coordinator.db" > "$work/coordinator.log" 2>&1 &
coordinator=$!
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/coordinator.log" && break; sleep 0.1; done
address="$(sed -n 's/^coordinator listening on //p' "$work/coordinator.log")"
for rank in $(seq "$world"); do
  "$atelier" worker --coordinator "$address" --threads 1 --compute-threads "$threads" > "$work/worker-$rank.log" 2>&1 &
done
train_items=$(python - "$catalog" <<'PY'
import sys, pyarrow.parquet as pq
def fnv(t):
    h = 0xCBF29CE484222325
    for b in t.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h
ids = pq.read_table(sys.argv[1], columns=["item_id"]).column(0).to_pylist()
print(sum(1 for i in ids if fnv(i) % 10000 >= 1000))
PY
)
ours=(); peer=()
for round in $(seq "$rounds"); do
  start=$EPOCHREALTIME
  "$atelier" submit train --coordinator "$address" --world-size "$world" --model-type pool --arch "$arch" \
    --image-size "$size" --batch-size "$batch" --n-epochs "$epochs" --lr 0.1 --schedule onecycle \
    --catalog "$catalog" --checkpoint "$work/model-$round" --wait > "$work/atelier-$round.txt"
  seconds=$(python -c "print($EPOCHREALTIME - $start)")
  ours+=("$(python -c "print(f'{$train_items * $epochs / $world / $seconds:.2f}')")")
  echo "round $round atelier: ${seconds%.*} s, ${ours[-1]} images/s per rank"
  start=$EPOCHREALTIME
  python bench/training/train_peer.py --catalog "$catalog" --arch "$arch" --image-size "$size" --batch-size "$batch" \
    --epochs "$epochs" --threads "$threads" --workers 1 --world-size "$world" > "$work/peer-$round.txt" 2>&1
  seconds=$(python -c "print($EPOCHREALTIME - $start)")
  peer+=("$(python -c "print(f'{$train_items * $epochs / $world / $seconds:.2f}')")")
  echo "round $round pytorch ddp: ${seconds%.*} s, ${peer[-1]} images/s per rank"
done
grep -h "all-reduce" "$work/atelier-$rounds.txt" || true
python - "${ours[*]}" "${peer[*]}" <<'PY'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
peer = [float(x) for x in sys.argv[2].split()]
a, p = statistics.median(ours), statistics.median(peer)
print(f"median images/s per rank: atelier {a:.2f}, pytorch ddp {p:.2f}, ratio {a / p:.2f}x")
PY
