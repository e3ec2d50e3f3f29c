#!/usr/bin/env bash
# One-shot (compose service `provision`):
#  1. real NVFlare provisioning (root CA + a startup kit per participant) into $FEDTUNE_PKI, reused on later
#     runs (`fedtune provision` keeps existing kits);
#  2. each kit copied into its participant's own volume, mounted at $FEDTUNE_KITS/<name> (server, admin,
#     site-1 ... site-N; a participant without a mounted folder is skipped): only into an empty volume or
#     over a kit this step copied (marker .fedtune-kit); any other content is kept and the step fails;
#  3. each site's data volume mounted at $FEDTUNE_DATA_ROOT/site-K: an EMPTY one gets demo data (fitness +
#     sentiment: synthetic, or real from FEDTUNE_FLAB_SOURCE / FEDTUNE_FPB_SOURCE) and the marker .fedtune-data;
#     one with that marker is reused; any other (a site's real data) is never modified: it is kept, used as
#     the site's data and checked with `fedtune check-data` (errors: exit 2, nothing changed). Nothing that
#     fedtune did not write is ever deleted.
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
    touch "$dst/.fedtune-kit"
    echo "kit $(basename "$src") in $dst: unchanged"   # a running participant keeps its files untouched
    return 0
  fi
  if [ ! -f "$dst/.fedtune-kit" ] && [ -n "$(find "$dst" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
    echo "provision: $dst holds a kit (or files) this step did not copy there: not replaced; empty the volume to get the kit from $src" >&2
    return 2
  fi
  rm -rf "$dst/startup" "$dst/local"   # an earlier kit this step copied (marked .fedtune-kit)
  cp -a "$src/." "$dst/"
  rm -f "$dst/local/resources.json"   # holds provisioning-folder paths; the server writes its own at start
  touch "$dst/.fedtune-kit"
  echo "kit $(basename "$src") -> $dst"
}

provision_kits() {
  fedtune provision --out "$pki" --sites "$sites" --server-name "$server" \
    --fl-port "${FEDTUNE_FL_PORT:-8002}" --admin-port "${FEDTUNE_ADMIN_PORT:-8003}" --host-name localhost
  local prod i bad=0
  prod=$(ls -d "$pki"/workspace/fedtune/prod_* | sort | tail -n1)
  copy_kit "$prod/$server" "$kits/server" || bad=1
  copy_kit "$prod/admin@fedtune.local" "$kits/admin" || bad=1
  for i in $(seq 1 "$sites"); do copy_kit "$prod/site-$i" "$kits/site-$i" || bad=1; done
  [ "$bad" = 0 ] || exit 2
}

site_state() {   # site_state <folder>: absent | ours | partial | empty | foreign
  local dst=$1
  if [ ! -d "$dst" ]; then echo absent
  elif [ -f "$dst/.fedtune-data" ]; then echo ours
  elif [ -f "$dst/.fedtune-data.partial" ]; then echo partial   # our own copy, interrupted: redo it
  elif [ -z "$(find "$dst" -mindepth 1 -maxdepth 1 -print -quit)" ]; then echo empty
  else echo foreign; fi
}

check_site_data() {   # check_site_data <folder>: a site's own data is validated, never modified
  local dst=$1
  if ! fedtune check-data --help >/dev/null 2>&1; then
    echo "provision: $dst holds data fedtune did not write: kept as the site's data (not checked: this fedtune has no check-data)" >&2
    return 0
  fi
  if ! fedtune check-data "$dst"; then
    echo "provision: $dst holds data fedtune did not write, kept untouched, but it has errors (listed above): fix them, or mount an empty volume for demo data" >&2
    return 2
  fi
  echo "data $dst: the site's own data, kept and checked"
}

prepare_data() {
  local i state tmp="" dst bad=0 need=0
  for i in $(seq 1 "$sites"); do
    dst="$data/site-$i"
    state=$(site_state "$dst")
    case "$state" in
      foreign) check_site_data "$dst" || bad=1 ;;
      ours) echo "data $dst: demo data present, reused" ;;
      empty|partial) need=1 ;;
    esac
  done
  [ "$bad" = 0 ] || exit 2
  if [ "$need" = 0 ]; then return; fi
  tmp=$(mktemp -d)
  fedtune prepare-data fitness --out "$tmp" --sites "$sites" --samples "$samples" \
    ${FEDTUNE_FLAB_SOURCE:+--source "$FEDTUNE_FLAB_SOURCE"}
  fedtune prepare-data sentiment --out "$tmp" --sites "$sites" --samples "$samples" \
    ${FEDTUNE_FPB_SOURCE:+--source "$FEDTUNE_FPB_SOURCE"}
  for i in $(seq 1 "$sites"); do
    dst="$data/site-$i"
    state=$(site_state "$dst")
    [ "$state" = empty ] || [ "$state" = partial ] || continue
    touch "$dst/.fedtune-data.partial"
    if [ "$state" = partial ]; then   # everything in it was written by an interrupted copy of ours
      find "$dst" -mindepth 1 ! -name .fedtune-data.partial -delete
    fi
    cp -R "$tmp/site-$i/." "$dst/"   # no -a: a non-root copy cannot set the times of a root-owned mount
    mv "$dst/.fedtune-data.partial" "$dst/.fedtune-data"
    echo "data site-$i -> $dst (demo data)"
  done
  rm -rf "$tmp"
}

if [ "${FEDTUNE_PROVISION:-1}" = 1 ]; then provision_kits; fi
if [ "${FEDTUNE_PREPARE_DATA:-1}" = 1 ]; then prepare_data; fi
