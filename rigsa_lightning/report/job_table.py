"""What each job of a study was given and what it measured, one row per completed job (``jobs.md``): the numbers a
claims table rests on, each read from that job's folder.

Per job: the method and seed; what it was given (mask-search steps, final-phase steps, the rounds' and the final
phase's peak learning rates, density); what it measured (validation accuracy at every validation, whether and where
it stopped at its target, Textual MNIST test accuracy with its Wilson 95 % interval, GSM8k's change of reference
NLL per token at the end with its item CI and along the forgetting curve); and its wall time (mask search, final
phase, whole job; a resumed job's whole time without the time lost to the interruption: ``jobs.run_seconds``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rigsa_lightning.report.jobs import Job, _finite, _num, run_seconds, val_along
from rigsa_lightning.report.statistics import wilson
from rigsa_lightning.report.table import _density, _md_table, phase_budget

HEADER = [
    "job",
    "method",
    "seed",
    "mask-search steps",
    "final-phase steps",
    "rounds' lr",
    "final lr",
    "density (%)",
    "val acc at each validation (%)",
    "stopped at target?",
    "test acc (%) [Wilson 95 %]",
    "GSM8k Δ ref. NLL at the end [item 95 % CI]",
    "GSM8k Δ ref. NLL along the curve (step: nats)",
    "wall time (min): search / final / job",
]


def _rate(value: float) -> str:
    return f"{value:g}" if _finite(value) else "—"


def _minutes(seconds: Any) -> str:
    value = _num(seconds)
    return f"{value / 60:.0f}" if _finite(value) else "—"


def _stopped(m: dict[str, Any]) -> str:
    """``at step N (acc %)``, ``no (best acc %)`` or ``—`` (no target)."""
    target = _num(m.get("stop_at/target"))
    if not _finite(target):
        return "—"
    acc = _num(m.get("stop_at/val_acc"))
    acc = acc if _finite(acc) else _num(m.get("final_val/acc"))  # not reached: the last validation's
    shown = f"{100 * acc:.1f} %" if _finite(acc) else "?"
    if _num(m.get("stop_at/reached")) == 1.0:
        return f"at step {_num(m.get('stop_at/step')):.0f} ({shown})"
    return f"no ({shown})"


def job_row(job: Job) -> list[str]:
    """One job's cells (see :data:`HEADER`)."""
    m = job.metrics
    budget = phase_budget(job)
    density = _density(job)
    # every validation: the CSV's, or the forgetting curve's where it has more (a CSV cut short by a resume)
    curve_acc = [float(p["val_acc"]) for p in m.get("forget_curve") or [] if "val_acc" in p]
    along = max(val_along(job), curve_acc, key=len)
    acc, n = _num(m.get("textual_mnist/acc")), _num(m.get("textual_mnist/n"))
    if _finite(acc) and _finite(n) and n > 0:
        ci = wilson(acc * n, n)
        test = f"{100 * acc:.1f} [{100 * ci.lo:.1f}, {100 * ci.hi:.1f}]"
    else:
        test = "—"
    delta = _num(m.get("forget/gsm8k/gold_nll/delta"))
    lo, hi = (
        _num(m.get("forget/gsm8k/gold_nll/delta_ci_lo")),
        _num(m.get("forget/gsm8k/gold_nll/delta_ci_hi")),
    )
    gsm_end = f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]" if all(map(_finite, (delta, lo, hi))) else "—"
    curve = [p for p in m.get("forget_curve") or [] if _finite(_num(p.get("gsm8k/gold_nll")))]
    gsm_curve = ", ".join(f"{_num(p['step']):.0f}: {_num(p['gsm8k/gold_nll']):+.3f}" for p in curve) or "—"
    steps = (budget["search_steps"], budget["final_steps"])
    return [
        f"`{job.rel}`",
        str(m.get("method", "?")),
        str(m.get("seed", "?")),
        *(f"{s:.0f}" if _finite(s) else "—" for s in steps),
        _rate(budget["round_lr"]),
        _rate(budget["final_lr"]),
        f"{100 * density:.2f}" if _finite(density) else "—",
        ", ".join(f"{100 * v:.1f}" for v in along) or "—",
        _stopped(m),
        test,
        gsm_end,
        gsm_curve,
        " / ".join(_minutes(v) for v in (m.get("time/search_s"), m.get("time/final_s"), run_seconds(m))),
    ]


def jobs_markdown(jobs: Sequence[Job]) -> str:
    """The per-job table of the completed ``jobs`` (by method, then seed), with how to read it."""
    done = sorted(
        (j for j in jobs if j.status == "completed"),
        key=lambda j: (str(j.metrics.get("method")), str(j.metrics.get("name")), _seed(j)),
    )
    lines = [
        "One row per completed job, every number read from its folder (`metrics.json`, `csv/metrics.csv`,",
        "`.hydra/config.yaml`). Steps: the mask search runs up to the last prune, the final phase after it; rates are",
        "the adapter weights' peak learning rates; a resumed job's wall time is the whole job's (its checkpoints",
        "carry the stage totals) without the time lost to the interruption; `—`: not measured or not applicable.",
        "",
        _md_table(HEADER, [job_row(j) for j in done]) if done else "(no completed job)",
        "",
    ]
    return "\n".join(lines)


def _seed(job: Job) -> float:
    value = _num(job.metrics.get("seed"))
    return value if _finite(value) else math.inf
