"""Sweep report (tables, figures, failed jobs), sweep configs and launchers compose, the report callback.

Fast tests work on fake job folders written here in the ``metrics.json`` schema of ``train.py``; one slow test runs
a real two-job multirun on the tiny model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rigsa_lightning.config.access import CONFIG_DIR
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.report import build_report, main

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- fake sweeps
def _forget(
    piqa: tuple[float, float], hella: tuple[float, float], gsm: tuple[float, float]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task, metric, (before, after) in (
        ("piqa", "acc", piqa),
        ("hellaswag", "acc", hella),
        ("gsm8k", "exact_match_flexible-extract", gsm),
    ):
        out[f"forget/{task}/{metric}/before"] = before
        out[f"forget/{task}/{metric}/after"] = after
        out[f"forget/{task}/{metric}/delta"] = after - before
    # secondary metrics that the report must not pick (acc_norm, strict-match)
    out["forget/piqa/acc_norm/after"] = piqa[1] + 0.01
    out["forget/gsm8k/exact_match_strict-match/after"] = gsm[1] - 0.05
    return out


def _metrics(method: str, name: str, seed: int, acc: float, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "method": method,
        "name": name,
        "seed": seed,
        "status": "completed",
        "run_dir": f"/x/{name}_{seed}",
        "textual_mnist/acc": acc,
        "textual_mnist/gen_acc": acc - 0.02,
        "textual_mnist/zero_shot_acc": 0.1,
        "textual_mnist/zero_shot_gen_acc": 0.08,
        "forget/drift/kl/before": 0.0,
        "forget/drift/kl/after": 0.05,
        "forget/drift/nll/before": 1.0,
        "forget/drift/nll/after": 1.1,
        "forget/drift/nll/delta": 0.1,
        "forget/skipped": [],
        "adapter/bytes": 2_000_000,
        "params/trainable": 1_000_000,
        "params/adapter_nnz": 500_000,
        "time/total_s": 120.0,
        "time/train_s": 90.0,
        "memory/peak_rss_gb": 3.5,
    }
    m.update(extra)
    return m


def _write_job(root: Path, folder: str, overrides: list[str], config: str, files: dict[str, Any]) -> Path:
    job = root / folder
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(config)
    for fname, content in files.items():
        (job / fname).write_text(json.dumps(content))
    return job


def _history(alphas: list[float], densities: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "round": i + 1,
            "epoch": i,
            "density": d,
            "sign_stable_fraction": 0.93,
            "overlap_prev": 1.0 if i == 0 else 0.5,
            "alpha_mean": a,
        }
        for i, (a, d) in enumerate(zip(alphas, densities))
    ]


def make_fake_sweep(root: Path) -> Path:
    """Seven job folders: rigsa_50 x2 seeds, rigsa_90, random_mask_50, zero_shot, a failed and an incomplete job."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['+sweep=smoke']\n  sweeper:\n    params:\n"
        "      experiment: rigsa_50,rigsa_90,random_mask_50,zero_shot,qlora_r16\n      seed: 0,1\n"
    )
    rigsa_cfg = "name: ${adapter.method}_50\nadapter:\n  method: rigsa\npruning:\n  sparsity: 0.5\n"
    _write_job(
        root,
        "0_rigsa_50",
        ["experiment=rigsa_50", "seed=0"],
        rigsa_cfg,
        {
            "metrics.json": _metrics(
                "rigsa",
                "rigsa_50",
                0,
                0.90,
                **_forget((0.70, 0.69), (0.40, 0.40), (0.30, 0.28)),
                **{"adapter/density": 0.5, "prune/history": _history([1e-3], [0.5])},
                **{"time/eval_after/textual_mnist_s": 60.0, "time/eval_after/drift_s": 6.0},
                **{"time/search_s": 30.0, "time/final_s": 90.0},
                **{"time/eval_after/gsm8k_s": 120.0, "time/eval_after/hellaswag+piqa_s": 240.0},
            )
        },
    )
    _write_job(
        root,
        "1_rigsa_50",
        ["experiment=rigsa_50", "seed=1"],
        rigsa_cfg,
        {
            "metrics.json": _metrics(
                "rigsa",
                "rigsa_50",
                1,
                0.94,
                **_forget((0.70, 0.71), (0.40, 0.38), (0.30, 0.26)),
                **{"adapter/density": 0.5, "prune/history": _history([2e-3], [0.5]), "time/train_s": 150.0},
                **{"time/eval_after/textual_mnist_s": 90.0, "time/eval_after/drift_s": 12.0},
                **{"time/eval_after/gsm8k_s": 180.0, "time/eval_after/hellaswag+piqa_s": float("nan")},
            )
        },
    )
    _write_job(
        root,
        "2_rigsa_90",
        ["experiment=rigsa_90", "seed=0"],
        "adapter:\n  method: rigsa\npruning:\n  sparsity: 0.9\n",
        {
            "metrics.json": _metrics(
                "rigsa",
                "rigsa_90",
                0,
                0.85,
                **_forget((0.70, 0.70), (0.40, 0.39), (0.30, 0.29)),
                # no adapter/density: the report falls back to 1 - pruning.sparsity from .hydra/config.yaml
                **{
                    "prune/history": [
                        {"round": 1, "density": 0.316, "alpha_mean": 1e-3},
                        {"round": 2, "density": 0.1, "alpha_mean": 4e-3, "sign_stable_fraction": 0.9},
                        {"round": 3},  # keys missing: tolerated
                        "not a dict",
                    ]
                },
            )
        },
    )
    _write_job(
        root,
        "3_random_mask_50",
        ["experiment=random_mask_50", "seed=0"],
        "adapter:\n  method: random_mask\n  density: 0.5\n",
        {
            "metrics.json": _metrics(
                "random_mask",
                "random_mask_50",
                0,
                0.88,
                **_forget((0.70, 0.70), (0.40, 0.39), (0.30, 0.27)),
                **{"adapter/density": 0.5},
            )
        },
    )
    zs = _metrics("none", "zero_shot", 0, 0.1, **_forget((0.70, 0.70), (0.40, 0.40), (0.30, 0.30)))
    for key in ("adapter/bytes", "params/adapter_nnz"):
        zs.pop(key)
    zs["params/trainable"] = 0
    _write_job(
        root,
        "4_zero_shot",
        ["experiment=zero_shot", "seed=0"],
        "adapter:\n  method: none\n",
        {"metrics.json": zs},
    )
    _write_job(
        root,
        "5_qlora_r16",
        ["experiment=qlora_r16", "seed=0"],
        "adapter:\n  method: qlora\n",
        {"failed.json": {"status": "failed", "error": "RuntimeError: bitsandbytes exploded"}},
    )
    _write_job(root, "6_qlora_r16", ["experiment=qlora_r16", "seed=1"], "adapter:\n  method: qlora\n", {})
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def fake_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_fake_sweep(tmp_path_factory.mktemp("sweep") / "12-00-00-000000_sweep_smoke")
    return build_report(root)


