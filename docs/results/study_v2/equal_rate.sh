#!/usr/bin/env bash
# The v2 study's two tickets at one final-phase rate (conf/sweep/study_v2_equal_rate.yaml): RIGSA's ticket of
# rigsa_paper_s<seed> retrained from its archived ticket.ckpt.xz at the random ticket's 3e-2, and the random ticket
# at RIGSA's 3e-3; then the report from both archives (python -m rigsa_lightning.report.equal_rate).
#   bash docs/results/study_v2/equal_rate.sh [seed] [archive folder]
# seed 0 by default (a seed whose study pair is complete); two slots may run the same seed side by side. Each
# completed job is archived in docs/results/study_v2/equal_rate/jobs (or the folder given: a worktree's run archived
# into the main checkout).
# Resumable like the study: completed jobs are restored from the archive and skipped, an interrupted one continues
# from its last 25-step checkpoint.
set -euo pipefail
seed=${1:-0}
archive=${2:-$PWD/docs/results/study_v2/equal_rate/jobs}
study_archive=$PWD/docs/results/study_v2/jobs
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
PY=${PY:-python}
THREADS=${THREADS:-1}
# the base model's numbers, computed once for the study (base_cache/): not scored again
export RIGSA_CACHE=${RIGSA_CACHE:-$PWD/outputs/study/v2_cache}
for d in zero_shot forgetting_before; do
  mkdir -p "$RIGSA_CACHE/$d" && cp -n docs/results/study_v2/base_cache/$d/*.json "$RIGSA_CACHE/$d"/ 2> /dev/null || true
done
# the study's completed jobs (their tickets and prune histories) where this machine lacks them
flock /tmp/rigsa_study_v2_archive.lock $PY -m rigsa_lightning.report.archive restore "$study_archive" outputs/study/v2
$PY -m rigsa_lightning.train -m +sweep=study_v2_equal_rate threads="$THREADS" seed="$seed" \
  hydra.callbacks.archive.folder="$archive"
# the report from the archives, so the committed equal_rate.md is rebuilt from the committed job folders it names
$PY -m rigsa_lightning.report.equal_rate "${study_archive#"$PWD"/}" "${archive#"$PWD"/}" --out "$archive/../equal_rate.md"
