#!/usr/bin/env bash
# The data-parallel GPU check (figures in BENCHMARKS.md). On a
# machine with N GPUs it:
#   1. checks the NCCL all-reduce (rank r on cuda:r, integer-valued data, exact
#      sums) and reports its bus bandwidth, next to the CPU ring's on the same
#      sizes;
#   2. trains ResNet-50 at 224 px with bf16 autocast and channels-last through
#      a coordinator and N CUDA workers with the NCCL backend (at N = 1 the
#      NCCL path is forced with ATELIER_COLLECTIVE=nccl), and prints images/s
#      per rank and the time spent in all-reduce;
#   3. runs PyTorch on the same model, batch and images (bench/training/train_peer.py)
#      for the ratio;
#   4. trains one epoch in one process with CPU decoding, then with
#      --gpu-decode (nvJPEG, random crops and flips on the GPU), with AdamW,
#      so the fused Adam operator runs on CUDA as well;
#   5. checks that N ranks with batch B through the coordinator and NCCL end
#      with the weights of one process with batch N*B (head-only, f32, no
#      augmentation, 6 steps: tests/tests/train_cluster.rs's recipe), which at
#      N = 1 still checks the bucketing, the averaging and the side stream.
# Release binaries built elsewhere run against this machine's torch 2.11:
#
#   BIN=.gpu/atelier ALLREDUCE=.gpu/allreduce bench/gpu/ddp.sh
#
# Rehearse it here before spending device time on it (one CPU rank, the CPU
# ring instead of NCCL, tiny sizes):
#   DEVICE=cpu ITEMS=96 BATCH=8 BIN=... ALLREDUCE=... bench/gpu/ddp.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin="${BIN:-.gpu/atelier}"
allreduce="${ALLREDUCE:-.gpu/allreduce}"
items="${ITEMS:-6000}"
batch="${BATCH:-128}"
work=/tmp/atelier-gpu-ddp
rm -rf "$work"; mkdir -p "$work"
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
if [ "${DEVICE:-cuda}" = cpu ]; then
  # The CPU rehearsal trains in f32, the one precision every CPU runs fast.
  gpus=1; collective=ring; amp=(); device() { echo cpu; }
else
  gpus="$(python3 -c 'import torch; print(torch.cuda.device_count())')"; collective=nccl; amp=(--bf16)
  device() { echo "cuda:$1"; }
fi
echo "date: $(date -u +%F); gpus: $gpus; cores: $(nproc); $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo "no GPU")"

echo "== 1. $collective all-reduce against exact sums, world $gpus"
"$allreduce" "$collective" "$gpus" 1,16,64,256 5
echo "== CPU ring on the same sizes (2 ranks on loopback)"
"$allreduce" ring 2 1,16,64,256 3

echo "== 2. ResNet-50 224 px bf16 + channels-last, $gpus rank(s) through the coordinator"
export RUST_LOG=warn
"$bin" catalog generate --items "$items" --out "$work/catalog" --size 384x512 | tail -n 1
"$bin" coordinator --listen 127.0.0.1:7071 --state "$work/coordinator.db" > "$work/coordinator.log" 2>&1 &
sleep 1
threads=$(( $(nproc) / gpus - 1 ))
for rank in $(seq 0 $(( gpus - 1 ))); do
  ATELIER_COLLECTIVE="$collective" "$bin" worker --coordinator 127.0.0.1:7071 --device "$(device "$rank")" \
    --threads "$threads" > "$work/worker-$rank.log" 2>&1 &
done
start=$EPOCHREALTIME
"$bin" submit train --coordinator 127.0.0.1:7071 --world-size "$gpus" --model-type pool --arch resnet50 \
  --image-size 224 --batch-size "$batch" --n-epochs 2 --lr 0.1 --schedule onecycle "${amp[@]}" --channels-last \
  --val-fraction 0.05 --catalog "$work/catalog" --checkpoint "$work/model" --wait | tee "$work/submit.txt"
python3 -c "print('wall seconds: %.1f' % ($EPOCHREALTIME - $start))"
grep -h "nccl\|gang\|side stream" "$work"/worker-*.log | head -n 6

echo "== 3. PyTorch on the same model, batch and images (one GPU)"
python3 bench/training/train_peer.py --catalog "$work/catalog" --arch resnet50 --image-size 224 --batch-size "$batch" \
  --epochs 2 --device "$(device 0)" "${amp[@]}" --channels-last --workers "$threads" 2>&1 | tail -n 3

# AdamW here (SGD above) so the fused Adam operator runs on the device too.
echo "== 4. one process, one epoch, AdamW: JPEGs decoded on the cores, then by nvJPEG (--gpu-decode)"
for decode in cpu gpu; do
  flags=(); [ "$decode" = gpu ] && flags=(--gpu-decode)
  start=$EPOCHREALTIME
  "$bin" train --model-type pool --arch resnet50 --image-size 224 --batch-size "$batch" --n-epochs 1 --lr 1e-3 \
    --optimizer adamw --weight-decay 0.01 --schedule onecycle "${amp[@]}" --channels-last --val-fraction 0.05 --device "$(device 0)" --threads "$threads" \
    --catalog "$work/catalog" --checkpoint "$work/model-$decode" "${flags[@]}" 2>&1 | tail -n 3 | sed "s/^/decode $decode: /"
  python3 -c "print('decode $decode wall seconds: %.1f' % ($EPOCHREALTIME - $start))"
done

# After part 4, so a failure here costs the figures nothing; the cluster of
# part 2 is still up.
echo "== 5. $gpus rank(s) through $collective against one process with the global batch"
"$bin" catalog generate --items 240 --out "$work/eq-catalog" --size 64x80 --rows-per-group 40 --seed 5 | tail -n 1
equivalence=(--model-type pool --arch resnet18 --image-size 32 --n-epochs 3 --finetune false --augment false
  --schedule constant --warmup-steps 2 --lr 0.05 --shuffle-window 0 --val-fraction 0.2 --seed 9 --max-steps 6
  --log-every 4 --threads 1 --catalog "$work/eq-catalog")
"$bin" train "${equivalence[@]}" --device "$(device 0)" --batch-size $(( 8 * gpus )) --checkpoint "$work/eq-single" \
  2>&1 | tail -n 1
"$bin" submit train --coordinator 127.0.0.1:7071 --world-size "$gpus" "${equivalence[@]}" --batch-size 8 \
  --checkpoint "$work/eq-gang" --wait | tail -n 2
# cuDNN's TF32 convolutions (libtorch's default) round features to ~1e-3
# relative where the two runs pick different algorithms, hence 1e-4 here
# against the CPU tests' 1e-5.
python3 bench/training/compare_weights.py "$work/eq-single" "$work/eq-gang" --prefix heads. --tolerance 1e-4 | tail -n 1
