#!/usr/bin/env bash
# fl-server: the federation's NVFlare server in the foreground, on the server kit mounted at $FEDTUNE_KIT
# (a volume in compose, a Secret copied into an emptyDir in k8s). Job storage stays inside the kit folder.
set -euo pipefail
kit=${FEDTUNE_KIT:-/kit}
if [ ! -f "$kit/startup/fed_server.json" ]; then
  echo "fl-server: no server startup kit at $kit (mount the server's kit there; see docs/deploy.md)" >&2
  exit 2
fi
exec fedtune server --kit "$kit" "$@"
