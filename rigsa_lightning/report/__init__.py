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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigsa_lightning.errors import ConfigError
from rigsa_lightning.io import atomic_write, atomic_write_text

log = logging.getLogger("rigsa_lightning.report")

NAN = float("nan")

# Display order of methods in tables and legends, and one colour per method in every figure.
METHOD_ORDER: dict[str, int] = {"none": 0, "rigsa": 1, "random_mask": 2, "lora": 3, "qlora": 4, "full": 5}
METHOD_COLORS: dict[str, str] = {
    "none": "#555555",
    "rigsa": "#1f77b4",
    "random_mask": "#ff7f0e",
    "lora": "#2ca02c",
    "qlora": "#d62728",
    "full": "#9467bd",
}
METHOD_LABELS: dict[str, str] = {
    "none": "zero-shot",
    "rigsa": "RIGSA",
    "random_mask": "random mask",
    "lora": "LoRA",
    "qlora": "QLoRA (4-bit)",
    "full": "full fine-tuning",
}
GATED = ("rigsa", "random_mask")
_EXTRA_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h"]

# Forgetting benchmarks in display order, their display names and the preferred metric (first one present wins;
# metric names are opaque strings after ``forget/<task>/``).
BENCHMARKS: dict[str, str] = {"piqa": "PIQA", "hellaswag": "HellaSwag", "gsm8k": "GSM8k"}
PREFERRED_METRICS: dict[str, list[str]] = {
    "piqa": ["acc", "acc_norm"],
    "hellaswag": ["acc", "acc_norm"],
    "gsm8k": ["exact_match_flexible-extract", "exact_match_strict-match"],
}
NON_BENCHMARK_KEYS = ("drift", "skipped")
# The continuous, lower-variance forgetting measure of each benchmark (issue 13): mean change of the gold choice's
# log-likelihood margin over the best wrong choice (nats), or of the reference solution's NLL per token (nats).
CONTINUOUS_MEASURES: dict[str, tuple[str, str]] = {
    "piqa": ("margin", "gold margin"),
    "hellaswag": ("margin", "gold margin"),
    "gsm8k": ("gold_nll", "gold NLL/token"),
}
FIGURES = ("forgetting_vs_accuracy", "forgetting_curves", "density_sweep", "pruning_rounds")
_SKIP_DIRS = {"wandb", "checkpoints", "adapter", "csv", "lightning_logs", "__pycache__"}
_MAX_DEPTH = 4


# --------------------------------------------------------------------------------------------------- job discovery
@dataclass
class Job:
    """One job folder of the sweep and what it left behind."""

    path: Path
    rel: str
    status: str  # completed | failed | incomplete
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    error: str = ""


def _is_job_dir(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "failed.json").is_file() or (path / ".hydra").is_dir()


def find_job_dirs(folder: Path) -> list[Path]:
    """Job folders under ``folder`` (or ``folder`` itself when it is a single run), sorted by job number."""
    if _is_job_dir(folder):
        return [folder]
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in _SKIP_DIRS:
                continue
            if _is_job_dir(child):
                found.append(child)
            else:
                walk(child, depth + 1)

    walk(folder, 1)

    def job_key(p: Path) -> tuple[Any, ...]:
        rel = p.relative_to(folder)
        m = re.match(r"(\d+)_", p.name)
        return (str(rel.parent), int(m.group(1)) if m else 10**9, p.name)

    return sorted(found, key=job_key)


