#!/usr/bin/env bash
# Idempotent machine setup: system packages, the cached PyTorch venv, and the
# environment cargo needs to build tch against it. Source it (`. scripts/setup.sh`)
# so the exported variables reach the caller.
set -euo pipefail

ATELIER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
. "$ATELIER_ROOT/scripts/versions.env"

ATELIER_CACHE="${ATELIER_CACHE:-$HOME/.cache/atelier}"
ATELIER_VENV="${ATELIER_VENV:-$ATELIER_CACHE/venv-torch-$TORCH_VERSION}"
export ATELIER_CACHE ATELIER_VENV

need_apt=()
command -v nasm >/dev/null 2>&1 || need_apt+=(nasm)
# jemalloc (the processes' malloc) builds with make.
command -v make >/dev/null 2>&1 || need_apt+=(make)
# `atelier plot` draws its text in DejaVu Sans.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp="$ATELIER_VENV/.atelier-ready-$TORCH_VERSION-$TORCHVISION_VERSION"
if [ ! -f "$stamp" ]; then
  echo "setup: creating $ATELIER_VENV with torch==$TORCH_VERSION (first run only, a few minutes)" >&2
  mkdir -p "$ATELIER_CACHE"
  python3 -m venv "$ATELIER_VENV"
  "$ATELIER_VENV/bin/pip" install -q --disable-pip-version-check \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    pyarrow pillow numpy safetensors >&2
  touch "$stamp"
fi
# Test tools added since the venv was first made (manifest validation, the
# readers a downstream team uses on tag outputs).
if ! "$ATELIER_VENV/bin/python" -c 'import kubernetes_validate, duckdb, pandas' 2>/dev/null; then
  echo "setup: installing kubernetes-validate, duckdb and pandas into $ATELIER_VENV" >&2
  "$ATELIER_VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate duckdb pandas >&2
fi

export LIBTORCH_USE_PYTORCH=1
export PATH="$ATELIER_VENV/bin:$PATH"
# A target directory outside the clone survives fresh checkouts (CI) and keeps builds short.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ATELIER_CACHE/target}"

# Builds every binary of the workspace in the release profile. run.sh, test.sh
# and the benchmarks all build this same set: one crate alone (`-p
# atelier-cli`) unifies its dependencies' features differently, and cargo
# would compile much of the tree a second time.
atelier_build() {
  cargo build --release --workspace --bins "$@"
}
