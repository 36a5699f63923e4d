"""Every experiment file trains a few steps on the tiny model (QLoRA included, on CPU) and reports the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from rigsa_lightning.config.access import CONFIG_DIR, available

COMMON = ["model=tiny", "debug=fast", "logger=csv", "eval.enabled=false", "threads=1", "print_config=false"]


def run_experiment(name: str, tmp_path: Path, extra: list[str] | None = None) -> dict:
    """Compose ``experiment=<name>`` with the fast tiny settings and run ``train(cfg)`` in process."""
    from rigsa_lightning.train import train

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"experiment={name}", *COMMON, *(extra or [])],
            return_hydra_config=True,
        )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.run_dir = str(tmp_path / name)
            cfg.paths.output_dir = str(tmp_path)
        return train(cfg)


@pytest.mark.parametrize("name", available("experiment"))
def test_experiment_runs_a_few_steps(name: str, tmp_path: Path) -> None:
    extra = []
    if name == "random_ticket":  # the random ticket is paired with a RIGSA run: its per-matrix counts
        run_experiment("rigsa_75", tmp_path)
        extra = [f"adapter.density_from={tmp_path / 'rigsa_75'}"]
    metrics = run_experiment(name, tmp_path, extra)
    run_dir = tmp_path / name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "completed"
    task = ("chat/exact_match", "chat/loss", "chat/zero_shot_exact_match")  # data=chat: your own task
    if not name.endswith("_chat"):
        task = ("textual_mnist/acc", "textual_mnist/gen_acc", "textual_mnist/zero_shot_acc")
    for key in (
        *task,
        "params/trainable",
        "params/adapter_nnz",
        "forget/drift/kl/after",
    ):
        assert key in metrics, key
    method = metrics["method"]
    if method == "none":
        assert metrics["params/trainable"] == 0 and not (run_dir / "adapter").exists()
        return
    assert metrics["params/trainable"] > 0
    assert metrics["adapter/bytes"] > 0 and (run_dir / "adapter").is_dir()
    if method == "rigsa":
        target = {"rigsa_50": 0.5, "rigsa_75": 0.25, "rigsa_90": 0.1}.get(name)
        if target is not None:
            assert metrics["adapter/density"] == pytest.approx(target, abs=0.01)
        assert len(metrics["prune/history"]) == (1 if name == "rigsa_50" else 2)
    if method == "random_mask":
        expected = {
            "random_mask_50": 0.5,
            "random_mask_75": 0.25,
            "random_mask_90": 0.1,
            "random_mask_paper": 0.0346,
            "random_ticket": 0.25,  # rigsa_75's final density, matrix by matrix
        }[name]
        assert metrics["adapter/density"] == pytest.approx(expected, abs=0.01)
    if method in ("lora", "qlora"):
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