def _load_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _load_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations resolved where possible (None when unreadable)."""
    from omegaconf import OmegaConf

    try:
        conf = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - a broken file only loses optional information
        return None
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} interpolations outside a Hydra app
        return OmegaConf.to_container(conf, resolve=False)


def _last_log_line(path: Path) -> str:
    logs = sorted(path.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    try:
        lines = [ln.strip() for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def load_job(path: Path, root: Path) -> Job:
    """Read one job folder: completed (``metrics.json``), failed (``failed.json``) or incomplete (neither)."""
    rel = "." if path == root else str(path.relative_to(root))
    config = (
        _load_yaml(path / ".hydra" / "config.yaml") if (path / ".hydra" / "config.yaml").is_file() else None
    )
    overrides = (
        _load_yaml(path / ".hydra" / "overrides.yaml")
        if (path / ".hydra" / "overrides.yaml").is_file()
        else None
    )
    job = Job(
        path=path,
        rel=rel,
        status="incomplete",
        config=config if isinstance(config, dict) else {},
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
    )
    metrics_file, failed_file = path / "metrics.json", path / "failed.json"
    metrics: Any = None
    metrics_error = ""
    if metrics_file.is_file():
        try:
            metrics = _load_json(metrics_file)
            if not isinstance(metrics, dict):
                metrics_error = "metrics.json is not a JSON object"
                metrics = None
        except (OSError, ValueError) as exc:
            metrics_error = f"unreadable metrics.json ({type(exc).__name__}: {exc})"
    completed = metrics is not None and metrics.get("status", "completed") == "completed"
    # A failed.json newer than metrics.json (e.g. a resumed run that then crashed) wins.
    if completed and failed_file.is_file() and failed_file.stat().st_mtime > metrics_file.stat().st_mtime:
        completed = False
    if completed:
        job.status, job.metrics = "completed", metrics
        return job
    if failed_file.is_file():
        job.status = "failed"
        try:
            info = _load_json(failed_file)
            job.error = str(info.get("error", "")) if isinstance(info, dict) else str(info)
        except (OSError, ValueError) as exc:
            job.error = f"unreadable failed.json ({type(exc).__name__})"
        return job
    if (path / "FAILED").is_file():
        job.status = "failed"
        job.error = (path / "FAILED").read_text(errors="replace").strip()
        return job
    if metrics_error:
        job.status, job.error = "failed", metrics_error
        return job
    if metrics is not None:
        job.error = f"metrics.json has status {metrics.get('status')!r} (not completed)"
        return job
    last = _last_log_line(path)
    job.error = "no metrics.json or failed.json (still running, killed or crashed hard)"
    if last:
        job.error += f"; last log line: {last}"
    return job


# ----------------------------------------------------------------------------------------------- per-run metrics
def _num(value: Any) -> float:
    """A finite float or NaN (strings such as "nan" or "N/A", None, lists → NaN)."""
    if isinstance(value, bool) or value is None:
        return NAN
    try:
        out = float(value)
    except (TypeError, ValueError):
        return NAN
    return out if math.isfinite(out) else NAN


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cfg_get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def benchmark_metrics(jobs: Iterable[Job]) -> dict[str, str]:
    """The benchmark metric shown per forgetting task: ``{task: metric}`` (preferred names first)."""
    available: dict[str, set[str]] = {}
    pattern = re.compile(r"^forget/([^/]+)/(.+)/(before|after|delta)$")
    for job in jobs:
        for key in job.metrics:
            m = pattern.match(key)
            if m and m.group(1) not in NON_BENCHMARK_KEYS:
                available.setdefault(m.group(1), set()).add(m.group(2))
    tasks = [t for t in BENCHMARKS if t in available] + sorted(t for t in available if t not in BENCHMARKS)
    chosen: dict[str, str] = {}
    for task in tasks:
        prefs = [m for m in PREFERRED_METRICS.get(task, []) if m in available[task]]
        chosen[task] = prefs[0] if prefs else sorted(available[task])[0]
    return chosen


def short_metric(metric: str) -> str:
    """A compact display name of an lm-eval metric (``exact_match_flexible-extract`` -> ``EM flexible-extract``)."""
    return metric.replace("exact_match_", "EM ").replace("exact_match", "EM")


def _density(job: Job) -> float:
    """Adapter density: ``adapter/density`` or, for gated methods, from the job's config."""
    d = _num(job.metrics.get("adapter/density"))
    if _finite(d):
        return d
    method = job.metrics.get("method")
    if method == "random_mask":
        d = _num(_cfg_get(job.config, "adapter.density"))
        if _finite(d):
            return d
    if method in GATED:
        s = _num(_cfg_get(job.config, "pruning.sparsity"))
        if _finite(s):
            return 1.0 - s
    if method == "full":
        return 1.0
    return NAN


def run_row(job: Job, tasks: dict[str, str]) -> dict[str, Any]:
    """The flat, canonical metrics of one completed run (NaN where absent or skipped)."""
    m = job.metrics
    cfg_name = _cfg_get(job.config, "name")
    seed = m.get("seed", _cfg_get(job.config, "seed"))
    row: dict[str, Any] = {
        "job": job.rel,
        "method": str(m.get("method") or _cfg_get(job.config, "adapter.method") or "unknown"),
        "name": str(m.get("name") or cfg_name or job.path.name),
        "seed": int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else seed,
        "tm_acc": _num(m.get("textual_mnist/acc")),
        "tm_gen_acc": _num(m.get("textual_mnist/gen_acc")),
        "zs_acc": _num(m.get("textual_mnist/zero_shot_acc")),
        "zs_gen_acc": _num(m.get("textual_mnist/zero_shot_gen_acc")),
    }
    skipped = m.get("forget/skipped") or []
    skipped = {str(s) for s in skipped} if isinstance(skipped, (list, tuple)) else set()
    for task, metric in tasks.items():
        base = f"forget/{task}/{metric}"
        before, after, delta = (_num(m.get(f"{base}/{k}")) for k in ("before", "after", "delta"))
        if not _finite(delta) and _finite(before) and _finite(after):
            delta = after - before
        if task in skipped:
            before = after = delta = NAN
        row[f"{task}_before"], row[f"{task}_after"], row[f"{task}_delta"] = before, after, delta
        # the paired 95% CI over items of this run's change, and McNemar's p (issue 13)
        lo, hi, p = (_num(m.get(f"{base}/delta_{k}")) for k in ("ci_lo", "ci_hi", "p"))
        row[f"{task}_delta_ci"] = (
            (hi - lo) / 2 if _finite(lo) and _finite(hi) and task not in skipped else NAN
        )
        row[f"{task}_delta_p"] = p if task not in skipped else NAN
        if task in CONTINUOUS_MEASURES:
            name = CONTINUOUS_MEASURES[task][0]
            cont = _num(m.get(f"forget/{task}/{name}/delta"))
            lo, hi = (_num(m.get(f"forget/{task}/{name}/delta_{k}")) for k in ("ci_lo", "ci_hi"))
            skip = task in skipped
            row[f"{task}_{name}_delta"] = NAN if skip else cont
            row[f"{task}_{name}_delta_ci"] = (
                (hi - lo) / 2 if _finite(lo) and _finite(hi) and not skip else NAN
            )
    row["drift_kl"] = _num(m.get("forget/drift/kl/after"))
    nll_delta = _num(m.get("forget/drift/nll/delta"))
    if not _finite(nll_delta):
        nll_before, nll_after = _num(m.get("forget/drift/nll/before")), _num(m.get("forget/drift/nll/after"))
        nll_delta = nll_after - nll_before if _finite(nll_before) and _finite(nll_after) else NAN
    row["drift_nll_delta"] = nll_delta
    row["density"] = _density(job)
    row["trainable"] = _num(m.get("params/trainable"))
    row["adapter_nnz"] = _num(m.get("params/adapter_nnz"))
    size = _num(m.get("adapter/bytes"))
    row["adapter_mb"] = size / 1e6 if _finite(size) else NAN
    train_s = _num(m.get("time/train_s"))
    row["train_min"] = train_s / 60 if _finite(train_s) else NAN
    total_s = _num(m.get("time/total_s"))
    row["total_min"] = total_s / 60 if _finite(total_s) else NAN
    row["peak_rss_gb"] = _num(m.get("memory/peak_rss_gb"))
    return row


