"""Hydra callback that writes the sweep report when a multirun ends.

Registered by the sweep configs (``conf/sweep/*.yaml``)::

    hydra:
      callbacks:
        report:
          _target_: rigsa_lightning.sweep_callback.ReportCallback

It runs :func:`rigsa_lightning.report.build_report` on the sweep folder (``hydra.sweep.dir``) in the launching
process, after every job has returned. A report failure is logged and never turns a finished sweep into an error:
the jobs' results are on disk and ``python -m rigsa_lightning.report <sweep folder>`` rebuilds the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("rigsa_lightning.sweep_callback")


class ReportCallback(Callback):
    """Build ``results.csv``/``results.md`` and the figures in the sweep folder at the end of a multirun.

    Args:
        enabled: Set to false (``hydra.callbacks.report.enabled=false``) to skip the report.
        wandb: Also log the table and figures to W&B (``report --wandb``); the mode follows ``WANDB_MODE``
            (offline when no API key is configured), so this never waits on the network.
    """

    def __init__(self, enabled: bool = True, wandb: bool = False) -> None:
        self.enabled = bool(enabled)
        self.wandb = bool(wandb)
        self.last_report: dict[str, Any] | None = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Called once by Hydra in the launching process after all jobs of the sweep have finished."""
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("report: sweep folder %s does not exist (no job ran); nothing to report", sweep_dir)
            return
        try:
            from rigsa_lightning.report import build_report

            self.last_report = build_report(sweep_dir, log_wandb=self.wandb)
        except Exception as exc:  # noqa: BLE001 - the sweep's results are on disk; the report can be rebuilt
            log.error(
                "report failed on %s: %s: %s (rerun: python -m rigsa_lightning.report %s)",
                sweep_dir,
                type(exc).__name__,
                exc,
                sweep_dir,
            )
            return
        log.info(
            "sweep report: %s (%d completed, %d failed, %d incomplete)",
            self.last_report.get("results_md"),
            len(self.last_report.get("runs", [])),
            len(self.last_report.get("failed", [])),
            len(self.last_report.get("incomplete", [])),
        )
