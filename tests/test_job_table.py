"""The per-job table of a report (``jobs.md``): what each job was given and measured, read from its folder, with
the config's interpolations resolved the way the run resolved them."""

from __future__ import annotations

import json
from pathlib import Path

from rigsa_lightning.report.job_table import HEADER, job_row, jobs_markdown
from rigsa_lightning.report.jobs import find_job_dirs, load_job
from rigsa_lightning.report.statistics import wilson

CONFIG = """name: ${adapter.method}_paper
lr_by_method:
  rigsa: 0.003
  qlora: 0.0003
final_lr_by_method:
  rigsa: 0.01
  qlora: null
adapter:
  method: {method}
  lr: ${{lr_by_method.${{adapter.method}}}}
  density_from: ${{oc.env:RIGSA_TEST_UNSET_VARIABLE}}/rigsa_paper_s0
pruning:
  final_lr: ${{final_lr_by_method.${{adapter.method}}}}
data:
  val_size: 200
"""


def _job(root: Path, name: str, method: str, metrics: dict, csv_rows: str | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        CONFIG.replace("{method}", method).replace("{{", "{").replace("}}", "}")
    )
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "method": method, **metrics}))
    if csv_rows is not None:
        (job / "csv").mkdir()
        (job / "csv" / "metrics.csv").write_text("epoch,step,val/acc\n" + csv_rows)
    return job


def test_a_rigsa_job_and_a_qlora_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RIGSA_TEST_UNSET_VARIABLE", raising=False)
    history = [
        {"round": 1, "global_step": 125, "density": 0.2},
        {"round": 2, "global_step": 250, "density": 0.0387},
    ]
    _job(
        tmp_path,
        "rigsa_paper_s1",
        "rigsa",
        {
            "seed": 1,
            "prune/history": history,
            "adapter/density": 0.0387,
            "time/steps_n": 560.0,
            "stop_at/target": 0.8,
            "stop_at/reached": 1.0,
            "stop_at/step": 560.0,
            "stop_at/val_acc": 0.815,
            "textual_mnist/acc": 0.84,
            "textual_mnist/n": 300.0,
            "forget/gsm8k/gold_nll/delta": 0.0612,
            "forget/gsm8k/gold_nll/delta_ci_lo": 0.046,
            "forget/gsm8k/gold_nll/delta_ci_hi": 0.0771,
            "forget_curve": [
                {"step": 62.0, "val_acc": 0.1, "gsm8k/gold_nll": 0.139},
                {"step": 124.0, "val_acc": 0.3, "gsm8k/gold_nll": 0.128},
            ],
            "time/search_s": 6000.0,
            "time/final_s": 5400.0,
            "time/total_s": 12600.0,
        },
        "0,61,0.1\n0,123,0.3\n1,186,0.55\n",
    )
    _job(
        tmp_path,
        "qlora_r16_s0",
        "qlora",
        {
            "seed": 0,
            "time/steps_n": 375.0,
            "stop_at/target": 0.8,
            "stop_at/reached": 0.0,
            "final_val/acc": 0.75,
            "textual_mnist/acc": 0.8,
            "textual_mnist/n": 300.0,
            "time/total_s": 7450.0,
        },
    )
    jobs = [load_job(p, tmp_path) for p in find_job_dirs(tmp_path)]
    rigsa = next(j for j in jobs if j.rel == "rigsa_paper_s1")
    # resolved, though another key cannot be (like ${hydra:...})
    assert rigsa.config["adapter"]["lr"] == 0.003
    assert rigsa.config["adapter"]["density_from"] == "${oc.env:RIGSA_TEST_UNSET_VARIABLE}/rigsa_paper_s0"
    ci = wilson(0.84 * 300, 300)
    assert job_row(rigsa) == [
        "`rigsa_paper_s1`",
        "rigsa",
        "1",
        "250",
        "310",
        "0.003",
        "0.01",
        "3.87",
        "10.0, 30.0, 55.0",  # the CSV has more validations than the curve
        "at step 560 (81.5 %)",
        f"84.0 [{100 * ci.lo:.1f}, {100 * ci.hi:.1f}]",
        "+0.061 [+0.046, +0.077]",
        "62: +0.139, 124: +0.128",
        "100 / 90 / 210",
    ]
    qlora = next(j for j in jobs if j.rel == "qlora_r16_s0")
    row = dict(zip(HEADER, job_row(qlora)))
    assert row["mask-search steps"] == "0" and row["final-phase steps"] == "375"
    assert row["rounds' lr"] == "—" and row["final lr"] == "0.0003"  # final_lr null: adapter.lr
    assert row["stopped at target?"] == "no (75.0 %)" and row["val acc at each validation (%)"] == "—"
    assert row["wall time (min): search / final / job"] == "— / — / 124"
    md = jobs_markdown(jobs)
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0] for line in table] == ["| `qlora_r16_s0`", "| `rigsa_paper_s1`"]  # by method


