"""The learning-rate search's own table (``+sweep=lr_search``): one row per method x learning rate with the
selection criterion (final validation accuracy, Wilson 95 % interval over the validation images), the test
accuracy and train time, and the selected rate per method (the highest validation accuracy; ties go to the
smaller rate). Jobs that did not complete are listed as such, so a partial search is visible as partial.

    python -m rigsa_lightning.report.lr_table docs/results/lr_search/jobs     # writes lr_search.md / .csv there
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rigsa_lightning.config.access import get
from rigsa_lightning.report.jobs import Job, _sweep_command, find_job_dirs, load_job, val_along
from rigsa_lightning.report.statistics import wilson

COLUMNS = (
    "method",
    "name",
    "lr",
    "status",
    "val_acc",
    "val_lo",
    "val_hi",
    "n_val",
    "val_along",
    "val_loss",
    "test_acc",
    "train_min",
    "option",
)


# The rates a search may vary: a phase's own rate (pruning.final_lr: RIGSA's final retraining) before adapter.lr.
SEARCHED_KEYS = ("pruning.final_lr", "adapter.lr")


def sweeper_params(job: Job, root: Path | None = None) -> dict[str, Any]:
    """``hydra.sweeper.params`` of a job's ``.hydra/hydra.yaml`` (empty when absent)."""
    path = (Path(root) / job.rel if root is not None else Path(job.path)) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    return dict(hydra.get("sweeper", {}).get("params") or {})


def searched_key(job: Job) -> str:
    """The rate a pilot was searched over: the first of :data:`SEARCHED_KEYS` among its sweeper's params."""
    params = sweeper_params(job)
    return next((k for k in SEARCHED_KEYS if k in params), "adapter.lr")


def phase_of(name: str, method: str) -> str:
    """The searched phase of a pilot: its run name without the ``_lr<rate>`` suffix (``rigsa_final``,
    ``random_ticket``, ...), else its method."""
    match = re.fullmatch(r"(.+)_lr[-+.0-9eE]+", name)
    return match.group(1) if match else method


def study_option(searched: str, method: str) -> str:
    """The study's option a searched rate goes into (``conf/sweep/study*.yaml``): ``final_lr_by_method.<method>``
    for a final-retraining rate (``pruning.final_lr``), else ``lr_by_method.<method>``."""
    return f"{'final_lr_by_method' if searched == 'pruning.final_lr' else 'lr_by_method'}.{method}"


