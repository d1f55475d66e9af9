#!/usr/bin/env bash
# The CPU ring's all-reduce with and without overlapping the backward pass
# (ATELIER_RING_OVERLAP=0 / 1 on the workers), alternating, on the gang of
# bench/collective/train_ddp.sh: a coordinator and 2 workers on loopback, pool ResNet-18,
# 64 px, one compute thread per rank. Prints each run's wall time and the
# ranks' images/s and seconds in all-reduce, then the medians and their ratio.
#
# RATE=2gbit rate-limits loopback for the runs (tc tbf; needs root), which
# stands in for ranks on different machines: loopback is otherwise far faster
# than a network, and all ranks share the cores.
#
#   bench/collective/ring_overlap.sh [ITEMS] [EPOCHS] [ROUNDS] [BATCH]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
items="${1:-2000}"
epochs="${2:-1}"
rounds="${3:-2}"
batch="${4:-32}"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
catalog="$ATELIER_CACHE/bench/ddp-catalog-$items"
if [ ! -f "$catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --out "$catalog" --size 384x512 --overwrite >/dev/null
fi
work="$(mktemp -d)"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [ -n "${RATE:-}" ]; then tc qdisc del dev lo root 2>/dev/null || true; fi
}
trap cleanup EXIT
if [ -n "${RATE:-}" ]; then
  tc qdisc add dev lo root tbf rate "$RATE" burst 512kb latency 50ms
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); loopback limited to: ${RATE:-no limit}"
echo "workload: pool resnet18, 64 px, batch $batch per rank, 2 ranks, $epochs epoch(s), $items synthetic 384x512 JPEGs"
export RUST_LOG=warn
off=(); on=()
for round in $(seq "$rounds"); do
  for overlap in 0 1; do
    run="$work/$round-$overlap"; mkdir -p "$run"
    "$atelier" coordinator --listen 127.0.0.1:0 --state "$run/coordinator.db" > "$run/coordinator.log" 2>&1 &
    for _ in $(seq 100); do grep -q "listening on" "$run/coordinator.log" && break; sleep 0.1; done
    address="$(sed -n 's/^coordinator listening on //p' "$run/coordinator.log")"
    for rank in 1 2; do
      ATELIER_RING_OVERLAP=$overlap "$atelier" worker --coordinator "$address" --threads 1 --compute-threads 1 \
        > "$run/worker-$rank.log" 2>&1 &
    done
    start=$EPOCHREALTIME
    "$atelier" submit train --coordinator "$address" --world-size 2 --model-type pool --arch resnet18 \
      --image-size 64 --batch-size "$batch" --n-epochs "$epochs" --lr 0.1 --schedule onecycle \
      --catalog "$catalog" --checkpoint "$run/model" --wait > "$run/submit.txt"
    seconds=$(python -c "print(f'{$EPOCHREALTIME - $start:.1f}')")
    rate=$(sed -n 's/.*(cpu): \([0-9.]*\) images\/s.*/\1/p' "$run/submit.txt" | head -n 1)
    echo "round $round overlap $overlap: wall $seconds s;$(grep -h 'all-reduce' "$run/submit.txt" | tr -s ' ' | tr '\n' ';')"
    if [ "$overlap" = 1 ]; then on+=("$rate"); else off+=("$rate"); fi
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
  done
done
python - "${off[*]}" "${on[*]}" <<'PY'
import statistics, sys
off = statistics.median(float(x) for x in sys.argv[1].split())
on = statistics.median(float(x) for x in sys.argv[2].split())
print(f"median images/s of rank 0: overlap off {off:.1f}, on {on:.1f}, ratio {on / off:.2f}x")
PY