def test_a_resumed_jobs_wall_time_is_the_whole_jobs(tmp_path: Path) -> None:
    """A resumed run's ``time/total_s`` / ``time/train_s`` are its last process's; its rows show the whole run's:
    the checkpointed stage totals plus that process's rest of the fit (train), loading, data and evaluations
    (job). The numbers are ``rigsa_paper_s0``'s of the v2 study (killed in its final phase, resumed)."""
    from rigsa_lightning.report.jobs import run_seconds
    from rigsa_lightning.report.table import run_row

    timing = {
        "time/load_s": 2.6,
        "time/data_s": 0.4,
        "time/eval_before_s": 13.6,
        "time/train_s": 2718.1,
        "time/steps_s": 7135.4,
        "time/val_s": 962.5,
        "time/curve_s": 1384.5,
        "time/prune_s": 16.9,
        "time/fit_other_s": 0.0,
        "time/search_s": 6790.8,
        "time/final_s": 2708.6,
        "time/eval_after_s": 1124.8,
        "time/total_s": 3860.0,
    }
    history = [{"round": 1, "global_step": 125}, {"round": 2, "global_step": 250}]
    base = {"seed": 0, "prune/history": history, "time/steps_n": 374.0, **timing}
    resumed = load_job(_job(tmp_path, "resumed", "rigsa", {**base, "resumed_from": "x/last.ckpt"}), tmp_path)
    train = 7135.4 + 962.5 + 1384.5 + 16.9
    total = train + 2.6 + 0.4 + 13.6 + 1124.8
    assert run_seconds(resumed.metrics, "train") == train and run_seconds(resumed.metrics) == total
    row = dict(zip(HEADER, job_row(resumed)))
    assert row["wall time (min): search / final / job"] == f"113 / 45 / {total / 60:.0f}" == "113 / 45 / 177"
    cells = run_row(resumed, {})
    assert cells["train_min"] == train / 60 and cells["total_min"] == total / 60
    # the same numbers, not resumed: its process saw the whole run (the recorded totals stand)
    whole = load_job(_job(tmp_path, "whole", "rigsa", base), tmp_path)
    assert run_seconds(whole.metrics) == 3860.0 and run_seconds(whole.metrics, "train") == 2718.1
    # a resumed run from before the stage totals: only its process's time is known
    old = {"resumed_from": "x/last.ckpt", "time/total_s": 600.0, "time/train_s": 500.0}
    assert run_seconds(old) == 600.0 and run_seconds(old, "train") == 500.0
    # a resumed run whose checkpoints carried the earlier fit time recorded the whole run's: those stand
    carried = {**base, "resumed_from": "x/last.ckpt", "time/train_before_s": 7000.0}
    carried |= {"time/train_s": 9718.1, "time/total_s": 10860.0}
    assert run_seconds(carried, "train") == 9718.1 and run_seconds(carried) == 10860.0


