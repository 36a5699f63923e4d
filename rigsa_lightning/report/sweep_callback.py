"""Hydra callback that writes the sweep report when a multirun ends.

Registered by the sweep configs (``conf/sweep/*.yaml``)::

    hydra:
      callbacks:
        report:
          _target_: rigsa_lightning.report.sweep_callback.ReportCallback

It runs :func:`rigsa_lightning.report.build_report` on the sweep folder (``hydra.sweep.dir``) in the launching
process, after every job has returned. A report failure is logged and never turns a finished sweep into an error:
the jobs' results are on disk and ``python -m rigsa_lightning.report <sweep folder>`` rebuilds the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("rigsa_lightning.report.sweep_callback")


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


def sweep_jobs(params: Any) -> int:
    """Jobs in a basic-sweeper grid (the product of the comma-separated values of ``hydra.sweeper.params``)."""
    total = 1
    for value in (params or {}).values():
        total *= max(1, len([v for v in str(value).split(",") if v.strip()]))
    return total


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The grid a multirun actually sweeps: ``hydra.sweeper.params`` narrowed or widened by the command line.

    Hydra's basic sweeper lets a command-line override replace a swept key (``experiment=qlora_r16`` runs one
    experiment of the study), and a comma-separated command-line value sweeps a key of its own.
    """
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    task_overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    for pair in filter(None, map(_override_pair, task_overrides)):
        key, value = pair
        if value[:1] in "[{":  # a list or dict value is one value, not a sweep
            continue
        if key in params or "," in value:
            params[key] = value
    return params


def _override_pair(override: Any) -> tuple[str, str] | None:
    """``(key, value)`` of a Hydra override ``key=value`` / ``+key=value`` / ``++key=value``; None for a deletion
    (``~key``) or an override without a value."""
    text = str(override)
    key, sep, value = text.lstrip("+").partition("=")
    if not sep or text.startswith("~"):
        return None
    return key, value


class StudyEstimateCallback(Callback):
    """Print at the start of a study how many jobs are left and their estimated time.

    A job folder holding a completed run counts as done (``skip_completed`` skips it). The time per job left is the
    median wall time (``time/total_s``; a resumed job's whole time) of the finished jobs of the same folder and the
    same experiment where the grid sweeps ``experiment`` (a study's RIGSA jobs take longer than its controls), else
    of all its finished jobs, else ``job_minutes``.

    Args:
        job_minutes: the estimate per job before any job of the study has finished (from the pilots).
    """

    def __init__(self, job_minutes: float = 20.0) -> None:
        self.job_minutes = float(job_minutes)
        self.estimate: dict[str, float] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Count the grid and the finished jobs; log the estimate."""
        import json
        import statistics

        from rigsa_lightning.report.jobs import run_seconds

        sweep_dir = Path(str(config.hydra.sweep.dir))
        params = sweep_params(config)
        total = sweep_jobs(params)
        grid = {k: {v.strip() for v in str(val).split(",")} for k, val in params.items()}
        times: dict[str | None, list[float]] = {}
        for metrics in sweep_dir.glob("*/metrics.json"):
            try:
                data = json.loads(metrics.read_text())
            except (OSError, ValueError):
                continue
            given = _job_overrides(metrics.parent)
            if not _in_grid(given, grid):  # another grid sharing the folder (study / study_extra)
                continue
            if data.get("status") == "completed" and isinstance(data.get("time/total_s"), (int, float)):
                experiment = (given or {}).get("experiment") if len(grid.get("experiment", ())) > 1 else None
                times.setdefault(experiment, []).append(run_seconds(data))  # a resumed job: the whole job's
        every = [t for group in times.values() for t in group]
        done = min(len(every), total)
        overall = statistics.median(every) / 60 if every else self.job_minutes
        if None in times or not times:
            left = (total - done) * overall
        else:  # per experiment: its points left at its own median (the overall one before it has finished a job)
            points = total // len(grid["experiment"])
            left = sum(
                max(0, points - len(times.get(e, [])))
                * (statistics.median(times[e]) / 60 if e in times else overall)
                for e in grid["experiment"]
            )
        per_job = left / (total - done) if total > done else overall
        self.estimate = {
            "jobs": float(total),
            "done": float(done),
            "minutes_per_job": per_job,
            "minutes_left": left,
        }
        log.info(
            "study: %d jobs in this grid, %d already completed in %s; estimated %.1f h left (%.0f min per job, %s)",
            total,
            done,
            sweep_dir,
            left / 60,
            per_job,
            ("median of the finished jobs" + (", per experiment" if None not in times else ""))
            if every
            else "the pilots' estimate",
        )


def _job_overrides(job_dir: Path) -> dict[str, str] | None:
    """A job folder's overrides (``.hydra/overrides.yaml``) as ``{key: value}``; None when unknown."""
    overrides = job_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    import yaml

    try:
        return dict(filter(None, map(_override_pair, yaml.safe_load(overrides.read_text()) or [])))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _in_grid(given: dict[str, str] | None, grid: dict[str, set[str]]) -> bool:
    """Whether a job's overrides (:func:`_job_overrides`) are a point of ``grid`` (True when unknown)."""
    if given is None:
        return True
    return all(given.get(k) in values for k, values in grid.items() if k in given)


class ArchiveCallback(Callback):
    """Keep a long sweep's finished jobs in a committed folder (:mod:`rigsa_lightning.report.archive`).

    Before the sweep starts, archived jobs missing from the sweep folder are restored (so ``skip_completed`` skips
    them on a fresh machine); after every job, a completed job's small files are saved to the archive (commit it as
    jobs finish). An archive failure is logged and never fails a job.

    Args:
        folder: The archive folder (e.g. ``docs/results/study_cpu/jobs``); null disables the callback.
    """

    def __init__(self, folder: str | None = None) -> None:
        self.folder = Path(folder) if folder else None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Restore archived jobs into ``hydra.sweep.dir`` before the first job runs."""
        if self.folder is None:
            return
        from rigsa_lightning.report.archive import restore

        restored = restore(self.folder, Path(str(config.hydra.sweep.dir)))
        if restored:
            log.info("archive: restored %d completed job(s) from %s", len(restored), self.folder)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Save this job's folder to the archive when it completed."""
        if self.folder is None:
            return
        try:
            from rigsa_lightning.report.archive import copy_job, is_completed, restore_config, same_run

            # Hydra gives the job's folder absolute and the sweep's as written (often relative to the launch dir)
            job = Path(str(config.hydra.runtime.output_dir)).resolve()
            sweep = Path(str(config.hydra.sweep.dir)).resolve()
            archived = self.folder / job.relative_to(sweep)
            if is_completed(job) and same_run(job, archived):
                # skipped by this rerun: the archive already holds it, and keeps the config it ran with
                if restore_config(archived, job):
                    log.info("archive: %s's config restored from %s", job.name, self.folder)
            elif is_completed(job):
                copy_job(job, archived)
                log.info("archive: saved %s to %s", job.name, self.folder)
        except Exception as exc:  # noqa: BLE001 - the job's own folder is intact; `archive save` redoes this
            log.error("archive failed for this job: %s: %s", type(exc).__name__, exc)
