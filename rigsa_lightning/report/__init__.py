"""Sweep report: ``python -m rigsa_lightning.report <multirun folder> [--wandb]`` (console script ``rigsa-report``).

Reads every job folder of a Hydra multirun (``<sweep dir>/<job num>_<name>/metrics.json``, ``failed.json``,
``.hydra/``) and writes into the sweep folder, each file atomically:

- ``results.csv``: one row per (method, name) with ``<metric>_mean``/``<metric>_std`` over seeds (sample std,
  ``ddof=1``; empty for a single seed) and ``n_seeds``; raw fractions (accuracies in [0, 1]).
- ``runs.csv``: the same metrics, one row per completed job.
- ``results.md``: the two tables in human units (accuracies in %, deltas in percentage points), the figures,
  and a "Failed / incomplete jobs" section.
- ``forgetting_vs_accuracy.png``, ``density_sweep.png``, ``pruning_rounds.png`` (skipped with a note in
  ``results.md`` when there is nothing to plot).

``--wandb`` also logs the table and the figures to one W&B run in the sweep's group (offline unless an API key and
the network are there; ``WANDB_MODE`` wins). :func:`build_report` is what the sweep callback calls.

Modules: ``jobs`` (finding and reading job folders), ``table`` (run rows, aggregation over seeds, formatting),
``figures`` (the plots), ``upload`` (W&B), ``build`` (the steps, :func:`build_report`), ``cli`` (:func:`main`).
"""

from rigsa_lightning.report.build import build_report
from rigsa_lightning.report.cli import main
from rigsa_lightning.report.jobs import Job, find_job_dirs, load_job

__all__ = ["Job", "build_report", "find_job_dirs", "load_job", "main"]
