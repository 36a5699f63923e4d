"""The learning-rate search's table: one row per method x rate, the selection rule, partial searches visible."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from rigsa_lightning.report.jobs import find_job_dirs, load_job
from rigsa_lightning.report.lr_table import lr_rows, main, selected, write_lr_table


def _job(root: Path, method: str, lr: float, val: float | None, test: float = 0.5) -> None:
    job = root / f"{method}_lr{lr}"
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      adapter.lr: 1.0e-3,3.0e-3\n"
    )
    (job / ".hydra" / "config.yaml").write_text(
        f"name: {method}_lr{lr}\nadapter:\n  method: {method}\n  lr: {lr}\ndata:\n  val_size: 200\n"
    )
    if val is not None:
        metrics = {
            "status": "completed",
            "method": method,
            "name": f"{method}_lr{lr}",
            "final_val/acc": val,
            "textual_mnist/acc": test,
            "final_val/loss": 1.25,
            "time/train_s": 600.0,
        }
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_rows_selection_and_wilson(tmp_path: Path) -> None:
    _job(tmp_path, "rigsa", 0.0003, 0.11)
    _job(tmp_path, "rigsa", 0.001, 0.55)
    _job(tmp_path, "rigsa", 0.003, 0.55)  # tie: the smaller rate is selected
    _job(tmp_path, "qlora", 0.001, 0.80)
    _job(tmp_path, "qlora", 0.003, None)  # still running: listed, never selected
    rows = lr_rows([load_job(p, tmp_path) for p in find_job_dirs(tmp_path)])
    assert [(r["method"], r["lr"]) for r in rows] == [
        ("qlora", 0.001),
        ("qlora", 0.003),
        ("rigsa", 0.0003),
        ("rigsa", 0.001),
        ("rigsa", 0.003),
    ]
    best = selected(rows)
    assert best["rigsa"]["lr"] == 0.001 and best["qlora"]["lr"] == 0.001
    r = rows[3]
    # Wilson 95 % for 110/200: centre (p + z²/2n)/(1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    z, n, p = 1.96, 200, 0.55
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert math.isclose(r["val_lo"], centre - half) and math.isclose(r["val_hi"], centre + half)
    assert rows[1]["status"] == "incomplete" and math.isnan(rows[1]["val_acc"])


def test_a_method_missing_grid_rates_is_best_so_far(tmp_path: Path) -> None:
    _job(tmp_path, "qlora", 0.001, 0.7)  # the grid has 1e-3 and 3e-3: 3e-3 has not started (no folder yet)
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| qlora | 0.001 | completed | 70.0 [" in md and "| best so far |" in md


def test_written_table(tmp_path: Path, capsys) -> None:
    _job(tmp_path, "random_mask", 0.001, 0.42, test=0.4)
    _job(tmp_path, "random_mask", 0.003, None)
    out = write_lr_table(tmp_path)
    md = out["md"].read_text()
    assert "| random_mask | 0.001 | completed | 42.0 [" in md and "| 1.250 | 40.0 | 10 | best so far |" in md
    assert "| random_mask | 0.003 | incomplete | — |" in md
    assert out["csv"].read_text().splitlines()[0].startswith("method,name,lr,status,val_acc")
    _job(tmp_path, "random_mask", 0.003, 0.30)  # the search completes: the selection is final
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| 40.0 | 10 | **yes** |" in md and "| best so far |" not in md
    main([str(tmp_path)])
    assert "# Learning-rate search" in capsys.readouterr().out


def test_validations_along_training_and_a_moved_grid(tmp_path: Path) -> None:
    """The table shows every validation of a pilot (still climbing?), and a method whose grid was moved (1e-3, 1e-2
    instead of 1e-3, 3e-3) is complete once it has as many completed rates as the grid."""
    _job(tmp_path, "rigsa", 0.001, 0.185)
    _job(tmp_path, "rigsa", 0.01, 0.40)
    (tmp_path / "rigsa_lr0.01" / "csv").mkdir()
    (tmp_path / "rigsa_lr0.01" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_step,val/acc,val/loss\n0,4,1.2,,\n0,61,,0.12,1.15\n0,99,1.1,,\n0,124,,0.4,1.0\n"
    )
    rows = lr_rows([load_job(p, tmp_path) for p in find_job_dirs(tmp_path)])
    assert [r["val_along"] for r in rows] == ["", "0.120 0.400"]
    md = write_lr_table(tmp_path)["md"].read_text()
    assert (
        "| rigsa | 0.01 | completed | 40.0 [33.5, 46.9] | 12.0 → 40.0 | 1.250 | 50.0 | 10 | **yes** |" in md
    )
    assert "| rigsa | 0.001 | completed | 18.5 [" in md and "| — | 1.250 | 50.0 | 10 |  |" in md


def test_phases_with_their_own_rate_and_grid(tmp_path: Path) -> None:
    """v2 searches: the final-retraining pilots vary pruning.final_lr (adapter.lr fixed), each phase its own grid."""
    for rate, val in ((0.001, 0.30), (0.01, 0.62)):
        job = tmp_path / f"rigsa_final_lr{rate}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  sweeper:\n    params:\n      pruning.final_lr: 1.0e-3,1.0e-2\n"
        )
        (job / ".hydra" / "config.yaml").write_text(
            f"name: rigsa_final_lr{rate}\nadapter:\n  method: rigsa\n  lr: 0.0003\n"
            f"pruning:\n  final_lr: {rate}\ndata:\n  val_size: 200\n"
        )
        metrics = {
            "status": "completed",
            "method": "rigsa",
            "name": f"rigsa_final_lr{rate}",
            "final_val/acc": val,
        }
        (job / "metrics.json").write_text(json.dumps(metrics))
    _job(tmp_path, "rigsa_rounds", 0.0003, 0.40)  # another phase of the same method, its own (2-rate) grid
    rows = lr_rows([load_job(p, tmp_path) for p in find_job_dirs(tmp_path)])
    assert [(r["method"], r["lr"]) for r in rows] == [
        ("rigsa_final", 0.001),
        ("rigsa_final", 0.01),
        ("rigsa_rounds", 0.0003),
    ]
    assert selected(rows)["rigsa_final"]["lr"] == 0.01
    assert [r["option"] for r in rows] == ["final_lr_by_method.rigsa"] * 2 + ["lr_by_method.rigsa_rounds"]
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| rigsa_final | 0.01 | completed | 62.0 [" in md and "**yes**" in md  # its grid of 2 is complete
    assert "| rigsa_rounds | 0.0003 | completed | 40.0 [" in md and "best so far" in md  # 1 of its grid of 2


def test_selected_rates_name_their_study_option_and_their_edge(tmp_path: Path) -> None:
    """Below the table: each phase's selected rate, the study option it goes into, and whether it sits at an edge of
    the rates tried (then the grid is extended before the rate counts as decided); the decided ones as overrides."""
    _job(tmp_path, "random_mask", 0.001, 0.20)
    _job(tmp_path, "random_mask", 0.003, 0.70)  # best, and the highest rate tried
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| random_mask | 0.003 | `lr_by_method.random_mask` | top edge: extend the grid above it |" in md
    assert "Study overrides" not in md
    _job(tmp_path, "random_mask", 0.01, 0.50)  # the pilot beyond the edge: 3e-3 is now inside
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| random_mask | 0.003 | `lr_by_method.random_mask` | inside |" in md
    assert "Study overrides of the decided phases: `lr_by_method.random_mask=0.003`" in md
    _job(tmp_path, "qlora", 0.001, 0.40)  # 1 of its grid of 2: not decided, not in the overrides
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| qlora | 0.001 | `lr_by_method.qlora` | search not complete (best so far) |" in md
    assert "`lr_by_method.random_mask=0.003`" in md and "lr_by_method.qlora=" not in md
    _job(tmp_path, "qlora", 0.0001, 0.10)  # complete, best at the top of two: an edge
    md = write_lr_table(tmp_path)["md"].read_text()
    assert "| qlora | 0.001 | `lr_by_method.qlora` | top edge: extend the grid above it |" in md


def test_a_job_whose_sweep_varied_no_rate_is_not_a_pilot(tmp_path: Path) -> None:
    """The search's anchor (its sweep varies the experiment and seed only) is not a row of the table."""
    _job(tmp_path, "rigsa", 0.001, 0.20)
    anchor = tmp_path / "rigsa_anchor"
    (anchor / ".hydra").mkdir(parents=True)
    (anchor / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      experiment: rigsa_paper\n"
    )
    (anchor / ".hydra" / "config.yaml").write_text("adapter:\n  method: rigsa\n  lr: 0.003\n")
    (anchor / "metrics.json").write_text(
        json.dumps({"status": "completed", "name": "rigsa_anchor", "method": "rigsa"})
    )
    rows = lr_rows([load_job(p, tmp_path) for p in find_job_dirs(tmp_path)])
    assert [(r["name"], r["lr"]) for r in rows] == [("rigsa_lr0.001", 0.001)]
    # an anchor listed before the pilots of two phases: each phase still gets its own grid (rigsa: 1e-3 and 3e-3,
    # one done: not decided; zeta: its one-rate grid done: decided)
    two = tmp_path / "two"
    _job(two, "rigsa", 0.001, 0.20)
    _job(two, "zeta", 0.01, 0.5)
    (two / "zeta_lr0.01" / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      adapter.lr: '0.01'\n"
    )
    (two / "anchor").mkdir()
    shutil.copytree(anchor / ".hydra", two / "anchor" / ".hydra")
    shutil.copy2(anchor / "metrics.json", two / "anchor" / "metrics.json")
    assert [p.name for p in find_job_dirs(two)][0] == "anchor"
    md = write_lr_table(two)["md"].read_text()
    assert "| rigsa | 0.001 | `lr_by_method.rigsa` | search not complete (best so far) |" in md
    assert "| zeta | 0.01 | `lr_by_method.zeta` | inside |" in md


def test_the_study_runs_at_the_rates_its_committed_search_selected() -> None:
    """``conf/sweep/study_v2.yaml`` holds, for every searched phase, the rate that the committed v2 search's pilots
    select (highest final validation accuracy, ties to the smaller rate), and each selection sits inside the
    rates tried: a new pilot that changes a selection, or a hand edit of the study's rates, fails here."""
    from omegaconf import OmegaConf

    from rigsa_lightning.report.lr_table import edge_of, load_pilots, tried_rates

    repo = Path(__file__).resolve().parents[1]
    rows = lr_rows(load_pilots(repo / "docs" / "results" / "lr_search_v2" / "jobs"))
    best = selected(rows)
    assert set(best) == {"rigsa_rounds", "rigsa_final", "random_ticket", "qlora_r16"}
    study = OmegaConf.load(repo / "rigsa_lightning" / "conf" / "sweep" / "study_v2.yaml")
    for phase, row in best.items():
        tried = tried_rates(rows, phase)
        assert len(tried) >= 4, phase
        assert edge_of(row["lr"], tried) is None, phase
        assert math.isclose(float(OmegaConf.select(study, row["option"])), row["lr"]), (phase, row["option"])
