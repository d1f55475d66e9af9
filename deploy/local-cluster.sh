#!/usr/bin/env bash
# A coordinator and N workers on this machine, for users without a cluster:
#
#   deploy/local-cluster.sh [N] [DEVICE...]      e.g. deploy/local-cluster.sh 2 cuda:0 cuda:1
#
# Workers take the devices in order (default cpu). State and logs go under
# ATELIER_HOME (default ./atelier-local). Submit from another shell with
# ATELIER_COORDINATOR set to the address printed below; Ctrl-C stops everything
# (workers drain the task in hand first).
set -euo pipefail
n="${1:-2}"; shift || true
devices=("$@")
home="${ATELIER_HOME:-./atelier-local}"
port="${ATELIER_PORT:-7070}"
bin="${ATELIER_BIN:-$(command -v atelier || echo target/release/atelier)}"
mkdir -p "$home"
pids=()
stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM
# The libtorch-free coordinator where it was built or installed beside atelier.
coordinator=("$(dirname "$bin")/atelier-coordinator")
[ -x "${coordinator[0]}" ] || coordinator=("$bin" coordinator)
"${coordinator[@]}" --listen "127.0.0.1:$port" --state "$home/coordinator.db" >"$home/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$home/coordinator.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$home/coordinator.log" || { cat "$home/coordinator.log"; exit 1; }
cores=$(nproc)
for i in $(seq 0 $((n - 1))); do
  device="${devices[$i]:-cpu}"
  share=$(( cores / n > 0 ? cores / n : 1 ))
  "$bin" worker --coordinator "127.0.0.1:$port" --device "$device" --threads "$share" --compute-threads "$share" \
    >"$home/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "coordinator on 127.0.0.1:$port with $n worker(s); logs in $home"
echo "  export ATELIER_COORDINATOR=127.0.0.1:$port"
wait -n "${pids[@]}"
