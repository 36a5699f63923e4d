"""The paper's claims, re-measured: a verdict with a 95% CI over seeds *and* items for each (issue 16).

Claims (arXiv 2511.01794, abstract):

1. the base model is around chance on Textual MNIST;
2. it learns the task through RIGSA, 4-bit QLoRA and random masking;
3. RIGSA forgets less than QLoRA (particularly on GSM8k);
4. RIGSA performs comparably to random masking.

Forgetting comparisons use every run's per-item records (``forgetting_items/{before,after}.json.gz``): the same
items for every run, so a **hierarchical bootstrap** resamples the items (once per draw, shared by all runs: the
pairing is kept) and, within each method, its seeds; the statistic is the difference of the methods' mean paired
change. With two seeds or more per method, a verdict also needs Welch's t interval over the run means to agree (the CI
shown is the union of both: a bootstrap over 2-3 runs understates the variation between seeds). A difference
whose CI lies on one side of 0 decides; one that straddles 0 is *inconclusive at this scale*.
"Comparable" (claim 4) needs the CI inside ±``margin`` of 0 (``EQUIVALENCE_MARGINS``).

Claim 4's design is paired when its controls are random tickets (``adapter.density_from``): each shares its RIGSA
run's seed, ΔW init, data order and per-matrix counts, so the pair differs only in which entries are kept. When every
random-mask run names the RIGSA run it was drawn from and no two name the same one, the completed pairs alone are
compared (none yet: inconclusive): the bootstrap resamples the pairs (not each method's runs apart) and the
seed-level interval is the paired t interval over the pairs' differences (n - 1 degrees of freedom) instead of
Welch's; otherwise (v1's random masks, which name none) the comparison is unpaired. This rule was fixed on
2026-12-06, before the v2 study's first random ticket completed; the same day, after the first pair completed, a
study still running was changed from unpaired to its completed pairs alone (a run whose partner has not completed
is left out and named), which leaves the complete study's analysis as it was.

Accuracy CIs: Wilson's interval for one run (test items), a t-interval over seeds for a method (``statistics.py``).

(Over ~400 lines on purpose: the four claims, their verdict rules and the votes they combine are read together.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigsa_lightning.config.access import get
from rigsa_lightning.forgetting import items as item_records
from rigsa_lightning.report import matching
from rigsa_lightning.report.jobs import _finite
from rigsa_lightning.report.statistics import (
    Interval,
    hierarchical_difference,
    paired_changes,
    paired_seed_interval,
    seed_interval,
    shared_run_means,
    t_interval,
    wilson,
)
from rigsa_lightning.report.table import _density, phase_budget

CHANCE = 0.1
#: Forgetting measures compared: (task, per-item measure, sign such that a positive value = more forgetting, label).
MEASURES: tuple[tuple[str, str, float, str], ...] = (
    ("gsm8k", "gold_nll", 1.0, "GSM8k Δ reference NLL/token (nats)"),
    ("piqa", "acc", -1.0, "PIQA Δ acc (pp)"),
    ("hellaswag", "acc", -1.0, "HellaSwag Δ acc (pp)"),
    ("piqa", "margin", -1.0, "PIQA Δ gold margin (nats)"),
    ("hellaswag", "margin", -1.0, "HellaSwag Δ gold margin (nats)"),
)
#: Claim 4: the largest difference still called "comparable" (same units as the per-item measure).
EQUIVALENCE_MARGINS: dict[str, float] = {"acc": 0.02, "margin": 0.05, "gold_nll": 0.02}
#: Which run name stands for each method in the claims (the study's; the first group of that method otherwise).
DEFAULT_NAMES: dict[str, str] = {
    "rigsa": "rigsa_paper",
    "random_mask": "random_mask_paper",
    "qlora": "qlora_r16",
    "none": "zero_shot",
}


@dataclass
class Claim:
    """One row of the claims table."""

    number: int
    claim: str
    measured: list[str] = field(default_factory=list)
    verdict: str = "inconclusive at this scale"
    runs: list[str] = field(default_factory=list)


def _runs_of(jobs: Sequence[Any], method: str, names: Mapping[str, str]) -> list[Any]:
    wanted = names.get(method)
    chosen = [j for j in jobs if j.metrics.get("method") == method and j.metrics.get("name") == wanted]
    if chosen:
        return chosen
    of_method = [j for j in jobs if j.metrics.get("method") == method]
    first = sorted({str(j.metrics.get("name")) for j in of_method})
    return [j for j in of_method if first and j.metrics.get("name") == first[0]]


def _items(job: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    folder = Path(job.path) / "forgetting_items"
    if not (folder / "before.json.gz").is_file() or not (folder / "after.json.gz").is_file():
        return None
    return item_records.load_records(folder / "before.json.gz"), item_records.load_records(
        folder / "after.json.gz"
    )


def _accuracy(job: Any) -> float:
    value = job.metrics.get("textual_mnist/acc")
    return float(value) if isinstance(value, (int, float)) else math.nan


LABELS = {"rigsa": "RIGSA", "random_mask": "random mask", "qlora": "QLoRA", "none": "base"}


def evaluate_claims(
    jobs: Sequence[Any], names: Mapping[str, str] | None = None, iters: int = 4000
) -> list[Claim]:
    """The four claims with what was measured and a verdict, from completed job folders (report's ``Job``)."""
    names = {**DEFAULT_NAMES, **(names or {})}
    runs = {m: _runs_of(jobs, m, names) for m in ("none", "rigsa", "random_mask", "qlora")}
    by_job = {id(j): _job_changes(j) for m in ("rigsa", "random_mask", "qlora") for j in runs[m]}
    return [_claim_chance(jobs, runs), _claim_learns(runs), *_claims_forgetting(runs, by_job, iters)]


def _claim_chance(jobs: Sequence[Any], runs: Mapping[str, list[Any]]) -> Claim:
    """Claim 1: the base model is around chance (Wilson interval of the zero-shot test accuracy)."""
    c1 = Claim(1, "The base model is around chance (10 %) on Textual MNIST.")
    zs = runs["none"] or [
        j for j in jobs if isinstance(j.metrics.get("textual_mnist/zero_shot_acc"), (int, float))
    ]
    if zs:
        job = zs[0]
        acc = job.metrics.get("textual_mnist/acc" if runs["none"] else "textual_mnist/zero_shot_acc")
        n = int(
            job.metrics.get("textual_mnist/n", 0) or job.metrics.get("textual_mnist/zero_shot_n", 0) or 300
        )
        ci = wilson(float(acc) * n, n)
        c1.measured.append(f"base test accuracy {ci.text(100)} % (Wilson 95 %, {n} test images)")
        c1.runs.append(job.rel)
        c1.verdict = "supported" if ci.hi < 2 * CHANCE or ci.lo <= CHANCE <= ci.hi else "contradicted"
    return c1


def _claim_learns(runs: Mapping[str, list[Any]]) -> Claim:
    """Claim 2: the task is learned through RIGSA, QLoRA and random masking.

    Per method, a t-interval over seeds (clipped to [0, 100] %: an accuracy) or, for one seed, Wilson's interval
    over the test images; each seed's own accuracy is listed. A method *learned* when its CI lies above 30 %
    (three times chance); it is *above chance* when the CI only clears 10 %. Supported when every method learned;
    contradicted when a method's whole CI stays below 20 %; otherwise inconclusive, naming what fell short."""
    c2 = Claim(2, "The base model learns the task through RIGSA, 4-bit QLoRA and random masking.")
    status: dict[str, str] = {}
    for method in ("rigsa", "qlora", "random_mask"):
        accs = [_accuracy(j) for j in runs[method]]
        if not accs:
            c2.measured.append(f"{LABELS[method]}: no completed run")
            status[method] = "no completed run"
            continue
        ci = t_interval(accs)
        if len(accs) == 1:  # one seed: the test items' binomial uncertainty (Wilson)
            n = int(runs[method][0].metrics.get("textual_mnist/n", 0) or 0)
            ci = wilson(accs[0] * n, n) if n else ci
            ci.n = f"1 seed, {n} test images" if n else "1 seed"
        else:
            ci = Interval(ci.value, max(ci.lo, 0.0), min(ci.hi, 1.0), ci.n)
        status[method] = _learning_status(ci)
        per_seed = f"; per seed {', '.join(f'{100 * a:.1f}' for a in accs)} %" if len(accs) > 1 else ""
        c2.measured.append(
            f"{LABELS[method]}: test acc {ci.text(100)} % ({ci.n}{per_seed}) — {status[method]}"
        )
        c2.runs += [j.rel for j in runs[method]]
    if all(v == "learned" for v in status.values()):
        c2.verdict = "supported"
    elif any(v == "below 20 %" for v in status.values()):  # a method whose whole CI stays below 20 %
        c2.verdict = "contradicted"
    else:
        short = [f"{LABELS[m]} {v}" for m, v in status.items() if v != "learned"]
        c2.verdict = f"inconclusive at this scale ({'; '.join(short)})"
    return c2


def _learning_status(ci: Interval) -> str:
    """Where a method's accuracy CI lies: above 3x chance (learned), wholly below 2x chance, above chance only."""
    if ci.lo > 3 * CHANCE:
        return "learned"
    if ci.hi < 2 * CHANCE:
        return "below 20 %"
    return "above chance, not above 30 %" if ci.lo > CHANCE else "not shown above chance"


def _job_changes(job: Any) -> dict[tuple[str, str], dict[int, float]]:
    """One job's ``{item: after - before}`` mapping per measure it recorded (from its per-item records)."""
    loaded = _items(job)
    if loaded is None:
        return {}
    changes = {
        (task, name): paired_changes(loaded[0], loaded[1], task, name) for task, name, _, _ in MEASURES
    }
    return {measure: change for measure, change in changes.items() if change}


def _forgetting_changes(
    jobs: Sequence[Any], by_job: Mapping[int, Mapping[tuple[str, str], dict[int, float]]]
) -> dict[tuple[str, str], list[dict[int, float]]]:
    """Per measure, the ``{item: after - before}`` mappings of ``jobs`` that recorded it, in the jobs' order
    (``by_job``: :func:`_job_changes` of each job, keyed by ``id(job)``)."""
    per: dict[tuple[str, str], list[dict[int, float]]] = {}
    for job in jobs:
        for measure, change in by_job[id(job)].items():
            per.setdefault(measure, []).append(change)
    return per


def _claims_forgetting(
    runs: Mapping[str, list[Any]],
    by_job: Mapping[int, Mapping[tuple[str, str], dict[int, float]]],
    iters: int,
) -> list[Claim]:
    """Claims 3 (RIGSA forgets less than QLoRA) and 4 (comparable to random masking), at matched accuracy.

    The end-of-training numbers (hierarchical bootstrap of the difference over seeds and items, per measure) decide
    when every compared run stopped at the same ``stop_at.val_acc`` target; otherwise the forgetting curves decide,
    read at the highest validation accuracy every compared run reaches (:mod:`rigsa_lightning.report.matching`)."""
    c3 = Claim(3, "RIGSA forgets less than QLoRA, particularly on GSM8k (more forgetting = positive below).")
    c4 = Claim(
        4,
        "RIGSA performs comparably to random masking (every forgetting difference's CI within "
        f"±{100 * EQUIVALENCE_MARGINS['acc']:.0f} pp accuracy, ±{EQUIVALENCE_MARGINS['margin']} nats margin, "
        f"±{EQUIVALENCE_MARGINS['gold_nll']} nats NLL).",
    )
    for other, claim in (("qlora", c3), ("random_mask", c4)):
        claim.runs = [j.rel for m in ("rigsa", other) for j in runs[m]]
        missing = [LABELS[m] for m in ("rigsa", other) if not runs[m]]
        if missing:  # a study still running: say which side is missing, not "no records"
            claim.measured.append(f"no completed {' or '.join(missing)} run yet")
            claim.verdict = f"inconclusive at this scale (no completed {' or '.join(missing)} run)"
            continue
        rigsa_runs, other_runs, paired = runs["rigsa"], runs[other], False
        if other == "random_mask":
            pairs = ticket_pairs(rigsa_runs, other_runs)
            if pairs is not None:
                left_out = _left_out_of_pairs(runs["rigsa"], runs[other], pairs)
                if not pairs:
                    claim.measured.append(f"paired by seed, no completed pair yet; left out: {left_out}")
                    claim.verdict = "inconclusive at this scale (no completed RIGSA / random-ticket pair)"
                    continue
                rigsa_runs, other_runs, paired = [p[0] for p in pairs], [p[1] for p in pairs], True
                claim.runs = [j.rel for j in (*rigsa_runs, *other_runs)]
                claim.measured.append(
                    "paired by seed: "
                    + ", ".join(f"{r.rel} with {o.rel}" for r, o in pairs)
                    + " (same seed, ΔW init and per-matrix counts: the masks differ only in which entries are kept)"
                    + (f"; left out: {left_out}" if left_out else "")
                )
        if given := _given_line({"rigsa": rigsa_runs, other: other_runs}):
            claim.measured.append(given)
        rigsa_changes = _forgetting_changes(rigsa_runs, by_job)
        other_changes = _forgetting_changes(other_runs, by_job)
        votes = _final_votes(
            rigsa_changes, other_changes, other, claim, iters, len(rigsa_runs) if paired else 0
        )
        compared = [*rigsa_runs, *other_runs]
        target = matching.matched_by_stop(compared)
        if target is not None:
            claim.measured.insert(0, f"matched accuracy: every run stopped at val acc ≥ {100 * target:.0f} %")
        elif compared and votes:
            claim.measured.append(
                "end-of-training accuracy NOT matched (val acc "
                + ", ".join(
                    f"{LABELS[m]} {_val_accuracies(g)}"
                    for m, g in (("rigsa", rigsa_runs), (other, other_runs))
                )
                + "): the numbers above are not a matched comparison"
            )
            votes, why = _curve_votes(rigsa_runs, other_runs, other, claim, iters, paired)
            if why:
                claim.verdict = f"inconclusive at this scale ({why})"
                continue
        if other == "qlora":
            claim.verdict = _less_forgetting_verdict(votes, primary=("gsm8k", "gold_nll"))
        else:
            # at the stop target: every measure RIGSA has; from the curves: every curve measure they share
            expected = list(rigsa_changes) if target is not None else list(votes)
            claim.verdict = _comparable_verdict(votes, expected=expected)
        claim.verdict += _seed_caveat(rigsa_runs, other_runs, other, claim.verdict)
    return [c3, c4]


_TICKET_FILES = {"prune_history.json", "metrics.json", "adapter_config.json"}


def ticket_source(job: Any) -> str:
    """The folder name of the RIGSA run a random ticket took its per-matrix counts from (its
    ``adapter.density_from``, resolved against its own ``.hydra``): the run folder itself, or the one holding the
    named ``prune_history.json`` / ``metrics.json`` or exported ``adapter/`` folder; "" for a run without one."""
    source = get(job.config, "adapter.density_from")
    if not source:
        return ""
    path = Path(str(source).rstrip("/"))
    if path.name in _TICKET_FILES:
        path = path.parent
    if path.name == "adapter":  # a run's exported adapter folder
        path = path.parent
    return path.name


def ticket_pairs(rigsa: Sequence[Any], others: Sequence[Any]) -> list[tuple[Any, Any]] | None:
    """The random tickets paired with their RIGSA runs, ``[(rigsa run, random ticket), ...]`` in the RIGSA runs'
    order, when every random-mask run names the RIGSA run it was drawn from (:func:`ticket_source`) and no two name
    the same one: the pairs whose named run is among ``rigsa`` (a run on either side without its partner is left
    out; ``[]`` when no pair is complete). None when a random-mask run names none or two name the same one (then
    the comparison is unpaired)."""
    partner: dict[str, Any] = {}
    for job in others:
        name = ticket_source(job)
        if not name or name in partner:
            return None
        partner[name] = job
    return [(j, partner[Path(j.path).name]) for j in rigsa if Path(j.path).name in partner]


def _left_out_of_pairs(rigsa: Sequence[Any], others: Sequence[Any], pairs: Sequence[tuple[Any, Any]]) -> str:
    """The runs :func:`ticket_pairs` left out, each with why ("" when none)."""
    paired = {id(j) for pair in pairs for j in pair}
    left = [f"{j.rel} (no completed random ticket)" for j in rigsa if id(j) not in paired]
    left += [
        f"{j.rel} (its RIGSA run {ticket_source(j)} is not among the completed runs)"
        for j in others
        if id(j) not in paired
    ]
    return ", ".join(left)


def _seed_caveat(rigsa: Sequence[Any], others: Sequence[Any], other: str, verdict: str) -> str:
    """The qualifier of a decided verdict whose methods have fewer than 2 seeds: its CI covers the items only."""
    if verdict.startswith("inconclusive") or (len(rigsa) >= 2 and len(others) >= 2):
        return ""
    return (
        f" (preliminary: {len(rigsa)} RIGSA seed(s) vs {len(others)} {LABELS[other]}: the CI covers the items, "
        "not the variation between seeds)"
    )


def _final_votes(
    rigsa: Mapping[tuple[str, str], list[dict[int, float]]],
    others: Mapping[tuple[str, str], list[dict[int, float]]],
    other: str,
    claim: Claim,
    iters: int,
    pairs: int = 0,
) -> dict[tuple[str, str], str]:
    """The end-of-training comparison, per measure: a line on ``claim`` and a vote (hierarchical bootstrap).

    ``pairs``: the runs are that many pairs, in order; a measure some run lacks is compared unpaired."""
    votes: dict[tuple[str, str], str] = {}
    for k, (task, name, sign, text) in enumerate(MEASURES):
        scale = 100.0 if name == "acc" else 1.0
        r, o = rigsa.get((task, name), []), others.get((task, name), [])
        if not r or not o:
            continue
        digits = 1 if scale > 1 else 3
        paired = pairs > 0 and len(r) == len(o) == pairs
        diff = _runs_difference(r, o, sign, iters, k, scale, digits, paired=paired)
        claim.measured.append(
            f"{text}: forgetting RIGSA − {LABELS[other]} {diff.text(scale, digits, True)} ({diff.n})"
        )
        votes[(task, name)] = _vote(other, diff, EQUIVALENCE_MARGINS[name])
    return votes


def _runs_difference(
    first: Sequence[Mapping[int, float]],
    second: Sequence[Mapping[int, float]],
    sign: float,
    iters: int,
    seed: int,
    scale: float,
    digits: int,
    note: str = "",
    paired: bool = False,
) -> Interval:
    """The forgetting difference ``first`` - ``second`` (per-item changes times ``sign``) with the CI a vote uses:
    the hierarchical bootstrap's, widened to Welch's interval over run means when both methods have two runs
    (``paired``: ``first[i]`` pairs with ``second[i]``; the bootstrap resamples pairs and the seed-level interval is
    the paired t interval over two pairs or more)."""
    signed = [[{d: sign * v for d, v in run.items()} for run in group] for group in (first, second)]
    diff = hierarchical_difference(*signed, iters=iters, seed=seed, paired=paired)
    diff.n += note
    seeds = paired_seed_interval(*signed) if paired else seed_interval(*signed)
    if seeds is None:
        return diff
    over = "paired t over the pairs" if paired else "Welch over run means"
    diff.n += f"; bootstrap {diff.text(scale, digits, True)}, {over} {seeds.text(scale, digits, True)}"
    return Interval(diff.value, min(diff.lo, seeds.lo), max(diff.hi, seeds.hi), diff.n)


def _curve_votes(
    rigsa: Sequence[Any], others: Sequence[Any], other: str, claim: Claim, iters: int, paired: bool = False
) -> tuple[dict[tuple[str, str], str], str]:
    """The matched-accuracy comparison from the forgetting curves: lines on ``claim``, the votes, and why there is
    none ("" when there is).

    Per measure, the hierarchical bootstrap of the per-item changes at the matched level when every run kept its
    curve's per-item records (``forgetting_items/curve/``); otherwise an approximation from each curve point's own
    CI (:func:`rigsa_lightning.report.matching.matched_difference`, unpaired). ``paired``: ``rigsa[i]`` pairs with
    ``others[i]`` (:func:`ticket_pairs`)."""
    curves = {
        id(j): matching.compared_phase(j.metrics.get("forget_curve") or [], j.config, j.metrics)
        for j in (*rigsa, *others)
    }
    if any(not c for c in curves.values()):
        return {}, "accuracy not matched and a run has no forgetting curve"
    level = matching.matched_level(list(curves.values()))
    from_start = [j.rel for j in (*rigsa, *others) if matching.reads_from_start(curves[id(j)], level)]
    claim.measured.append(
        f"matched accuracy from the forgetting curves: val acc {100 * level:.1f} % (the highest level every run "
        "reaches in its last training phase)"
        + (
            f"; read between the phase start (the rewound model = the base up to the gates' 1e-6: no change, at "
            f"its zero-shot accuracy) and the first validation for {', '.join(from_start)}"
            if from_start
            else ""
        )
    )
    if level < 2 * CHANCE:
        return {}, f"accuracy not matched and a method never left chance: matched level {100 * level:.1f} %"
    records = {id(j): _curve_records(j) for j in (*rigsa, *others)}
    votes: dict[tuple[str, str], str] = {}
    for k, (task, name, sign, text) in enumerate(MEASURES):
        if name == "acc":  # 0/1 outcomes on the curve's few items are too coarse: continuous measures only
            continue
        per_item = [
            [_changes_at(curves[id(j)], records[id(j)], level, task, name) for j in group]
            for group in (rigsa, others)
        ]
        if all(per_item[0]) and all(per_item[1]):
            note = " at the level, paired bootstrap"
            diff = _runs_difference(*per_item, sign, iters, k, 1.0, 3, note, paired)  # type: ignore[arg-type]
            run_values = [sign * v for group in shared_run_means(*per_item) for v in group]  # type: ignore[arg-type]
        else:
            key = f"{task}/{name}"
            at = [[matching.value_at(curves[id(j)], level, key) for j in group] for group in (rigsa, others)]
            if any(v is None for group in at for v in group):
                continue
            signed = [[v.signed(sign) for v in group] for group in at]  # type: ignore[union-attr]
            value, lo, hi = matching.matched_difference(signed[0], signed[1])
            diff = Interval(
                value, lo, hi, f"{len(rigsa)} vs {len(others)} runs, CI from each curve point's CI"
            )
            run_values = [v.value for group in signed for v in group]
        per_run = ", ".join(f"{j.rel} {v:+.3f}" for j, v in zip((*rigsa, *others), run_values, strict=True))
        claim.measured.append(
            f"{text} at val acc {100 * level:.1f} %: forgetting RIGSA − {LABELS[other]} "
            f"{diff.text(1.0, 3, True)} ({diff.n}; per run: {per_run})"
        )
        votes[(task, name)] = _vote(other, diff, EQUIVALENCE_MARGINS[name])
    return votes, "" if votes else "accuracy not matched and the curves lack a common measure"


def _curve_records(job: Any) -> tuple[dict[str, Any], dict[int, dict[str, Any]]] | None:
    """A run's curve per-item records: the base's and one per validation step (None when it kept none)."""
    folder = Path(job.path) / item_records.CURVE_ITEMS
    before = folder / "before.json.gz"
    if not before.is_file():
        return None
    steps = {
        int(f.name[len("step") : -len(".json.gz")]): item_records.load_records(f)
        for f in folder.glob("step*.json.gz")
    }
    return item_records.load_records(before), steps


def _changes_at(
    curve: Sequence[Mapping[str, float]],
    records: tuple[dict[str, Any], dict[int, dict[str, Any]]] | None,
    level: float,
    task: str,
    name: str,
) -> dict[int, float] | None:
    """One run's per-item changes of ``task``/``name`` where its curve reaches ``level`` (None without records)."""
    if records is None:
        return None
    before, steps = records
    changes = {step: paired_changes(before, after, task, name) for step, after in steps.items()}
    return matching.items_at(curve, level, {s: c for s, c in changes.items() if c}) or None


def _given_line(groups: Mapping[str, Sequence[Any]]) -> str:
    """What each compared method's runs were given in their final phase, side by side (the lottery-ticket
    protocol compares arms on the same final-phase budget and schedule; :func:`table.phase_budget`): per run the
    steps trained after the last prune, the peak rate(s) of the adapter's weights, and ΔW's kept fraction
    (:func:`table._density`) where it is below 1. "" when no run recorded its steps (jobs that predate step
    counts)."""
    parts = []
    for method, jobs in groups.items():
        budgets = [phase_budget(j) for j in jobs]
        steps = [b["final_steps"] for b in budgets]
        if not any(_finite(s) for s in steps):
            continue
        rates = sorted({b["final_lr"] for b in budgets if _finite(b["final_lr"])})
        text = f"{LABELS[method]} " + ", ".join(f"{s:.0f}" if _finite(s) else "?" for s in steps) + " steps"
        if rates:
            text += " at lr " + " / ".join(f"{r:g}" for r in rates)
        densities = [_density(j) for j in jobs]
        if any(_finite(d) and d < 1 for d in densities):
            text += (
                ", density " + ", ".join(f"{100 * d:.2f}" if _finite(d) else "?" for d in densities) + " %"
            )
        parts.append(text)
    if not parts:
        return ""
    return (
        "final phase per run (steps trained, fewer where it stopped at the target; peak lr; ΔW density): "
        + "; ".join(parts)
    )


def _val_accuracies(jobs: Sequence[Any]) -> str:
    """The runs' final validation accuracies: "56.0 %", or their range over seeds ("56.0–61.5 %")."""
    accs = [j.metrics.get("final_val/acc", j.metrics.get("textual_mnist/acc")) for j in jobs]
    accs = sorted(100 * float(a) for a in accs if isinstance(a, (int, float)))
    if not accs:
        return "unknown"
    low, high = f"{accs[0]:.1f}", f"{accs[-1]:.1f}"
    return f"{low} %" if low == high else f"{low}–{high} %"


def _vote(other: str, diff: Any, margin: float) -> str:
    """One measure's vote: vs QLoRA less/more/? forgetting; vs random mask equal (CI within ±margin)/differ/?."""
    if other == "qlora":
        return "less" if diff.hi < 0 else "more" if diff.lo > 0 else "?"
    if -margin <= diff.lo and diff.hi <= margin:
        return "equal"
    return "differ" if diff.lo > 0 or diff.hi < 0 else "?"


def _less_forgetting_verdict(votes: Mapping[tuple[str, str], str], primary: tuple[str, str]) -> str:
    """Claim 3: decided by the primary measure (GSM8k's reference NLL); contradicted when it goes the other way;
    supported only when no other decided measure goes against it."""
    if not votes:
        return "inconclusive at this scale (no per-item forgetting records)"
    if primary not in votes:
        return "inconclusive at this scale (no GSM8k reference-NLL records)"
    if votes[primary] == "more":
        return "contradicted"
    if votes[primary] == "?":
        return "inconclusive at this scale"
    if any(v == "more" for v in votes.values()):
        return "inconclusive at this scale (measures disagree)"
    return "supported"


def _comparable_verdict(votes: Mapping[tuple[str, str], str], expected: Sequence[tuple[str, str]]) -> str:
    """Claim 4: supported only when every expected measure is present and within its margin; contradicted when one
    differs (its CI excludes 0); inconclusive otherwise."""
    if not votes:
        return "inconclusive at this scale (no per-item forgetting records)"
    if any(v == "differ" for v in votes.values()):
        return "contradicted"
    if all(votes.get(m) == "equal" for m in expected):
        return "supported"
    return "inconclusive at this scale" + (
        " (a measure is missing)" if any(m not in votes for m in expected) else ""
    )


def claims_markdown(claims: Sequence[Claim]) -> str:
    """The claims table (claim -> measured with 95 % CIs -> verdict) and the job folders each row uses."""
    lines = ["| # | claim | measured (95 % CI over seeds and items) | verdict |", "|---|---|---|---|"]
    for c in claims:
        measured = "<br>".join(m.replace("|", "\\|") for m in c.measured) or "no completed run"
        lines.append(f"| {c.number} | {c.claim} | {measured} | **{c.verdict}** |")
    lines.append("")
    for c in claims:
        if c.runs:
            lines.append(f"- claim {c.number} uses: " + ", ".join(f"`{r}`" for r in sorted(set(c.runs))))
    return "\n".join(lines) + "\n"


def dense_step_markdown(jobs: Sequence[Any], names: Mapping[str, str] | None = None) -> str:
    """The paper's "RIGSA step 1 (dense)" point: each RIGSA run's forgetting-curve point at the end of its dense
    round (the step of its first prune; validation runs before the prune, so the point is the dense model), with
    the mean and 95 % t-interval over seeds. Empty without a RIGSA run that recorded such a point."""
    names = {**DEFAULT_NAMES, **(names or {})}
    rows = []
    for job in sorted(_runs_of(jobs, "rigsa", names), key=lambda j: str(j.rel)):
        history = job.metrics.get("prune/history") or []
        curve = job.metrics.get("forget_curve") or []
        if not history:
            continue
        step = float(history[0].get("global_step") or 0)
        # the last point before the prune (validation at the end of an epoch is logged one step short of it)
        before = [p for p in curve if float(p.get("step", -1)) <= step]
        point = before[-1] if before else None
        if point is not None:
            rows.append((job.rel, point))
    if not rows:
        return ""
    keys = [("val_acc", "val acc (%)", 100.0)] + [
        (f"{task}/{measure}", label, 100.0 if measure == "acc" else 1.0)
        for task, measure, _, label in MEASURES
    ]
    keys = [k for k in keys if any(k[0] in p for _, p in rows)]
    lines = [
        "## The paper's RIGSA step 1 (dense)",
        "",
        "Each RIGSA run's forgetting-curve point at the end of its dense round (before its first prune); changes "
        "from the base on the curve's items, per run with the item CI, and the mean over seeds with its t-interval.",
        "",
        "| run | step | " + " | ".join(label for _, label, _ in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for rel, point in rows:
        cells = []
        for key, _, scale in keys:
            value = point.get(key)
            lo, hi = point.get(f"{key}_ci_lo"), point.get(f"{key}_ci_hi")
            text = (
                "—"
                if value is None
                else f"{scale * value:+.3f}"
                if key != "val_acc"
                else f"{scale * value:.1f}"
            )
            if value is not None and lo is not None and hi is not None:
                text += f" [{scale * lo:+.3f}, {scale * hi:+.3f}]"
            cells.append(text)
        lines.append(f"| `{rel}` | {int(point['step'])} | " + " | ".join(cells) + " |")
    means = []
    for key, _, scale in keys:
        values = [p[key] for _, p in rows if key in p]
        ci = t_interval(values)
        if key == "val_acc":  # an accuracy: the t-interval clipped to [0, 100] %
            text = f"{scale * ci.value:.1f}"
            interval = f" [{max(0.0, scale * ci.lo):.1f}, {min(100.0, scale * ci.hi):.1f}]"
        else:
            text, interval = f"{scale * ci.value:+.3f}", f" [{scale * ci.lo:+.3f}, {scale * ci.hi:+.3f}]"
        # one seed has no interval over seeds (its item CI is in its row)
        means.append(text + (interval if len(values) > 1 else " (one seed: no interval)"))
    runs = "1 run" if len(rows) == 1 else f"{len(rows)} runs"
    lines.append(f"| mean ({runs}) | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
