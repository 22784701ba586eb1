#!/usr/bin/env bash
# Retrain, gate and (when the gate passes) publish a model: the wrapper a scheduler or CI calls.
#
#   scripts/retrain.sh [lab2prod release options...]      e.g. scripts/retrain.sh -p epochs 12
#
# It cds to the repository (so notebooks/, runs/, models/ and release-policy.yaml are this
# checkout's), runs `lab2prod release "$@"`, appends everything it prints to
# runs/retrain-<UTC timestamp>.log and exits with release's code: 0 released, 1 refused by the
# gate (the registry is untouched), 2 a wrong request. Settings come from the environment or
# .env as usual (REGISTRY_URL=s3://bucket/models to share a registry between machines).
#
# Nightly at 02:30, from cron (`crontab -e`):
#   30 2 * * * /path/to/lab2prod/scripts/retrain.sh -f /path/to/lab2prod/params.yaml
# cron mails non-empty output; the log in runs/ keeps it too.
set -uo pipefail

cd "$(dirname "$(readlink -f "$0")")/.." || exit 2
LAB2PROD="${LAB2PROD:-.venv/bin/lab2prod}"
if [ ! -x "$LAB2PROD" ]; then
  LAB2PROD="$(command -v lab2prod || true)"
fi
if [ -z "$LAB2PROD" ]; then
  echo "retrain.sh: lab2prod not found; run 'make install' in $(pwd) first" >&2
  exit 2
fi

mkdir -p runs
log="runs/retrain-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "retrain.sh: $(date -u +%FT%TZ) $LAB2PROD release $* (log: $log)" | tee -a "$log"
"$LAB2PROD" release "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
echo "retrain.sh: exit $status" | tee -a "$log"
exit "$status"
