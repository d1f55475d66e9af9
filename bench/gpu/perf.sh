#!/usr/bin/env bash
# Tagging and the model on a GPU against PyTorch (about 6 minutes; figures
# into BENCHMARKS.md with the date).
#   1. model only: atelier's ResNet-50 pool model on one batch held on the
#      GPU (worker/examples/forward.rs, bf16 + channels_last) against PyTorch
#      eager, channels_last and bf16 autocast + channels_last in the same run;
#   2. end to end: `atelier tag --bf16 --channels-last` with every core
#      decoding, against bench/tagging/tag_peer.py (DataLoader workers on the same
#      cores, pinned memory, bf16 autocast) on the same 384x512 JPEGs, and
#      `atelier tag --gpu-decode` (nvJPEG), whose tags are checked against
#      the CPU-decoded ones;
#   3. training is bench/gpu/check.sh and bench/gpu/ddp.sh.
# Release binaries built elsewhere run against this machine's torch 2.11:
#
#   BIN=.gpu/atelier FORWARD=.gpu/forward bench/gpu/perf.sh
#
# Rehearse it here before spending device time on it (same steps, tiny sizes):
#   DEVICE=cpu ITEMS=64 BATCH=16 ITERS=2 BIN=... FORWARD=... bench/gpu/perf.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin="${BIN:-.gpu/atelier}"
forward="${FORWARD:-.gpu/forward}"
items="${ITEMS:-30000}"
batch="${BATCH:-256}"
device="${DEVICE:-cuda:0}"
iters="${ITERS:-30}"
work=/tmp/atelier-gpu-perf
rm -rf "$work"; mkdir -p "$work"
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export RUST_LOG=warn
cores="$(nproc)"
echo "date: $(date -u +%F); cores: $cores; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo "no GPU"); torch $(python3 -c 'import torch; print(torch.__version__)')"
"$bin" catalog generate --items "$items" --out "$work/catalog" --size 384x512 | tail -n 1
"$bin" train --model-type pool --arch resnet50 --image-size 224 --batch-size 8 --n-epochs 1 --max-steps 1 \
  --device "$device" --catalog "$work/catalog" --checkpoint "$work/model" > /dev/null

echo "== 1. model only, batch $batch"
"$forward" "$work/model" --device "$device" --batch-size "$batch" --iters "$iters" --bf16 --channels-last
"$forward" "$work/model" --device "$device" --batch-size "$batch" --iters "$iters" --channels-last
python3 bench/tagging/forward_peer.py --checkpoint "$work/model" --device "$device" --batch-size "$batch" --iters "$iters"

echo "== 2. end to end, $items items, $cores cores decoding"
# The CPU side alone (read, decode, resize; no model): the ceiling the GPU run
# can reach with this machine's cores.
"$bin" pipeline --catalog "$work/catalog" --batch-size "$batch" --threads "$cores" 2>&1 | tail -n 3 | sed "s/^/pipeline only: /"
# What is left of it when the GPU decodes (read and header checks).
"$bin" pipeline --catalog "$work/catalog" --batch-size "$batch" --threads "$cores" --encoded 2>&1 | head -n 1 | sed "s/^/pipeline encoded: /"
for round in 1 2; do
  start=$EPOCHREALTIME
  "$bin" tag --catalog "$work/catalog" --checkpoint "$work/model" --out "$work/tags-$round" --device "$device" \
    --batch-size "$batch" --threads "$cores" --bf16 --channels-last > "$work/tag.log" 2>&1
  python3 -c "print('round $round atelier tag images/s: %.1f' % ($items / ($EPOCHREALTIME - $start)))"
  # Its own summary: the stage counters say where the time went.
  tail -n 2 "$work/tag.log" | sed "s/^/round $round atelier: /"
  python3 bench/tagging/tag_peer.py --catalog "$work/catalog" --checkpoint "$work/model" --out "$work/peer.parquet" \
    --device "$device" --bf16 --batch-size "$batch" --workers "$(( cores - 2 ))" --threads 2 | sed "s/^/round $round pytorch: /"
  # JPEGs decoded by nvJPEG on the GPU (the CPU only reads Parquet).
  start=$EPOCHREALTIME
  "$bin" tag --catalog "$work/catalog" --checkpoint "$work/model" --out "$work/gpu-tags-$round" --device "$device" \
    --batch-size "$batch" --threads "$cores" --bf16 --channels-last --gpu-decode > "$work/gpu-tag.log" 2>&1
  echo "round $round atelier tag --gpu-decode exit $?"
  python3 -c "print('round $round atelier tag --gpu-decode images/s: %.1f' % ($items / ($EPOCHREALTIME - $start)))"
  tail -n 3 "$work/gpu-tag.log" | sed "s/^/round $round atelier --gpu-decode: /"
done

# The GPU-decoded tags against the CPU-decoded ones: the same predictions for
# nearly every item (the pixels differ by the CPU's reduced-scale decode).
python3 - "$work/tags-1" "$work/gpu-tags-1" <<'PY' 2>&1 | sed "s/^/gpu decode agreement: /"
import sys
import pyarrow.compute as pc
import pyarrow.dataset as ds
cpu, gpu = (ds.dataset(p, format="parquet").to_table().sort_by("item_id") for p in sys.argv[1:3])
errors = lambda t: t.num_rows - pc.count(t["error"], mode="only_null").as_py()
print(f"rows cpu {cpu.num_rows} gpu {gpu.num_rows}, errors cpu {errors(cpu)} gpu {errors(gpu)}")
assert cpu["item_id"].equals(gpu["item_id"]), "different items"
for column in ("color", "brand", "category"):
    if column in cpu.column_names:
        same = pc.sum(pc.equal(cpu[column], gpu[column])).as_py() or 0
        print(f"{column}: {same / cpu.num_rows:.4f} equal")
PY
