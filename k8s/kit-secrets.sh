#!/usr/bin/env bash
# One Kubernetes Secret per participant from a provisioning folder (`fedtune provision --out DIR
# --server-name fl-server`): the kit's startup files as a gzipped tarball under the key kit.tar.gz, which each
# pod's init container unpacks into a writable emptyDir. Secret names: fedtune-kit-server, fedtune-kit-admin,
# fedtune-kit-site-K. Only startup/ and local/ (less local/resources.json, which holds provisioning-folder
# paths) and an empty transfer/ folder are packed: a kit that has been used also holds job storage,
# downloaded results, site-private models and run folders, none of which belongs in a Secret. The root CA
# key (DIR/workspace/fedtune/state) is never included.
#
#   k8s/kit-secrets.sh DIR [NAMESPACE] | kubectl apply -f -      (prints the Namespace too; default fedtune)
set -euo pipefail
dir=${1:?usage: k8s/kit-secrets.sh PROVISIONING_DIR [NAMESPACE]}
ns=${2:-fedtune}
prod=$(ls -d "$dir"/workspace/fedtune/prod_* 2>/dev/null | sort | tail -n1 || true)
[ -n "$prod" ] || { echo "kit-secrets: no kits under $dir/workspace/fedtune/prod_* (run fedtune provision)" >&2; exit 2; }

kit_tarball() {   # entries without a ./ entry: a non-root tar cannot chmod the emptyDir it unpacks into
  local parts=(startup) empty=()
  [ -d "$1/local" ] && parts+=(local)
  [ -d "$1/transfer" ] && empty=(--no-recursion transfer)   # the admin API needs the folder, not its content
  (cd "$1" && tar --exclude=local/resources.json --owner=0 --group=0 --numeric-owner -cf - "${parts[@]}" \
    "${empty[@]}" | gzip -n | base64 | tr -d '\n')
}

secret() {   # secret <participant> <kit folder>
  cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: fedtune-kit-$1
  namespace: $ns
  labels:
    app.kubernetes.io/part-of: fedtune
    fedtune.io/participant: "$1"
type: Opaque
data:
  kit.tar.gz: $(kit_tarball "$2")
YAML
}

printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns"
n=0
for kit in "$prod"/*/; do
  kit=${kit%/}
  if [ -f "$kit/startup/fed_server.json" ]; then secret server "$kit"
  elif [ -f "$kit/startup/fed_admin.json" ]; then secret admin "$kit"
  elif [ -f "$kit/startup/fed_client.json" ]; then secret "$(basename "$kit")" "$kit"
  else continue; fi
  n=$((n + 1))
done
echo "kit-secrets: $n Secret(s) from $prod" >&2