@dataclass
class Column:
    """One aggregated metric: its key in the run rows, its header and how ``results.md`` formats it."""

    key: str
    label: str
    kind: str  # acc (fraction → %), delta (fraction → signed pp), float, count, mb, min, gb
    ci: str | None = (
        None  # run-row key of the per-run 95% CI half-width over items (paired bootstrap), if any
    )


def metric_columns(tasks: dict[str, str]) -> tuple[list[Column], list[Column]]:
    """The columns of the quality table (accuracy, forgetting) and of the cost table."""
    quality = [
        Column("tm_acc", "Textual MNIST acc (%)", "acc"),
        Column("tm_gen_acc", "gen acc (%)", "acc"),
        Column("zs_acc", "zero-shot acc (%)", "acc"),
    ]
    for task, metric in tasks.items():
        label = BENCHMARKS.get(task, task)
        quality.append(Column(f"{task}_after", f"{label} {short_metric(metric)} after (%)", "acc"))
        quality.append(Column(f"{task}_delta", f"{label} Δ (pp) [± item CI]", "delta", ci=f"{task}_delta_ci"))
        if task in CONTINUOUS_MEASURES:
            name, text = CONTINUOUS_MEASURES[task]
            quality.append(
                Column(
                    f"{task}_{name}_delta",
                    f"{label} Δ {text} [± item CI]",
                    "float",
                    ci=f"{task}_{name}_delta_ci",
                )
            )
    quality += [Column("drift_kl", "drift KL", "float"), Column("drift_nll_delta", "drift ΔNLL", "float")]
    cost = [
        Column("density", "density (%)", "acc"),
        Column("trainable", "trainable params", "count"),
        Column("adapter_nnz", "non-zero adapter entries", "count"),
        Column("adapter_mb", "adapter MB", "mb"),
        Column("train_min", "train time (min)", "min"),
        Column("peak_rss_gb", "peak RSS (GB)", "gb"),
    ]
    return quality, cost


# ---------------------------------------------------------------------------------------------------- aggregation
def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [v for v in values if _finite(v)]
    n = len(vals)
    if n == 0:
        return NAN, NAN, 0
    mean = sum(vals) / n
    if n == 1:
        return mean, NAN, 1
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var), n


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _group_sort_key(method: str, name: str, density: float) -> tuple[Any, ...]:
    order = METHOD_ORDER.get(method, len(METHOD_ORDER))
    dens = -density if _finite(density) else 1.0  # denser first; unknown density last within a method
    return (order, method, dens, _natural_key(name))


