"""The lottery-ticket protocol's options: the per-matrix density-matched random ticket (adapter.density_from) and
the per-phase learning rates (pruning.round_lr / final_lr)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rigsa_lightning.adapters.rigsa import inject_rigsa
from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta, random_mask_, random_mask_counts_
from rigsa_lightning.adapters.rigsa.ticket import PRUNE_HISTORY_FILE, read_ticket_counts
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.training.schedule import lr_factor, phase_lr_scales, segment_at
from tests.helpers import SMALL, only_run_dir, run_cli, run_dirs, tail

ADAPTER = {
    "method": "random_mask",
    "seed": 7,
    "mask_seed": 3,
    "alpha_init": 1e-6,
    "targets": ["q_proj", "up_proj"],
}


def _history(
    counts: dict[str, int], numels: dict[str, int], done: int = 2, rounds: int = 2
) -> dict[str, Any]:
    record = {
        "round": done,
        "per_module": {n: counts[n] / numels[n] for n in counts},
        "per_module_nnz": counts,
        "per_module_numel": numels,
    }
    return {"rounds": rounds, "done": done, "history": [record]}


def test_random_ticket_keeps_each_matrix_count_and_the_same_init(
    tiny_model: tuple[Any, Any], tmp_path: Path
) -> None:
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    numels = {n: m.mask.numel() for n, m in adapters.items()}
    counts = {n: (i + 1) * numel // 17 for i, (n, numel) in enumerate(sorted(numels.items()))}
    run = tmp_path / "rigsa_run"
    run.mkdir()
    (run / PRUNE_HISTORY_FILE).write_text(json.dumps(_history(counts, numels)))

    ticket = read_ticket_counts(run)
    assert ticket.kept_counts(numels) == counts
    assert ticket.density == pytest.approx(sum(counts.values()) / sum(numels.values()))
    random_mask_counts_(adapters, ticket.kept_counts(numels), seed=3)
    for name, mod in adapters.items():
        assert int(mod.mask.sum()) == counts[name]  # exactly the paired run's count, matrix by matrix
        init = generate_initial_delta(mod.delta.shape, mod.init_seed)
        assert torch.equal(mod.delta[mod.mask], init[mod.mask])  # survivors at their initial values (rewound)
        assert not bool(mod.delta[~mod.mask].any())
    # A different mask seed keeps the counts and changes which entries are kept.
    masks = {n: m.mask.clone() for n, m in adapters.items()}
    random_mask_counts_(adapters, counts, seed=4)
    assert all(
        int(m.mask.sum()) == counts[n] and not torch.equal(m.mask, masks[n]) for n, m in adapters.items()
    )


def test_uniform_counts_draw_the_same_masks_as_random_mask(tiny_model: tuple[Any, Any]) -> None:
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    random_mask_(adapters, 0.25, seed=5)
    by_density = {n: m.mask.clone() for n, m in adapters.items()}
    counts = {n: round(0.25 * m.mask.numel()) for n, m in adapters.items()}
    random_mask_counts_(adapters, counts, seed=5)
    assert all(torch.equal(m.mask, by_density[n]) for n, m in adapters.items())


def test_ticket_sources_metrics_json_and_exported_adapter(tmp_path: Path) -> None:
    numels = {"a.q_proj": 4096, "a.up_proj": 8192}
    counts = {"a.q_proj": 140, "a.up_proj": 2999}
    # A finished run's metrics.json from before exact counts were recorded: densities only.
    history = _history(counts, numels)["history"]
    for record in history:
        del record["per_module_nnz"], record["per_module_numel"]
    (tmp_path / "metrics.json").write_text(json.dumps({"method": "rigsa", "prune/history": history}))
    assert read_ticket_counts(tmp_path).kept_counts(numels) == counts
    with pytest.raises(ConfigError, match="not a whole number"):
        read_ticket_counts(tmp_path).kept_counts({"a.q_proj": 4095, "a.up_proj": 8192})
    # An exported adapter folder: each module's nnz and shape.
    adapter = tmp_path / "export" / "adapter"
    adapter.mkdir(parents=True)
    modules = {"a.q_proj": {"shape": [64, 64], "nnz": 140}, "a.up_proj": {"shape": [128, 64], "nnz": 2999}}
    (adapter / "adapter_config.json").write_text(
        json.dumps({"method": "rigsa", "rounds": 2, "modules": modules})
    )
    ticket = read_ticket_counts(tmp_path / "export")
    assert ticket.kept_counts(numels) == counts


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (
            {"rounds": 2, "done": 1, "history": [{"per_module": {"x": 0.2}}]},
            "has done 1 of its 2 prune rounds",
        ),
        ({"method": "qlora"}, "is a qlora run, not a rigsa run"),
        ({"method": "rigsa", "prune/history": []}, "records no prune round"),
    ],
)
def test_bad_ticket_sources_are_one_line_errors(tmp_path: Path, content: Any, message: str) -> None:
    source = tmp_path / "run"
    if content is not None:
        source.mkdir()
        name = PRUNE_HISTORY_FILE if "history" in content else "metrics.json"
        (source / name).write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message) as err:
        read_ticket_counts(source)
    assert err.value.option == "adapter.density_from"


def test_ticket_of_another_model_is_refused() -> None:
    from rigsa_lightning.adapters.rigsa.ticket import TicketCounts

    ticket = TicketCounts(Path("run"), {"a": 3}, {"a": 3 / 16}, {"a": 16})
    with pytest.raises(ConfigError, match="has 20 entries here and 16"):
        ticket.kept_counts({"a": 20})
    with pytest.raises(ConfigError, match="module b is not in it"):
        ticket.kept_counts({"a": 16, "b": 4})


def test_phase_lr_scales_and_segments() -> None:
    assert phase_lr_scales(1e-3, 2e-3, 5e-3, 3, 2) == [2.0, 2.0, 5.0]
    assert phase_lr_scales(1e-3, None, None, 3, 2) == [1.0, 1.0, 1.0]
    assert phase_lr_scales(1e-3, 2e-3, 5e-3, 1, 0) == [5.0]  # no rounds: final_lr is the only phase's rate
    assert [segment_at(s, [8, 8, 8]) for s in (0, 7, 8, 15, 16, 23, 30)] == [0, 0, 1, 1, 2, 2, 2]


def test_per_phase_learning_rates_reach_the_optimizer(tmp_path: Path) -> None:
    """rigsa_75 (2 rounds + final, 8 steps each): ΔW at round_lr in the rounds and final_lr in the final phase, each
    phase its own warmup + cosine; the gates keep adapter.alpha_lr on the same schedule."""
    args = [
        "experiment=rigsa_75",
        *SMALL,
        "adapter.lr=1e-3",
        "pruning.round_lr=2e-3",
        "pruning.final_lr=4e-3",
    ]
    args += ["trainer.log_every_n_steps=1", "adapter.alpha_lr=1e-2"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, tail(res)
    run_dir = only_run_dir(tmp_path)
    with (run_dir / "csv" / "metrics.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("lr-AdamW/delta")]
    seen = {int(r["step"]): (float(r["lr-AdamW/delta"]), float(r["lr-AdamW/alpha"])) for r in rows}
    assert len(seen) >= 20
    for step, (delta_lr, alpha_lr) in seen.items():
        factor = lr_factor(step, [8, 8, 8], 0.1, 0.1, "cosine")
        peak = 2e-3 if step < 16 else 4e-3
        assert math.isclose(delta_lr, peak * factor, rel_tol=1e-6), (step, delta_lr)
        assert math.isclose(alpha_lr, 1e-2 * factor, rel_tol=1e-6), (step, alpha_lr)


def test_random_ticket_end_to_end_pairs_with_a_rigsa_run(tmp_path: Path) -> None:
    """A tiny RIGSA run, then its random ticket (experiment=random_ticket) reading the run folder: the exported
    adapters keep the same number of entries in every matrix, not the same entries, from the same ΔW init."""
    from safetensors.torch import load_file

    rigsa_root, ticket_root = tmp_path / "rigsa", tmp_path / "ticket"
    rigsa_root.mkdir()
    ticket_root.mkdir()
    res = run_cli(["experiment=rigsa_75", *SMALL, "seed=1"], rigsa_root)
    assert res.returncode == 0, tail(res)
    rigsa_dir = only_run_dir(rigsa_root)
    assert json.loads((rigsa_dir / PRUNE_HISTORY_FILE).read_text())["done"] == 2
    res = run_cli(
        [
            "experiment=random_ticket",
            *SMALL,
            "seed=1",
            f"adapter.density_from={rigsa_dir}",
            "pruning.final_epochs=1",
        ],
        ticket_root,
    )
    assert res.returncode == 0, tail(res)
    ticket_dir = only_run_dir(ticket_root)
    ours = json.loads((ticket_dir / "adapter" / "adapter_config.json").read_text())["modules"]
    theirs = json.loads((rigsa_dir / "adapter" / "adapter_config.json").read_text())["modules"]
    assert {n: m["nnz"] for n, m in ours.items()} == {n: m["nnz"] for n, m in theirs.items()}
    assert {n: m["init_seed"] for n, m in ours.items()} == {n: m["init_seed"] for n, m in theirs.items()}
    a = load_file(str(ticket_dir / "adapter" / "adapter.safetensors"))
    b = load_file(str(rigsa_dir / "adapter" / "adapter.safetensors"))
    differ = [n for n in ours if not torch.equal(a[f"{n}.indices"], b[f"{n}.indices"])]
    assert len(differ) == len(ours)
    metrics = json.loads((ticket_dir / "metrics.json").read_text())
    assert metrics["adapter/density"] == pytest.approx(
        sum(m["nnz"] for m in theirs.values()) / sum(m["shape"][0] * m["shape"][1] for m in theirs.values())
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["experiment=rigsa_75", "adapter.density_from=somewhere"], "adapter.density_from"),
        (["experiment=random_ticket", "adapter.density=0.1", "adapter.density_from=x"], "adapter.density"),
        (["experiment=random_ticket", "adapter.density_from=does/not/exist"], "adapter.density_from"),
        (["experiment=rigsa_75", "pruning.final_lr=-1"], "pruning.final_lr"),
    ],
)
def test_bad_protocol_options_are_one_line_errors(tmp_path: Path, args: list[str], option: str) -> None:
    res = run_cli([*args, *SMALL], tmp_path)
    assert res.returncode == 2, tail(res)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {option}:"), tail(res)
    assert "Traceback" not in res.stderr
    assert run_dirs(tmp_path) == []  # nothing written before the error


def test_report_states_each_arms_phase_budget(tmp_path: Path) -> None:
    """The report's cost columns: mask-search steps (to the last prune), final-phase steps and rate, per run."""
    from rigsa_lightning.report.jobs import load_job
    from rigsa_lightning.report.table import phase_budget

    def job(name: str, config: str, metrics: dict[str, Any]) -> Any:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(config)
        (folder / "metrics.json").write_text(json.dumps({"status": "completed", **metrics}))
        return load_job(folder, tmp_path)

    rigsa = job(
        "rigsa_paper_s0",
        "adapter:\n  method: rigsa\n  lr: 0.0003\npruning:\n  round_lr: null\n  final_lr: 0.01\n",
        {
            "method": "rigsa",
            "time/steps_n": 560,
            "prune/history": [{"global_step": 125}, {"global_step": 250}],
        },
    )
    assert phase_budget(rigsa) == {
        "search_steps": 250.0,
        "final_steps": 310.0,
        "final_lr": 0.01,
        "round_lr": 0.0003,
    }
    ticket = job(
        "random_ticket_s0",
        "adapter:\n  method: random_mask\n  lr: 0.03\npruning:\n  final_lr: null\n",
        {"method": "random_mask", "time/steps_n": 375},
    )
    budget = phase_budget(ticket)
    assert budget["search_steps"] == 0.0 and budget["final_steps"] == 375.0 and budget["final_lr"] == 0.03
    assert math.isnan(budget["round_lr"])
    zero = job("zero_shot_s0", "adapter:\n  method: none\n  lr: 0.0\n", {"method": "none", "time/steps_n": 0})
    budget = phase_budget(zero)  # trained nothing: no rate, not the unused adapter.lr
    assert budget["search_steps"] == 0.0 and budget["final_steps"] == 0.0
    assert math.isnan(budget["final_lr"]) and math.isnan(budget["round_lr"])


