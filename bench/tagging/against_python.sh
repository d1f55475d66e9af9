#!/usr/bin/env bash
# atelier against the Python programs a user would write
# instead, on the same synthetic catalogue (384x512 JPEGs), model (a ResNet-50
# pool model at 224 px), batch size and threads, alternating, ROUNDS times:
#   tagging   atelier tag           | (a) bench/tagging/tag_peer.py  pyarrow + DataLoader/PIL + torchvision
#                                   | (c) bench/tagging/tag_ray.py   the same as Ray Data map_batches
#   model     worker/examples/forward.rs (atelier's model on a pre-decoded batch)
#                                   | bench/tagging/forward_peer.py  eager, channels_last, optimize_for_inference
#   training  atelier train, 1 epoch | (b) bench/training/train_peer.py  the same loop with torch.optim
# Prints the machine, each run's images/s (tagging and training: items over the
# wall time of the whole process) and peak RSS, the medians and the ratios.
#
#   bench/tagging/against_python.sh [ITEMS] [ROUNDS] [BATCH]
# RAY=0 skips Ray Data, TRAIN=0 training, TAG=0 tagging and the model-only runs;
# BF16=1 adds training under bf16 autocast, atelier's and PyTorch's (pays on
# cores with bf16 instructions, as AVX512-BF16 or AMX).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
items="${1:-256}"
rounds="${2:-2}"
batch="${3:-32}"
threads="$(nproc)"
with_ray="${RAY:-1}"
with_train="${TRAIN:-1}"
with_tag="${TAG:-1}"
with_bf16="${BF16:-0}"
atelier_build -q
cargo build --release -q -p atelier-worker --example forward
atelier="$CARGO_TARGET_DIR/release/atelier"
forward="$CARGO_TARGET_DIR/release/examples/forward"
if [ "$with_tag" = 1 ] && [ "$with_ray" = 1 ] && ! python -c 'import ray.data' 2>/dev/null; then
  echo "installing ray[data] into $ATELIER_VENV (peer c)" >&2
  pip install -q --disable-pip-version-check "ray[data]" >&2
