#!/usr/bin/env bash
# The one-shot GPU check (figures in BENCHMARKS.md, "On one GPU"). Runs a
# release `atelier` built elsewhere against this machine's own torch 2.11, and
# the plain PyTorch peer (bench/training/train_peer.py) on the same catalogue, same
# recipe, back to back: ResNet-50 pool model, 224 px, SGD one-cycle.
#
#   BIN=path/to/atelier bench/gpu/check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin="${BIN:-.gpu/atelier}"
out="${1:-/tmp/atelier-gpu-out}"
items="${ITEMS:-12000}"
epochs="${EPOCHS:-3}"
size="${SIZE:-224}"
threads="$(( $(nproc) - 2 ))"
work=/tmp/atelier-gpu
rm -rf "$work"; mkdir -p "$work" "$out"
torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib"
export RUST_LOG=warn
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc); torch: $(python3 -c 'import torch; print(torch.__version__)')"

timed() {
  local start=$EPOCHREALTIME
  "$@"
  python3 -c "print('wall seconds: %.1f' % ($EPOCHREALTIME - $start))"
}

echo "== generate $items items"
timed "$bin" catalog generate --items "$items" --out "$work/catalog" --size 384x512 || exit 1

recipe=(--model-type pool --arch resnet50 --image-size "$size" --batch-size 128 --n-epochs "$epochs"
        --lr 0.1 --schedule onecycle --weight-decay 5e-4 --optimizer sgd --device cuda:0 --threads "$threads")
for variant in fp32 bf16; do
  flags=(); peer_flags=()
  if [ "$variant" = bf16 ]; then flags=(--bf16 --channels-last); peer_flags=(--bf16 --channels-last); fi
  echo "== atelier train $variant"
  timed "$bin" train "${recipe[@]}" "${flags[@]}" --catalog "$work/catalog" --checkpoint "$work/ckpt-$variant" 2>&1 \
    | grep -v "^\s*$" | tee "$out/train-$variant.log" | tail -n 6
  echo "== peer train $variant"
  timed python3 bench/training/train_peer.py --catalog "$work/catalog" --arch resnet50 --epochs "$epochs" --image-size "$size" \
    --batch-size 128 --lr 0.1 --device cuda --workers "$threads" --threads 2 "${peer_flags[@]}" 2>&1 | tail -n 6
done

for variant in plain bf16; do
  flags=(); [ "$variant" = bf16 ] && flags=(--bf16 --channels-last)
  echo "== atelier test $variant"
  timed "$bin" test --checkpoint "$work/ckpt-bf16" --catalog "$work/catalog" --device cuda:0 --top-classes 0 \
    --batch-size 256 "${flags[@]}" 2>&1 | grep -E "accuracy|evaluated|images"
  echo "== atelier tag $variant (whole catalogue)"
  timed "$bin" tag --checkpoint "$work/ckpt-bf16" --catalog "$work/catalog" --out "$work/tags-$variant" \
    --device cuda:0 --batch-size 256 "${flags[@]}" 2>&1 | tail -n 3
done
cp "$work/ckpt-bf16/metrics.jsonl" "$out/metrics-bf16.jsonl" 2>/dev/null
cp "$work/ckpt-bf16/test-report.json" "$out/" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader
