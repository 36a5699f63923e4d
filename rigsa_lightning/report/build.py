"""The report's steps, in order: load the sweep's jobs, write the CSV tables, draw the figures, write
``results.md`` (and ``claims.md``), optionally log to W&B. :func:`build_report` runs them all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.registry import gated_methods
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_write_text
from rigsa_lightning.report.figures import (
    FIGURE_CAPTIONS,
    FIGURES,
    CurveRun,
    forgetting_measures,
    plot_density_sweep,
    plot_forgetting_curves,
    plot_forgetting_vs_accuracy,
    plot_pruning_rounds,
)
from rigsa_lightning.report.job_table import jobs_markdown
from rigsa_lightning.report.jobs import Job, _finite, _sweep_command, _sweep_grid, find_job_dirs, load_job
from rigsa_lightning.report.table import (
    Column,
    _group_sort_key,
    _group_table,
    _md_table,
    _write_csv,
    aggregate,
    benchmark_metrics,
    eval_after_columns,
    metric_columns,
    run_row,
)
from rigsa_lightning.report.upload import log_to_wandb

log = logging.getLogger("rigsa_lightning.report")


def build_report(folder: str | Path, log_wandb: bool = False) -> dict[str, Any]:
    """Write ``results.csv``, ``runs.csv``, ``results.md`` and the figures into the multirun ``folder``.

    Returns a summary dict: ``folder``, ``results_csv``, ``results_md``, ``jobs_md``, ``runs_csv``, ``figures`` (name → path or
    None), ``notes`` (name → why a figure was skipped), ``rows`` (the aggregated rows), ``runs`` (per-run rows),
    ``failed`` and ``incomplete`` (job folders), ``wandb_mode``.

    Raises:
        ConfigError: the folder does not exist or holds no job folder.
    """
    folder, jobs = _load_sweep(folder)
    completed = [j for j in jobs if j.status == "completed"]
    tasks = benchmark_metrics(completed)
    runs = [run_row(j, tasks) for j in completed]
    quality, cost = metric_columns(tasks)
    at = next(i for i, c in enumerate(cost) if c.key == "eval_after_min") + 1
    cost[at:at] = eval_after_columns(runs)  # the end evaluation's parts, after its total
    groups = aggregate(runs, quality + cost)
    title = folder.name
    results_csv, runs_csv = _write_csvs(folder, runs, groups, tasks, quality + cost)
    figures, notes = draw_figures(folder, title, completed, runs, groups, tasks)
    results_md = _write_results_md(folder, title, jobs, groups, quality, cost, figures, notes)
    jobs_md = atomic_write_text(folder / "jobs.md", f"# Jobs of `{title}`\n\n" + jobs_markdown(jobs))
    wandb_mode = log_to_wandb(folder, groups, figures, jobs) if log_wandb else None
    return {
        "folder": folder,
        "results_csv": results_csv,
        "results_md": results_md,
        "jobs_md": jobs_md,
        "runs_csv": runs_csv,
        "figures": figures,
        "notes": notes,
        "rows": groups,
        "runs": runs,
        "failed": [j.rel for j in jobs if j.status == "failed"],
        "incomplete": [j.rel for j in jobs if j.status == "incomplete"],
        "wandb_mode": wandb_mode,
    }


# ------------------------------------------------------------------------------------------------------- jobs
def _shown_path(folder: Path) -> Path:
    """``folder`` relative to the working directory when it lies inside it (a committed report names no machine's
    absolute path), else as it is."""
    try:
        return folder.relative_to(Path.cwd().resolve())
    except ValueError:
        return folder


def _load_sweep(folder: str | Path) -> tuple[Path, list[Job]]:
    """The resolved sweep folder and its jobs (ConfigError when it is not a folder or holds no job folder)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            "folder",
            f"{folder} is not a folder",
            "pass a multirun folder: outputs/multiruns/<date>/<time>_<task>",
        )
    job_dirs = find_job_dirs(folder)
    if not job_dirs:
        raise ConfigError(
            "folder",
            f"{folder} holds no job folders (nothing with metrics.json, failed.json or .hydra/ below it)",
            "pass a multirun folder such as outputs/multiruns/<date>/<time>_sweep_smoke",
        )
    return folder, [load_job(p, folder) for p in job_dirs]


# ------------------------------------------------------------------------------------------------------ tables
def _write_csvs(
    folder: Path,
    runs: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    tasks: dict[str, str],
    columns: list[Column],
) -> tuple[Path, Path]:
    """``results.csv`` (one row per group; adds ``<task>_metric`` to every group row) and ``runs.csv``."""
    csv_cols = ["method", "name", "n_seeds", "seeds"]
    csv_cols += [f"{task}_metric" for task in tasks]
    for c in columns:
        csv_cols += [f"{c.key}_mean", f"{c.key}_std"]
    for g in groups:
        for task, metric in tasks.items():
            g[f"{task}_metric"] = metric
    results_csv = _write_csv(folder / "results.csv", groups, csv_cols)
    run_cols = (
        ["job", "method", "name", "seed"] + [f"{task}_before" for task in tasks] + [c.key for c in columns]
    )
    runs_sorted = sorted(
        runs, key=lambda r: (_group_sort_key(r["method"], r["name"], r["density"]), str(r["seed"]))
    )
    runs_csv = _write_csv(folder / "runs.csv", runs_sorted, run_cols)
    return results_csv, runs_csv


