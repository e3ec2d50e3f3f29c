#!/usr/bin/env bash
# The project's test command (`make test`, and `.ci/run` in CI): system dependencies of the container
# tests (when this machine can install them), the side venv of the kserve client test, then the whole pytest
# suite.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ -x scripts/ci-deps.sh ]; then
  bash scripts/ci-deps.sh || echo "warning: container test dependencies could not be installed; those tests will skip" >&2
fi

# kserve's Python SDK cannot share .venv (it caps psutil, protobuf and python-dateutil below our pins), so
# tests/serve/test_oip_kserve.py runs its REST client from a side venv, made here once (pinned; it skips without).
if [ ! -e .venv-kserve ]; then
  echo "creating .venv-kserve for tests/serve/test_oip_kserve.py (once; a few minutes)" >&2
  log=$(mktemp)
  if python3 -m venv .venv-kserve >"$log" 2>&1 && .venv-kserve/bin/pip install -q --disable-pip-version-check \
      -c tests/serve/kserve-constraints.txt kserve==0.21.0 >>"$log" 2>&1; then
    :
  else
    echo "warning: could not create .venv-kserve (kserve 0.21.0); tests/serve/test_oip_kserve.py will skip:" >&2
    grep -v '^WARNING: Location' "$log" | tail -n 5 >&2
    rm -rf .venv-kserve
  fi
  rm -f "$log"
fi

.venv/bin/pytest -q -ra --durations=25 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
