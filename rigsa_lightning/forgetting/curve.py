"""The forgetting curve (``eval.curve``): forgetting against Textual MNIST accuracy along training, not one point.

At every validation, :class:`ForgettingCurve` scores the cheap continuous measures on a small fixed item subset —
the PIQA / HellaSwag gold margins and the GSM8k reference-solution NLL, no generation — and pairs them item by item
with the base model's (its own ``before`` stage). Each point holds the step, epoch, validation accuracy and, per
measure, the paired mean change with its 95% bootstrap CI; the points go to the loggers (``curve/...`` at the
step), to ``metrics.json`` (``forget_curve``) and from there to the sweep report. With a run folder, each point's
per-item records are kept too (``forgetting_items/curve/step<N>.json.gz``, with the base's ``before.json.gz``), so
that two methods can be compared item by item at a common accuracy (:func:`rigsa_lightning.report.claims` pairs them).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from rigsa_lightning.forgetting import items

log = logging.getLogger(__name__)


def curve_eval_cfg(eval_cfg: Any) -> dict[str, Any] | None:
    """The settings of the curve's evaluator (``eval`` with the curve's item limits, no generation, no drift, no
    files), or None when ``eval.curve.enabled`` is off or the benchmarks are."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(eval_cfg, resolve=True) if isinstance(eval_cfg, DictConfig) else eval_cfg
    plain = copy.deepcopy(dict(plain or {}))
    curve = plain.get("curve") or {}
    if not curve.get("enabled", False) or not plain.get("enabled", True):
        return None
    plain.update(limit=curve.get("limit"), generate=False, gold_nll=True, drift=None, after_each_round=False)
    plain.pop("curve", None)
    return plain


class ForgettingCurve(L.Callback):
    """Score the curve's evaluator at every validation (after its ``before`` stage on the base model); with a
    ``run_dir``, keep each stage's per-item records there (:func:`~rigsa_lightning.forgetting.items.curve_items_path`)."""

    def __init__(self, evaluator: Any, metric: str = "val/acc", run_dir: str | Path | None = None) -> None:
        self.evaluator = evaluator
        # its progress reports read "forgetting curve step<N>: ..."
        self.evaluator.progress_label = "forgetting curve"
        self.metric = metric
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.points: list[dict[str, float]] = []
        self._save_items("before", None)  # the base model's records, scored before the callback is made

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One curve point per validation (not the sanity check)."""
        if trainer.sanity_checking or "before" not in self.evaluator.stages:
            return
        stage = f"step{trainer.global_step}"
        if any(p["step"] == trainer.global_step for p in self.points):
            return
        value = trainer.callback_metrics.get(self.metric)
        started = time.perf_counter()
        metrics = self.evaluator.evaluate(pl_module.model, stage)
        self._save_items(stage, trainer.global_step)
        point: dict[str, float] = {
            "step": float(trainer.global_step),
            "epoch": float(trainer.current_epoch),
            "val_acc": float(value) if value is not None else float("nan"),
            "seconds": time.perf_counter() - started,  # where a study job's time goes (time/curve_s)
        }
        marker = f"/delta_{stage}"
        for key, val in metrics.items():
            if marker in key:  # forget/<task>/<measure>/delta_<stage>[_ci_lo|_ci_hi] -> <task>/<measure>[...]
                task, measure = key.split("/")[1:3]
                point[f"{task}/{measure}" + key.split(marker, 1)[1]] = float(val)
        self.points.append(point)
        shown = ", ".join(
            f"{k} {v:+.3f} [{point[k + '_ci_lo']:+.3f}, {point[k + '_ci_hi']:+.3f}]"
            for k, v in point.items()
            if k.endswith(("margin", "gold_nll")) and f"{k}_ci_lo" in point
        )
        log.info(
            "forgetting curve @ step %d (val acc %.3f): %s", trainer.global_step, point["val_acc"], shown
        )
        logged = {f"curve/{k}_delta": v for k, v in point.items() if k.endswith(("margin", "gold_nll"))}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def _save_items(self, stage: str, step: int | None) -> None:
        """Write the per-item records of one of the evaluator's stages (nothing without a run folder)."""
        records = self.evaluator.stages.get(stage, {}).get("items")
        if self.run_dir is None or not records:
            return
        items.save_records(items.curve_items_path(self.run_dir, step), records)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed points (a resumed run keeps its curve)."""
        return {"points": list(self.points)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.points = list(state_dict.get("points", []))