def test_steps_of_a_run_without_the_step_count_come_from_its_csv(tmp_path: Path) -> None:
    """A job that predates ``time/steps_n`` (v1's, reused by v2) gets its steps from ``csv/metrics.csv``: the
    committed search pilots and v2 study jobs (with forgetting-curve rows, logged one step later than validations),
    their count removed, give back exactly the count their runs recorded; v1's study jobs stopped at the target give
    the step they stopped at; a CSV without a training row (zero-shot) is 0 steps; no CSV and no count is
    unknown."""
    import shutil

    from rigsa_lightning.report.jobs import find_job_dirs, load_job, steps_trained

    archive = Path(__file__).resolve().parents[1] / "docs" / "results" / "lr_search_v2" / "jobs"
    pilots = find_job_dirs(archive)
    assert len(pilots) >= 10
    study_v2 = archive.parents[1] / "study_v2" / "jobs"
    counted = [p for p in find_job_dirs(study_v2) if "time/steps_n" in load_job(p, study_v2).metrics]
    assert len([p for p in counted if load_job(p, study_v2).metrics.get("forget_curve")]) >= 6
    for pilot in [*pilots, *counted]:
        recorded = load_job(pilot, pilot.parent).metrics["time/steps_n"]
        copy = tmp_path / pilot.name
        shutil.copytree(pilot, copy)
        metrics = json.loads((copy / "metrics.json").read_text())
        del metrics["time/steps_n"]
        (copy / "metrics.json").write_text(json.dumps(metrics))
        assert steps_trained(load_job(copy, tmp_path)) == recorded, pilot.name
    study_v1 = archive.parents[1] / "study_cpu" / "jobs"
    v1_jobs = [load_job(p, study_v1) for p in find_job_dirs(study_v1)]
    stopped_v1 = [j for j in v1_jobs if j.metrics.get("stop_at/reached")]
    assert len(stopped_v1) >= 4
    for job in stopped_v1:
        assert steps_trained(job) == job.metrics["stop_at/step"], job.rel
    stopped = tmp_path / "stopped"  # Lightning's CSV: train rows every 5 steps, validations at a batch's step
    (stopped / "csv").mkdir(parents=True)
    (stopped / "metrics.json").write_text(json.dumps({"status": "completed", "method": "qlora"}))
    (stopped / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/acc\n0,4,2.0,\n0,9,1.5,\n0,11,,0.4\n1,14,1.1,\n1,16,,0.85\n"
    )
    assert steps_trained(load_job(stopped, tmp_path)) == 17.0  # stopped at the validation after step index 16
    zero = tmp_path / "zero_shot"
    (zero / "csv").mkdir(parents=True)
    (zero / "metrics.json").write_text(json.dumps({"status": "completed", "method": "none"}))
    (zero / "csv" / "metrics.csv").write_text("epoch,step,val/acc\n0,0,0.1\n")
    assert steps_trained(load_job(zero, tmp_path)) == 0.0
    (zero / "csv" / "metrics.csv").unlink()
    assert math.isnan(steps_trained(load_job(zero, tmp_path)))
