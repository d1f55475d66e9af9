#!/usr/bin/env bash
# How photos are fitted to the square, on the real Fashion Product Images
# sample: atelier trained and evaluated with --framing center-crop and with
# --framing squash, seed by seed, back to back, at the recipe and budget of
# real_sample.sh (ResNet-18 from random init, pool heads, 64 px, 9 epochs).
# Prints each run's validation accuracies.
#
#   bench/training/framing.sh [SEEDS...]        (default: 0 1 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh

[ $# -gt 0 ] || set -- 0 1 2
epochs="${EPOCHS:-9}"
data="${ATELIER_FASHION_DATA:-../shared/data/fashion-products}"
work="$ATELIER_CACHE/bench/real-sample"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
if [ ! -f "$work/catalog/part-00000.parquet" ]; then
  "$atelier" catalog import --images "$data/images" --labels "$data/styles.csv" --out "$work/catalog" --overwrite
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for seed in "$@"; do
  for framing in center-crop squash; do
    ckpt="$work/framing-$framing-$seed"
    rm -rf "$ckpt"
    start=$(date +%s)
    RUST_LOG=warn "$atelier" train --model-type pool --arch resnet18 --image-size 64 --batch-size 64 \
      --catalog "$work/catalog" --checkpoint "$ckpt" --n-epochs "$epochs" --lr 0.1 \
      --schedule onecycle --weight-decay 5e-4 --optimizer sgd --seed "$seed" --framing "$framing" >/dev/null
    wall=$(( $(date +%s) - start ))
    "$atelier" test --checkpoint "$ckpt" --catalog "$work/catalog" --top-classes 0 \
      | grep -E "accuracy" | sed "s/^/seed $seed $framing ${wall}s /"
  done
done