def aggregate(runs: list[dict[str, Any]], columns: Sequence[Column]) -> list[dict[str, Any]]:
    """One row per (method, name): ``<key>_mean``, ``<key>_std`` (sample std), ``n_seeds``, ``seeds``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["name"]), []).append(r)
    rows = []
    for (method, name), members in groups.items():
        seeds = sorted((r["seed"] for r in members), key=lambda s: (str(type(s)), s))
        row: dict[str, Any] = {
            "method": method,
            "name": name,
            "n_seeds": len(members),
            "seeds": " ".join(str(s) for s in seeds),
        }
        for col in columns:
            mean, std, _ = _mean_std([r.get(col.key, NAN) for r in members])
            row[f"{col.key}_mean"], row[f"{col.key}_std"] = mean, std
            if col.ci:  # the typical per-run item CI half-width (RMS over the group's runs)
                cis = [r.get(col.ci, NAN) for r in members if _finite(r.get(col.ci, NAN))]
                row[f"{col.key}_ci"] = math.sqrt(sum(c * c for c in cis) / len(cis)) if cis else NAN
        rows.append(row)
    rows.sort(key=lambda r: _group_sort_key(r["method"], r["name"], r.get("density_mean", NAN)))
    return rows


# ------------------------------------------------------------------------------------------------------ formatting
def _fmt_count(v: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}"


def _fmt_value(v: float, kind: str) -> str:
    if kind == "acc":
        return f"{100 * v:.1f}" if abs(v) >= 0.001 or v == 0 else f"{100 * v:.3f}"
    if kind == "delta":
        return "0.0" if round(100 * v, 1) == 0 else f"{100 * v:+.1f}"
    if kind == "count":
        return _fmt_count(v)
    if kind in ("mb", "min", "gb"):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return f"{v:.3g}"


def format_cell(mean: float, std: float, kind: str, ci: float | None = None) -> str:
    """``mean ± std`` (std over seeds) in display units, then ``[± h]`` with the 95% CI half-width over items of a
    paired measure; ``—`` when there is no value (e.g. a skipped benchmark)."""
    if not _finite(mean):
        return "—"
    text = _fmt_value(mean, kind)
    if _finite(std) and kind not in ("count",):
        spread = _fmt_value(std, kind if kind != "delta" else "acc")
        text += f" ± {spread}"
    if ci is not None and _finite(ci):
        text += f" [± {_fmt_value(ci, kind if kind != 'delta' else 'acc')}]"
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_table(rows: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    header = ["method", "name", "seeds (n)"] + [c.label for c in columns]
    body = []
    for r in rows:
        cells = [METHOD_LABELS.get(r["method"], r["method"]), r["name"], str(r["n_seeds"])]
        cells += [
            format_cell(r[f"{c.key}_mean"], r[f"{c.key}_std"], c.kind, r.get(f"{c.key}_ci")) for c in columns
        ]
        body.append(cells)
    return _md_table(header, body)


def _sweep_command(folder: Path) -> str | None:
    """The command line of the sweep, from Hydra's ``multirun.yaml`` (None when absent)."""
    data = _load_yaml(folder / "multirun.yaml") if (folder / "multirun.yaml").is_file() else None
    overrides = _cfg_get(data, "hydra.overrides.task") if isinstance(data, dict) else None
    if not isinstance(overrides, list):
        return None
    return "python -m rigsa_lightning.train -m " + " ".join(str(o) for o in overrides)


def _sweep_grid(folder: Path) -> str | None:
    data = _load_yaml(folder / "multirun.yaml") if (folder / "multirun.yaml").is_file() else None
    params = _cfg_get(data, "hydra.sweeper.params") if isinstance(data, dict) else None
    if not isinstance(params, dict) or not params:
        return None
    return ", ".join(f"`{k}`: {v}" for k, v in params.items())