def test_results_csv_rows_means_and_stds(fake_report: dict[str, Any]) -> None:
    rows = _read_csv(fake_report["results_csv"])
    assert [(r["method"], r["name"]) for r in rows] == [
        ("none", "zero_shot"),
        ("rigsa", "rigsa_50"),
        ("rigsa", "rigsa_90"),
        ("random_mask", "random_mask_50"),
    ]
    r50 = rows[1]
    assert r50["n_seeds"] == "2" and r50["seeds"] == "0 1"
    assert float(r50["tm_acc_mean"]) == pytest.approx(0.92)
    assert float(r50["tm_acc_std"]) == pytest.approx(statistics.stdev([0.90, 0.94]))
    assert float(r50["gsm8k_delta_mean"]) == pytest.approx(-0.03)
    assert float(r50["gsm8k_delta_std"]) == pytest.approx(statistics.stdev([-0.02, -0.04]))
    assert float(r50["gsm8k_after_mean"]) == pytest.approx(0.27)  # flexible-extract, not strict-match
    assert r50["gsm8k_metric"] == "exact_match_flexible-extract" and r50["piqa_metric"] == "acc"
    assert float(r50["piqa_after_mean"]) == pytest.approx(0.70)
    assert float(r50["train_min_mean"]) == pytest.approx(2.0)
    assert float(r50["adapter_mb_mean"]) == pytest.approx(2.0)
    assert float(r50["density_mean"]) == pytest.approx(0.5)
    single = rows[2]
    assert single["n_seeds"] == "1" and single["tm_acc_std"] == ""  # one seed: no std
    assert float(single["density_mean"]) == pytest.approx(0.1)  # from .hydra/config.yaml
    zs = rows[0]
    assert zs["adapter_nnz_mean"] == "" and float(zs["trainable_mean"]) == 0.0
    assert len(_read_csv(fake_report["folder"] / "runs.csv")) == 5


