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
# tests/serve/test_oip_kserve.py runs its REST client from a side venv, .venv-kserve, made here once (pinned).
# It is built in the background while the suite runs (a few minutes of pip, mostly waiting on the network):
# `.venv-kserve/.building` holds the builder's pid until it is done, `.failed` its log when it failed; the
# test waits for a build in progress and skips, with the log's tail, when it failed.
if [ -e .venv-kserve/.building ] || [ -e .venv-kserve/.failed ]; then
  rm -rf .venv-kserve            # a half-made side venv of an earlier run of this script (its own markers)
fi
if [ ! -e .venv-kserve ]; then
  echo "creating .venv-kserve for tests/serve/test_oip_kserve.py in the background (once; a few minutes)" >&2
  mkdir .venv-kserve && : >.venv-kserve/.building
  (
    echo "$BASHPID" >.venv-kserve/.building
    log=$(mktemp)
    if python3 -m venv .venv-kserve >"$log" 2>&1 && .venv-kserve/bin/pip install -q --disable-pip-version-check \
        -c tests/serve/kserve-constraints.txt kserve==0.21.0 >>"$log" 2>&1; then
      rm -f .venv-kserve/.building
    else
      grep -v '^WARNING: Location' "$log" | tail -n 20 >.venv-kserve/.failed
      rm -f .venv-kserve/.building
    fi
    rm -f "$log"
  ) &
fi

# pytest exits 5 when it collected no test: that is a failure here too.
check_rc() {
  if [ "$1" -eq 5 ]; then
    echo "error: pytest collected no test${2:+ in shard $2}" >&2
    return 1
  fi
  return "$1"
}

if [ $# -gt 0 ] || [ "${FEDTUNE_TEST_SHARDS:-2}" = 1 ]; then
  .venv/bin/pytest -q -ra --durations=25 "$@"
  check_rc $?
  exit $?
fi

# The whole suite as two pytest processes side by side: the federation tests spend much of their time waiting
# on NVFlare (task polling, job start-up, deadlines), so two shards finish well before one would on 2 cores.
# Each line is prefixed with its shard; each shard has its own temporary folder, removed when it ends.
# The fl shard also takes the seeds comparison (a federation of its own, mostly waiting on NVFlare): in CI the
# rest shard ended about six minutes after the fl shard, with the docker tests at its end.
FL_SHARD=(tests/fl tests/test_demo.py tests/test_compare_seeds.py)
shard() {                         # name, pytest arguments...
  local name=$1; shift
  local tmp; tmp=$(mktemp -d -t "fedtune-tests-$name-XXXXXX")
  .venv/bin/pytest -q -ra --durations=15 --basetemp="$tmp/t" -o cache_dir=".pytest_cache/$name" "$@" 2>&1 \
    | sed -u "s/^/[$name] /"
  local rc=${PIPESTATUS[0]}
  rm -rf "$tmp"
  return "$rc"
}
shard fl "${FL_SHARD[@]}" & fl=$!
shard rest tests $(printf -- '--ignore=%s ' "${FL_SHARD[@]}") & rest=$!
wait "$fl"; rc_fl=$?
wait "$rest"; rc_rest=$?
check_rc "$rc_fl" fl; rc_fl=$?
check_rc "$rc_rest" rest; rc_rest=$?
echo "shards: fl exit $rc_fl, rest exit $rc_rest" >&2
[ "$rc_fl" -eq 0 ] && [ "$rc_rest" -eq 0 ]
