#!/usr/bin/env bash
# One-shot (compose service `provision`):
#  1. real NVFlare provisioning (root CA + a startup kit per participant) into $FEDTUNE_PKI, reused on later
#     runs (`fedtune provision` keeps existing kits);
#  2. each kit copied into its participant's own volume, mounted at $FEDTUNE_KITS/<name> (server, admin,
#     site-1 ... site-N; a participant without a mounted folder is skipped);
#  3. unless already there, demo site data (fitness + sentiment: synthetic, or real from FEDTUNE_FLAB_SOURCE /
#     FEDTUNE_FPB_SOURCE) into each site's data volume mounted at $FEDTUNE_DATA_ROOT/site-K.
# The root CA key stays in $FEDTUNE_PKI: no other container mounts it. FEDTUNE_PROVISION=0 skips 1 and 2
# (in k8s a site's init container prepares its own demo data this way; its kit comes from a Secret).
set -euo pipefail
pki=${FEDTUNE_PKI:-/pki}
kits=${FEDTUNE_KITS:-/kits}
data=${FEDTUNE_DATA_ROOT:-/data}
sites=${FEDTUNE_SITES:-3}
server=${FEDTUNE_SERVER_NAME:-fl-server}
profile=${FEDTUNE_PROFILE:-standard}
case "$profile" in
  tiny) samples=${FEDTUNE_SAMPLES:-150} ;;
  standard) samples=${FEDTUNE_SAMPLES:-600} ;;
  *) echo "provision: unknown FEDTUNE_PROFILE '$profile' (tiny | standard)" >&2; exit 2 ;;
esac

copy_kit() {   # copy_kit <kit in the provisioning folder> <participant volume>
  local src=$1 dst=$2
  [ -d "$dst" ] || return 0
  if diff -rq "$src/startup" "$dst/startup" >/dev/null 2>&1; then
    echo "kit $(basename "$src") in $dst: unchanged"   # a running participant keeps its files untouched
    return 0
  fi
  rm -rf "$dst/startup" "$dst/local"
  cp -a "$src/." "$dst/"
  rm -f "$dst/local/resources.json"   # holds provisioning-folder paths; the server writes its own at start
  echo "kit $(basename "$src") -> $dst"
}

provision_kits() {
  fedtune provision --out "$pki" --sites "$sites" --server-name "$server" \
    --fl-port "${FEDTUNE_FL_PORT:-8002}" --admin-port "${FEDTUNE_ADMIN_PORT:-8003}" --host-name localhost
  local prod i
  prod=$(ls -d "$pki"/workspace/fedtune/prod_* | sort | tail -n1)
  copy_kit "$prod/$server" "$kits/server"
  copy_kit "$prod/admin@fedtune.local" "$kits/admin"
  for i in $(seq 1 "$sites"); do copy_kit "$prod/site-$i" "$kits/site-$i"; done
}

prepare_data() {
  local i missing=0 tmp dst
  for i in $(seq 1 "$sites"); do
    [ ! -d "$data/site-$i" ] || [ -f "$data/site-$i/.fedtune-data" ] || missing=1
  done
  if [ "$missing" = 0 ]; then echo "site data present: reused"; return; fi
  tmp=$(mktemp -d)
  fedtune prepare-data fitness --out "$tmp" --sites "$sites" --samples "$samples" \
    ${FEDTUNE_FLAB_SOURCE:+--source "$FEDTUNE_FLAB_SOURCE"}
  fedtune prepare-data sentiment --out "$tmp" --sites "$sites" --samples "$samples" \
    ${FEDTUNE_FPB_SOURCE:+--source "$FEDTUNE_FPB_SOURCE"}
  for i in $(seq 1 "$sites"); do
    dst="$data/site-$i"
    [ -d "$dst" ] || continue
    find "$dst" -mindepth 1 -delete
    cp -R "$tmp/site-$i/." "$dst/"   # no -a: a non-root copy cannot set the times of a root-owned mount
    touch "$dst/.fedtune-data"
    echo "data site-$i -> $dst"
  done
  rm -rf "$tmp"
}

if [ "${FEDTUNE_PROVISION:-1}" = 1 ]; then provision_kits; fi
if [ "${FEDTUNE_PREPARE_DATA:-1}" = 1 ]; then prepare_data; fi