def test_results_md_lists_failed_and_incomplete(fake_report: dict[str, Any]) -> None:
    md = fake_report["results_md"].read_text()
    assert fake_report["failed"] == ["5_qlora_r16"] and fake_report["incomplete"] == ["6_qlora_r16"]
    section = md.split("## Failed / incomplete jobs", 1)[1]
    assert "`5_qlora_r16`" in section and "bitsandbytes exploded" in section
    assert "`6_qlora_r16`" in section and "incomplete" in section and "experiment=qlora_r16 seed=1" in section
    assert "92.0 ± 2.8" in md  # rigsa_50 acc in %, mean ± sample std
    assert "-3.0 ± 1.4" in md  # rigsa_50 GSM8k delta in pp
    assert "Command: `python -m rigsa_lightning.train -m +sweep=smoke`" in md
    assert "[jobs.md](jobs.md)" in md  # each job's own numbers, one row per completed job
    rows = [line for line in fake_report["jobs_md"].read_text().splitlines() if line.startswith("| `")]
    assert sorted(line.split(" | ")[0] for line in rows) == sorted(
        f"| `{j}`" for j in ("0_rigsa_50", "1_rigsa_50", "2_rigsa_90", "3_random_mask_50", "4_zero_shot")
    )
    for name in ("forgetting_vs_accuracy", "density_sweep", "pruning_rounds"):
        assert f"]({name}.png)" in md


def test_end_evaluation_parts_in_the_cost_table(fake_report: dict[str, Any]) -> None:
    """Each ``time/eval_after/<part>_s`` becomes a cost column in minutes (test split and drift first, benchmarks
    in name order), averaged over the seeds that have it; runs without the parts leave the cell empty."""
    rows = {r["name"]: r for r in _read_csv(fake_report["results_csv"])}
    r50 = rows["rigsa_50"]
    assert float(r50["eval_after/textual_mnist_min_mean"]) == pytest.approx(1.25)  # (60 + 90) / 2 s
    assert float(r50["eval_after/drift_min_mean"]) == pytest.approx(0.15)
    assert float(r50["eval_after/gsm8k_min_mean"]) == pytest.approx(2.5)
    assert float(r50["eval_after/gsm8k_min_std"]) == pytest.approx(statistics.stdev([2.0, 3.0]))
    assert float(r50["eval_after/hellaswag+piqa_min_mean"]) == pytest.approx(4.0)  # the NaN seed is left out
    assert rows["rigsa_90"]["eval_after/gsm8k_min_mean"] == ""
    # the mask search's time apart from the final phase's (one seed of rigsa_50 has them)
    assert float(r50["search_min_mean"]) == pytest.approx(0.5) and float(r50["final_min_mean"]) == 1.5
    cost = fake_report["results_md"].read_text().split("## Cost", 1)[1].split("\n\n", 2)[1]
    header = cost.splitlines()[0]
    labels = ["end evaluation (min)", "end eval: test split (min)", "end eval: drift probe (min)"]
    labels += ["end eval: GSM8k (min)", "end eval: HellaSwag+PIQA (min)", "peak RSS (GB)"]
    at = [header.index(label) for label in labels]
    assert at == sorted(at)
    rigsa_50 = next(line for line in cost.splitlines() if "| rigsa_50 |" in line)
    # the NaN seed is left out of the mean, and the cell says so
    assert "| 1.25 ± 0.35 |" in rigsa_50 and "| 4.00 (1 of 2 runs) |" in rigsa_50


