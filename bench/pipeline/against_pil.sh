#!/usr/bin/env bash
# Image-pipeline benchmark: decode + resize + normalise throughput per core,
# atelier against PIL + torchvision on the same synthetic 384x512 JPEGs, in
# one run, alternating, repeated. Prints the medians and the ratio.
#
#   bench/pipeline/against_pil.sh [ITEMS] [REPEATS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/setup.sh

items="${1:-1000}"
repeats="${2:-3}"
size=224
catalog="$ATELIER_CACHE/bench/pipeline-catalog-$items"

atelier_build -q
atelier="$CARGO_TARGET_DIR/release/atelier"
if [ ! -f "$catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --out "$catalog" --size 384x512 --overwrite >/dev/null
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "torch: $(python -c 'import torch; print(torch.__version__)'), PIL: $(python -c 'import PIL; print(PIL.__version__)')"
echo "workload: $items synthetic 384x512 JPEGs -> ${size}x${size} float tensors, batch 32, 1 decode thread each"

# Throughput per CPU-second (user + system time of the whole process) is the
# per-core figure: atelier's reader and consumer threads count against it too.
cpu_rate() { awk -v n="$items" -v u="$1" -v s="$2" 'BEGIN {printf "%.1f", n / (u + s)}'; }
ours=()
peer=()
for run in $(seq "$repeats"); do
  /usr/bin/time -f "%U %S" -o /tmp/atelier-bench-time "$atelier" pipeline --catalog "$catalog" \
      --image-size "$size" --threads 1 --prefetch 2 > /tmp/atelier-bench-out
  a=$(cpu_rate $(cat /tmp/atelier-bench-time))
  wall_a=$(sed -n 's/.* \([0-9.]*\) images\/s on.*/\1/p' /tmp/atelier-bench-out)
  /usr/bin/time -f "%U %S" -o /tmp/atelier-bench-time python bench/pipeline/peer.py --catalog "$catalog" \
      --image-size "$size" --threads 1 > /tmp/atelier-bench-out
  p=$(cpu_rate $(cat /tmp/atelier-bench-time))
  wall_p=$(sed -n 's/images_per_s=\([0-9.]*\).*/\1/p' /tmp/atelier-bench-out)
  echo "run $run: atelier $a images per CPU-second ($wall_a/s wall), PIL+torchvision $p ($wall_p/s wall)"
  ours+=("$a")
  peer+=("$p")
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_ours=$(median "${ours[@]}")
m_peer=$(median "${peer[@]}")
echo "median: atelier $m_ours images per CPU-second, PIL+torchvision $m_peer images per CPU-second"
echo "ratio: $(awk -v a="$m_ours" -v b="$m_peer" 'BEGIN {printf "%.2f", a / b}')x"
