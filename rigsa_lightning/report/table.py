"""The report's numbers: one flat row per completed run, the columns, the aggregation over seeds, the display
formatting and the CSV / Markdown tables."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.registry import find_method, method_label, method_order
from rigsa_lightning.config.access import get
from rigsa_lightning.io import atomic_write_text
from rigsa_lightning.report.jobs import NAN, Job, _finite, _num, run_seconds, steps_trained

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


# ----------------------------------------------------------------------------------------------- per-run metrics
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
    """Adapter density: ``adapter/density`` or, when the run did not record it, what its method reads from the
    job's config (gated methods: ``adapter.density`` or ``1 - pruning.sparsity``; full: 1)."""
    d = _num(job.metrics.get("adapter/density"))
    if _finite(d):
        return d
    method = find_method(job.metrics.get("method"))
    density = method.config_density(lambda key: _num(get(job.config, key))) if method else None
    return NAN if density is None else density


def phase_budget(job: Job) -> dict[str, float]:
    """What a run was given, phase by phase (the lottery-ticket protocol's comparison): the mask search's steps
    (up to the last prune; 0 without pruning), the final phase's steps (:func:`steps_trained` less the search's)
    and its peak learning rate of the adapter's weights (``pruning.final_lr``, else ``adapter.lr``; NaN for a run
    that trained no step), and the rounds' rate (``pruning.round_lr``, else ``adapter.lr``; NaN without rounds)."""
    m = job.metrics
    # a damaged record (not a dict) is skipped
    history = [r for r in (m.get("prune/history") or []) if isinstance(r, dict)]
    search = float(history[-1].get("global_step") or 0) if history else 0.0
    total = steps_trained(job)
    lr = _num(get(job.config, "adapter.lr"))
    final_lr, round_lr = _num(get(job.config, "pruning.final_lr")), _num(get(job.config, "pruning.round_lr"))
    return {
        "search_steps": search,
        "final_steps": total - search if _finite(total) else NAN,
        # no training step (zero-shot): no final phase, hence no rate
        "final_lr": NAN if total == 0 else (final_lr if _finite(final_lr) else lr),
        "round_lr": (round_lr if _finite(round_lr) else lr) if history else NAN,
    }