def test_figures_written(fake_report: dict[str, Any]) -> None:
    for name in ("forgetting_vs_accuracy", "density_sweep", "pruning_rounds"):
        path = fake_report["figures"][name]
        assert path is not None and path.is_file() and path.stat().st_size > 5_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in fake_report["folder"].iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_skipped_benchmarks_use_drift_and_notes(tmp_path: Path) -> None:
    """Benchmarks skipped everywhere: '—' in the table, drift KL on the y axis, no pruning figure (noted)."""
    root = tmp_path / "sweep"
    for i, (method, name, acc) in enumerate((("qlora", "qlora_r16", 0.9), ("none", "zero_shot", 0.1))):
        m = _metrics(method, name, 0, acc, **{"forget/skipped": ["piqa", "hellaswag", "gsm8k"]})
        _write_job(root, f"{i}_{name}", [f"experiment={name}"], "", {"metrics.json": m})
    out = build_report(root)
    md = out["results_md"].read_text()
    assert "PIQA" not in md.split("## Cost")[0]  # no benchmark column without data
    assert out["figures"]["forgetting_vs_accuracy"] is not None
    assert out["figures"]["density_sweep"] is None and out["figures"]["pruning_rounds"] is None
    assert "`pruning_rounds.png`: not drawn" in md and "`density_sweep.png`: not drawn" in md
    assert "Forgetting benchmarks skipped in at least one run: gsm8k, hellaswag, piqa." in md
    assert [r["name"] for r in _read_csv(out["results_csv"])] == ["zero_shot", "qlora_r16"]


def test_paired_cis_reach_the_table_and_the_figure(tmp_path: Path) -> None:
    """Per-run paired CIs over items (issue 13): `[± h]` in the table, error bars in the figure, the continuous
    measures (gold margin, GSM8k gold NLL) as their own columns and panels."""
    root = tmp_path / "sweep"
    for i, (method, name, acc, d) in enumerate(
        (("rigsa", "rigsa_50", 0.8, -0.02), ("qlora", "qlora_r16", 0.7, -0.05))
    ):
        m = _metrics(method, name, 0, acc, **_forget((0.6, 0.6 + d), (0.4, 0.4 + d), (0.01, 0.01)))
        m.update(
            {
                "forget/piqa/acc/delta_ci_lo": d - 0.03,
                "forget/piqa/acc/delta_ci_hi": d + 0.03,
                "forget/piqa/acc/delta_p": 0.2,
                "forget/piqa/margin/delta": -0.1,
                "forget/piqa/margin/delta_ci_lo": -0.15,
                "forget/piqa/margin/delta_ci_hi": -0.05,
                "forget/gsm8k/gold_nll/delta": 0.04 * (i + 1),
                "forget/gsm8k/gold_nll/delta_ci_lo": 0.02 * (i + 1),
                "forget/gsm8k/gold_nll/delta_ci_hi": 0.06 * (i + 1),
            }
        )
        _write_job(root, f"{i}_{name}", [f"experiment={name}"], "", {"metrics.json": m})
    out = build_report(root)
    runs = {r["name"]: r for r in out["runs"]}
    assert runs["rigsa_50"]["piqa_delta_ci"] == pytest.approx(0.03)
    assert runs["qlora_r16"]["gsm8k_gold_nll_delta"] == pytest.approx(0.08)
    assert runs["qlora_r16"]["gsm8k_gold_nll_delta_ci"] == pytest.approx(0.04)
    md = out["results_md"].read_text()
    assert "PIQA Δ (pp) [± item CI]" in md and "GSM8k Δ gold NLL/token [± item CI]" in md
    assert "-2.0 [± 3.0]" in md and "-5.0 [± 3.0]" in md  # one seed: the run's own 95% CI over items
    assert "0.08 [± 0.04]" in md
    assert out["figures"]["forgetting_vs_accuracy"] is not None