# --------------------------------------------------------------------------------------------------------- figures
def _save_png(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure atomically (temp file in the same folder, then ``os.replace``)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _new_figure(panels: int, width: float = 5.0, height: float = 4.0) -> tuple[Any, list[Any]]:
    """A figure with ``panels`` axes: one row up to three panels, else two per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = panels if panels <= 3 else 2
    nrows = math.ceil(panels / ncols)
    width = max(width, 7.0) if panels == 1 else width
    fig = Figure(figsize=(width * ncols + 0.4, height * nrows + 0.7), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.remove()
    for ax in axes[:panels]:
        ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig, axes[:panels]


def _method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


@dataclass
class Measure:
    """A forgetting measure plotted on a y axis: run-row key, axis label, and how to scale it."""

    key: str
    label: str  # y-axis label (names the benchmark)
    title: str  # panel title (metric and how to read it)
    scale: float  # 100 for fractions shown in percentage points, 1 otherwise
    reference: float | None  # value meaning "no forgetting" (a thin line), if any


def forgetting_measures(runs: list[dict[str, Any]], tasks: dict[str, str]) -> list[Measure]:
    """Benchmark deltas that have data; drift KL when no benchmark has any (benchmarks skipped)."""
    out = []
    for task, metric in tasks.items():
        if any(_finite(r.get(f"{task}_delta", NAN)) for r in runs):
            name = BENCHMARKS.get(task, task)
            out.append(
                Measure(
                    f"{task}_delta",
                    f"{name} Δ vs base (pp)",
                    f"{name} {short_metric(metric)}: below 0 = forgetting",
                    100,
                    0,
                )
            )
    for task in tasks:
        if task not in CONTINUOUS_MEASURES:
            continue
        name, text = CONTINUOUS_MEASURES[task]
        key = f"{task}_{name}_delta"
        if any(_finite(r.get(key, NAN)) for r in runs):
            label = BENCHMARKS.get(task, task)
            hint = "above 0 = forgetting" if name == "gold_nll" else "below 0 = forgetting"
            out.append(Measure(key, f"{label} Δ {text} (nats)", f"{label} {text}: {hint}", 1, 0))
    if not out and any(_finite(r.get("drift_kl", NAN)) for r in runs):
        out.append(
            Measure(
                "drift_kl",
                "drift KL(base ‖ tuned) on fixed prompts",
                "Drift (forgetting benchmarks skipped): higher = more drift",
                1,
                0,
            )
        )
    return out


def _legend_below(fig: Any, handles: list[Any], labels: list[str]) -> None:
    """A figure-level legend under the panels, as many columns as fit the figure's width."""
    if not handles:
        return
    width_px = fig.get_figwidth() * fig.dpi
    # ~7.5 px per character at fontsize 9 and dpi 120, plus the handle and the column gap
    entry_px = max(len(lab) for lab in labels) * 7.5 + 60
    ncol = max(1, min(len(labels), int(width_px // entry_px)))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def plot_forgetting_vs_accuracy(
    runs: list[dict[str, Any]], measures: list[Measure], path: Path, title: str
) -> Path:
    """One point per run: forgetting measure (y) against Textual MNIST accuracy (x), a colour per method."""
    from matplotlib.lines import Line2D

    pts = [r for r in runs if _finite(r["tm_acc"])]
    fig, axes = _new_figure(len(measures))
    names = sorted({(r["method"], r["name"]) for r in pts}, key=lambda mn: _group_sort_key(mn[0], mn[1], NAN))
    marker_of: dict[tuple[str, str], str] = {}
    per_method: dict[str, int] = {}
    for mn in names:
        i = per_method.get(mn[0], 0)
        marker_of[mn] = _MARKERS[i % len(_MARKERS)]
        per_method[mn[0]] = i + 1
    for ax, meas in zip(axes, measures):
        for mn in names:
            sel = [r for r in pts if (r["method"], r["name"]) == mn and _finite(r.get(meas.key, NAN))]
            if not sel:
                continue
            xs = [100 * r["tm_acc"] for r in sel]
            ys = [meas.scale * r[meas.key] for r in sel]
            errs = [meas.scale * r.get(f"{meas.key}_ci", NAN) for r in sel]
            if any(_finite(e) for e in errs):  # the run's paired 95% CI over items
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[e if _finite(e) else 0.0 for e in errs],
                    fmt="none",
                    ecolor=_method_color(mn[0]),
                    elinewidth=1.0,
                    capsize=3,
                    alpha=0.7,
                    zorder=1,
                )
            ax.scatter(
                xs,
                ys,
                color=_method_color(mn[0]),
                marker=marker_of[mn],
                s=60,
                alpha=0.85,
                edgecolors="black",
                linewidths=0.5,
                zorder=2,
            )
        if meas.reference is not None:
            ax.axhline(meas.reference, color="black", linewidth=0.8, alpha=0.5, zorder=0)
        ax.set_xlabel("Textual MNIST test accuracy (%)")
        ax.set_ylabel(meas.label)
        ax.set_title(meas.title, fontsize=10)
    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker=marker_of[mn],
            color=_method_color(mn[0]),
            markeredgecolor="black",
            markersize=8,
        )
        for mn in names
    ]
    labels = [f"{mn[1]} ({METHOD_LABELS.get(mn[0], mn[0])})" for mn in names]
    _legend_below(fig, handles, labels)
    fig.suptitle(f"Forgetting vs Textual MNIST accuracy (one point per run) — {title}", fontsize=11)
    return _save_png(fig, path)


def plot_forgetting_curves(
    curves: list[tuple[Any, str, Any, list[dict[str, Any]]]], path: Path, title: str
) -> Path:
    """One line per run: the paired change of each continuous forgetting measure (y, with its 95% item CI) at every
    validation against the validation accuracy there (x), a colour per method: methods compared at every accuracy
    level two of them pass through."""
    from matplotlib.lines import Line2D

    keys = sorted(
        {k for _, _, _, pts in curves for p in pts for k in p if k.endswith(("/margin", "/gold_nll"))},
        key=lambda k: (list(BENCHMARKS).index(k.split("/")[0]) if k.split("/")[0] in BENCHMARKS else 99, k),
    )
    fig, axes = _new_figure(max(1, len(keys)))
    for ax, key in zip(axes, keys):
        task, measure = key.split("/")
        for method, _name, _seed, pts in curves:
            sel = [p for p in pts if _finite(_num(p.get(key))) and _finite(_num(p.get("val_acc")))]
            if not sel:
                continue
            xs = [100 * p["val_acc"] for p in sel]
            ys = [p[key] for p in sel]
            lo = [p[key] - p.get(f"{key}_ci_lo", p[key]) for p in sel]
            hi = [p.get(f"{key}_ci_hi", p[key]) - p[key] for p in sel]
            color = _method_color(str(method))
            ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker="o", markersize=4, capsize=2, alpha=0.8)
        ax.axhline(0, color="black", linewidth=0.8, alpha=0.5, zorder=0)
        label = BENCHMARKS.get(task, task)
        what = (
            "gold margin (nats): below 0 = forgetting"
            if measure == "margin"
            else "gold NLL/token: above 0 = forgetting"
        )
        ax.set_title(f"{label} Δ {what}", fontsize=10)
        ax.set_xlabel("validation accuracy at the point (%)")
        ax.set_ylabel(f"{label} Δ vs base (nats)")
    methods = sorted({str(m) for m, _, _, _ in curves}, key=lambda m: METHOD_ORDER.get(m, 99))
    handles = [Line2D([], [], color=_method_color(m), marker="o") for m in methods]
    _legend_below(fig, handles, [METHOD_LABELS.get(m, m) for m in methods])
    fig.suptitle(f"Forgetting along training (one line per run, 95% item CIs) — {title}", fontsize=11)
    return _save_png(fig, path)


