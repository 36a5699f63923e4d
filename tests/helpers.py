"""Helpers shared by the test files: running the package's commands in a subprocess, finding the run folder, and
asserting what a user sees on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: A training run small enough for an end-to-end test on the tiny model.
SMALL = [
    "model=tiny",
    "data.train_size=32",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=4",
    "eval=none",
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
]
#: Environment switches of the fault-injection hooks; a run gets them only when a test passes them in ``env``.
FAULT_VARIABLES = ("RIGSA_TEST_KILL_AT_STEP", "RIGSA_TEST_NAN_AT_STEP", "RIGSA_TEST_KILL_SIGNAL")


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    module: str = "rigsa_lightning.train",
) -> subprocess.CompletedProcess:
    """A command of the package (training by default) offline, one thread, in ``cwd`` (``env`` adds variables)."""
    full_env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        OMP_NUM_THREADS="1",
    )
    for name in FAULT_VARIABLES:
        full_env.pop(name, None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, "threads=1", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(root: Path) -> list[Path]:
    """The run folders under ``root/outputs/runs`` (sorted)."""
    return sorted(p for p in (root / "outputs" / "runs").glob("*/*") if p.is_dir())


def only_run_dir(root: Path) -> Path:
    """The one run folder under ``root`` (fails when there are none or several)."""
    runs = run_dirs(root)
    assert len(runs) == 1, runs
    return runs[0]


def tail(res: subprocess.CompletedProcess) -> str:
    """The ends of a command's stdout and stderr, for assertion messages."""
    return res.stdout[-3000:] + "\n---stderr---\n" + res.stderr[-3000:]


def load_ckpt(path: Path) -> dict[str, Any]:
    """A checkpoint loaded the safe way (no pickle beyond tensors and primitives)."""
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def assert_one_line_error(res: subprocess.CompletedProcess, option: str, *fragments: str) -> str:
    """Exit 2, last stderr line ``error: <option>: ...`` with a fix (``->``), no traceback; returns the line."""
    assert res.returncode == 2, tail(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines, tail(res)
    line = lines[-1]
    assert line.startswith(f"error: {option}: "), tail(res)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, tail(res)
    for fragment in fragments:
        assert fragment in line, line
    return line


def assert_nothing_written(root: Path) -> None:
    """No run folder was created under ``root``."""
    assert run_dirs(root) == [], run_dirs(root)


def compose_cfg(overrides: list[str]) -> Any:
    """The train config as Hydra composes it (no run folder is created)."""
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)
