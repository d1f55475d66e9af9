#!/usr/bin/env bash
# Inference layouts, measured to choose the defaults: `atelier tag` with the
# plain f32 layout against --channels-last, --bf16 and both.
#   agreement  a pool ResNet-18 trained 5 epochs at 64 px (the training
#              defaults benchmark's model) tags 500 held-out synthetic items;
#              each layout's top-1 per attribute is compared with f32's.
#   speed      a ResNet-50 pool model at 224 px tags ITEMS items (384x512
#              JPEGs) per layout, alternating, ROUNDS times; items/s is over
#              the whole process's wall time, the median is reported.
#
#   [ITEMS=256] [ROUNDS=3] bench/tagging/layouts.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh
items="${ITEMS:-256}"
rounds="${ROUNDS:-3}"
work="$ATELIER_CACHE/bench/tagging-layouts"
trained="$ATELIER_CACHE/bench/training-defaults"
atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
mkdir -p "$work"
if [ ! -f "$trained/ckpt-defaults-0/manifest.json" ]; then
  SEEDS=0 bench/training/defaults.sh >/dev/null
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
layouts=("f32" "channels-last" "bf16" "bf16+channels-last")
flags_of() {
  case "$1" in
    f32) echo "--channels-last false --bf16 false" ;;
    channels-last) echo "--channels-last true --bf16 false" ;;
    bf16) echo "--channels-last false --bf16 true" ;;
    bf16+channels-last) echo "--channels-last true --bf16 true" ;;
  esac
}

echo "== agreement with f32 (ResNet-18, 64 px, 500 held-out items)"
for layout in "${layouts[@]}"; do
  # shellcheck disable=SC2046
  RUST_LOG=warn "$atelier" tag --checkpoint "$trained/ckpt-defaults-0" --catalog "$trained/held-out" \
    --out "$work/agree-$layout" --overwrite $(flags_of "$layout") >/dev/null
done
python3 - "$work" <<'PY'
import sys, pyarrow.parquet as pq
work = sys.argv[1]
def load(layout):
    t = pq.read_table(f"{work}/agree-{layout}", columns=["item_id", "color", "brand", "category"])
    return {r["item_id"]: r for r in t.to_pylist()}
base = load("f32")
for layout in ["channels-last", "bf16", "bf16+channels-last"]:
    other = load(layout)
    parts = []
    for attribute in ["color", "brand", "category"]:
        same = sum(base[i][attribute] == other[i][attribute] for i in base)
        parts.append(f"{attribute} {same}/{len(base)}")
    print(f"{layout}: " + ", ".join(parts))
PY

echo "== speed (ResNet-50, 224 px, $items items)"
if [ ! -f "$work/catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --seed 2 --out "$work/catalog" --overwrite >/dev/null
fi
if [ ! -f "$work/resnet50/manifest.json" ]; then
  RUST_LOG=warn "$atelier" train --arch resnet50 --image-size 224 --batch-size 8 --max-steps 2 \
    --catalog "$work/catalog" --checkpoint "$work/resnet50" >/dev/null
fi
declare -A rates
for round in $(seq "$rounds"); do
  for layout in "${layouts[@]}"; do
    start=$(date +%s.%N)
    # shellcheck disable=SC2046
    RUST_LOG=warn "$atelier" tag --checkpoint "$work/resnet50" --catalog "$work/catalog" \
      --out "$work/speed-$layout" --overwrite $(flags_of "$layout") >/dev/null
    rate=$(python3 -c "import sys; print(f'{$items / ($(date +%s.%N) - $start):.1f}')")
    rates[$layout]="${rates[$layout]:-} $rate"
    echo "round $round $layout: $rate items/s"
  done
done
for layout in "${layouts[@]}"; do
  median=$(echo "${rates[$layout]}" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "median $layout: $median items/s"
done
