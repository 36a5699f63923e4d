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