# ----------------------------------------------------------------------------------------------------- figures
def _try_figure(
    name: str,
    notes: dict[str, str],
    figures: dict[str, Path | None],
    make: Callable[[], Path],
    why_empty: str | None,
) -> None:
    """Draw one figure with ``make`` into ``figures[name]``, or note why not (``why_empty``, or its error)."""
    if why_empty:
        notes[name] = why_empty
        figures[name] = None
        return
    try:
        figures[name] = make()
    except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the tables
        log.exception("report: figure %s failed", name)
        notes[name] = f"failed to draw ({type(exc).__name__}: {exc})"
        figures[name] = None


def _forget_curves(completed: list[Job]) -> list[CurveRun]:
    """Every run that recorded a forgetting curve, with how many of its points precede its last training phase and
    where that phase starts when it starts from the base model again (:func:`~rigsa_lightning.report.matching.phase_start`)."""
    from rigsa_lightning.report.matching import PHASE_START, compared_phase

    runs = []
    for j in completed:
        points = j.metrics.get("forget_curve")
        if isinstance(points, list) and points:
            compared = compared_phase(points, j.config, j.metrics)
            start = compared[0] if compared and compared[0].get(PHASE_START) else None
            runs.append(
                CurveRun(
                    j.metrics.get("method"),
                    str(j.metrics.get("name")),
                    j.metrics.get("seed"),
                    points,
                    len(points) - (len(compared) - (start is not None)),
                    start["val_acc"] if start is not None else None,
                )
            )
    return runs


