#!/usr/bin/env bash
# Issue 6's harness, tagging part: atelier against the PyTorch script a user
# would write (bench/tag_peer.py: pyarrow + DataLoader/PIL + torchvision
# ResNet-50), the same catalogue (synthetic 384x512 JPEGs), checkpoint (a
# ResNet-50 pool model at 224 px), batch size and threads, alternating, ROUNDS
# times. Prints the machine, each run's images/s (wall time of the whole
# process) and peak RSS, the medians and the ratios.
#
#   bench/run.sh [ITEMS] [ROUNDS] [BATCH]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
items="${1:-256}"
rounds="${2:-2}"
batch="${3:-32}"
threads="$(nproc)"
cargo build --release -q -p atelier-cli
atelier="$CARGO_TARGET_DIR/release/atelier"
data="$ATELIER_CACHE/bench/tag-$items"
if [ ! -f "$data/catalog/part-00000.parquet" ]; then
  "$atelier" catalog generate --items "$items" --out "$data/catalog" --size 384x512 --overwrite >/dev/null
fi
if [ ! -f "$data/model/manifest.json" ]; then
  # Weights do not matter for speed; one step makes a real checkpoint.
  RUST_LOG=warn "$atelier" train --model-type pool --arch resnet50 --image-size 224 --batch-size 8 \
    --n-epochs 1 --max-steps 1 --catalog "$data/catalog" --checkpoint "$data/model" >/dev/null
fi
echo "machine: $threads cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)') with $threads threads"
echo "workload: tag $items synthetic 384x512 JPEGs with a ResNet-50 pool model at 224 px, batch $batch"
work="$(mktemp -d)"
run() { # name, command...: prints "images/s peak-RSS-MiB"
  local name="$1"; shift
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$work/$name.rss" "$@" >"$work/$name.log" 2>&1
  python -c "print(f'{$items / ($EPOCHREALTIME - $start):.2f} {int(open(\"$work/$name.rss\").read().split()[-1]) / 1024:.0f}')"
}
ours=(); peer=()
for round in $(seq "$rounds"); do
  rm -rf "$work/tags"
  ours+=("$(run atelier env RUST_LOG=warn "$atelier" tag --catalog "$data/catalog" --checkpoint "$data/model" \
    --out "$work/tags" --batch-size "$batch" --threads "$threads" --channels-last)")
  echo "round $round atelier: ${ours[-1]} (images/s, peak RSS MiB)"
  peer+=("$(run peer python bench/tag_peer.py --catalog "$data/catalog" --checkpoint "$data/model" \
    --out "$work/peer.parquet" --batch-size "$batch" --threads "$threads" --workers 1)")
  echo "round $round pytorch: ${peer[-1]} (images/s, peak RSS MiB)"
done
python - "${ours[*]}" "${peer[*]}" <<'PY'
import statistics, sys
def cols(s):
    v = [float(x) for x in s.split()]
    return statistics.median(v[0::2]), statistics.median(v[1::2])
(a_rate, a_rss), (p_rate, p_rss) = cols(sys.argv[1]), cols(sys.argv[2])
print(f"median images/s: atelier {a_rate:.2f}, pytorch {p_rate:.2f}, ratio {a_rate / p_rate:.2f}x")
print(f"median peak RSS: atelier {a_rss:.0f} MiB, pytorch {p_rss:.0f} MiB, ratio {a_rss / p_rss:.2f}x")
PY
