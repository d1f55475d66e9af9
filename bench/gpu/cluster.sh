#!/usr/bin/env bash
# The second GPU check (BENCHMARKS.md): the coordinator's scale benchmark on a
# 16-core machine, and a tag job through a coordinator and one CUDA worker.
# Runs release binaries built elsewhere against this machine's torch 2.11:
#
#   BIN=.gpu/atelier SCALE=.gpu/scale bench/gpu/cluster.sh
# SCALE=none skips the scale benchmark, TAG=0 the tag job.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin="${BIN:-.gpu/atelier}"
scale="${SCALE:-.gpu/scale}"
work=/tmp/atelier-gpu-cluster
rm -rf "$work"; mkdir -p "$work"
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
# 1,000 workers hold 1,000 connections, plus the coordinator's side of them.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files: $(ulimit -n)"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

if [ "$scale" != none ]; then
  echo "== coordinator scale benchmark"
  quiet="worker registered\|manifest not written\|job submitted\|job cancelled\|event loop stopped"
  "$scale" "${COORDINATOR:-$bin}" "$work/scale" 2>&1 | grep --line-buffered -v "$quiet"
  # The coordinator with 2 and then 4 cores of its own, the simulated workers on
  # the rest: what a dedicated coordinator machine of that size would dispatch.
  coordinator=$(readlink -f "${COORDINATOR:-$bin}")
  last=$(($(nproc) - 1))
  for cores in 2 4; do
    [ "$last" -ge $((cores + 3)) ] && command -v taskset >/dev/null || continue
    echo "== coordinator scale benchmark, coordinator alone on CPUs 0-$((cores - 1)), workers on $cores-$last"
    # Named as the binary it wraps (the harness tells the two apart by name);
    # exec keeps the pid the harness reads the coordinator's CPU time from.
    mkdir -p "$work/pinned$cores"
    wrapper="$work/pinned$cores/$(basename "$coordinator")"
    printf '#!/bin/sh\nexec taskset -c 0-%d %q "$@"\n' $((cores - 1)) "$coordinator" >"$wrapper"
    chmod +x "$wrapper"
    timeout -k 2 25 taskset -c "$cores-$last" "$scale" "$wrapper" "$work/scale" 2>&1 |
      grep --line-buffered -v "$quiet"
  done
fi

[ "${TAG:-1}" = 0 ] && exit 0
echo "== tag job through a coordinator and one cuda:0 worker"
export RUST_LOG=warn
"$bin" catalog generate --items 12000 --out "$work/catalog" --size 384x512 | tail -n 1
"$bin" train --model-type pool --arch resnet50 --image-size 224 --batch-size 128 --n-epochs 1 --lr 0.1 \
  --schedule onecycle --device cuda:0 --bf16 --channels-last --catalog "$work/catalog" --checkpoint "$work/model" | tail -n 1
"$bin" coordinator --listen 127.0.0.1:7070 --state "$work/coordinator.db" > "$work/coordinator.log" 2>&1 &
sleep 1
"$bin" worker --coordinator 127.0.0.1:7070 --device cuda:0 --threads 14 > "$work/worker.log" 2>&1 &
worker=$!
start=$EPOCHREALTIME
"$bin" submit tag --coordinator 127.0.0.1:7070 --catalog "$work/catalog" --checkpoint "$work/model" \
  --out "$work/tags" --batch-size 256 --bf16 --channels-last --wait
python3 -c "print('wall seconds: %.1f' % ($EPOCHREALTIME - $start))"
kill -TERM "$worker"; wait "$worker"
tail -n 2 "$work/worker.log"
head -c 400 "$work/tags/_manifest.json"; echo
