"""stop_at.val_acc (issue 16): stop at a target validation accuracy; RIGSA only after its last prune."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.training.stopping import StopAtAccuracy, check_stop_at
from tests.helpers import only_run_dir, run_cli


def _trainer(acc: float | None, epoch: int, step: int = 10, sanity: bool = False) -> SimpleNamespace:
    metrics = {} if acc is None else {"val/acc": torch.tensor(acc)}
    return SimpleNamespace(
        sanity_checking=sanity,
        callback_metrics=metrics,
        current_epoch=epoch,
        global_step=step,
        should_stop=False,
    )


def test_stops_at_the_target_only_from_min_epoch():
    cb = StopAtAccuracy(0.5, min_epoch=1)
    early = _trainer(0.9, epoch=0)
    cb.on_validation_end(early, None)
    assert not early.should_stop and cb.reached is None  # before the last prune: keep training
    below = _trainer(0.49, epoch=1)
    cb.on_validation_end(below, None)
    assert not below.should_stop
    sanity = _trainer(0.9, epoch=1, sanity=True)
    cb.on_validation_end(sanity, None)
    assert not sanity.should_stop
    hit = _trainer(0.5, epoch=1, step=42)
    cb.on_validation_end(hit, None)
    assert hit.should_stop
    assert cb.metrics() == {
        "stop_at/target": 0.5,
        "stop_at/reached": 1.0,
        "stop_at/val_acc": 0.5,
        "stop_at/epoch": 1.0,
        "stop_at/step": 42.0,
    }
    restored = StopAtAccuracy(0.5, min_epoch=1)
    restored.load_state_dict(cb.state_dict())
    assert restored.metrics() == cb.metrics()
    never = StopAtAccuracy(0.95)
    never.on_validation_end(_trainer(0.2, epoch=3), None)
    assert never.metrics() == {"stop_at/target": 0.95, "stop_at/reached": 0.0}


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "high", True])
def test_bad_targets_are_config_errors(value):
    with pytest.raises(ConfigError) as err:
        check_stop_at({"val_acc": value})
    assert err.value.option == "stop_at.val_acc"
    assert check_stop_at({"val_acc": None}) is None and check_stop_at({"val_acc": 0.8}) == 0.8


def test_rigsa_schedule_completes_before_a_stop(tmp_path: Path):
    """Target reached in the dense round already: the run still prunes, and stops in the final phase at the earliest."""
    res = run_cli(
        [
            "experiment=rigsa_50",
            "model=tiny",
            "debug=fast",
            "stop_at.val_acc=0.000001",
            "pruning.final_epochs=3",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["adapter/density"] == pytest.approx(0.5, abs=0.01)  # the prune happened
    assert metrics["stop_at/target"] == 1e-6
    if metrics["stop_at/reached"]:
        assert metrics["stop_at/epoch"] == 1.0  # the first epoch after the last prune, not later
        assert "stop_at: val/acc" in res.stdout + res.stderr
    else:  # the tiny random model may score 0 on its 2 validation batches: then it trains to the end
        assert "stop_at/epoch" not in metrics


def test_a_resumed_run_that_had_reached_the_target_stops_again():
    cb = StopAtAccuracy(0.5)
    cb.on_validation_end(_trainer(0.7, epoch=0), None)
    resumed = StopAtAccuracy(0.5)
    resumed.load_state_dict(cb.state_dict())  # the checkpoint written at the end of the stopping epoch
    trainer = _trainer(None, epoch=1)
    resumed.on_train_start(trainer, None)
    assert trainer.should_stop
    fresh = _trainer(None, epoch=0)
    StopAtAccuracy(0.5).on_train_start(fresh, None)
    assert not fresh.should_stop