def test_forgetting_curves_figure(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, (method, name) in enumerate((("rigsa", "rigsa_50"), ("qlora", "qlora_r16"))):
        curve = [
            {
                "step": 10.0 * k,
                "epoch": float(k),
                "val_acc": 0.2 * k,
                "piqa/margin": -0.1 * k * (i + 1),
                "piqa/margin_ci_lo": -0.1 * k * (i + 1) - 0.05,
                "piqa/margin_ci_hi": -0.1 * k * (i + 1) + 0.05,
                "gsm8k/gold_nll": 0.02 * k,
            }
            for k in range(1, 4)
        ]
        m = _metrics(method, name, 0, 0.7, forget_curve=curve)
        pruned = (
            "pruning:\n  enabled: true\n  rounds: 1\n  epochs_per_round: 2\n" if method == "rigsa" else ""
        )
        if method == "rigsa":  # pruned (and rewound) after epoch 1
            m["prune/history"] = [{"round": 1, "epoch": 1}]
        _write_job(root, f"{i}_{name}", [f"experiment={name}"], pruned, {"metrics.json": m})
    out = build_report(root)
    assert out["figures"]["forgetting_curves"] is not None and out["figures"]["forgetting_curves"].is_file()
    # RIGSA's points before its rewind (epochs 1; its last phase starts at epoch 2) are drawn apart, faded
    from rigsa_lightning.report.build import _forget_curves
    from rigsa_lightning.report.jobs import find_job_dirs, load_job

    runs = {r.name: r for r in _forget_curves([load_job(p, root) for p in find_job_dirs(root)])}
    assert runs["rigsa_50"].discarded == 1 and runs["qlora_r16"].discarded == 0
    # its last phase starts from the base again (zero-shot 10 %, below its first validation there): drawn from it
    assert runs["rigsa_50"].start_acc == 0.1 and runs["qlora_r16"].start_acc is None
    assert [p["epoch"] for p in runs["rigsa_50"].points[runs["rigsa_50"].discarded :]] == [2.0, 3.0]
    assert (
        "![Forgetting along training vs validation accuracy](forgetting_curves.png)"
        in out["results_md"].read_text()
    )
    plain = tmp_path / "plain"
    _write_job(
        plain, "0_x", ["experiment=rigsa_50"], "", {"metrics.json": _metrics("rigsa", "rigsa_50", 0, 0.5)}
    )
    md = build_report(plain)["results_md"].read_text()
    assert "`forgetting_curves.png`: not drawn — no run recorded a forgetting curve" in md


def test_all_failed_still_reports(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _write_job(
        root,
        "0_rigsa_50",
        ["experiment=rigsa_50"],
        "",
        {"failed.json": {"status": "failed", "error": "boom"}},
    )
    out = build_report(root)
    assert _read_csv(out["results_csv"]) == []
    md = out["results_md"].read_text()
    assert "No job completed" in md and "boom" in md
    assert f"Folder: `{root.resolve()}`" in md  # outside the working directory: the full path


def test_report_inside_the_project_names_a_relative_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "docs" / "sweep"
    _write_job(root, "0_rigsa_50", ["experiment=rigsa_50"], "", {"failed.json": {"status": "failed"}})
    monkeypatch.chdir(tmp_path)
    md = build_report("docs/sweep")["results_md"].read_text()
    assert "Folder: `docs/sweep`" in md and "Rebuild: `python -m rigsa_lightning.report docs/sweep`" in md
    assert str(tmp_path) not in md


def test_empty_folder_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="holds no job folders"):
        build_report(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: folder:") and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing")])
    assert exc.value.code == 2


