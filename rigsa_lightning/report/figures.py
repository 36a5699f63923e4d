"""Every figure of the report: forgetting vs accuracy, forgetting along training, the density sweep and the
pruning rounds (matplotlib, imported inside the functions; PNGs written atomically).

(Over ~400 lines on purpose: one plotting function per figure, each short, kept side by side so the figures
share their colours, labels and file handling.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.registry import find_method, gated_methods, method_label, method_order
from rigsa_lightning.io import atomic_write
from rigsa_lightning.report.jobs import NAN, _finite, _num
from rigsa_lightning.report.table import (
    BENCHMARKS,
    CONTINUOUS_MEASURES,
    _group_sort_key,
    _mean_std,
    _natural_key,
    runs_note,
    short_metric,
)

# One colour per method in every figure (its ``color`` in the registry; others get one of the extra colours), markers
# for runs and seeds.
_EXTRA_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h"]
# The report's figures (``<name>.png``) in the order of results.md, and their captions there.
FIGURES = ("forgetting_vs_accuracy", "forgetting_curves", "density_sweep", "pruning_rounds")
FIGURE_CAPTIONS: dict[str, str] = {
    "forgetting_vs_accuracy": "Forgetting vs Textual MNIST accuracy",
    "forgetting_curves": "Forgetting along training vs validation accuracy",
    "density_sweep": "Accuracy and forgetting vs density",
    "pruning_rounds": "Gate α and density per pruning round",
}


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
    spec = find_method(method)
    if spec is not None and spec.color:
        return spec.color
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
    """Benchmark deltas that have data; drift KL when no benchmark has any (benchmarks skipped). A measure that
    only some of the runs have (e.g. GSM8k exact match in a study that scores GSM8k by NLL alone, beside reused
    runs that generated) says so in its panel title: "(k of n runs)"."""
    out = []

    def measured(key: str) -> int:
        return sum(_finite(r.get(key, NAN)) for r in runs)

    for task, metric in tasks.items():
        if k := measured(f"{task}_delta"):
            name = BENCHMARKS.get(task, task)
            out.append(
                Measure(
                    f"{task}_delta",
                    f"{name} Δ vs base (pp)",
                    f"{name} {short_metric(metric)}: below 0 = forgetting{runs_note(k, len(runs))}",
                    100,
                    0,
                )
            )
    for task in tasks:
        if task not in CONTINUOUS_MEASURES:
            continue
        name, text = CONTINUOUS_MEASURES[task]
        key = f"{task}_{name}_delta"
        if k := measured(key):
            label = BENCHMARKS.get(task, task)
            hint = "above 0 = forgetting" if name == "gold_nll" else "below 0 = forgetting"
            out.append(
                Measure(
                    key, f"{label} Δ {text} (nats)", f"{label} {text}: {hint}{runs_note(k, len(runs))}", 1, 0
                )
            )
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
    labels = [f"{mn[1]} ({method_label(mn[0])})" for mn in names]
    _legend_below(fig, handles, labels)
    fig.suptitle(f"Forgetting vs Textual MNIST accuracy (one point per run) — {title}", fontsize=11)
    return _save_png(fig, path)


@dataclass
class CurveRun:
    """One run's forgetting curve as plotted: its points, the first ``discarded`` of which belong to training phases
    thrown away by a later rewind (RIGSA's and the random mask's prune rounds; 0 for a run without rounds)."""

    method: Any
    name: str
    seed: Any
    points: list[dict[str, Any]]
    discarded: int = 0
    #: Validation accuracy where the last phase starts from the base model again (a rewind), if known.
    start_acc: float | None = None


def plot_forgetting_curves(curves: list[CurveRun], path: Path, title: str) -> Path:
    """One line per run: the paired change of each continuous forgetting measure (y, with its 95% item CI) at every
    validation against the validation accuracy there (x), a colour per method: methods compared at every accuracy
    level two of them pass through. A run's discarded phases are drawn faded and dashed, apart from its last phase
    (the one the matched comparison reads)."""
    from matplotlib.lines import Line2D

    keys = sorted(
        {k for run in curves for p in run.points for k in p if k.endswith(("/margin", "/gold_nll"))},
        key=lambda k: (list(BENCHMARKS).index(k.split("/")[0]) if k.split("/")[0] in BENCHMARKS else 99, k),
    )
    fig, axes = _new_figure(max(1, len(keys)))
    for ax, key in zip(axes, keys):
        task, measure = key.split("/")
        for run in curves:
            color = _method_color(str(run.method))
            phases = ((run.points[: run.discarded], 0.3, "--"), (run.points[run.discarded :], 0.85, "-"))
            last = run.points[run.discarded :]
            if run.start_acc is not None and last and _finite(_num(last[0].get(key))):
                ax.plot(
                    [100 * run.start_acc, 100 * last[0]["val_acc"]],
                    [0.0, last[0][key]],
                    color=color,
                    ls=":",
                    marker="o",
                    markevery=[0],
                    markerfacecolor="white",
                    markersize=4,
                    alpha=0.85,
                )
            for pts, alpha, style in phases:
                sel = [p for p in pts if _finite(_num(p.get(key))) and _finite(_num(p.get("val_acc")))]
                if not sel:
                    continue
                xs = [100 * p["val_acc"] for p in sel]
                ys = [p[key] for p in sel]
                lo = [p[key] - p.get(f"{key}_ci_lo", p[key]) for p in sel]
                hi = [p.get(f"{key}_ci_hi", p[key]) - p[key] for p in sel]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    color=color,
                    marker="o",
                    markersize=4,
                    capsize=2,
                    alpha=alpha,
                    ls=style,
                )
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
    methods = sorted({str(run.method) for run in curves}, key=method_order)
    handles = [Line2D([], [], color=_method_color(m), marker="o") for m in methods]
    labels = [method_label(m) for m in methods]
    if any(run.discarded for run in curves):
        handles.append(Line2D([], [], color="grey", marker="o", ls="--", alpha=0.4))
        labels.append("rounds discarded by a rewind")
    if any(run.start_acc is not None for run in curves):
        handles.append(Line2D([], [], color="grey", marker="o", ls=":", markerfacecolor="white"))
        labels.append("last phase's start (rewound: the base, no change)")
    _legend_below(fig, handles, labels)
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
    gated_names = gated_methods()
    gated = [r for r in runs if r["method"] in gated_names and _finite(r["density"])]
    others = [g for g in groups if g["method"] not in gated_names]
    handles: list[Any] = []
    labels: list[str] = []
    for ax, meas in zip(axes, panels):
        if meas.reference is not None:
            ax.axhline(meas.reference, color="black", linewidth=0.8, alpha=0.5, zorder=0)
        for m_idx, method in enumerate(gated_names):
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
            label = f"{method_label(method)} (mean ± std over seeds)"
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
