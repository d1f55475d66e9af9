#!/usr/bin/env bash
# `atelier similar` (an exact scan of the tag output's Parquet) against
# NumPy (pyarrow read, then one matrix-vector product) on N random unit
# vectors of D floats, alternating ROUNDS times. Prints each side's median
# seconds end to end, the ratio, and whether both found the same top 10.
#
# bash bench/similar/against_numpy.sh [N=1000000] [D=512] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/setup.sh
atelier_build >&2
atelier="$CARGO_TARGET_DIR/release/atelier"
N=${1:-1000000}
D=${2:-512}
ROUNDS=${3:-3}
DATA="$HOME/.cache/atelier/bench/similar/$N-$D"
if [ ! -d "$DATA" ]; then
  "$ATELIER_VENV/bin/python" bench/similar/make_vectors.py "$DATA" "$N" "$D"
fi
ITEM=item-00000123
ours=() theirs=()
for _ in $(seq "$ROUNDS"); do
  start=$(date +%s.%N)
  "$atelier" similar --tags "$DATA" --item "$ITEM" -k 10 > /tmp/atelier-similar.txt
  ours+=("$(echo "$(date +%s.%N) - $start" | bc)")
  peer=$("$ATELIER_VENV/bin/python" bench/similar/peer.py "$DATA" "$ITEM" 10)
  theirs+=("$(echo "$peer" | "$ATELIER_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ours_ids=$(tail -n +2 /tmp/atelier-similar.txt | awk '{print $3}' | paste -sd,)
their_ids=$(echo "$peer" | "$ATELIER_VENV/bin/python" -c 'import json,sys; print(",".join(json.load(sys.stdin)["top"]))')
o=$(median "${ours[@]}") t=$(median "${theirs[@]}")
echo "similar top-10 over $N x $D: atelier ${o}s, numpy ${t}s (pyarrow read + matmul; $(echo "$peer" | "$ATELIER_VENV/bin/python" -c 'import json,sys; print(round(json.load(sys.stdin)["product_seconds"],3))')s of it the product), ratio $(echo "scale=2; $t / $o" | bc)x"
[ "$ours_ids" = "$their_ids" ] && echo "same top 10: yes" || echo "same top 10: NO ($ours_ids vs $their_ids)"