fi
data="$ATELIER_CACHE/bench/tag-$items"
if [ ! -f "$data/catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --out "$data/catalog" --size 384x512 --overwrite >/dev/null
fi
if [ ! -f "$data/model/manifest.json" ]; then
  # Weights do not matter for speed; one step makes a real checkpoint.
  RUST_LOG=warn "$atelier" train --model-type pool --arch resnet50 --image-size 224 --batch-size 8 \
    --n-epochs 1 --max-steps 1 --catalog "$data/catalog" --checkpoint "$data/model" >/dev/null
fi
echo "machine: $threads cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)') with $threads threads"
echo "workload: $items synthetic 384x512 JPEGs, ResNet-50 pool model (colour, brand, category heads) at 224 px, batch $batch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run() { # name, command...: prints "images/s peak-RSS-MiB"
  local name="$1"; shift
  local start=$EPOCHREALTIME
  if ! /usr/bin/time -f "%M" -o "$work/$name.rss" "$@" >"$work/$name.log" 2>&1; then
    echo "$name failed:" >&2; tail -20 "$work/$name.log" >&2; exit 1
  fi
  python -c "print(f'{$items / ($EPOCHREALTIME - $start):.2f} {int(open(\"$work/$name.rss\").read().split()[-1]) / 1024:.0f}')"
}
json_rate() { python -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["images_per_s"])'; }
declare -A results
add() { # name, "images/s RSS" (a failed run leaves it empty)
  [ -n "${2// /}" ] || { echo "$1 gave no figure; stopping" >&2; exit 1; }
  results[$1]="${results[$1]:-} $2"; echo "round $round $1: $2"
}
train_flags=(--image-size 224 --batch-size "$batch" --lr 0.1 --crop-scale 0.6)
for round in $(seq "$rounds"); do
  rm -rf "$work/tags" "$work/ray" "$work/ckpt" "$work/ckpt-bf16"
  if [ "$with_tag" = 1 ]; then
    add "tag atelier" "$(run atelier env RUST_LOG=warn "$atelier" tag --catalog "$data/catalog" \
      --checkpoint "$data/model" --out "$work/tags" --batch-size "$batch" --threads "$threads" --channels-last)"
    add "tag pytorch(a)" "$(run peer python bench/tagging/tag_peer.py --catalog "$data/catalog" --checkpoint "$data/model" \
      --out "$work/peer.parquet" --batch-size "$batch" --threads "$threads" --workers 1)"
    if [ "$with_ray" = 1 ]; then
      add "tag ray(c)" "$(run ray python bench/tagging/tag_ray.py --catalog "$data/catalog" --checkpoint "$data/model" \
        --out "$work/ray" --batch-size "$batch" --threads "$threads")"
    fi
    add "model atelier channels_last" "$("$forward" "$data/model" --batch-size "$batch" --iters 4 --channels-last | json_rate) -"
    while read -r line; do
      variant=$(python -c 'import json,sys; print(json.loads(sys.argv[1])["variant"])' "$line")
      rate=$(python -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$line")
      add "model pytorch $variant" "$rate -"
    done < <(python bench/tagging/forward_peer.py --checkpoint "$data/model" --batch-size "$batch" --iters 4 --threads "$threads")
  fi
  if [ "$with_train" = 1 ]; then
    add "train atelier" "$(run train env RUST_LOG=warn "$atelier" train --model-type pool --arch resnet50 \
      "${train_flags[@]}" --n-epochs 1 --schedule onecycle --weight-decay 5e-4 --optimizer sgd \
      --catalog "$data/catalog" --checkpoint "$work/ckpt")"
    add "train pytorch(b)" "$(run train_peer python bench/training/train_peer.py --arch resnet50 "${train_flags[@]}" \
      --epochs 1 --workers 1 --threads "$threads" --catalog "$data/catalog")"
  fi
  if [ "$with_bf16" = 1 ]; then
    add "train atelier bf16" "$(run train env RUST_LOG=warn "$atelier" train --model-type pool --arch resnet50 \
      "${train_flags[@]}" --n-epochs 1 --schedule onecycle --weight-decay 5e-4 --optimizer sgd \
      --catalog "$data/catalog" --checkpoint "$work/ckpt-bf16" --bf16)"
    add "train pytorch(b) bf16" "$(run train_peer python bench/training/train_peer.py --arch resnet50 "${train_flags[@]}" \
      --epochs 1 --workers 1 --threads "$threads" --catalog "$data/catalog" --bf16)"
  fi
done
for name in "${!results[@]}"; do echo "$name:${results[$name]}"; done | sort | python -c '
import statistics, sys
medians = {}
for line in sys.stdin:
    name, values = line.rstrip("\n").split(":", 1)
    v = values.split()
    rates = [float(x) for x in v[0::2]]
    rss = [float(x) for x in v[1::2] if x != "-"]
    medians[name] = (statistics.median(rates), statistics.median(rss) if rss else None)
    memory = f", peak RSS {medians[name][1]:.0f} MiB" if rss else ""
    print(f"median {name}: {medians[name][0]:.2f} images/s{memory}")
def ratio(a, b, what="images/s"):
    if a in medians and b in medians:
        print(f"ratio {a} / {b}: {medians[a][0] / medians[b][0]:.2f}x {what}")
ratio("tag atelier", "tag pytorch(a)")
ratio("tag atelier", "tag ray(c)")
ratio("tag atelier", "model atelier channels_last", "(pipeline hidden: share of model-only)")
ratio("tag atelier", "model pytorch optimize_for_inference", "(stretch: against the tuned PyTorch model)")
ratio("model atelier channels_last", "model pytorch eager")
ratio("train atelier", "train pytorch(b)")
ratio("train atelier bf16", "train pytorch(b) bf16")
ratio("train atelier bf16", "train atelier", "(bf16 autocast against f32)")
a, p = medians.get("tag atelier"), medians.get("tag pytorch(a)")
if a and p:
    print(f"ratio peak RSS tag atelier / tag pytorch(a): {a[1] / p[1]:.2f}x")
'
