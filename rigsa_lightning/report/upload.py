"""The report on W&B: :func:`log_to_wandb` logs the results table and the figures to one run in the sweep's group
(offline unless an API key and the network are there; ``WANDB_MODE`` wins)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rigsa_lightning.config.access import get
from rigsa_lightning.report.jobs import Job

log = logging.getLogger("rigsa_lightning.report")


def log_to_wandb(
    folder: Path, rows: list[dict[str, Any]], figures: dict[str, Path | None], jobs: list[Job]
) -> str | None:
    """Log the results table and figures to a W&B run in the sweep's group; returns the mode used or None."""
    try:
        import wandb
    except ImportError:
        log.warning("report --wandb: wandb is not installed; skipped")
        return None
    from rigsa_lightning.training.tracking import resolve_wandb_mode

    cfg = next((j.config for j in jobs if j.config), {})
    project = get(cfg, "logger.project") or "rigsa-lightning"
    entity = get(cfg, "logger.entity")
    group = get(cfg, "logger.group") or folder.name
    # Online only with an API key and a reachable server (or WANDB_MODE=online): never blocks on the network.
    # Jobs configured offline/disabled keep that choice for the report too.
    mode = resolve_wandb_mode("auto")
    job_mode = str(get(cfg, "logger.mode") or "auto")
    if job_mode in ("offline", "disabled") and "WANDB_MODE" not in os.environ:
        mode = job_mode
    if mode == "disabled":
        log.info("report --wandb: W&B disabled (mode=disabled)")
        return mode
    try:
        settings = wandb.Settings(init_timeout=90, silent=True)
        run = wandb.init(
            project=str(project),
            entity=entity,
            group=str(group),
            name=f"report-{folder.name}",
            job_type="report",
            tags=["report"],
            dir=str(folder),
            mode=mode,
            reinit="finish_previous",
            settings=settings,
        )
        import pandas as pd

        df = pd.DataFrame(rows)
        payload: dict[str, Any] = {"results": wandb.Table(dataframe=df)}
        for name, fig_path in figures.items():
            if fig_path is not None and fig_path.is_file():
                payload[f"figures/{name}"] = wandb.Image(str(fig_path))
        run.log(payload)
        run.summary["report/n_runs"] = sum(1 for j in jobs if j.status == "completed")
        run.summary["report/n_failed"] = sum(1 for j in jobs if j.status != "completed")
        run.finish()
    except Exception as exc:  # noqa: BLE001 - the report on disk is what matters
        log.warning(
            "report --wandb: logging failed (%s: %s); the files on disk are complete", type(exc).__name__, exc
        )
        try:
            wandb.finish()
        except Exception:  # noqa: BLE001
            pass
        return None
    if mode == "offline":
        log.info("report --wandb: offline run written under %s/wandb (upload with `wandb sync`)", folder)
    return mode