def _density_ticks(ax: Any, densities: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted({round(d, 6) for d in densities if _finite(d) and d > 0})
    if not ticks:
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    lo, hi = min(ticks), max(ticks)
    ax.set_xlim(lo / 1.6, hi * 1.6)


def plot_density_sweep(
    runs: list[dict[str, Any]], groups: list[dict[str, Any]], measures: list[Measure], path: Path, title: str
) -> Path:
    """Accuracy and forgetting against adapter density (log x) for RIGSA and the random mask, mean ± std."""
    from matplotlib.lines import Line2D

    panels = [
        Measure("tm_acc", "Textual MNIST test accuracy (%)", "Textual MNIST: higher = better", 100, None)
    ]
    panels += measures
    fig, axes = _new_figure(len(panels), width=4.8)
    gated = [r for r in runs if r["method"] in GATED and _finite(r["density"])]
    others = [g for g in groups if g["method"] not in GATED]
    handles: list[Any] = []
    labels: list[str] = []
    for ax, meas in zip(axes, panels):
        if meas.reference is not None:
            ax.axhline(meas.reference, color="black", linewidth=0.8, alpha=0.5, zorder=0)
        for m_idx, method in enumerate(GATED):
            sel = [r for r in gated if r["method"] == method and _finite(r.get(meas.key, NAN))]
            if not sel:
                continue
            color = _method_color(method)
            shift = 1.04**m_idx  # side by side at equal densities (log x)
            ax.scatter(
                [r["density"] * shift for r in sel],
                [meas.scale * r[meas.key] for r in sel],
                color=color,
                alpha=0.35,
                s=22,
                linewidths=0,
            )
            by_density: dict[float, list[float]] = {}
            for r in sel:
                by_density.setdefault(round(r["density"], 6), []).append(meas.scale * r[meas.key])
            xs = sorted(by_density)
            stats = [_mean_std(by_density[x]) for x in xs]
            ax.errorbar(
                [x * shift for x in xs],
                [s[0] for s in stats],
                yerr=[s[1] if _finite(s[1]) else 0.0 for s in stats],
                color=color,
                marker="o",
                markersize=6,
                linewidth=1.8,
                capsize=3,
            )
            label = f"{METHOD_LABELS.get(method, method)} (mean ± std over seeds)"
            if label not in labels:
                handles.append(Line2D([], [], color=color, marker="o", linewidth=1.8))
                labels.append(label)
        for i, g in enumerate(others):
            value = g.get(f"{meas.key}_mean", NAN)
            if not _finite(value):
                continue
            style = ["--", ":", "-."][i % 3]
            ax.axhline(meas.scale * value, color=_method_color(g["method"]), linestyle=style, linewidth=1.2)
            label = f"{g['name']} (mean over seeds)"
            if label not in labels:
                handles.append(
                    Line2D([], [], color=_method_color(g["method"]), linestyle=style, linewidth=1.2)
                )
                labels.append(label)
        _density_ticks(ax, [r["density"] for r in gated])
        ax.set_xlabel("adapter density (kept ΔW entries, log scale)")
        ax.set_ylabel(meas.label)
        ax.set_title(meas.title, fontsize=10)
    _legend_below(fig, handles, labels)
    fig.suptitle(f"Accuracy and forgetting vs adapter density — {title}", fontsize=11)
    return _save_png(fig, path)


_ROUND_PANELS: dict[str, tuple[str, str]] = {
    "alpha_mean": ("mean gate α", "Gate α (mean over adapted matrices)"),
    "density": ("adapter density after the round", "Density of the mask"),
    "sign_stable_fraction": ("fraction of alive entries", "Entries whose sign is stable"),
    "overlap_prev": ("overlap with previous mask", "Mask overlap with the previous round"),
}


def _series(hist: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(hist):
        y = _num(h.get(key))
        if not _finite(y):
            continue
        x = _num(h.get("round"))
        xs.append(x if _finite(x) else float(i + 1))
        ys.append(y)
    return xs, ys


def plot_pruning_rounds(
    histories: list[tuple[str, int, list[dict[str, Any]]]], path: Path, title: str
) -> Path:
    """Gate α and density (and sign stability/overlap when logged) per IMP round; one line per run.

    ``histories`` holds ``(experiment name, seed index, prune/history)``: a colour per experiment, a marker and
    line style per seed.
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    keys = ["alpha_mean", "density"]
    keys += [
        k for k in ("sign_stable_fraction", "overlap_prev") if any(_series(h, k)[0] for _, _, h in histories)
    ]
    fig, axes = _new_figure(len(keys), width=4.6)
    names = sorted({n for n, _, _ in histories}, key=_natural_key)
    cmap = colormaps["tab10"]
    color_of = {n: cmap(i % 10) for i, n in enumerate(names)}
    styles = ["-", "--", ":", "-."]
    rounds = sorted({x for _, _, h in histories for k in keys for x in _series(h, k)[0]})
    n_seeds = max((s for _, s, _ in histories), default=0) + 1
    for ax, key in zip(axes, keys):
        values: list[float] = []
        for name, seed_idx, hist in histories:
            xs, ys = _series(hist, key)
            if not xs:
                continue
            values += ys
            jitter = 0.06 * (seed_idx - (n_seeds - 1) / 2)  # seeds with equal values stay visible
            ax.plot(
                [x + jitter for x in xs],
                ys,
                color=color_of[name],
                linestyle=styles[seed_idx % len(styles)],
                marker=_MARKERS[seed_idx % len(_MARKERS)],
                linewidth=1.6,
                markersize=6,
                alpha=0.9,
            )
        ylabel, panel_title = _ROUND_PANELS[key]
        if key in ("density", "alpha_mean") and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
            ylabel += " (log scale)"
        if key in ("density", "sign_stable_fraction", "overlap_prev"):
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if rounds:
            ax.xaxis.set_major_locator(FixedLocator(rounds))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
        ax.set_xlabel("pruning round")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=10)
        if not values:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    handles = [Line2D([], [], color=color_of[n], linewidth=2.5) for n in names]
    labels = list(names)
    for s in range(n_seeds):
        handles.append(
            Line2D(
                [], [], color="black", linestyle=styles[s % len(styles)], marker=_MARKERS[s % len(_MARKERS)]
            )
        )
        labels.append(f"seed #{s + 1}")
    _legend_below(fig, handles, labels)
    fig.suptitle(f"Iterative magnitude pruning, per round (one line per run) — {title}", fontsize=11)
    return _save_png(fig, path)


# ---------------------------------------------------------------------------------------------------------- W&B
def log_to_wandb(
    folder: Path, rows: list[dict[str, Any]], figures: dict[str, Path | None], jobs: list[Job]
) -> str | None:
    """Log the results table and figures to a W&B run in the sweep's group; returns the mode used or None."""
    try:
        import wandb
    except ImportError:
        log.warning("report --wandb: wandb is not installed; skipped")
        return None
    from rigsa_lightning.tracking import resolve_wandb_mode

    cfg = next((j.config for j in jobs if j.config), {})
    project = _cfg_get(cfg, "logger.project") or "rigsa-lightning"
    entity = _cfg_get(cfg, "logger.entity")
    group = _cfg_get(cfg, "logger.group") or folder.name
    # Online only with an API key and a reachable server (or WANDB_MODE=online): never blocks on the network.
    # Jobs configured offline/disabled keep that choice for the report too.
    mode = resolve_wandb_mode("auto")
    job_mode = str(_cfg_get(cfg, "logger.mode") or "auto")
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


# ------------------------------------------------------------------------------------------------------- report
def _failed_section(jobs: list[Job]) -> str:
    bad = [j for j in jobs if j.status != "completed"]
    lines = ["## Failed / incomplete jobs", ""]
    if not bad:
        return "\n".join(lines + ["None: every job completed.", ""])
    rows = []
    for j in bad:
        err = " ".join(j.error.split())
        rows.append([f"`{j.rel}`", j.status, " ".join(j.overrides) or "—", err[:400] or "—"])
    return "\n".join(lines + [_md_table(["job folder", "status", "overrides", "error"], rows), ""])


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        )
    return atomic_write_text(path, buf.getvalue())


def _try_figure(
    name: str,
    notes: dict[str, str],
    figures: dict[str, Path | None],
    make: Callable[[], Path],
    why_empty: str | None,
) -> None:
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


def build_report(folder: str | Path, log_wandb: bool = False) -> dict[str, Any]:
    """Write ``results.csv``, ``runs.csv``, ``results.md`` and the figures into the multirun ``folder``.

    Returns a summary dict: ``folder``, ``results_csv``, ``results_md``, ``runs_csv``, ``figures`` (name → path or
    None), ``notes`` (name → why a figure was skipped), ``rows`` (the aggregated rows), ``runs`` (per-run rows),
    ``failed`` and ``incomplete`` (job folders), ``wandb_mode``.

    Raises:
        ConfigError: the folder does not exist or holds no job folder.
    """
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
    jobs = [load_job(p, folder) for p in job_dirs]
    completed = [j for j in jobs if j.status == "completed"]
    tasks = benchmark_metrics(completed)
    runs = [run_row(j, tasks) for j in completed]
    quality, cost = metric_columns(tasks)
    columns = quality + cost
    groups = aggregate(runs, columns)
    title = folder.name

    # ---------------------------------------------------------------- tables
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

    # ---------------------------------------------------------------- figures
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
    curves = [
        (
            j.metrics.get("method"),
            str(j.metrics.get("name")),
            j.metrics.get("seed"),
            j.metrics["forget_curve"],
        )
        for j in completed
        if isinstance(j.metrics.get("forget_curve"), list) and j.metrics["forget_curve"]
    ]
    _try_figure(
        "forgetting_curves",
        notes,
        figures,
        lambda: plot_forgetting_curves(curves, folder / "forgetting_curves.png", title),
        None if curves else "no run recorded a forgetting curve (eval.curve.enabled=true)",
    )
    has_gated = any(r["method"] in GATED and _finite(r["density"]) for r in runs)
    _try_figure(
        "density_sweep",
        notes,
        figures,
        lambda: plot_density_sweep(runs, groups, measures, folder / "density_sweep.png", title),
        None if has_gated else "no RIGSA or random-mask run with a known density",
    )
    histories: list[tuple[str, int, list[dict[str, Any]]]] = []
    seen: dict[str, int] = {}
    for j in sorted(completed, key=lambda j: (str(j.metrics.get("name")), str(j.metrics.get("seed")))):
        hist = j.metrics.get("prune/history")
        hist = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
        if hist:
            name = str(j.metrics.get("name") or j.rel)
            histories.append((name, seen.get(name, 0), hist))
            seen[name] = seen.get(name, 0) + 1
    _try_figure(
        "pruning_rounds",
        notes,
        figures,
        lambda: plot_pruning_rounds(histories, folder / "pruning_rounds.png", title),
        None if histories else "no run has a pruning history (prune/history)",
    )

    # ---------------------------------------------------------------- results.md
    failed = [j for j in jobs if j.status == "failed"]
    incomplete = [j for j in jobs if j.status == "incomplete"]
    md: list[str] = [f"# Sweep report: `{title}`", ""]
    md.append(f"Folder: `{folder}`  ")
    command = _sweep_command(folder)
    if command:
        md.append(f"Command: `{command}`  ")
    grid = _sweep_grid(folder)
    if grid:
        md.append(f"Grid (hydra.sweeper.params): {grid}  ")
    md.append(
        f"Jobs: {len(jobs)} — {len(completed)} completed, {len(failed)} failed, {len(incomplete)} incomplete. "
        f"Rebuild: `python -m rigsa_lightning.report {folder}`"
    )
    md.append("")
    if groups:
        md += ["## Accuracy and forgetting", "", _group_table(groups, quality), ""]
        md += ["## Cost", "", _group_table(groups, cost), ""]
        skipped_any = sorted(
            {str(t) for j in completed for t in (j.metrics.get("forget/skipped") or []) if isinstance(t, str)}
        )
        md += [
            "Mean ± sample standard deviation over seeds (a single seed shows the mean only). Accuracies in %, "
            "Δ = after − before training in percentage points (negative = forgetting). "
            "Textual MNIST acc: argmax over the ten digit tokens at the answer position; gen acc: greedy generation. "
            "Drift KL: KL(base ‖ tuned) of next-token distributions on fixed prompts; drift ΔNLL: change of the loss "
            "on the base model's own answers (both 0 for an unchanged model). "
            "Density: fraction of ΔW entries kept (gated methods). Adapter MB: size of the exported adapter "
            "(10^6 bytes). — = not measured for this row (method without it, or benchmark skipped).",
            "",
        ]
        if skipped_any:
            md += [f"Forgetting benchmarks skipped in at least one run: {', '.join(skipped_any)}.", ""]
    else:
        md += ["No job completed: no results to tabulate.", ""]
    if any(j.metrics.get("method") == "rigsa" for j in completed) and any(
        j.metrics.get("method") in ("qlora", "random_mask") for j in completed
    ):
        from rigsa_lightning.claims import claims_markdown, evaluate_claims

        claims_md = claims_markdown(evaluate_claims(completed))
        atomic_write_text(
            folder / "claims.md", f"# The paper's claims, re-measured: `{title}`\n\n" + claims_md
        )
        md += ["## The paper's claims", "", claims_md]
    md += ["## Figures", ""]
    captions = {
        "forgetting_vs_accuracy": "Forgetting vs Textual MNIST accuracy",
        "forgetting_curves": "Forgetting along training vs validation accuracy",
        "density_sweep": "Accuracy and forgetting vs density",
        "pruning_rounds": "Gate α and density per pruning round",
    }
    for name in FIGURES:
        if figures.get(name) is not None:
            md += [f"![{captions[name]}]({name}.png)", ""]
        else:
            md += [f"- `{name}.png`: not drawn — {notes.get(name, 'no data')}.", ""]
    md.append(_failed_section(jobs))
    results_md = atomic_write_text(folder / "results.md", "\n".join(md).rstrip() + "\n")

    wandb_mode = log_to_wandb(folder, groups, figures, jobs) if log_wandb else None
    return {
        "folder": folder,
        "results_csv": results_csv,
        "results_md": results_md,
        "runs_csv": runs_csv,
        "figures": figures,
        "notes": notes,
        "rows": groups,
        "runs": runs,
        "failed": [j.rel for j in failed],
        "incomplete": [j.rel for j in incomplete],
        "wandb_mode": wandb_mode,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``rigsa-report <multirun folder> [--wandb]`` (exit 2 with one line on bad input)."""
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.report",
        description="Tables and figures of a Hydra multirun (written into the folder).",
    )
    parser.add_argument(
        "folder", help="the multirun folder, e.g. outputs/multiruns/<date>/<time>_sweep_smoke"
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the table and figures to W&B (sweep's group)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = build_report(args.folder, log_wandb=args.wandb)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    n_runs = len(out["runs"])
    print(
        f"report: {n_runs} completed runs in {len(out['rows'])} groups, {len(out['failed'])} failed, "
        f"{len(out['incomplete'])} incomplete"
    )
    for key in ("results_md", "results_csv", "runs_csv"):
        print(f"  {out[key]}")
    for name, fig_path in out["figures"].items():
        print(f"  {fig_path}" if fig_path else f"  {name}.png skipped: {out['notes'].get(name)}")
    if out["failed"] or out["incomplete"]:
        print(f"  not completed: {', '.join(out['failed'] + out['incomplete'])} (see results.md)")


if __name__ == "__main__":
    main()
