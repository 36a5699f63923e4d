"""W&B: offline without a key (never hangs), one run per multirun job, grouped by sweep, final metrics in the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rigsa_lightning.training.tracking import resolve_wandb_mode


def test_auto_mode_is_offline_without_key(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent-home")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_multirun_makes_one_offline_run_per_job(tmp_path: Path) -> None:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "rigsa_lightning.train",
            "-m",
            "experiment=rigsa_50,zero_shot",
            "model=tiny",
            "debug=fast",
            "logger=wandb",
            "logger.type=wandb",
            "eval.enabled=false",
            "threads=1",
            "print_config=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(
        p for p in (tmp_path / "outputs" / "multiruns").glob("*/*/*") if p.is_dir() and p.name[0].isdigit()
    )
    assert [j.name for j in jobs] == ["0_rigsa_50", "1_zero_shot"]
    ids = []
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, (job, runs)
        ids.append((job / "wandb_id.txt").read_text().strip())
        assert (job / "metrics.json").is_file()
    assert len(set(ids)) == 2, "each job must be its own W&B run"
