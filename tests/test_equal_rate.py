"""The tickets at one final-phase rate (``report.equal_rate``): the study's and the equal-rate sweep's job folders
read together, paired rate by rate as claim 4 pairs them, and laid out mask × rate per RIGSA run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rigsa_lightning.report.equal_rate import equal_rate_markdown, main

HISTORY = [
    {"round": 1, "global_step": 125, "density": 0.2},
    {"round": 2, "global_step": 250, "density": 0.03},
]


def _job(
    folder: Path, name: str, method: str, rate: float, gsm: float, kl: float, steps: float, seed: int = 0
) -> Path:
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    source = f"outputs/study/v2/rigsa_paper_s{seed}" if method == "random_mask" else None
    config = {
        "seed": seed,
        "adapter": {
            "method": method,
            "lr": rate if method == "random_mask" else 3e-3,
            "density_from": source,
        },
        "pruning": {"final_lr": rate if method == "rigsa" else None},
    }
    (job / ".hydra" / "config.yaml").write_text(json.dumps(config))  # YAML reads JSON
    rigsa = method == "rigsa"
    metrics = {
        "status": "completed",
        "method": method,
        "seed": seed,
        "time/steps_n": steps + (250 if rigsa else 0),
        "textual_mnist/acc": 0.8,
        "textual_mnist/n": 300.0,
        "forget/gsm8k/gold_nll/delta": gsm,
        "forget/gsm8k/gold_nll/delta_ci_lo": gsm - 0.05,
        "forget/gsm8k/gold_nll/delta_ci_hi": gsm + 0.05,
        "forget/drift/kl/after": kl,
        **({"prune/history": HISTORY} if rigsa else {}),
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_the_two_sweeps_pair_rate_by_rate_and_fill_the_mask_by_rate_grid(tmp_path: Path) -> None:
    study, equal = tmp_path / "v2", tmp_path / "v2_equal_rate"
    _job(study, "rigsa_paper_s0", "rigsa", 3e-3, gsm=0.409, kl=0.716, steps=124)
    _job(study, "random_ticket_s0", "random_mask", 3e-2, gsm=0.050, kl=0.076, steps=312)
    _job(equal, "rigsa_paper_s0", "rigsa", 3e-2, gsm=0.300, kl=0.500, steps=62)
    _job(equal, "random_ticket_s0", "random_mask", 3e-3, gsm=0.020, kl=0.010, steps=375)
    # seed 1: the study's pair and, at 3e-2 only, its RIGSA ticket (written first: pairing goes by the named run)
    _job(equal, "rigsa_paper_s1", "rigsa", 3e-2, gsm=0.700, kl=0.900, steps=100, seed=1)
    _job(study, "random_ticket_s1", "random_mask", 3e-2, gsm=0.100, kl=0.020, steps=300, seed=1)
    _job(study, "rigsa_paper_s1", "rigsa", 3e-3, gsm=0.500, kl=0.800, steps=200, seed=1)
    text = equal_rate_markdown([study, equal])
    low, high = text.split("## Both tickets at final rate 0.003")[1].split(
        "## Both tickets at final rate 0.03"
    )
    high, grid = high.split("## Mask × rate, run by run")
    # at 3e-3: the study's RIGSA ticket and the equal-rate sweep's random ticket; at 3e-2 the other way round
    assert (
        "`v2/rigsa_paper_s0` (RIGSA ticket)" in low
        and "`v2_equal_rate/random_ticket_s0` (random ticket)" in low
    )
    assert (
        "`v2_equal_rate/rigsa_paper_s0` (RIGSA ticket)" in high
        and "`v2/random_ticket_s0` (random ticket)" in high
    )

    def differences(section: str) -> dict[str, str]:  # seed -> GSM8k difference RIGSA − random ticket
        cells = [line.split("|") for line in section.splitlines() if "difference RIGSA − random" in line]
        return {c[1].strip(): c[-2].strip() for c in cells}

    assert differences(low) == {"0": "+0.389"}  # 0.409 - 0.020; seed 1 has no random ticket at 3e-3
    # each RIGSA ticket against the random ticket drawn from its own run: 0.300 - 0.050 and 0.700 - 0.100
    assert differences(high) == {"0": "+0.250", "1": "+0.600"}
    assert "Without a partner at this rate (not in the table): `v2/rigsa_paper_s1`." in low
    assert "`v2/random_ticket_s0`" not in low and "`v2/rigsa_paper_s0`" not in high
    rows = [line for line in grid.splitlines() if line.startswith("| `rigsa_paper_s0`")]
    assert len(rows) == 2 and len([line for line in grid.splitlines() if "| `rigsa_paper_s1`" in line]) == 2
    rigsa_row, random_row = rows
    assert rigsa_row.index("`v2/rigsa_paper_s0`: GSM8k +0.409") < rigsa_row.index(
        "`v2_equal_rate/rigsa_paper_s0`"
    )
    assert "KL 0.500 · 62 steps · test 80.0 %" in rigsa_row
    assert random_row.index("`v2_equal_rate/random_ticket_s0`: GSM8k +0.020") < random_row.index(
        "`v2/random_ticket_s0`: GSM8k +0.050 [+0.000, +0.100] · KL 0.076 · 312 steps"
    )


def test_the_committed_archives_one_inside_the_other_are_named_apart(tmp_path: Path) -> None:
    """The study's archive ``…/jobs`` and the equal-rate archive ``…/equal_rate/jobs`` share their folder's name: each
    job is named from the two folders' common parent, so the two ``rigsa_paper_s0`` stay apart."""
    study, equal = tmp_path / "study_v2" / "jobs", tmp_path / "study_v2" / "equal_rate" / "jobs"
    _job(study, "rigsa_paper_s0", "rigsa", 3e-3, gsm=0.409, kl=0.716, steps=124)
    _job(study, "random_ticket_s0", "random_mask", 3e-2, gsm=0.050, kl=0.076, steps=312)
    _job(equal, "rigsa_paper_s0", "rigsa", 3e-2, gsm=0.114, kl=0.116, steps=312)
    _job(equal, "random_ticket_s0", "random_mask", 3e-3, gsm=0.091, kl=0.165, steps=375)
    text = equal_rate_markdown([study, equal])
    low, high = text.split("## Both tickets at final rate 0.03\n")
    assert "`jobs/rigsa_paper_s0` (RIGSA ticket)" in low
    assert "`equal_rate/jobs/random_ticket_s0` (random ticket)" in low
    assert "`equal_rate/jobs/rigsa_paper_s0` (RIGSA ticket)" in high and "`jobs/random_ticket_s0`" in high
    assert "| +0.318 |" in low and "| +0.064 |" in high  # 0.409 - 0.091 and 0.114 - 0.050


def test_a_study_alone_has_no_pair_at_either_rate_and_two_runs_of_one_ticket_are_not_paired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, again = tmp_path / "v2", tmp_path / "again"
    _job(study, "rigsa_paper_s0", "rigsa", 3e-3, gsm=0.4, kl=0.7, steps=124)
    _job(study, "random_ticket_s0", "random_mask", 3e-2, gsm=0.05, kl=0.07, steps=312)
    alone = equal_rate_markdown([study])
    assert "No pair: `v2/rigsa_paper_s0` alone." in alone and "No pair: `v2/random_ticket_s0` alone." in alone
    assert "## Mask × rate" not in alone  # no run at two rates
    _job(again, "rigsa_paper_s0", "rigsa", 3e-3, gsm=0.3, kl=0.6, steps=124)  # the same ticket, the same rate
    assert "Not paired: two RIGSA runs of the same ticket at this rate." in equal_rate_markdown(
        [study, again]
    )

    main([str(study), str(again)])
    assert (again / "equal_rate.md").read_text().startswith("# The winning ticket and its random ticket")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(study), str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: folders: ")
        and " -> give existing sweep folders" in err[0]
    )
