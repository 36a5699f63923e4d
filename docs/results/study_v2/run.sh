#!/usr/bin/env bash
# The v2 claims study (conf/sweep/study_v2.yaml), one slot; run two side by side on a 2-core machine:
#   bash docs/results/study_v2/run.sh & bash docs/results/study_v2/run.sh &
# Resumable: completed jobs are restored from the archive and skipped, an interrupted one continues from its last
# 25-step checkpoint, a job the other slot holds is left to it. A random ticket that starts before its paired
# rigsa_paper job has pruned twice fails fast (exit 2) and is retried by the next pass; passes repeat until the 15
# jobs are complete (or a pass completes nothing new while no other slot runs), then the zero-shot job runs.
# Every 2 minutes, unfinished rigsa_paper jobs that reached their winning ticket (ticket.ckpt.xz, written right after
# the last prune) are archived too: a fresh machine continues them from the ticket instead of starting over.
set -uo pipefail
archive=${1:-$PWD/docs/results/study_v2/jobs}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
PY=${PY:-python}
THREADS=${THREADS:-1}  # one slot alone on the 2 cores: THREADS=2
run() { $PY -m rigsa_lightning.train -m +sweep=study_v2 threads="$THREADS" hydra.callbacks.archive.folder="$archive" "$@"; }
# The base model's numbers (zero-shot test accuracy, the forgetting "before" scores: ~25 min of a fresh machine) are
# computed once and kept beside the archive (base_cache/), which seeds this study's own cache on a fresh machine.
export RIGSA_CACHE=${RIGSA_CACHE:-$PWD/outputs/study/v2_cache}
base_cache=$(dirname "$archive")/base_cache
sync_cache() {  # $1 -> $2, files not there yet
  for d in zero_shot forgetting_before; do
    [ -d "$1/$d" ] && mkdir -p "$2/$d" && cp -n "$1/$d"/*.json "$2/$d"/ 2> /dev/null
  done
  return 0
}
sync_cache "$base_cache" "$RIGSA_CACHE"
( while sleep 120; do
    flock /tmp/rigsa_study_v2_archive.lock \
      $PY -m rigsa_lightning.report.archive save --unfinished outputs/study/v2 "$archive" > /dev/null
    sync_cache "$RIGSA_CACHE" "$base_cache"
  done ) &
saver=$!
trap 'kill $saver 2> /dev/null' EXIT
completed() { grep -l '"status": "completed"' "$archive"/{rigsa_paper,qlora_r16,random_ticket}_s[0-4]/metrics.json 2>/dev/null | wc -l; }
while [ "$(completed)" -lt 15 ]; do
  before=$(completed)
  run || true
  if [ "$(completed)" -eq "$before" ]; then
    [ "$(pgrep -fc 'rigsa_lightning.train -m \+sweep=study_v2')" -gt 0 ] || { echo "no progress: stopping" >&2; break; }
    sleep 300  # the other slot still runs the jobs this pass could not take
  fi
done
run experiment=zero_shot seed=0
