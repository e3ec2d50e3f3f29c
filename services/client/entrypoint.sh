#!/usr/bin/env bash
# site-K: this site's NVFlare client in the foreground. The site name comes from the kit (FEDTUNE_SITE, when
# set, must match it); a kit the server's root CA did not sign fails after FEDTUNE_STARTUP_DEADLINE seconds.
set -euo pipefail
kit=${FEDTUNE_KIT:-/kit}
data=${FEDTUNE_DATA:-/data}
if [ ! -f "$kit/startup/fed_client.json" ]; then
  echo "site: no client startup kit at $kit (mount this site's kit there; see docs/deploy.md)" >&2
  exit 2
fi
exec fedtune client --kit "$kit" --data "$data" ${FEDTUNE_SITE:+--site "$FEDTUNE_SITE"} \
  --startup-deadline "${FEDTUNE_STARTUP_DEADLINE:-300}" "$@"