def test_the_cost_of_each_method_shows_the_mask_search_apart(tmp_path: Path) -> None:
    """jobs.md's cost section: per method over its runs, mean [min–max] of the mask search's steps and minutes, the
    final phase's (the whole training for a method without pruning), the end evaluation and the whole job; a
    zero-shot job (no step) is left out."""
    from rigsa_lightning.report.job_table import cost_markdown

    history = [{"round": 1, "global_step": 125}, {"round": 2, "global_step": 250}]
    for seed, (steps, search, final, after, total) in enumerate(
        [(374.0, 6780.0, 2700.0, 1140.0, 10620.0), (562.0, 6852.0, 6972.0, 840.0, 14652.0)]
    ):
        metrics = {"seed": seed, "prune/history": history, "time/steps_n": steps, "time/search_s": search}
        metrics |= {"time/final_s": final, "time/eval_after_s": after, "time/total_s": total}
        _job(tmp_path, f"rigsa_paper_s{seed}", "rigsa", metrics)
    qlora = {"seed": 0, "time/steps_n": 375.0, "time/train_s": 5430.0, "time/eval_after_s": 817.0}
    _job(tmp_path, "qlora_r16_s0", "qlora", qlora | {"time/total_s": 7450.0})
    _job(tmp_path, "zero_shot_s0", "none", {"seed": 0, "time/steps_n": 0.0, "time/total_s": 1320.0})
    jobs = [load_job(p, tmp_path) for p in find_job_dirs(tmp_path)]
    md = cost_markdown(jobs)
    rows = {
        cells[0]: cells[1:]
        for line in md.splitlines()
        if line.startswith("| ") and not line.startswith("| runs of")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows == {
        "qlora": ["1", "0", "0", "375", f"{5430 / 60:.0f}", f"{817 / 60:.0f}", f"{7450 / 60:.0f}"],
        "rigsa": ["2", "250", "114 [113–114]", "218 [124–312]", "81 [45–116]", "16 [14–19]", "211 [177–244]"],
    }
    assert cost_markdown([j for j in jobs if j.rel == "zero_shot_s0"]) == ""
    assert "## Cost of each method" in jobs_markdown(jobs)

    # two run names of one method (v1's rigsa_paper and rigsa_50) are two rows
    for name, job in (("rigsa_paper", "rigsa_paper_s0"), ("rigsa_50", "rigsa_paper_s1")):
        file = tmp_path / job / "metrics.json"
        file.write_text(json.dumps(json.loads(file.read_text()) | {"name": name}))
    md = cost_markdown([load_job(p, tmp_path) for p in find_job_dirs(tmp_path)])
    labels = [
        line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "runs of" not in line
    ]
    assert labels == ["| qlora", "| rigsa_50 (rigsa)", "| rigsa_paper (rigsa)"]


def test_a_jobs_hydra_interpolations_resolve_from_its_hydra_yaml(tmp_path: Path, monkeypatch) -> None:
    """``Job.config`` has each ``${hydra:key}`` replaced by the job's own ``.hydra/hydra.yaml`` value (a whole
    value keeps its type); one whose value needs Hydra's app to resolve is left as written, the rest still load,
    also in a process that runs Hydra itself (whose ``hydra:`` resolver would give its own directories)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # what a Hydra app (e.g. the sweep's report callback) has registered
    monkeypatch.setattr(
        HydraConfig.instance(), "cfg", OmegaConf.create({"hydra": {"run": {"dir": "the/reading/process"}}})
    )
    job = tmp_path / "random_ticket_s1" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(
        "seed: 1\nnum: ${hydra:job.num}\nfrom: ${hydra:sweep.dir}/rigsa_paper_s${seed}\n"
        "sub: ${hydra:sweep.subdir}\nrun: ${hydra:run.dir}\n"
    )
    (job / "hydra.yaml").write_text(
        "hydra:\n  job:\n    num: 4\n  sweep:\n    dir: out/v2\n    subdir: ${name}_s${seed}\n"
    )
    config = load_job(tmp_path / "random_ticket_s1", tmp_path).config
    assert config == {
        "seed": 1,
        "num": 4,
        "from": "out/v2/rigsa_paper_s1",
        "sub": "${hydra:sweep.subdir}",
        "run": "${hydra:run.dir}",
    }
    # no hydra.yaml: every ${hydra:...} stays as written
    (job / "hydra.yaml").unlink()
    config = load_job(tmp_path / "random_ticket_s1", tmp_path).config
    assert config["run"] == "${hydra:run.dir}" and config["from"] == "${hydra:sweep.dir}/rigsa_paper_s1"
