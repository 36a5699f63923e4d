#!/usr/bin/env bash
# The v2 learning-rate search (conf/sweep/lr_search_v2*.yaml), two single-threaded jobs side by side on a 2-core
# machine; resumable (rerun: completed pilots are restored from the archive and skipped).
#   bash docs/results/lr_search_v2/run.sh <slot a|b> [archive folder]
# Slot a: RIGSA's round pilots 1e-4, 3e-4, then (once slot b's round pilots are done) one more beyond an edge of the
# grid when the best sits there, the anchor at the selected round rate, then the final-retraining pilots (one more
# beyond an edge of the grid when the best sits there), then the random-ticket pilots slot b has not taken.
# Slot b: the round pilots 1e-3, 3e-3, then QLoRA's pilots, then (once the anchor is done) the random-ticket pilots.
# The slot that finds the four random-ticket pilots done runs one more beyond an edge of their grid if the best sits
# there (both slots may find it: the job folder's claim lets one run it).
set -euo pipefail
slot=$1
archive=${2:-$PWD/docs/results/lr_search_v2/jobs}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
PY=${PY:-python}
run() { $PY -m rigsa_lightning.train -m "$@" threads=1 hydra.callbacks.archive.folder="$archive"; }
done_job() { grep -q '"status": "completed"' "$archive/$1/metrics.json" 2>/dev/null; }
best_rate() {  # the selected rate of a phase ($1: rigsa_rounds, rigsa_final; highest final val acc, ties: smaller)
  $PY - "$archive" "$1" <<'PYEOF'
import sys
from pathlib import Path
from rigsa_lightning.report.lr_table import load_pilots, lr_rows, selected
root, phase = Path(sys.argv[1]), sys.argv[2]
print(selected(lr_rows(load_pilots(root)))[phase]["lr"])
PYEOF
}
best_round_rate() { best_rate rigsa_rounds; }
ticket_edge() {  # once the four random-ticket pilots are done: one more beyond an edge of the grid if the best sits there
  local r
  for r in 0.003 0.01 0.03 0.1; do done_job "random_ticket_lr$r" || return 0; done
  case "$(best_rate random_ticket)" in
    0.1) run +sweep=lr_search_v2_ticket adapter.lr=3.0e-1 ;;
    0.003) run +sweep=lr_search_v2_ticket adapter.lr=1.0e-3 ;;
  esac
}
if [ "$slot" = a ]; then
  run +sweep=lr_search_v2_rounds adapter.lr=1.0e-4,3.0e-4
  until done_job rigsa_rounds_lr0.001 && done_job rigsa_rounds_lr0.003; do sleep 60; done
  rate=$(best_round_rate)
  # the best at an edge of the grid: one more pilot beyond it (the same number of pilots per phase, plus the edge)
  case "$rate" in
    0.003) run +sweep=lr_search_v2_rounds adapter.lr=1.0e-2; rate=$(best_round_rate) ;;
    0.0001) run +sweep=lr_search_v2_rounds adapter.lr=3.0e-5; rate=$(best_round_rate) ;;
  esac
  echo "selected round rate: $rate"
  run +sweep=lr_search_v2_anchor lr_by_method.rigsa="$rate"
  run +sweep=lr_search_v2_final lr_by_method.rigsa="$rate"
  # the final phase's best at an edge of its grid: one more pilot beyond it
  case "$(best_rate rigsa_final)" in
    0.03) run +sweep=lr_search_v2_final lr_by_method.rigsa="$rate" pruning.final_lr=1.0e-1 ;;
    0.001) run +sweep=lr_search_v2_final lr_by_method.rigsa="$rate" pruning.final_lr=3.0e-4 ;;
  esac
  # then the random-ticket pilots slot b has not taken (each job folder is claimed by the process running it)
  run +sweep=lr_search_v2_ticket
  ticket_edge
else
  run +sweep=lr_search_v2_rounds adapter.lr=1.0e-3,3.0e-3
  run +sweep=lr_search_v2_qlora
  until done_job rigsa_anchor; do sleep 60; done
  run +sweep=lr_search_v2_ticket
  ticket_edge
fi
