"""Forgetting at matched accuracy (issue 16): reading the forgetting curves at a common validation accuracy."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from rigsa_lightning.report.matching import (
    PHASE_START,
    CurveValue,
    compared_phase,
    final_phase,
    items_at,
    matched_by_stop,
    matched_difference,
    matched_level,
    peak_accuracy,
    reads_from_start,
    t975,
    value_at,
)


def _pt(epoch: float, acc: float, nll: float, half: float = 0.1) -> dict[str, float]:
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "val_acc": acc,
        "gsm8k/gold_nll": nll,
        "gsm8k/gold_nll_ci_lo": nll - half,
        "gsm8k/gold_nll_ci_hi": nll + half,
    }


def test_value_at_interpolates_between_the_validations_around_the_level():
    points = [_pt(0, 0.2, 0.0), _pt(1, 0.6, 0.4), _pt(2, 0.9, 1.0)]
    v = value_at(points, 0.7, "gsm8k/gold_nll")
    # a third of the way from (0.6, 0.4) to (0.9, 1.0)
    assert (v.value, v.lo, v.hi) == pytest.approx((0.6, 0.5, 0.7))
    exact = value_at(points, 0.6, "gsm8k/gold_nll")
    assert exact.value == pytest.approx(0.4)  # a point at the level is read as it is
    first = value_at(points, 0.1, "gsm8k/gold_nll")
    assert first.value == 0.0  # the first point already reaches it
    assert value_at(points, 0.95, "gsm8k/gold_nll") is None  # never reached
    assert value_at(points, 0.5, "piqa/margin") is None  # measure not on the curve


def test_value_at_takes_the_first_crossing():
    points = [_pt(0, 0.3, 0.1), _pt(1, 0.8, 0.5), _pt(2, 0.5, 0.9), _pt(3, 0.85, 1.2)]
    assert value_at(points, 0.8, "gsm8k/gold_nll").value == pytest.approx(0.5)


def test_final_phase_drops_the_rounds_before_the_last_rewind():
    points = [_pt(0, 0.5, 0.3), _pt(1, 0.6, 0.4), _pt(2, 0.2, 0.05), _pt(2.5, 0.4, 0.1)]
    pruned = [
        {"round": 1, "epoch": 0},
        {"round": 2, "epoch": 1},
    ]  # prune/history: prunes after epochs 0 and 1
    assert [p["epoch"] for p in final_phase(points, pruned)] == [2, 2.5]
    assert final_phase(points, []) == points
    assert final_phase(points, None) == points  # no prune recorded (QLoRA, the random mask): one phase
    assert peak_accuracy(final_phase(points, pruned)) == 0.4
    assert matched_level([final_phase(points, pruned), points]) == 0.4
    assert math.isnan(matched_level([points, []]))


def test_matched_difference_items_only_then_with_seeds():
    # one run each: the items' half-widths in quadrature
    d, lo, hi = matched_difference([CurveValue(1.0, 0.7, 1.3)], [CurveValue(0.2, 0.0, 0.4)])
    assert d == pytest.approx(0.8) and hi - d == pytest.approx(math.hypot(0.3, 0.2)) and d - lo == hi - d
    # two runs each: + Welch's t half-width of the run means
    a = [CurveValue(1.0, 0.9, 1.1), CurveValue(1.4, 1.3, 1.5)]
    b = [CurveValue(0.0, -0.1, 0.1), CurveValue(0.2, 0.1, 0.3)]
    d, lo, hi = matched_difference(a, b)
    va, vb = 0.08 / 2, 0.02 / 2  # sample variances / n
    df = (va + vb) ** 2 / (va**2 + vb**2)
    welch = student_t.ppf(0.975, df) * math.sqrt(va + vb)
    items = math.sqrt(2 * (math.sqrt(2 * 0.01) / 2) ** 2)
    assert d == pytest.approx(1.1) and hi - d == pytest.approx(math.hypot(welch, items))
    assert all(math.isnan(x) for x in matched_difference([], b))


def test_signed_swaps_the_bounds():
    v = CurveValue(0.5, 0.2, 0.9).signed(-1.0)
    assert (v.value, v.lo, v.hi) == (-0.5, -0.9, -0.2)


def test_matched_by_stop_needs_every_run_at_the_same_target():
    class J:
        def __init__(self, target: float | None, reached: float) -> None:
            self.metrics = {"stop_at/target": target, "stop_at/reached": reached}

    assert matched_by_stop([J(0.8, 1.0), J(0.8, 1.0)]) == 0.8
    assert matched_by_stop([J(0.8, 1.0), J(0.8, 0.0)]) is None
    assert matched_by_stop([J(0.8, 1.0), J(0.7, 1.0)]) is None
    assert matched_by_stop([J(None, 0.0)]) is None
    assert matched_by_stop([]) is None


def test_t975_is_the_one_quantile_for_seed_and_welch_intervals():
    # textbook values (3 decimals) for integer df; Welch's fractional df interpolates between them
    for df, table in [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)]:
        assert t975(df) == pytest.approx(table, abs=5e-4)
    assert t975(2) > t975(2.5) > t975(3)
    assert t975(1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal limit
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def test_items_at_interpolates_each_item_like_the_curve_value():
    points = [_pt(0, 0.2, 0.0), _pt(1, 0.6, 0.4), _pt(2, 0.9, 1.0)]
    changes = {0: {1: -0.1, 2: 0.1}, 10: {1: 0.2, 2: 0.6}, 20: {1: 0.8, 2: 1.2}}
    at = items_at(points, 0.7, changes)
    # a third of the way from step 10 to step 20, item by item; their mean is value_at's value there
    assert at == pytest.approx({1: 0.4, 2: 0.8})
    assert sum(at.values()) / 2 == pytest.approx(value_at(points, 0.7, "gsm8k/gold_nll").value)
    assert items_at(points, 0.1, changes) == changes[0]  # the first point already reaches it: read as it is
    assert items_at(points, 0.95, changes) is None  # never reached
    assert items_at(points, 0.7, {0: changes[0], 10: changes[10]}) is None  # a needed step has no records
    assert (
        items_at(points, 0.5, {k: v for k, v in changes.items() if k != 20}) is not None
    )  # not needed there


def test_a_rewound_phase_is_read_from_its_start_not_at_a_first_validation_far_above_the_level():
    # rounds 0-1 discarded; the last phase's first validation is already at 60 %
    points = [_pt(0, 0.3, 0.2), _pt(1, 0.5, 0.3), _pt(2, 0.6, 0.4), _pt(2.5, 0.8, 0.6)]
    config = {"pruning": {"enabled": True, "rounds": 2, "rewind": "init", "reset_alpha": True}}
    metrics = {"prune/history": [{"epoch": 0}, {"epoch": 1}], "textual_mnist/zero_shot_acc": 0.1}
    phase = compared_phase(points, config, metrics)
    assert phase[0][PHASE_START] == 1.0 and phase[0]["val_acc"] == 0.1 and phase[1:] == points[2:]
    assert phase[0]["epoch"] == 2.0 and phase[0]["gsm8k/gold_nll"] == phase[0]["gsm8k/gold_nll_ci_hi"] == 0.0
    # 35 %: half-way from the start (10 %, no change) to the first validation (60 %, +0.4 [0.3, 0.5])
    v = value_at(phase, 0.35, "gsm8k/gold_nll")
    assert (v.value, v.lo, v.hi) == pytest.approx((0.2, 0.15, 0.25))
    assert reads_from_start(phase, 0.35) and not reads_from_start(phase, 0.7)
    at = items_at(phase, 0.35, {20: {1: 0.2, 2: 0.6}, 25: {1: 0.5, 2: 0.7}})
    assert at == pytest.approx({1: 0.1, 2: 0.3})
    # without the start the first validation would be read as it is (at 60 %, not 35 %)
    assert value_at(
        final_phase(points, metrics["prune/history"]), 0.35, "gsm8k/gold_nll"
    ).value == pytest.approx(0.4)
    # no start where it is not known: no rewind to init, gates not reset, or no zero-shot accuracy
    for other in (
        {"pruning": {**config["pruning"], "rewind": "none"}},
        {"pruning": {**config["pruning"], "reset_alpha": False}},
    ):
        assert compared_phase(points, other, metrics) == points[2:]
    assert compared_phase(points, config, {**metrics, "textual_mnist/zero_shot_acc": None}) == points[2:]
    # the start would not be below the first validation
    assert compared_phase(points, config, {**metrics, "textual_mnist/zero_shot_acc": 0.7}) == points[2:]
    # a run that never pruned (the random mask reads the schedule for its density only): one phase, no start
    assert compared_phase(points, config, {"textual_mnist/zero_shot_acc": 0.1}) == points
