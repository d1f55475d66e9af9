#!/usr/bin/env bash
# Everything a session lent the GPU machine should run, as one call (about 8
# minutes; the lease is 15 minutes including the machine's start). Each part
# has its own time limit, so one that hangs cannot spend the rest:
#   1. the coordinator scale benchmark with cores to spare (issue 4);
#   2. bench/gpu_ddp.sh: NCCL all-reduce exactness, training through the
#      coordinator on every GPU, PyTorch on the same job (issue 5);
#   3. bench/gpu_perf.sh: model-only and end-to-end tagging against PyTorch
#      (issue 6).
# First `atelier doctor`: libtorch, NCCL, nvJPEG, and nvJPEG's decode checked
# against libjpeg and timed.
#
# Prepare here (release binaries, stripped and gzipped; .gpu/ is git-ignored
# locally via .git/info/exclude, and travels with `carry`):
#   bench/gpu_pack.sh
# then on the device, carrying .gpu:
#   bash bench/gpu_session.sh
# The whole log is also written to $OUT/gpu_session.log when $OUT is set.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bins=/tmp/atelier-gpu-bin
rm -rf "$bins"; mkdir -p "$bins"
for name in atelier atelier-coordinator forward allreduce scale; do
  gunzip -c ".gpu/$name.gz" > "$bins/$name" && chmod +x "$bins/$name"
done
log="${OUT:-/tmp}/gpu_session.log"
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
part 120 env BIN="$bins/atelier" COORDINATOR="$bins/atelier-coordinator" SCALE="$bins/scale" TAG=0 bash bench/gpu_cluster.sh
part 200 env BIN="$bins/atelier" ALLREDUCE="$bins/allreduce" bash bench/gpu_ddp.sh
part 220 env BIN="$bins/atelier" FORWARD="$bins/forward" bash bench/gpu_perf.sh
echo "=== done $(date -u +%T)"
