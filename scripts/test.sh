#!/usr/bin/env bash
# The project's test command (`make test`, and `.ci/run` in CI): system dependencies of the container
# tests (when this machine can install them), then the whole pytest suite.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ -x scripts/ci-deps.sh ]; then
  bash scripts/ci-deps.sh || echo "warning: container test dependencies could not be installed; those tests will skip" >&2
fi

.venv/bin/pytest -q -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no test" >&2
  exit 1
fi
exit "$rc"