def test_cli_and_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m rigsa_lightning.report <folder> --wandb`` in offline mode: files plus one offline W&B run."""
    root = make_fake_sweep(tmp_path / "sweep")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "rigsa_lightning.report", str(root), "--wandb"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 groups" in proc.stdout
    assert (root / "results.md").is_file()
    assert len(list((root / "wandb").glob("offline-run-*"))) == 1
    # the W&B folder is not mistaken for a job on a rerun
    assert len(build_report(root)["runs"]) == 5


# --------------------------------------------------------------------------------------- configs and launchers
def _compose(conf_dir: Path, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    import rigsa_lightning.config.access  # noqa: F401  (registers rigsa_run_dir)

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def conf_dir() -> Path:
    return CONFIG_DIR


SWEEPS = {
    "smoke": (["rigsa_50", "random_mask_50", "qlora_r16", "zero_shot"], "0"),
    "paper": (
        [
            "rigsa_50",
            "rigsa_75",
            "rigsa_90",
            "rigsa_paper",
            "random_mask_50",
            "random_mask_75",
            "random_mask_90",
            "random_mask_paper",
            "qlora_r16",
            "qlora_r64",
            "zero_shot",
        ],
        "0,1,2",
    ),
    "sparsity": (
        ["rigsa_50", "rigsa_75", "rigsa_90", "random_mask_50", "random_mask_75", "random_mask_90"],
        "0,1,2",
    ),
}


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_configs_compose(conf_dir: Path, sweep: str) -> None:
    cfg = _compose(conf_dir, [f"+sweep={sweep}"])
    params = cfg.hydra.sweeper.params
    experiments, seeds = SWEEPS[sweep]
    assert str(params.experiment).split(",") == experiments
    assert str(params.seed) == seeds
    assert cfg.hydra.callbacks.report._target_ == "rigsa_lightning.report.sweep_callback.ReportCallback"
    assert cfg.task_name == {"paper": "study_paper"}.get(sweep, f"sweep_{sweep}")  # paper: the study at scale
    for exp in experiments:  # every grid point names an experiment file that exists
        assert (CONFIG_DIR / "experiment" / f"{exp}.yaml").is_file(), exp
    # every grid point composes (one job's config)
    for exp in experiments[:: max(1, len(experiments) // 3)]:
        job = _compose(conf_dir, [f"+sweep={sweep}", f"experiment={exp}", "seed=1"])
        assert job.seed == 1 and job.hydra.runtime.choices.experiment == exp
    if sweep == "smoke":
        assert cfg.data.train_size == 400 and cfg.data.test_size == 200 and cfg.eval.limit == 10
        # command-line values win over the sweep file
        assert _compose(conf_dir, ["+sweep=smoke", "data.train_size=50"]).data.train_size == 50
    if sweep == "paper":
        choices = cfg.hydra.runtime.choices
        assert (choices.model, choices.data, choices.trainer, choices.eval) == (
            "smollm2_1.7b",
            "mnist",
            "gpu",
            "paper",
        )
        assert _compose(conf_dir, ["+sweep=paper", "model=tiny"]).hydra.runtime.choices.model == "tiny"


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ],
)
def test_launchers_compose(conf_dir: Path, launcher: str, target: str) -> None:
    cfg = _compose(conf_dir, ["+sweep=smoke", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target
    assert str(cfg.hydra.sweeper.params.seed) == "0"


def test_report_callback_on_multirun_end(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from rigsa_lightning.report.sweep_callback import ReportCallback

    root = make_fake_sweep(tmp_path / "sweep")
    cb = ReportCallback()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    assert cb.last_report is not None and (root / "results.md").is_file()
    # an empty sweep folder is logged, not raised (the sweep itself succeeded)
    (tmp_path / "empty").mkdir()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}}))
    ReportCallback(enabled=False).on_multirun_end(OmegaConf.create({}))


def test_multirun_calls_the_report_callback(conf_dir: Path, tmp_path: Path) -> None:
    """A real Hydra multirun (basic launcher) with the sweep's callback, on a stand-in job function.

    Checks the part that belongs to this module: ``+sweep=...`` sweeps ``experiment`` through
    ``hydra.sweeper.params``, job folders are ``<num>_<name>``, and the callback reports on the sweep folder.
    """
    app = tmp_path / "app.py"
    app.write_text(
        f"""
import json
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
import rigsa_lightning.config.access

