#!/usr/bin/env bash
# Where a ticket's entries sit against what it learned on them (README "What the tickets kept"): for every seed
# whose RIGSA run and random ticket both have their exported adapter, RIGSA's trained values and gates placed on
# the random ticket's positions and the random ticket's on RIGSA's (python -m rigsa_lightning.report.tickets
# --place), each scored by the drift probe alone (python -m rigsa_lightning.evaluate, ~2 min of one thread); then
# the table (tickets.md) with the placements beside each pair. Resumable: a scored placement is skipped.
#   bash docs/results/study_v2/placements.sh [study folder] [placements folder]
set -euo pipefail
study=${1:-outputs/study/v2}
placements=${2:-outputs/study/v2_placements}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export RIGSA_CACHE=${RIGSA_CACHE:-$PWD/outputs/study/v2_cache}  # the study's drift reference (base answers)
PY=${PY:-python}
for seed in 0 1 2 3 4; do
  rigsa=$study/rigsa_paper_s$seed/adapter ticket=$study/random_ticket_s$seed/adapter
  [ -f "$rigsa/adapter_config.json" ] && [ -f "$ticket/adapter_config.json" ] || continue
  for placement in rigsa_values_on_ticket_positions ticket_values_on_rigsa_positions; do
    out=$placements/rigsa_paper_s$seed/$placement
    [ -f "$out/evaluation.json" ] && continue
    if [ $placement = rigsa_values_on_ticket_positions ]; then values=$rigsa positions=$ticket
    else values=$ticket positions=$rigsa; fi
    mkdir -p "$out"
    $PY -m rigsa_lightning.report.tickets --place "$values" "$positions" "$out/adapter"
    $PY -m rigsa_lightning.evaluate adapter_path="$out/adapter" textual_mnist=false eval.enabled=false threads=1 \
      hydra.run.dir="$out" > "$out.log" 2>&1
  done
done
$PY -m rigsa_lightning.report.tickets "$study" --placements "$placements"
