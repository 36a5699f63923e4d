"""Forgetting at matched Textual MNIST accuracy (issue 16): the comparison the paper's claims need.

A method that has barely learned has barely forgotten, so forgetting is compared where the methods reach the same
validation accuracy:

* **At the stop target.** When every compared run reached the same ``stop_at.val_acc`` (``stop_at/reached``), the
  end-of-training forgetting numbers are already matched: the claims use them as they are.
* **Along the curves.** Otherwise (a method never reached the target within the budget), each run's forgetting
  curve (``metrics.json`` ``forget_curve``: one point per validation) is read at the highest accuracy level every
  compared run reaches, :func:`matched_level`, by linear interpolation between the two validations around it:
  the curve's values (:func:`value_at`) or, where the run kept them, its per-item records (:func:`items_at`).

Only a run's last training phase counts: RIGSA rewinds ΔW, the gates and the optimizer after each prune, so the
curve of an earlier round belongs to a model that was thrown away (:func:`final_phase`; the random mask never
prunes: its whole curve counts). That phase starts from a known point (:func:`phase_start`): the rewound model is
the base model up to the gate's initial 1e-6 scale, so a level below the phase's first validation is read between
its start and that validation, not at the validation (which may sit far above the level: a fast learner's first
validation after a rewind).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rigsa_lightning.config.access import get


@dataclass
class CurveValue:
    """A curve measure read at one accuracy level: the paired mean change and its item 95% CI."""

    value: float
    lo: float
    hi: float

    def signed(self, sign: float) -> CurveValue:
        """The value times ``sign`` (its CI bounds swap for a negative sign)."""
        lo, hi = sorted((sign * self.lo, sign * self.hi))
        return CurveValue(sign * self.value, lo, hi)


def stopped_at_target(metrics: Mapping[str, Any]) -> float | None:
    """The ``stop_at.val_acc`` target this run reached (None when it had none or did not reach it)."""
    target = metrics.get("stop_at/target")
    if not isinstance(target, (int, float)) or not metrics.get("stop_at/reached"):
        return None
    return float(target)


def matched_by_stop(runs: Sequence[Any]) -> float | None:
    """The common stop target when every run (report ``Job``) reached the same one, else None."""
    targets = {stopped_at_target(j.metrics) for j in runs}
    if not runs or len(targets) != 1:
        return None
    return next(iter(targets))


def final_phase(
    points: Sequence[Mapping[str, float]], history: Sequence[Mapping[str, Any]] | None
) -> list[Mapping[str, float]]:
    """The curve points of the run's last training phase: after its last prune, every point for a run that never
    pruned.

    ``history`` is the run's ``prune/history`` (``metrics.json``): what happened, not what the config says (the
    random mask reads the pruning schedule for its density only and trains one phase). A prune at the end of epoch
    ``e`` starts the next phase at epoch ``e + 1``."""
    start = _last_phase_epoch(history)
    if start is None:
        return list(points)
    return [p for p in points if p.get("epoch", 0) >= start]


def _last_phase_epoch(history: Sequence[Mapping[str, Any]] | None) -> float | None:
    """The epoch the last training phase starts at (the one after the last prune), None for a run never pruned."""
    epochs = [float(r["epoch"]) for r in history or () if isinstance(r, Mapping) and "epoch" in r]
    return max(epochs) + 1 if epochs else None


#: Marks the start point :func:`phase_start` adds to a curve (no validation ran there).
PHASE_START = "phase_start"


def phase_start(
    config: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None, start_acc: Any
) -> dict[str, float] | None:
    """The start of a pruned run's last phase as a curve point, or None when it is not known.

    After a prune (``history``, as in :func:`final_phase`) that rewinds to initialisation with the gates reset
    (``pruning.rewind=init``, ``pruning.reset_alpha``), the model is the base model up to the gates' initial scale
    (``adapter.alpha_init``, 1e-6): every paired change is 0. No validation runs there, so its accuracy is
    ``start_acc``, the base model's zero-shot *test* accuracy (the same model, other images of the same
    distribution)."""
    epoch = _last_phase_epoch(history)
    rewound = (
        epoch is not None
        and get(config, "pruning.rewind", "init") == "init"
        and bool(get(config, "pruning.reset_alpha", True))
    )
    if not rewound or not isinstance(start_acc, (int, float)) or start_acc != start_acc:
        return None
    return {"epoch": epoch, "val_acc": float(start_acc), PHASE_START: 1.0}


def compared_phase(
    points: Sequence[Mapping[str, float]], config: Mapping[str, Any], metrics: Mapping[str, Any]
) -> list[Mapping[str, float]]:
    """The points the matched comparison reads: :func:`final_phase` of the run (its ``metrics.json``: the prune
    history and zero-shot accuracy), preceded by :func:`phase_start` when it is known and below the phase's first
    validation. The start point carries every measure of that validation at 0 (a zero-width CI)."""
    history = metrics.get("prune/history")
    phase = final_phase(points, history)
    start = phase_start(config, history, metrics.get("textual_mnist/zero_shot_acc"))
    if not phase or start is None or start["val_acc"] >= phase[0]["val_acc"]:
        return phase
    for key in phase[0]:
        if key not in ("step", "epoch", "val_acc"):
            start[key] = 1.0 if key.endswith("_p") else 0.0
    return [start, *phase]


def reads_from_start(points: Sequence[Mapping[str, float]], level: float) -> bool:
    """Whether ``level`` is read between the phase start (:func:`phase_start`) and the first validation."""
    found = crossing(points, level)
    return found is not None and found[0] is not None and bool(found[0].get(PHASE_START))


def peak_accuracy(points: Sequence[Mapping[str, float]]) -> float:
    """The highest validation accuracy along a curve (nan when it has no point)."""
    accs = [p["val_acc"] for p in points if p.get("val_acc") == p.get("val_acc")]
    return max(accs) if accs else math.nan


def matched_level(curves: Sequence[Sequence[Mapping[str, float]]]) -> float:
    """The highest validation accuracy every curve reaches: the smallest of their peaks (nan without curves)."""
    peaks = [peak_accuracy(c) for c in curves]
    if not peaks or any(p != p for p in peaks):
        return math.nan
    return min(peaks)


def crossing(
    points: Sequence[Mapping[str, float]], level: float
) -> tuple[Mapping[str, float] | None, Mapping[str, float], float] | None:
    """Where a curve first reaches validation accuracy ``level``: ``(previous, point, w)`` with ``point`` the first
    validation at or above it, ``previous`` the one before (None when ``point`` is read as it is: it is the first or
    the one before was already at the level) and ``w`` the interpolation weight of ``point`` (1 when read as it
    is); None when the curve never reaches ``level``."""
    previous: Mapping[str, float] | None = None
    for point in points:
        if point["val_acc"] >= level:
            if previous is None or previous["val_acc"] >= level:
                return None, point, 1.0
            return previous, point, (level - previous["val_acc"]) / (point["val_acc"] - previous["val_acc"])
        previous = point
    return None


def value_at(points: Sequence[Mapping[str, float]], level: float, key: str) -> CurveValue | None:
    """Measure ``key`` (e.g. ``gsm8k/gold_nll``) where the curve first reaches validation accuracy ``level``.

    Linear interpolation (value and CI bounds) between the last point below ``level`` and the first at or above it;
    the first point itself when it already reaches ``level``; None when the curve never reaches it or lacks the
    measure."""
    found = crossing(points, level)
    if found is None or any(p is not None and key not in p for p in found[:2]):
        return None
    previous, point, w = found
    return CurveValue(
        *(
            w * _field(point, key, s) + (1 - w) * (_field(previous, key, s) if previous is not None else 0.0)
            for s in ("", "_ci_lo", "_ci_hi")
        )
    )


def items_at(
    points: Sequence[Mapping[str, float]],
    level: float,
    changes: Mapping[int, Mapping[int, float]],
) -> dict[int, float] | None:
    """Per-item paired changes where the curve first reaches ``level``: ``changes`` maps a validation's step to its
    ``{doc_id: change}``; each item is interpolated like :func:`value_at` (so their mean is the curve's value there).
    None when the curve never reaches ``level`` or a needed step has no records."""
    found = crossing(points, level)
    if found is None:
        return None
    previous, point, w = found
    if point.get(PHASE_START):  # the level is at or below the start's accuracy: no change yet
        return None
    cur = changes.get(int(point["step"]))
    if cur is None:
        return None
    if previous is None:
        return dict(cur)
    if previous.get(PHASE_START):  # from the phase start, where every item's change is 0
        return {d: w * c for d, c in cur.items()}
    prev = changes.get(int(previous["step"]))
    if prev is None:
        return None
    return {d: w * cur[d] + (1 - w) * prev[d] for d in cur if d in prev}


def _field(point: Mapping[str, float], key: str, suffix: str) -> float:
    return float(point.get(key + suffix, point[key]))


def matched_difference(
    first: Sequence[CurveValue], second: Sequence[CurveValue]
) -> tuple[float, float, float]:
    """Mean of ``first`` minus mean of ``second`` (runs of two methods at one accuracy level) with a 95% CI.

    The half-width adds in quadrature the items' part (each run's item CI, averaged within its method) and, when
    both methods have at least two runs, the seeds' part (Welch's t interval of the run means). An approximation:
    the curve keeps each point's CI, not its per-item records."""
    if not first or not second:
        return math.nan, math.nan, math.nan
    a, b = [v.value for v in first], [v.value for v in second]
    diff = sum(a) / len(a) - sum(b) / len(b)
    item_a = math.sqrt(sum(((v.hi - v.lo) / 2) ** 2 for v in first)) / len(first)
    item_b = math.sqrt(sum(((v.hi - v.lo) / 2) ** 2 for v in second)) / len(second)
    half_sq = item_a**2 + item_b**2
    if len(a) >= 2 and len(b) >= 2:
        half_sq += welch_half(a, b) ** 2
    half = math.sqrt(half_sq)
    return diff, diff - half, diff + half


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval's multiplier).

    The one quantile every interval of the claims uses: over seeds (integer df) and Welch's (fractional df).
    """
    from scipy.stats import t as student_t

    if not df > 0:
        raise ValueError(f"t975: degrees of freedom must be > 0, got {df}")
    return float(student_t.ppf(0.975, df))


def welch_half(a: Sequence[float], b: Sequence[float]) -> float:
    """Half-width of Welch's 95% t interval for the difference of two means (each side needs two values)."""
    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t975(df) * math.sqrt(va + vb)
