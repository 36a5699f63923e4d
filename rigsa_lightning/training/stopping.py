"""Stop training at a target validation accuracy (``stop_at.val_acc``): methods are compared at matched accuracy.

:class:`StopAtAccuracy` is a Lightning callback: after every validation (each epoch end, or every
``trainer.val_check_interval`` steps) it stops the run once ``val/acc`` >= the target. For RIGSA the pruning
schedule must complete first: a stop is only allowed from the first epoch of the final retraining phase on (after
the last prune), so the adapter that is evaluated is always the pruned, retrained one. Runs that never reach the
target train to the end and say so (``stop_at/reached = 0``); forgetting is then measured at the end.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from rigsa_lightning.config.errors import ConfigError

log = logging.getLogger(__name__)


def check_stop_at(cfg: Any) -> float | None:
    """The target of ``stop_at.val_acc`` (None: off); ConfigError unless it is in (0, 1]."""
    value = cfg.get("val_acc") if cfg is not None else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise ConfigError(
            "stop_at.val_acc",
            f"must be null or a fraction in (0, 1], got {value!r}",
            "e.g. stop_at.val_acc=0.8",
        )
    return float(value)


class StopAtAccuracy(L.Callback):
    """Stop once ``metric`` >= ``target`` at a validation, from epoch ``min_epoch`` (0-based) on.

    Args:
        target: validation accuracy to reach (fraction).
        min_epoch: first epoch in which a stop is allowed (RIGSA: the first epoch after the last prune).
        metric: the logged validation metric.
    """

    def __init__(self, target: float, min_epoch: int = 0, metric: str = "val/acc") -> None:
        self.target = float(target)
        self.min_epoch = int(min_epoch)
        self.metric = metric
        self.reached: dict[str, float] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed after the target was reached stops again at once (Lightning does not save should_stop)."""
        if self.reached is not None:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the target after each validation (not the sanity check)."""
        if trainer.sanity_checking or self.reached is not None:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None or trainer.current_epoch < self.min_epoch:
            return
        acc = float(value)
        if acc >= self.target:
            self.reached = {
                "val_acc": acc,
                "epoch": float(trainer.current_epoch),
                "step": float(trainer.global_step),
            }
            trainer.should_stop = True
            log.info(
                "stop_at: %s %.4f >= %.4f at epoch %d, step %d: training stops here",
                self.metric,
                acc,
                self.target,
                trainer.current_epoch,
                trainer.global_step,
            )

    def metrics(self) -> dict[str, float]:
        """``stop_at/*`` for ``metrics.json``: the target, whether and where it was reached."""
        out = {"stop_at/target": self.target, "stop_at/reached": float(self.reached is not None)}
        if self.reached is not None:
            out.update({f"stop_at/{k}": v for k, v in self.reached.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed state (a resumed run knows whether it already stopped)."""
        return {"target": self.target, "min_epoch": self.min_epoch, "reached": self.reached}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.reached = state_dict.get("reached")
