#!/usr/bin/env bash
# Build the images of compose.yaml (runtime, server, client, inference, prometheus) with BuildKit's cache.
#
#   scripts/build-images.sh            # CUDA build of torch (GPU hosts)
#   scripts/build-images.sh --cpu      # CPU build of torch (adds compose.cpu.yaml)
#   scripts/build-images.sh --cpu inference   # extra arguments go to `docker compose build`
#
# Without an image registry, run `eval "$(scripts/docker-engine.sh start)"` first: it makes the base image
# fedtune/base:bookworm (debootstrap) and exports FEDTUNE_BASE_IMAGE for it (the default elsewhere is
# debian:bookworm-slim; an engine that has fedtune/base:bookworm uses it even without the export). For a CPU
# build, `scripts/docker-engine.sh torch-wheel` copies a local torch CPU wheel (FEDTUNE_TORCH_WHEEL, default
# /opt/wheels/torch-2.13.0+cpu-*.whl) to services/wheels/, from where the build bind-mounts it: no PyTorch
# index needed, and no layer keeps the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(-f compose.yaml)
if [ "${1:-}" = "--cpu" ]; then
  files+=(-f compose.cpu.yaml)
  shift
  bash scripts/docker-engine.sh torch-wheel
fi
if [ -z "${FEDTUNE_BASE_IMAGE:-}" ] && docker image inspect fedtune/base:bookworm >/dev/null 2>&1; then
  export FEDTUNE_BASE_IMAGE=fedtune/base:bookworm
fi
echo "build-images: base image ${FEDTUNE_BASE_IMAGE:-debian:bookworm-slim}" >&2
exec docker compose "${files[@]}" build "$@"
