#!/usr/bin/env bash
# The training defaults against the recipe they replaced, as a new user meets
# them: `atelier train` on a 2,000-item synthetic catalogue (pool ResNet-18 at
# 64 px, EPOCHS epochs), then `atelier test --all` on 500 items of another
# seed. "defaults" is `atelier train` with no recipe flags; "previous" is the
# earlier defaults, cosine schedule and weight decay 1e-4, given as flags.
#
#   [EPOCHS=5] [SEEDS="0 1"] bench/training/defaults.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
epochs="${EPOCHS:-5}"
seeds="${SEEDS:-0 1}"
work="$ATELIER_CACHE/bench/training-defaults"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
mkdir -p "$work"
[ -f "$work/train/_SUCCESS" ] || [ -f "$work/train/part-00000.parquet" ] ||
  "$atelier" catalog generate --items 2000 --seed 0 --out "$work/train" --overwrite >/dev/null
[ -f "$work/held-out/part-00000.parquet" ] ||
  "$atelier" catalog generate --items 500 --seed 1 --out "$work/held-out" --overwrite >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for seed in $seeds; do
  for recipe in defaults previous; do
    case "$recipe" in
      defaults) flags=() ;;
      previous) flags=(--schedule cosine --weight-decay 1e-4) ;;
    esac
    ckpt="$work/ckpt-$recipe-$seed"
    rm -rf "$ckpt"
    start=$(date +%s)
    RUST_LOG=warn "$atelier" train --model-type pool --arch resnet18 --image-size 64 \
      --n-epochs "$epochs" --seed "$seed" --catalog "$work/train" --checkpoint "$ckpt" \
      "${flags[@]}" >/dev/null
    seconds=$(($(date +%s) - start))
    accuracies=$(RUST_LOG=warn "$atelier" test --all --checkpoint "$ckpt" --catalog "$work/held-out" \
      --top-classes 0 | awk '/accuracy/ {gsub(":", "", $1); printf "%s %s  ", $1, $3}')
    echo "seed $seed $recipe: $accuracies(train ${seconds}s)"
  done
done
