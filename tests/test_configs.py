"""Every config group option and every experiment composes; the CLI's --help / --cfg / bad names behave."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rigsa_lightning.config.access import CONFIG_DIR, available

GROUPS = ["model", "data", "adapter", "pruning", "trainer", "logger", "eval", "paths", "debug", "experiment"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_groups_exist() -> None:
    for group in GROUPS:
        assert available(group), f"config group {group} has no options"
    assert {
        "rigsa_50",
        "rigsa_75",
        "rigsa_90",
        "rigsa_paper",
        "random_mask_50",
        "random_mask_paper",
        "qlora_r16",
        "qlora_r64",
        "lora_r16",
        "full_ft",
        "zero_shot",
    } <= set(available("experiment"))


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("paths",)])
def test_every_group_option_composes(group: str) -> None:
    for option in available(group):
        cfg = _compose([f"{group}={option}"])
        if group not in ("debug", "experiment"):
            assert cfg[group] is not None
            # Everything but Hydra's runtime-only values resolves.
            OmegaConf.to_container(cfg[group], resolve=True)
        assert cfg.adapter.method


@pytest.mark.parametrize("experiment", available("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.adapter.method in {"rigsa", "random_mask", "lora", "qlora", "full", "none"}
    assert OmegaConf.select(cfg, "name", throw_on_missing=True)


def test_density_matched_pair_is_one_override_apart() -> None:
    from rigsa_lightning.adapters.rigsa.method import resolve_random_mask_density

    a = _compose(["experiment=random_mask_50"])
    b = _compose(["experiment=rigsa_50", "adapter=random_mask"])
    assert a.adapter.method == b.adapter.method == "random_mask"
    assert str(a.name) == str(b.name) == "random_mask_50"
    assert resolve_random_mask_density(a.adapter, a.pruning) == pytest.approx(0.5)
    assert OmegaConf.to_container(a.adapter) == OmegaConf.to_container(b.adapter)
    assert OmegaConf.to_container(a.pruning) == OmegaConf.to_container(b.pruning)


def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "rigsa_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_from_another_directory(tmp_path: Path) -> None:
    res = _cli(["--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "experiment:" in res.stdout and "rigsa_50" in res.stdout


def test_cfg_job_prints_resolved_config(tmp_path: Path) -> None:
    res = _cli(["experiment=rigsa_paper", "--cfg", "job"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "keep_of: sign_stable" in res.stdout
    assert not (tmp_path / "outputs").exists()


def test_unknown_experiment_is_one_line_listing_valid_ones(tmp_path: Path) -> None:
    res = _cli(["experiment=rigsa_5"], tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "experiment" in lines[0] and "rigsa_50" in lines[0] and "zero_shot" in lines[0]
    assert not (tmp_path / "outputs").exists()
