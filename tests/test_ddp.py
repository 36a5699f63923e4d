"""Lightning DDP on CPU (2 processes, gloo) through the Hydra entry point: the job runs and rank 0 reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import only_run_dir, run_cli


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    res = run_cli(
        [
            "experiment=rigsa_50",
            "model=tiny",
            "debug=fast",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "eval=none",
        ],
        tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["adapter/density"] == pytest.approx(0.5, abs=0.01)
    assert "world_size=2" in (res.stdout + res.stderr) or "distributed_backend=gloo" in (
        res.stdout + res.stderr
    )
