"""What each job of a study was given and what it measured, one row per completed job (``jobs.md``): the numbers a
claims table rests on, each read from that job's folder.

Per job: the method and seed; what it was given (mask-search steps, final-phase steps, the rounds' and the final
phase's peak learning rates, density); what it measured (validation accuracy at every validation, whether and where
it stopped at its target, Textual MNIST test accuracy with its Wilson 95 % interval, GSM8k's change of reference
NLL per token at the end with its item CI and along the forgetting curve); and its wall time (mask search, final
phase, whole job; a resumed job's whole time without the time lost to the interruption: ``jobs.run_seconds``).

Then the cost of each method over its runs, the mask search apart from the final phase (:func:`cost_markdown`),
and, where a study ran random tickets, each RIGSA ticket beside its own random ticket (same seed, init and
per-matrix counts), seed by seed, with the paired differences (:func:`ticket_pairs_markdown`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rigsa_lightning.report.jobs import Job, _finite, _num, run_seconds, val_along
from rigsa_lightning.report.statistics import t_interval, wilson
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
    pairs = ticket_pairs_markdown(jobs)
    cost = cost_markdown(jobs)
    lines = [
        "One row per completed job, every number read from its folder (`metrics.json`, `csv/metrics.csv`,",
        "`.hydra/config.yaml`). Steps: the mask search runs up to the last prune, the final phase after it; rates are",
        "the adapter weights' peak learning rates; a resumed job's wall time is the whole job's (its checkpoints",
        "carry the stage totals) without the time lost to the interruption; `—`: not measured or not applicable.",
        "",
        _md_table(HEADER, [job_row(j) for j in done]) if done else "(no completed job)",
        "",
    ]
    return "\n".join(lines) + "".join("\n" + part for part in (cost, pairs) if part)


COST_HEADER = [
    "runs of (method)",
    "runs",
    "mask-search steps",
    "mask search (min)",
    "final-phase steps",
    "final phase (min)",
    "end evaluation (min)",
    "whole job (min)",
]


def _spread(values: Sequence[float]) -> str:
    """``mean [min–max]`` of the finite ``values``, whole numbers (the mean alone for one, ``—`` for none)."""
    finite = [v for v in values if _finite(v)]
    if not finite:
        return "—"
    mean = f"{sum(finite) / len(finite):.0f}"
    if len(finite) == 1 or min(finite) == max(finite):
        return mean
    return f"{mean} [{min(finite):.0f}–{max(finite):.0f}]"


def cost_markdown(jobs: Sequence[Job]) -> str:
    """Per method and run name (its completed runs that trained), what it cost: mean [min–max] over the runs of the mask
    search's steps and minutes (RIGSA's pruning rounds, up to the last prune; ``time/search_s``), the final phase's
    (after the last prune, ``time/final_s``; the whole training, ``jobs.run_seconds(part="train")``, for a method
    without pruning), the end evaluation (``time/eval_after_s``) and the whole job (``jobs.run_seconds``). Empty
    without such a run."""
    budget = {id(j): phase_budget(j) for j in jobs if j.status == "completed"}
    trained = [
        j
        for j in jobs
        if id(j) in budget and budget[id(j)]["search_steps"] + budget[id(j)]["final_steps"] > 0
    ]
    by_run: dict[str, list[Job]] = {}
    for job in sorted(
        trained, key=lambda j: (str(j.metrics.get("method")), str(j.metrics.get("name")), _seed(j))
    ):
        method = str(job.metrics.get("method", "?"))
        name = str(job.metrics.get("name") or method)
        by_run.setdefault(f"{name} ({method})" if name != method else method, []).append(job)
    rows = []
    for label, group in by_run.items():
        budgets = [budget[id(j)] for j in group]
        pruned = [b["search_steps"] > 0 for b in budgets]
        search_min = [_num(j.metrics.get("time/search_s")) / 60 if p else 0.0 for j, p in zip(group, pruned)]
        final_min = [
            _num(j.metrics.get("time/final_s") if p else run_seconds(j.metrics, "train")) / 60
            for j, p in zip(group, pruned)
        ]
        rows.append(
            [
                label,
                str(len(group)),
                _spread([b["search_steps"] for b in budgets]),
                _spread(search_min),
                _spread([b["final_steps"] for b in budgets]),
                _spread(final_min),
                _spread([_num(j.metrics.get("time/eval_after_s")) / 60 for j in group]),
                _spread([run_seconds(j.metrics) / 60 for j in group]),
            ]
        )
    if not rows:
        return ""
    return "\n".join(
        [
            "## Cost of each method",
            "",
            "Mean [min–max] over each method's completed runs, from the rows above. The mask search (RIGSA's pruning",
            "rounds, up to its last prune) is RIGSA's own cost, shown apart and not given to the controls; the final",
            "phase (the whole training of a method without pruning) includes its validations and forgetting-curve",
            "points; the whole job adds loading, the base's scores where they were not cached, and the end evaluation.",
            "Each job's time is that of the machine it ran on: compare methods only where their jobs shared one.",
            "",
            _md_table(COST_HEADER, rows),
            "",
        ]
    )


PAIR_HEADER = [
    "seed",
    "job",
    "density (%)",
    "final lr",
    "final-phase steps",
    "final-phase validation acc (%) (phase step: acc)",
    "test acc (%) [Wilson 95 %]",
    "GSM8k Δ ref. NLL at the end [item 95 % CI]",
]


def _final_phase_validations(job: Job, search_steps: float) -> str:
    """The validations after the last prune (all of them without pruning) from the forgetting curve, as
    ``phase step: acc`` (the curve's step less the mask search's steps, as in the final-phase step count)."""
    points = [
        (float(p["step"]) - search_steps, 100 * float(p["val_acc"]))
        for p in job.metrics.get("forget_curve") or []
        if "val_acc" in p and "step" in p and float(p["step"]) > search_steps
    ]
    return ", ".join(f"{step:.0f}: {acc:.1f}" for step, acc in points) or "—"


PAIRS_HEADING = "## RIGSA's ticket and its random ticket, seed by seed"


PAIRS_NOTE = (
    "Each random ticket keeps its RIGSA run's per-matrix counts with the same ΔW init and data order, so the\n"
    "two differ only in which entries are kept (and in the final-phase rate each was searched for). Final-phase\n"
    "steps count from the last prune; the validations are the forgetting curve's."
)


def ticket_pairs_markdown(jobs: Sequence[Job], heading: str = PAIRS_HEADING, note: str = PAIRS_NOTE) -> str:
    """Each completed RIGSA ticket beside its completed random ticket, paired as claim 4 pairs them
    (:func:`claims.ticket_pairs`: the run each ticket's ``adapter.density_from`` names), what each was given and
    measured, and per seed and over the pairs (mean, paired t 95 % interval) the differences RIGSA − random ticket
    of test accuracy and of GSM8k's reference-NLL change, under ``heading`` and ``note``. Empty without a pair; one
    line saying why when the tickets cannot be paired one to one (a ticket names no run, or two name the same
    one)."""
    from rigsa_lightning.report.claims import ticket_pairs

    done = [j for j in jobs if j.status == "completed"]
    rigsa = [j for j in done if j.metrics.get("method") == "rigsa"]
    tickets = [j for j in done if j.metrics.get("method") == "random_mask"]
    pairs = ticket_pairs(rigsa, tickets)
    if pairs is None:
        return "\n".join(
            [
                heading,
                "",
                "Not paired: a random-mask run names no RIGSA run in `adapter.density_from`, or two name the same "
                "one (" + ", ".join(f"`{t.rel}`" for t in tickets) + "); claim 4 compares them unpaired.",
                "",
            ]
        )
    if not pairs:
        return ""
    rows, acc_diffs, nll_diffs = [], [], []
    for r, t in sorted(pairs, key=lambda pair: _seed(pair[0])):
        cells = {}
        for job in (r, t):
            row = dict(zip(HEADER, job_row(job), strict=True))
            search = phase_budget(job)["search_steps"]
            cells[job.rel] = [
                row["density (%)"],
                row["final lr"],
                row["final-phase steps"],
                _final_phase_validations(job, search),
                row["test acc (%) [Wilson 95 %]"],
                row["GSM8k Δ ref. NLL at the end [item 95 % CI]"],
            ]
        acc = [_num(j.metrics.get("textual_mnist/acc")) for j in (r, t)]
        nll = [_num(j.metrics.get("forget/gsm8k/gold_nll/delta")) for j in (r, t)]
        acc_diffs.append(acc[0] - acc[1])
        nll_diffs.append(nll[0] - nll[1])
        seed = str(r.metrics.get("seed", "?"))
        rows.append([seed, f"`{r.rel}` (RIGSA ticket)", *cells[r.rel]])
        rows.append([seed, f"`{t.rel}` (random ticket)", *cells[t.rel]])
        rows.append(
            [
                seed,
                "difference RIGSA − random",
                "",
                "",
                "",
                "",
                f"{100 * acc_diffs[-1]:+.1f} pp",
                f"{nll_diffs[-1]:+.3f}",
            ]
        )
    mean = []
    for diffs, scale, fmt in ((acc_diffs, 100.0, "{:+.1f}"), (nll_diffs, 1.0, "{:+.3f}")):
        ci = t_interval([d for d in diffs if _finite(d)])
        text = fmt.format(scale * ci.value)
        text += (
            f" [{fmt.format(scale * ci.lo)}, {fmt.format(scale * ci.hi)}]"
            if len(diffs) > 1
            else " (one pair: no interval)"
        )
        mean.append(text + (" pp" if scale > 1 else ""))
    rows.append(["all", f"mean difference over {len(pairs)} pair(s) [paired t 95 %]", "", "", "", "", *mean])
    lines = [
        heading,
        "",
        note,
        "",
        _md_table(PAIR_HEADER, rows),
        "",
    ]
    return "\n".join(lines)


def _seed(job: Job) -> float:
    value = _num(job.metrics.get("seed"))
    return value if _finite(value) else math.inf
