#!/usr/bin/env bash
# One-shot: with the admin kit ($FEDTUNE_KIT), submit one federated job per kind in $FEDTUNE_KINDS over the
# mTLS admin channel, follow it (training progress as Prometheus metrics on $FEDTUNE_METRICS_PORT while it
# runs), download the result into $FEDTUNE_RESULTS and export a bundle to $FEDTUNE_BUNDLES/<kind> (atomic
# rename: the inference service picks it up and reloads).
#
# FEDTUNE_PROFILE: tiny (1 round, 1 local epoch, frozen trunks: minutes on a CPU) | standard (3 rounds,
# 2 local epochs, frozen AntiBERTy, fully fine-tuned MiniLM). Each value can be overridden: FEDTUNE_ROUNDS,
# FEDTUNE_LOCAL_EPOCHS, FEDTUNE_FITNESS_MODE, FEDTUNE_SENTIMENT_MODE, FEDTUNE_FITNESS_HEADS,
# FEDTUNE_MIN_SITES, FEDTUNE_JOB_TIMEOUT; FEDTUNE_SUBMIT_ARGS adds flags to every `fedtune submit`.
# Fitness heads default to private (each site keeps its own; the bundle serves them per site).
set -euo pipefail
kit=${FEDTUNE_KIT:-/kit}
results=${FEDTUNE_RESULTS:-/results}
bundles=${FEDTUNE_BUNDLES:-/bundles}
profile=${FEDTUNE_PROFILE:-standard}
case "$profile" in
  tiny) rounds=1 epochs=1 fitness_mode=frozen sentiment_mode=frozen ;;
  standard) rounds=3 epochs=2 fitness_mode=frozen sentiment_mode=full ;;
  *) echo "submitter: unknown FEDTUNE_PROFILE '$profile' (tiny | standard)" >&2; exit 2 ;;
esac
rounds=${FEDTUNE_ROUNDS:-$rounds}
epochs=${FEDTUNE_LOCAL_EPOCHS:-$epochs}

if [ ! -f "$kit/startup/fed_admin.json" ]; then
  echo "submitter: no admin startup kit at $kit" >&2
  exit 2
fi
for kind in ${FEDTUNE_KINDS:-fitness sentiment}; do
  case "$kind" in
    fitness) mode=${FEDTUNE_FITNESS_MODE:-$fitness_mode} heads=${FEDTUNE_FITNESS_HEADS:-private} ;;
    sentiment) mode=${FEDTUNE_SENTIMENT_MODE:-$sentiment_mode} heads=shared ;;
    *) echo "submitter: unknown kind '$kind'" >&2; exit 2 ;;
  esac
  echo "submitter: $kind job ($profile profile: $rounds round(s), $epochs local epoch(s), $mode trunk)"
  log=$(mktemp)
  # shellcheck disable=SC2086 # FEDTUNE_SUBMIT_ARGS is a list of flags
  fedtune submit "$kind" --admin-kit "$kit" --out "$results" --rounds "$rounds" --local-epochs "$epochs" \
    --trunk-mode "$mode" --heads "$heads" --min-sites "${FEDTUNE_MIN_SITES:-${FEDTUNE_SITES:-3}}" \
    --metrics-port "${FEDTUNE_METRICS_PORT:-9102}" --timeout "${FEDTUNE_JOB_TIMEOUT:-7200}" \
    ${FEDTUNE_SUBMIT_ARGS:-} 2>&1 | tee "$log"
  result=$(sed -n 's/^result: //p' "$log" | tail -n1)
  rm -f "$log"
  [ -n "$result" ] || { echo "submitter: the $kind job gave no result" >&2; exit 1; }
  fedtune export --result "$result" --out "$bundles/$kind"
done
echo "submitter: done; bundles in $bundles"
