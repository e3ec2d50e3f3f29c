#!/usr/bin/env bash
# inference: wait until a bundle exists under $FEDTUNE_BUNDLE_ROOT/<kind> (kinds: $FEDTUNE_SERVE_KINDS), serve
# every bundle present with `fedtune serve`, and whenever a bundle is (re-)exported or a new kind appears,
# reload through POST /v1/admin/reload (the bundle swap drops no request). Settings: FEDTUNE_* (docs/serve.md).
set -euo pipefail
root=${FEDTUNE_BUNDLE_ROOT:-/bundles}
kinds=${FEDTUNE_SERVE_KINDS:-fitness sentiment}
port=${FEDTUNE_PORT:-8000}
every=${FEDTUNE_WATCH_SECONDS:-5}

present() { for k in $kinds; do [ -f "$root/$k/manifest.json" ] && echo "$root/$k"; done; return 0; }
# a bundle is replaced by renaming a new folder into place: a new inode means a new export
signature() { for b in $(present); do stat -c '%n %i %Y' "$b/manifest.json"; done; }

waited=0
until [ -n "$(present)" ]; do
  [ $((waited % 60)) -eq 0 ] && echo "inference: waiting for a bundle in $root ($kinds)"
  sleep 2; waited=$((waited + 2))
done

args=()
for b in $(present); do args+=(--bundle "$b"); done
fedtune serve "${args[@]}" --host "${FEDTUNE_HOST:-0.0.0.0}" --port "$port" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
seen=$(signature)

reload() {   # POST the folders present now; the API key, when the service has one, goes in a header
  BUNDLES="$(present)" PORT="$port" python3 - <<'PY'
import json, os, sys, urllib.request
body = json.dumps({"bundles": os.environ["BUNDLES"].split()}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{os.environ['PORT']}/v1/admin/reload", data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
if os.environ.get("FEDTUNE_API_KEY"):
    req.add_header("X-API-Key", os.environ["FEDTUNE_API_KEY"])
try:
    with urllib.request.urlopen(req, timeout=300) as resp:
        print(f"inference: reloaded {os.environ['BUNDLES'].split()}: {resp.status}", flush=True)
except Exception as exc:
    sys.exit(f"inference: reload failed ({exc}); will retry")
PY
}

while kill -0 "$pid" 2>/dev/null; do
  sleep "$every" & wait $! || true
  now=$(signature)
  if [ "$now" != "$seen" ] && kill -0 "$pid" 2>/dev/null; then
    reload && seen=$now || true
  fi
done
wait "$pid"
