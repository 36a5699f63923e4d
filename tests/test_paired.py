"""Paired forgetting statistics (issue 13): McNemar's exact test, paired bootstrap CIs, item subsets and records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.forgetting import items, paired


def test_mcnemar_exact_matches_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 200))
        before = rng.random(n) < 0.6
        after = np.where(rng.random(n) < 0.2, ~before, before)
        test = paired.mcnemar_exact(before, after)
        assert test.lost == int((before & ~after).sum())
        assert test.gained == int((~before & after).sum())
        discordant = test.lost + test.gained
        expected = 1.0 if discordant == 0 else scipy_stats.binomtest(test.lost, discordant, 0.5).pvalue
        assert test.p == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_known_values():
    # 10 lost, 0 gained: p = 2 * 0.5**10
    before = [1] * 10 + [0] * 5
    after = [0] * 10 + [0] * 5
    assert paired.mcnemar_exact(before, after).p == pytest.approx(2 * 0.5**10)
    assert paired.mcnemar_exact([1, 0, 1], [1, 0, 1]).p == 1.0
    assert paired.binom_two_sided_p(3, 6) == 1.0


def test_paired_bootstrap_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(1)
    before = rng.normal(size=300)
    after = before + rng.normal(0.1, 0.5, size=300)
    est = paired.paired_bootstrap(before, after, iters=2000, seed=7)
    diff = after - before
    # reference: the same resampling written as a loop
    ref_rng = np.random.default_rng(7)
    means = []
    for start in range(0, 2000, 1000):
        idx = ref_rng.integers(0, 300, size=(min(1000, 2000 - start), 300))
        means.extend(diff[idx].mean(axis=1))
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert est.mean == pytest.approx(diff.mean(), abs=1e-12)
    assert (est.lo, est.hi) == pytest.approx((lo, hi), abs=1e-12)
    # and close to the normal approximation at this n
    se = diff.std(ddof=1) / math.sqrt(300)
    assert est.half_width == pytest.approx(1.96 * se, rel=0.1)
    assert est.lo < est.mean < est.hi and est.n == 300


def test_paired_bootstrap_edge_cases():
    same = paired.paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)
    shifted = paired.paired_bootstrap([0.5, 1.5, 2.5], [1.0, 2.0, 3.0])
    assert (shifted.mean, shifted.lo, shifted.hi) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        paired.paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        paired.mean_ci([])
    with pytest.raises(ValueError):
        paired.mean_ci([1.0, float("nan")])


def test_choose_items_is_seeded_fixed_and_sorted():
    a = items.choose_items(1838, 500, seed=0)
    assert a == items.choose_items(1838, 500, seed=0)
    assert a == sorted(set(a)) and len(a) == 500 and 0 <= a[0] and a[-1] < 1838
    assert a != items.choose_items(1838, 500, seed=1)
    assert items.choose_items(10, None, seed=0) == list(range(10))
    assert items.choose_items(10, 10, seed=0) == list(range(10))
    # a larger subset is not required to contain a smaller one, but the same call always gives the same items
    assert items.choose_items(10042, 300, seed=0)[:5] == items.choose_items(10042, 300, seed=0)[:5]


def test_resolve_size_and_its_errors():
    assert items.resolve_size(None, "piqa", 1838) is None
    assert items.resolve_size({"piqa": 500}, "piqa", 1838) == 500
    assert items.resolve_size({"piqa": 500}, "gsm8k", 1319) is None  # not listed: the full split
    assert items.resolve_size(0.5, "piqa", 1838) == 919
    assert items.resolve_size(1838, "piqa", 1838) is None
    with pytest.raises(ConfigError) as err:
        items.resolve_size({"piqa": 5000}, "piqa", 1838, where="(/x/piqa/validation.jsonl)")
    assert err.value.option == "eval.limit.piqa" and "/x/piqa/validation.jsonl" in str(err.value)
    with pytest.raises(ConfigError) as err:
        items.resolve_size(0, "piqa", 1838)
    assert err.value.option == "eval.limit"
    with pytest.raises(ConfigError):
        items.resolve_size({"piqa": "many"}, "piqa", 1838)


def test_paired_alignment_by_doc_id():
    before = {"doc_id": [3, 5, 9], "acc": [1.0, 0.0, 1.0]}
    after = {"doc_id": [9, 3], "acc": [0.0, 1.0]}
    b, a = items.paired(before, after, "acc")
    assert b.tolist() == [1.0, 1.0] and a.tolist() == [1.0, 0.0]


def test_multiple_choice_records_from_samples():
    samples = [
        {
            "doc_id": 7,
            "target": 1,
            "resps": [[(-5.0, False)], [(-3.0, True)], [(-4.0, False)]],
            "acc": 1.0,
            "acc_norm": 0.0,
        },
        {"doc_id": 2, "target": 0, "resps": [[(-6.0, False)], [(-2.0, True)]], "acc": 0.0, "acc_norm": 1.0},
    ]
    rec = items.records_from_samples("x", samples)
    assert rec["doc_id"] == [2, 7]
    assert rec["margin"] == [-4.0, 1.0]
    assert rec["gold_ll"] == [-6.0, -3.0]
    assert rec["acc"] == [0.0, 1.0] and rec["acc_norm"] == [1.0, 0.0]


def test_generation_records_from_samples():
    samples = [
        {"doc_id": 4, "filter": "strict-match", "filtered_resps": ["[invalid]"], "exact_match": 0.0},
        {"doc_id": 4, "filter": "flexible-extract", "filtered_resps": ["18"], "exact_match": 1.0},
    ]
    rec = items.records_from_samples("gsm8k", samples, gold_nll={4: (30.0, 60)})
    assert rec["doc_id"] == [4]
    assert rec["exact_match_strict-match"] == [0.0] and rec["exact_match_flexible-extract"] == [1.0]
    assert rec["answer_flexible-extract"] == ["18"]
    assert rec["gold_nll"] == [0.5] and rec["gold_tokens"] == [60]


def test_records_round_trip(tmp_path):
    rec = {"piqa": {"doc_id": [1, 2], "acc": [1.0, 0.0], "ll": [[-1.0, -2.0], [-3.0, -1.0]]}}
    path = items.save_records(tmp_path / "s" / "after.json.gz", rec)
    assert items.load_records(path) == rec


def test_check_fields_names_the_file(tmp_path):
    bad = tmp_path / "validation.jsonl"
    bad.write_text('{"goal": "g", "sol1": "a", "label": 0}\n')
    with pytest.raises(ConfigError) as err:
        items.check_fields("piqa", [bad])
    assert err.value.option == "eval.data_dir" and str(bad) in str(err.value) and "sol2" in str(err.value)
    bad.write_text("not json\n")
    with pytest.raises(ConfigError):
        items.check_fields("piqa", [bad])
