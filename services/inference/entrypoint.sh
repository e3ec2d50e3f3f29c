#!/usr/bin/env bash
# inference: wait until a bundle exists under $FEDTUNE_BUNDLE_ROOT/<kind> (kinds: $FEDTUNE_SERVE_KINDS), serve
# every bundle present with `fedtune serve`, and whenever a bundle is (re-)exported or a new kind appears,
# reload through POST /v1/admin/reload with the admin key (the bundle swap drops no request). SIGHUP reloads
# too (forwarded to `fedtune serve`); SIGTERM/SIGINT stop it. Settings: FEDTUNE_* (docs/serve.md).
# <root>/<kind> may be a folder or a symlink to a versioned folder: a new target or a new manifest is a new export.
set -euo pipefail
root=${FEDTUNE_BUNDLE_ROOT:-/bundles}
kinds=${FEDTUNE_SERVE_KINDS:-fitness sentiment}
port=${FEDTUNE_PORT:-8000}
every=${FEDTUNE_WATCH_SECONDS:-5}
export FEDTUNE_BUNDLE_ROOTS=${FEDTUNE_BUNDLE_ROOTS:-$root}    # reloads may load any kind's folder under $root
pid=

on_hup() {
  if [ -n "$pid" ]; then echo "inference: SIGHUP: reloading"; kill -HUP "$pid" 2>/dev/null || true
  else echo "inference: SIGHUP before serving: nothing to reload"; fi
}
on_term() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; else exit 143; fi; }
trap on_hup HUP
trap on_term TERM INT

present() { for k in $kinds; do [ -f "$root/$k/manifest.json" ] && echo "$root/$k"; done; return 0; }
# the folder the link points to (itself for a plain folder) and its manifest's inode and mtime: a bundle is
# replaced by renaming a new folder into place or by pointing the link at a new version
signature() {
  for b in $(present); do echo "$b $(readlink -f "$b") $(stat -L -c '%i %Y' "$b/manifest.json" 2>/dev/null)"; done
}

waited=0
until [ -n "$(present)" ]; do
  [ $((waited % 60)) -eq 0 ] && echo "inference: waiting for a bundle in $root ($kinds)"
  sleep 2 & wait $! || true
  waited=$((waited + 2))
done

args=()
for b in $(present); do args+=(--bundle "$b"); done
fedtune serve "${args[@]}" --host "${FEDTUNE_HOST:-0.0.0.0}" --port "$port" &
pid=$!
seen=$(signature)

reload() {   # POST the folders present now, with the admin key (FEDTUNE_ADMIN_KEY or FEDTUNE_ADMIN_KEY_FILE)
  BUNDLES="$(present)" PORT="$port" python3 - <<'PY'
import json, os, sys, urllib.request
key = os.environ.get("FEDTUNE_ADMIN_KEY", "")
if not key and os.environ.get("FEDTUNE_ADMIN_KEY_FILE"):
    try:
        with open(os.environ["FEDTUNE_ADMIN_KEY_FILE"]) as fh:
            key = fh.read().strip()
    except OSError as exc:
        sys.exit(f"inference: reload: cannot read the admin key ({exc}); will retry")
body = json.dumps({"bundles": os.environ["BUNDLES"].split()}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{os.environ['PORT']}/v1/admin/reload", data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
if key:
    req.add_header("Authorization", f"Bearer {key}")
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
# a trapped signal interrupts `wait`: wait again until the server has really exited, then exit with its status
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
rc=0; wait "$pid" || rc=$?
exit "$rc"
