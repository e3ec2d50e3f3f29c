#!/usr/bin/env bash
# The inference service's two keys as the Secret fedtune-api-keys: `api-key` (POST /v1/*/predict, /v2 infer)
# and `admin-key` (POST /v1/admin/reload; only the inference pod itself uses it). Fresh random keys each run,
# so create the Secret once: a second `kubectl create` fails with AlreadyExists and the keys stay as they are.
# The inference pod does not start without this Secret (it never serves without keys).
#
#   k8s/api-keys.sh [NAMESPACE] | kubectl create -f -        # once, after k8s/kit-secrets.sh (default: fedtune)
#   kubectl -n fedtune get secret fedtune-api-keys -o jsonpath='{.data.api-key}' | base64 -d     # read a key
#   k8s/api-keys.sh | kubectl replace -f - && kubectl -n fedtune rollout restart deployment/inference   # rotate
set -euo pipefail
ns=${1:-fedtune}
case "$ns" in ''|*[!a-z0-9-]*) echo "api-keys: '$ns' is not a namespace name" >&2; exit 2 ;; esac

key() {   # 32 random bytes, URL-safe base64 without padding; printed base64-encoded for the Secret's data
  head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | base64 | tr -d '\n'
}

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: fedtune-api-keys
  namespace: $ns
  labels:
    app.kubernetes.io/part-of: fedtune
    app.kubernetes.io/component: inference
type: Opaque
data:
  api-key: $(key)
  admin-key: $(key)
YAML