def run_row(job: Job, tasks: dict[str, str]) -> dict[str, Any]:
    """The flat, canonical metrics of one completed run (NaN where absent or skipped)."""
    m = job.metrics
    cfg_name = get(job.config, "name")
    seed = m.get("seed", get(job.config, "seed"))
    row: dict[str, Any] = {
        "job": job.rel,
        "method": str(m.get("method") or get(job.config, "adapter.method") or "unknown"),
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
    train_s = run_seconds(m, "train")  # a resumed run: the whole run's, not its last process's
    row["train_min"] = train_s / 60 if _finite(train_s) else NAN
    total_s = run_seconds(m)
    row["total_min"] = total_s / 60 if _finite(total_s) else NAN
    # where the time went (runs since the time breakdown; NaN for older ones)
    for key, name in TIME_PARTS.items():
        part = _num(m.get(f"time/{name}"))
        row[key] = part / 60 if _finite(part) else NAN
    for part, seconds in eval_after_parts(m).items():
        row[f"eval_after/{part}_min"] = seconds / 60
    row["steps_n"] = _num(m.get("time/steps_n"))
    row.update(phase_budget(job))
    row["peak_rss_gb"] = _num(m.get("memory/peak_rss_gb"))
    return row


# run-row key -> ``time/<name>`` metric (seconds), shown in minutes in the cost table
TIME_PARTS = {
    "steps_min": "steps_s",
    "val_min": "val_s",
    "curve_min": "curve_s",
    "prune_min": "prune_s",
    "eval_after_min": "eval_after_s",
    "search_min": "search_s",
    "final_min": "final_s",
}


# the end evaluation's parts that are not a forgetting benchmark, shown first: the task's test split, the drift probe
EVAL_AFTER_FIRST = ("textual_mnist", "chat", "drift")


def eval_after_parts(metrics: dict[str, Any]) -> dict[str, float]:
    """The end evaluation's parts of one run (``time/eval_after/<part>_s``, seconds; finite ones only)."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("time/eval_after/") and key.endswith("_s"):
            seconds = _num(value)
            if _finite(seconds):
                out[key[len("time/eval_after/") : -len("_s")]] = seconds
    return out


def _eval_part_label(part: str) -> str:
    """``hellaswag+piqa`` -> ``HellaSwag+PIQA``; the task split and the drift probe by what they are."""
    names = {"textual_mnist": "test split", "chat": "test split", "drift": "drift probe", **BENCHMARKS}
    return "+".join(names.get(p, p) for p in part.split("+"))


def eval_after_columns(runs: Iterable[dict[str, Any]]) -> list[Column]:
    """One cost column per end-evaluation part found in ``runs`` (``eval_after/<part>_min``): the test split and the
    drift probe first, then the benchmarks in name order."""
    parts = {k[len("eval_after/") : -len("_min")] for r in runs for k in r if k.startswith("eval_after/")}
    first = [p for p in EVAL_AFTER_FIRST if p in parts]
    ordered = first + sorted(parts - set(first))
    return [Column(f"eval_after/{p}_min", f"end eval: {_eval_part_label(p)} (min)", "min") for p in ordered]


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
        Column("total_min", "job time (min)", "min"),
        Column("search_steps", "mask-search steps", "count"),
        Column("final_steps", "final-phase steps", "count"),
        Column("final_lr", "final-phase lr", "float"),
        Column("search_min", "mask-search time (min)", "min"),
        Column("final_min", "final-phase time (min)", "min"),
        Column("steps_n", "optimizer steps", "count"),
        Column("steps_min", "in steps (min)", "min"),
        Column("val_min", "in validation (min)", "min"),
        Column("curve_min", "in forgetting curve (min)", "min"),
        Column("prune_min", "in pruning (min)", "min"),
        Column("eval_after_min", "end evaluation (min)", "min"),
        Column("peak_rss_gb", "peak RSS (GB)", "gb"),
    ]
    return quality, cost


# ---------------------------------------------------------------------------------------------------- aggregation
def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (``ddof=1``, NaN for one value) and count of the finite ``values``."""
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
    """Sort key with numbers compared as numbers (``rigsa_2`` before ``rigsa_10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _group_sort_key(method: str, name: str, density: float) -> tuple[Any, ...]:
    """Display order: by method, then denser first, then by name."""
    order = method_order(method)  # each method's own ``order`` (the registry)
    dens = -density if _finite(density) else 1.0  # denser first; unknown density last within a method
    return (order, method, dens, _natural_key(name))


def aggregate(runs: list[dict[str, Any]], columns: Sequence[Column]) -> list[dict[str, Any]]:
    """One row per (method, name): ``<key>_mean``, ``<key>_std`` (sample std), ``<key>_n`` (how many of the
    group's runs have the value), ``n_seeds``, ``seeds``."""
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
            mean, std, n = _mean_std([r.get(col.key, NAN) for r in members])
            row[f"{col.key}_mean"], row[f"{col.key}_std"], row[f"{col.key}_n"] = mean, std, n
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


def runs_note(k: int, n: int) -> str:
    """`` (k of n runs)`` when a value covers only ``k`` (> 0) of the ``n`` runs it summarises, else ``""``."""
    return f" ({k} of {n} runs)" if 0 < k < n else ""


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""

    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_table(rows: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    """The Markdown table of aggregated rows: method, name, seeds, then ``columns`` in display units; a cell whose
    mean covers only some of the group's runs (a measure the others did not record) ends in ``(k of n runs)``."""
    header = ["method", "name", "seeds (n)"] + [c.label for c in columns]
    body = []
    for r in rows:
        cells = [method_label(r["method"]), r["name"], str(r["n_seeds"])]
        for c in columns:
            cell = format_cell(r[f"{c.key}_mean"], r[f"{c.key}_std"], c.kind, r.get(f"{c.key}_ci"))
            cells.append(cell + runs_note(r[f"{c.key}_n"], r["n_seeds"]))
        body.append(cells)
    return _md_table(header, body)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write ``rows`` (``columns`` only; NaN as an empty cell) to ``path`` atomically."""
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