def lr_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per job: the searched phase (column ``method``), its learning rate, validation accuracy with its
    Wilson interval, test accuracy; sorted by phase and rate."""
    return _by_phase_and_rate(lr_rows_unsorted(jobs))


def _by_phase_and_rate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["method"], r["lr"]))


def is_pilot(job: Job) -> bool:
    """Whether ``job`` is a pilot: its sweep varied a rate (not the search's anchor, whose sweep varied none)."""
    params = sweeper_params(job)
    return not params or any(k in params for k in SEARCHED_KEYS)


def load_pilots(folder: str | Path) -> list[Job]:
    """The pilots (:func:`is_pilot`) among the job folders under ``folder`` (a search's sweep or archive folder)."""
    root = Path(folder)
    return [job for job in (load_job(p, root) for p in find_job_dirs(root)) if is_pilot(job)]


def tried_rates(rows: Sequence[dict[str, Any]], phase: str) -> set[float]:
    """The rates of ``phase``'s completed pilots."""
    return {r["lr"] for r in rows if r["method"] == phase and r["status"] == "completed"}


def lr_rows_unsorted(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """:func:`lr_rows` in the order of ``jobs``, pilots only (:func:`is_pilot`)."""
    rows = []
    for job in filter(is_pilot, jobs):
        cfg = job.config or {}
        m = job.metrics
        val = m.get("final_val/acc")
        n_val = int(get(cfg, "data.val_size", 0) or 0)
        ci = wilson(float(val) * n_val, n_val) if isinstance(val, (int, float)) and n_val else None
        name = str(m.get("name") or get(cfg, "name", job.rel))
        method = str(m.get("method") or get(cfg, "adapter.method", "?"))
        key = searched_key(job)
        rate = get(cfg, key, None)
        adapter_method = str(get(cfg, "adapter.method", None) or method)
        rows.append(
            {
                "method": phase_of(name, method),
                "name": name,
                "lr": float(rate) if rate is not None else math.nan,
                "status": job.status,
                "val_acc": float(val) if ci else math.nan,
                "val_lo": ci.lo if ci else math.nan,
                "val_hi": ci.hi if ci else math.nan,
                "n_val": n_val,
                "val_along": " ".join(f"{v:.3f}" for v in val_along(job)),
                "val_loss": float(m.get("final_val/loss", math.nan)),
                "test_acc": float(m.get("textual_mnist/acc", math.nan)),
                "train_min": float(m.get("time/train_s", math.nan)) / 60,
                "option": study_option(key, adapter_method),
            }
        )
    return rows


def selected(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The selected row per method: the highest validation accuracy among completed jobs (ties: smaller rate)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "completed" or math.isnan(row["val_acc"]):
            continue
        cur = best.get(row["method"])
        if cur is None or (row["val_acc"], -row["lr"]) > (cur["val_acc"], -cur["lr"]):
            best[row["method"]] = row
    return best


def grid_rates(root: Path, jobs: Sequence[Job]) -> set[float]:
    """The learning rates of the search's grid: ``hydra.sweeper.params['adapter.lr']`` of its jobs (union)."""
    rates: set[float] = set()
    for job in jobs:
        params = sweeper_params(job, root)
        value = next((params[k] for k in SEARCHED_KEYS if k in params), None)
        for text in str(value or "").split(","):
            try:
                rates.add(float(text))
            except ValueError:
                continue
    return rates


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f}"


def markdown(
    rows: Sequence[dict[str, Any]],
    command: str | None,
    rates: set[float] | dict[str, set[float]] | None = None,
) -> str:
    """The table as Markdown (selected rates in bold), with the command and the selection rule. A method with a
    job not completed, or with fewer completed rates than the grid's ``rates``, shows its best so far."""
    best = selected(rows)
    lines = [
        "# Learning-rate search",
        "",
        f"Command: `{command}`" if command else "Each pilot's command line: `<job>/.hydra/overrides.yaml`.",
        "",
        "Selection: the highest final validation accuracy per method (ties: the smaller rate); 95 % Wilson "
        "intervals over the validation images; every validation of the run in order and the final validation loss "
        "beside it (shown, not used to select). A method with fewer "
        "completed rates than the grid has (the same number of pilots per method) shows its best so far (the search "
        "is resumable); train times include any other load on the machine.",
        "",
        "| method | learning rate | status | val acc (%) [95 % CI] | val acc along training (%) | val loss "
        "| test acc (%) | train (min) | selected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pending = {r["method"] for r in rows if r["status"] != "completed"}
    for method in {r["method"] for r in rows}:
        done = {r["lr"] for r in rows if r["method"] == method and r["status"] == "completed"}
        grid = rates.get(method, set()) if isinstance(rates, dict) else rates
        if grid and len(done) < len(grid):
            pending.add(method)
    for r in rows:
        val = (
            f"{_pct(r['val_acc'])} [{_pct(r['val_lo'])}, {_pct(r['val_hi'])}]"
            if not math.isnan(r["val_acc"])
            else "—"
        )
        chosen = best.get(r["method"]) is r
        train = "—" if math.isnan(r["train_min"]) else f"{r['train_min']:.0f}"
        loss = "—" if math.isnan(r["val_loss"]) else f"{r['val_loss']:.3f}"
        along = " → ".join(_pct(float(v)) for v in r["val_along"].split()) or "—"
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['status']} | {val} | {along} | {loss} | {_pct(r['test_acc'])} "
            f"| {train} | "
            f"{('best so far' if r['method'] in pending else '**yes**') if chosen else ''} |"
        )
    return "\n".join(lines + _selection_lines(rows, best, pending)) + "\n"


def edge_of(rate: float, tried: set[float]) -> str | None:
    """``"top"`` / ``"bottom"`` when ``rate`` is the highest / lowest of several ``tried`` rates, else None."""
    if len(tried) < 2:
        return None
    return "top" if rate == max(tried) else "bottom" if rate == min(tried) else None


def _selection_lines(
    rows: Sequence[dict[str, Any]], best: dict[str, dict[str, Any]], pending: set[str]
) -> list[str]:
    """Per phase: the selected rate, the study option it goes into and where it sits among the rates tried; then
    the study overrides of the phases that are decided (complete, best inside the rates tried)."""
    if not best:
        return []
    lines = [
        "",
        "## The selected rates",
        "",
        "| phase | selected rate | study option | among the rates tried |",
        "|---|---|---|---|",
    ]
    decided = []
    for phase, row in sorted(best.items()):
        edge = edge_of(row["lr"], tried_rates(rows, phase))
        where = (
            f"{edge} edge: extend the grid {'above' if edge == 'top' else 'below'} it" if edge else "inside"
        )
        if phase in pending:
            where = "search not complete (best so far)"
        elif not edge:
            decided.append(f"{row['option']}={row['lr']:g}")
        lines.append(f"| {phase} | {row['lr']:g} | `{row['option']}` | {where} |")
    if decided:
        lines += ["", f"Study overrides of the decided phases: `{' '.join(decided)}`"]
    return lines


def write_lr_table(folder: str | Path) -> dict[str, Path]:
    """Write ``lr_search.md`` and ``lr_search.csv`` into ``folder`` (a search's sweep or archive folder)."""
    root = Path(folder)
    jobs = load_pilots(root)
    unsorted = lr_rows_unsorted(jobs)  # one pass over the jobs (each reads its metrics CSV), one row per job
    rows = _by_phase_and_rate(unsorted)
    command = None
    multirun = root / "multirun.yaml"
    if multirun.is_file():
        command = _sweep_command(root)
    md = root / "lr_search.md"
    grids: dict[str, set[float]] = {}
    for job, row in zip(jobs, unsorted, strict=True):  # the grid of each pilot's phase
        grids.setdefault(row["method"], set()).update(grid_rates(root, [job]))
    md.write_text(markdown(rows, command, grids))
    out = root / "lr_search.csv"
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return {"md": md, "csv": out}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rigsa_lightning.report.lr_table <folder>``."""
    parser = argparse.ArgumentParser(prog="python -m rigsa_lightning.report.lr_table")
    parser.add_argument("folder")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: folder: {args.folder} does not exist -> give the search's folder", file=sys.stderr)
        sys.exit(2)
    out = write_lr_table(args.folder)
    print(out["md"].read_text())


if __name__ == "__main__":
    main()
