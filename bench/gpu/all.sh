#!/usr/bin/env bash
# Every GPU measurement as one call on a GPU machine (about 8 minutes). Each
# part has its own time limit, so one that hangs cannot spend the rest:
#   1. the coordinator scale benchmark with cores to spare;
#   2. bench/gpu/ddp.sh: NCCL all-reduce exactness, training through the
#      coordinator on every GPU, PyTorch on the same job;
#   3. bench/gpu/perf.sh: model-only and end-to-end tagging against PyTorch.
# First `atelier doctor`: libtorch, NCCL, nvJPEG, and nvJPEG's decode checked
# against libjpeg and timed.
#
# Prepare here (release binaries, stripped and gzipped; .gpu/ is git-ignored
# locally via .git/info/exclude, and travels with `carry`):
#   bench/gpu/pack.sh
# then on the device, carrying .gpu:
#   bash bench/gpu/all.sh
# The whole log is also written to $OUT/gpu.log when $OUT is set.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bins=/tmp/atelier-gpu-bin
rm -rf "$bins"; mkdir -p "$bins"
for name in atelier atelier-coordinator forward allreduce scale; do
  gunzip -c ".gpu/$name.gz" > "$bins/$name" && chmod +x "$bins/$name"
done
log="${OUT:-/tmp}/gpu.log"
exec > >(tee "$log") 2>&1

# Runs one part under a time limit, then kills whatever it left running.
part() {
  local limit=$1; shift
  echo "=== $* (limit ${limit}s) $(date -u +%T)"
  timeout -k 5 "$limit" "$@"
  local code=$?
  pkill -f "$bins/" 2>/dev/null
  sleep 1
  echo "=== exit $code after: $*"
}

# What the machine offers, and nvJPEG checked against libjpeg and timed.
torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
part 60 env LD_LIBRARY_PATH="$torch_lib" "$bins/atelier" doctor
part 120 env BIN="$bins/atelier" COORDINATOR="$bins/atelier-coordinator" SCALE="$bins/scale" TAG=0 bash bench/gpu/cluster.sh
part 200 env BIN="$bins/atelier" ALLREDUCE="$bins/allreduce" bash bench/gpu/ddp.sh
part 220 env BIN="$bins/atelier" FORWARD="$bins/forward" bash bench/gpu/perf.sh
echo "=== done $(date -u +%T)"
