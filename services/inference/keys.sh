#!/usr/bin/env bash
# keys (compose one-shot, before `inference`): the inference service's two API keys in $FEDTUNE_KEYS_DIR
# (a volume): `api-key` (predictions) and `admin-key` (POST /v1/admin/reload). Each is generated once, when
# absent, readable by its owner only (uid 10001, the service's user); an existing key is kept as it is, and an
# empty or unreadable one is an error (never overwritten). Read one: docker compose exec -T inference cat /keys/api-key
set -euo pipefail
dir=${FEDTUNE_KEYS_DIR:-/keys}
umask 077
[ -d "$dir" ] && [ -w "$dir" ] || { echo "keys: $dir is not a writable folder (mount the keys volume there)" >&2; exit 2; }
for name in api-key admin-key; do
  file=$dir/$name
  if [ -e "$file" ] || [ -L "$file" ]; then
    [ -f "$file" ] && [ -r "$file" ] && [ -s "$file" ] \
      || { echo "keys: $file exists but is not a readable, non-empty file: fix or remove it" >&2; exit 2; }
    echo "keys: keeping $file"
    continue
  fi
  python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))' > "$file.tmp.$$"
  mv -n "$file.tmp.$$" "$file"
  rm -f "$file.tmp.$$"
  echo "keys: generated $file"
done