@hydra.main(version_base="1.3", config_path={str(conf_dir)!r}, config_name="train")
def job(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    method = HydraConfig.get().runtime.choices.experiment
    m = {{"method": str(cfg.adapter.method), "name": str(cfg.name), "seed": int(cfg.seed), "status": "completed",
         "textual_mnist/acc": 0.5 + 0.1 * int(cfg.seed), "forget/drift/kl/after": 0.1, "adapter/density": 0.5,
         "data_train_size": int(cfg.data.train_size)}}
    (out / "metrics.json").write_text(json.dumps(m))

job()
"""
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(app),
            "-m",
            "+sweep=smoke",
            "experiment=rigsa_50,zero_shot",
            "seed=0,1",
            f"paths.output_dir={tmp_path / 'out'}",
            "hydra/launcher=basic",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "out" / "multiruns").glob("*/*_sweep_smoke")
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_rigsa_50", "1_rigsa_50", "2_zero_shot", "3_zero_shot"]
    assert json.loads((sweep_dir / "0_rigsa_50" / "metrics.json").read_text())["data_train_size"] == 400
    rows = _read_csv(sweep_dir / "results.csv")
    assert [(r["name"], r["n_seeds"]) for r in rows] == [("zero_shot", "2"), ("rigsa_50", "2")]
    assert math.isclose(float(rows[1]["tm_acc_mean"]), 0.55)


# ------------------------------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow
def test_real_two_job_multirun_tiny_model(tmp_path: Path) -> None:
    """Two real jobs (rigsa_50, zero_shot) on the tiny model through the training entry point, then the report."""
    pytest.importorskip("rigsa_lightning.train")
    pytest.importorskip("rigsa_lightning.pruning")
    pytest.importorskip("rigsa_lightning.adapters.rigsa.layer")
    pytest.importorskip("rigsa_lightning.data.textual_mnist")
    pytest.importorskip("rigsa_lightning.forgetting")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rigsa_lightning.train",
            "-m",
            "experiment=rigsa_50,zero_shot",
            "model=tiny",
            "debug=fast",
            "logger=csv",
            f"paths.output_dir={out}",
            "print_config=false",
            "+hydra.callbacks.report._target_=rigsa_lightning.report.sweep_callback.ReportCallback",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"},
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep_dir,) = (out / "multiruns").glob("*/*")
    rows = _read_csv(sweep_dir / "results.csv")
    assert sorted(r["name"] for r in rows) == ["rigsa_50", "zero_shot"], (
        sweep_dir / "results.md"
    ).read_text()
    assert (sweep_dir / "results.md").is_file()
    assert (sweep_dir / "forgetting_vs_accuracy.png").stat().st_size > 5_000


def test_a_measure_only_some_runs_have_says_so_in_its_panel_title() -> None:
    """GSM8k exact match measured by 2 of 3 runs (the third scored GSM8k by NLL alone): its panel title says
    "(2 of 3 runs)"; a measure every run has keeps its plain title; one no run has gets no panel."""
    from rigsa_lightning.report.figures import forgetting_measures

    nan = float("nan")
    runs = [
        {"gsm8k_delta": 0.0625, "gsm8k_gold_nll_delta": 0.3, "piqa_delta": nan},
        {"gsm8k_delta": -0.0625, "gsm8k_gold_nll_delta": 0.2, "piqa_delta": nan},
        {"gsm8k_gold_nll_delta": 0.1},
    ]
    measures = forgetting_measures(runs, {"gsm8k": "exact_match_flexible-extract", "piqa": "acc"})
    titles = {m.key: m.title for m in measures}
    assert titles == {
        "gsm8k_delta": "GSM8k EM flexible-extract: below 0 = forgetting (2 of 3 runs)",
        "gsm8k_gold_nll_delta": "GSM8k gold NLL/token: above 0 = forgetting",
    }


def test_a_group_cell_over_some_of_its_runs_says_how_many() -> None:
    """Three QLoRA runs, two of which measured GSM8k exact match (reused from a study that generated): the
    accuracy cell is the mean of three, the exact-match cell the mean of the two and says "(2 of 3 runs)"."""
    from rigsa_lightning.report.table import Column, _group_table, aggregate

    nan = float("nan")
    runs = [
        {"method": "qlora", "name": "qlora_r16", "seed": s, "tm_acc": acc, "gsm8k_delta": em}
        for s, acc, em in ((0, 0.867, 0.0625), (1, 0.767, nan), (2, 0.82, -0.0625))
    ]
    cols = [Column("tm_acc", "acc", "acc"), Column("gsm8k_delta", "GSM8k Δ", "delta")]
    rows = aggregate(runs, cols)
    assert rows[0]["tm_acc_n"] == 3 and rows[0]["gsm8k_delta_n"] == 2
    assert rows[0]["gsm8k_delta_mean"] == pytest.approx(0.0)
    body = _group_table(rows, cols).splitlines()[2]
    cells = [c.strip() for c in body.strip("|").split("|")]
    assert cells[2:] == ["3", f"{100 * (0.867 + 0.767 + 0.82) / 3:.1f} ± 5.0", "0.0 ± 8.8 (2 of 3 runs)"]
