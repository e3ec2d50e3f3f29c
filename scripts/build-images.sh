#!/usr/bin/env bash
# Build the images of compose.yaml (runtime, server, client, inference, prometheus) with BuildKit's cache.
#
#   scripts/build-images.sh            # CUDA build of torch (GPU hosts)
#   scripts/build-images.sh --cpu      # CPU build of torch (adds compose.cpu.yaml)
#   scripts/build-images.sh --cpu inference   # extra arguments go to `docker compose build`
#
# Without an image registry, run `eval "$(scripts/docker-engine.sh start)"` first: it makes the base image
# fedtune/base:bookworm (debootstrap), which is used whenever the engine has it (FEDTUNE_BASE_IMAGE
# overrides; the default elsewhere is debian:bookworm-slim). For a CPU build, a local torch CPU wheel
# (FEDTUNE_TORCH_WHEEL, default /opt/wheels/torch-2.13.0+cpu-*.whl) is copied to services/wheels/, from
# where the build bind-mounts it: no PyTorch index needed, and no layer keeps the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(-f compose.yaml)
if [ "${1:-}" = "--cpu" ]; then
  files+=(-f compose.cpu.yaml)
  shift
  wheel=$(ls ${FEDTUNE_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-*.whl} 2>/dev/null | head -n1 || true)
  if [ -n "$wheel" ] && [ ! -f "services/wheels/$(basename "$wheel")" ]; then
    echo "build-images: using $wheel" >&2
    ln "$wheel" services/wheels/ 2>/dev/null || cp "$wheel" services/wheels/
  fi
fi
if [ -z "${FEDTUNE_BASE_IMAGE:-}" ] && docker image inspect fedtune/base:bookworm >/dev/null 2>&1; then
  export FEDTUNE_BASE_IMAGE=fedtune/base:bookworm
fi
echo "build-images: base image ${FEDTUNE_BASE_IMAGE:-debian:bookworm-slim}" >&2
exec docker compose "${files[@]}" build "$@"
