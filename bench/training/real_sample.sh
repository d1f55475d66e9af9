#!/usr/bin/env bash
# Training on the real Fashion Product Images sample: atelier against a
# plain PyTorch script on the same split, the same model (ResNet-18 from random
# init, one head per attribute), the same recipe (SGD momentum 0.9, one-cycle,
# lr 0.1, weight decay 5e-4, 64 px, batch 64, random resized crop of at least
# CROP_SCALE of the area (default 0.6, atelier's default) + flip), the
# same machine, back to back, within the same time budget: the peer trains
# PEER_EPOCHS, atelier as many epochs as fit in the peer's wall time
# (ATELIER_EPOCHS, 9 against 8 on a 2-core machine; the script prints both
# wall times so the budget can be checked).
#
# FRAMING (center-crop or squash, atelier's --framing) applies to both.
#
#   [SEED=0] [CROP_SCALE=0.6] [FRAMING=center-crop] bench/training/real_sample.sh [PEER_EPOCHS] [ATELIER_EPOCHS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh

peer_epochs="${1:-8}"
atelier_epochs="${2:-9}"
seed="${SEED:-0}"
crop="${CROP_SCALE:-0.6}"
framing="${FRAMING:-center-crop}"
data="${ATELIER_FASHION_DATA:-../shared/data/fashion-products}"
work="$ATELIER_CACHE/bench/real-sample"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
if [ ! -f "$work/catalog/part-00000.parquet" ]; then
  "$atelier" catalog import --images "$data/images" --labels "$data/styles.csv" --out "$work/catalog" --overwrite
fi
rm -rf "$work/ckpt"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== atelier"
start=$(date +%s)
RUST_LOG=warn "$atelier" train --model-type pool --arch resnet18 --image-size 64 --batch-size 64 \
  --catalog "$work/catalog" --checkpoint "$work/ckpt" --n-epochs "$atelier_epochs" --lr 0.1 \
  --schedule onecycle --weight-decay 5e-4 --optimizer sgd --seed "$seed" --crop-scale "$crop" --framing "$framing"
echo "atelier wall seconds: $(( $(date +%s) - start ))"
"$atelier" test --checkpoint "$work/ckpt" --catalog "$work/catalog" --top-classes 0 | grep -E "accuracy|evaluated"
echo "== PyTorch peer"
start=$(date +%s)
python bench/training/train_peer.py --catalog "$work/catalog" --epochs "$peer_epochs" --image-size 64 --batch-size 64 --lr 0.1 \
  --seed "$seed" --crop-scale "$crop" --framing "$framing"
echo "peer wall seconds: $(( $(date +%s) - start ))"