def _pruning_histories(completed: list[Job]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """``(experiment name, seed index, prune/history)`` of every run with a pruning history, by name then seed."""
    histories: list[tuple[str, int, list[dict[str, Any]]]] = []
    seen: dict[str, int] = {}
    for j in sorted(completed, key=lambda j: (str(j.metrics.get("name")), str(j.metrics.get("seed")))):
        hist = j.metrics.get("prune/history")
        hist = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
        if hist:
            name = str(j.metrics.get("name") or j.rel)
            histories.append((name, seen.get(name, 0), hist))
            seen[name] = seen.get(name, 0) + 1
    return histories


def draw_figures(
    folder: Path,
    title: str,
    completed: list[Job],
    runs: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    tasks: dict[str, str],
) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Draw every figure of :data:`FIGURES` into ``folder`` as ``<name>.png``.

    Returns ``(figures, notes)``: name → path (None when not drawn) and name → why it was not drawn (nothing to
    plot, or the error of a figure that failed: one broken figure never loses the tables).
    """
    figures: dict[str, Path | None] = {}
    notes: dict[str, str] = {}
    measures = forgetting_measures(runs, tasks)
    _try_figure(
        "forgetting_vs_accuracy",
        notes,
        figures,
        lambda: plot_forgetting_vs_accuracy(runs, measures, folder / "forgetting_vs_accuracy.png", title),
        None
        if measures and any(_finite(r["tm_acc"]) for r in runs)
        else "no run has both a Textual MNIST accuracy and a forgetting measure (benchmark Δ or drift KL)",
    )
    curves = _forget_curves(completed)
    _try_figure(
        "forgetting_curves",
        notes,
        figures,
        lambda: plot_forgetting_curves(curves, folder / "forgetting_curves.png", title),
        None if curves else "no run recorded a forgetting curve (eval.curve.enabled=true)",
    )
    has_gated = any(r["method"] in gated_methods() and _finite(r["density"]) for r in runs)
    _try_figure(
        "density_sweep",
        notes,
        figures,
        lambda: plot_density_sweep(runs, groups, measures, folder / "density_sweep.png", title),
        None if has_gated else "no RIGSA or random-mask run with a known density",
    )
    histories = _pruning_histories(completed)
    _try_figure(
        "pruning_rounds",
        notes,
        figures,
        lambda: plot_pruning_rounds(histories, folder / "pruning_rounds.png", title),
        None if histories else "no run has a pruning history (prune/history)",
    )
    return figures, notes


# -------------------------------------------------------------------------------------------------- results.md
def _write_results_md(
    folder: Path,
    title: str,
    jobs: list[Job],
    groups: list[dict[str, Any]],
    quality: list[Column],
    cost: list[Column],
    figures: dict[str, Path | None],
    notes: dict[str, str],
) -> Path:
    """Write ``results.md``: header, the two tables, the claims (when they can be measured), figures, failed jobs."""
    completed = [j for j in jobs if j.status == "completed"]
    md = _header_lines(folder, title, jobs)
    md += _tables_lines(groups, quality, cost, completed)
    md += ["Each job's own numbers (what it was given and what it measured): [jobs.md](jobs.md)", ""]
    md += _claims_lines(folder, title, completed)
    md += _figures_lines(figures, notes)
    md.append(_failed_section(jobs))
    return atomic_write_text(folder / "results.md", "\n".join(md).rstrip() + "\n")


def _header_lines(folder: Path, title: str, jobs: list[Job]) -> list[str]:
    """The title, folder, sweep command and grid, job counts and how to rebuild the report."""
    completed = [j for j in jobs if j.status == "completed"]
    failed = [j for j in jobs if j.status == "failed"]
    incomplete = [j for j in jobs if j.status == "incomplete"]
    md: list[str] = [f"# Sweep report: `{title}`", ""]
    shown = _shown_path(folder)
    md.append(f"Folder: `{shown}`  ")
    command = _sweep_command(folder)
    if command:
        md.append(f"Command: `{command}`  ")
    grid = _sweep_grid(folder)
    if grid:
        md.append(f"Grid (hydra.sweeper.params): {grid}  ")
    md.append(
        f"Jobs: {len(jobs)} — {len(completed)} completed, {len(failed)} failed, {len(incomplete)} incomplete. "
        f"Rebuild: `python -m rigsa_lightning.report {shown}`"
    )
    md.append("")
    return md


def _tables_lines(
    groups: list[dict[str, Any]], quality: list[Column], cost: list[Column], completed: list[Job]
) -> list[str]:
    """The accuracy/forgetting and cost tables with how to read them (a one-line note when nothing completed)."""
    md: list[str] = []
    if groups:
        md += ["## Accuracy and forgetting", "", _group_table(groups, quality), ""]
        md += ["## Cost", "", _group_table(groups, cost), ""]
        skipped_any = sorted(
            {str(t) for j in completed for t in (j.metrics.get("forget/skipped") or []) if isinstance(t, str)}
        )
        md += [
            "Mean ± sample standard deviation over seeds (a single seed shows the mean only); a cell ending in "
            "(k of n runs) averages the k runs that recorded it. Accuracies in %, "
            "Δ = after − before training in percentage points (negative = forgetting). "
            "Textual MNIST acc: argmax over the ten digit tokens at the answer position; gen acc: greedy generation. "
            "Drift KL: KL(base ‖ tuned) of next-token distributions on fixed prompts; drift ΔNLL: change of the loss "
            "on the base model's own answers (both 0 for an unchanged model). "
            "Density: fraction of ΔW entries kept (gated methods). Adapter MB: size of the exported adapter "
            "(10^6 bytes). Train / job time of a resumed run: the whole run's (its checkpoints carry the stage "
            "totals), without the time lost to the interruption. "
            "— = not measured for this row (method without it, or benchmark skipped).",
            "",
        ]
        if skipped_any:
            md += [f"Forgetting benchmarks skipped in at least one run: {', '.join(skipped_any)}.", ""]
    else:
        md += ["No job completed: no results to tabulate.", ""]
    return md


def _claims_lines(folder: Path, title: str, completed: list[Job]) -> list[str]:
    """The paper's claims (also written to ``claims.md``) when RIGSA and a baseline (QLoRA or random mask) ran."""
    md: list[str] = []
    if any(j.metrics.get("method") == "rigsa" for j in completed) and any(
        j.metrics.get("method") in ("qlora", "random_mask") for j in completed
    ):
        from rigsa_lightning.report.claims import claims_markdown, dense_step_markdown, evaluate_claims

        claims_md = claims_markdown(evaluate_claims(completed))
        dense = dense_step_markdown(completed)
        if dense:
            claims_md += "\n" + dense
        atomic_write_text(
            folder / "claims.md", f"# The paper's claims, re-measured: `{title}`\n\n" + claims_md
        )
        md += ["## The paper's claims", "", claims_md]
    return md


def _figures_lines(figures: dict[str, Path | None], notes: dict[str, str]) -> list[str]:
    """One image link per drawn figure, else a line saying why it was not drawn."""
    md = ["## Figures", ""]
    for name in FIGURES:
        if figures.get(name) is not None:
            md += [f"![{FIGURE_CAPTIONS[name]}]({name}.png)", ""]
        else:
            md += [f"- `{name}.png`: not drawn — {notes.get(name, 'no data')}.", ""]
    return md


def _failed_section(jobs: list[Job]) -> str:
    """The "Failed / incomplete jobs" section: one table row per job that did not complete, with its error."""
    bad = [j for j in jobs if j.status != "completed"]
    lines = ["## Failed / incomplete jobs", ""]
    if not bad:
        return "\n".join(lines + ["None: every job completed.", ""])
    rows = []
    for j in bad:
        err = " ".join(j.error.split())
        rows.append([f"`{j.rel}`", j.status, " ".join(j.overrides) or "—", err[:400] or "—"])
    return "\n".join(lines + [_md_table(["job folder", "status", "overrides", "error"], rows), ""])
