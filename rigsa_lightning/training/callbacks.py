"""The Lightning callbacks and loggers of a training run, and the trainer built from them.

:func:`build_callbacks` assembles the callback list in the order the run depends on (pruning first, then the
per-round forgetting evaluation that reads the freshly pruned model, the forgetting curve, the checkpoints, the
matched-accuracy stop, the learning-rate monitor, the progress bar).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from rigsa_lightning.adapters.registry import AdapterMethod
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.pruning import IterativeMagnitudePruning, PruningSchedule
    from rigsa_lightning.training.stopping import StopAtAccuracy
    from rigsa_lightning.training.timing import StageTimer

log = logging.getLogger("rigsa_lightning.train")


def checkpoint_callbacks(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """``checkpoints/last.ckpt`` rewritten (atomically) at every epoch end and, optionally, every N steps.

    Lightning 2.6's ``save_last`` only writes ``last.ckpt`` when a top-k checkpoint was saved at the same step, so
    with ``save_top_k=0`` nothing was written before the end of training. Here the single kept top-k file *is*
    ``last.ckpt`` (``filename="last"``, no version counter: each save replaces it). Monitoring callbacks run after
    the others at epoch end, so the epoch-end checkpoint holds the masks after that epoch's pruning event.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_cfg = cfg.get("checkpoint", {}) or {}
    if not bool(ckpt_cfg.get("enabled", True)):
        return []
    common: dict[str, Any] = {
        "dirpath": str(run_dir / "checkpoints"),
        "filename": "last",
        "monitor": None,
        "save_top_k": 1,
        "save_last": False,
        "enable_version_counter": False,
    }
    callbacks: list[Any] = [ModelCheckpoint(**common, save_on_train_epoch_end=True), TrainingLoaderPosition()]
    every = ckpt_cfg.get("every_n_train_steps")
    if every:
        callbacks.append(
            ModelCheckpoint(**common, every_n_train_steps=int(every), save_on_train_epoch_end=False)
        )
    return callbacks


class TrainingLoaderPosition(L.Callback):
    """Hands a resumed run's training loader the position its checkpoint saved (a mid-epoch checkpoint continues
    the epoch after the batches already trained on: :class:`~rigsa_lightning.data.batching.ResumableLoader`).

    Lightning saves a resumable loader's ``state_dict`` under the fit loop and loads it back only when the loader is
    built after the checkpoint was restored; the scheduler's ``estimated_stepping_batches`` builds it before, so the
    saved position would be dropped. This reads it from the checkpoint and loads it at ``on_train_start``, before
    the first batch is drawn (loading the same position twice is harmless)."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved loader positions (none in an older checkpoint)."""
        from rigsa_lightning.training.checkpoint import saved_loader_positions

        self.states = saved_loader_positions(checkpoint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the kept positions into the training loaders, in Lightning's order."""
        from lightning.pytorch.utilities.combined_loader import CombinedLoader

        from rigsa_lightning.data.batching import ResumableLoader

        states, self.states = self.states, []
        if not states:
            return
        source = trainer.train_dataloader
        flat = source.flattened if isinstance(source, CombinedLoader) else CombinedLoader(source).flattened
        loaders = [dl for dl in flat if isinstance(dl, ResumableLoader)]
        if len(loaders) != len(states):
            log.warning(
                "resume: %d saved loader positions for %d training loaders: not used",
                len(states),
                len(loaders),
            )
            return
        for loader, state in zip(loaders, states, strict=True):
            loader.load_state_dict(state)


def build_loggers(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> list[Any]:
    """Lightning loggers per ``logger.type`` (W&B offline unless an API key and network are there). Starting
    from ``ckpt_path`` in the same folder (a resume), the CSV keeps the rows logged before the checkpoint."""
    from rigsa_lightning.training.csv_history import ContinuousCSVLogger, checkpoint_position

    kind = str(cfg.logger.get("type", "csv"))
    loggers: list[Any] = []
    if kind == "none":
        return loggers
    resume_step, batch_end = checkpoint_position(ckpt_path) if ckpt_path is not None else (None, False)
    loggers.append(
        ContinuousCSVLogger(
            save_dir=str(run_dir),
            name="csv",
            version="",
            resume_step=resume_step,
            batch_end=batch_end,
        )
    )
    if kind == "wandb":
        from rigsa_lightning.training.tracking import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, run_dir))
    return loggers


class RoundForgetting(L.Callback):
    """Evaluate forgetting after each IMP round (``eval.after_each_round``) on the freshly pruned+rewound model.

    Added after the pruning callback, so its ``on_train_epoch_end`` runs after that round's prune.
    """

    def __init__(self, forgetting: ForgettingEvaluator, pruning_cb: IterativeMagnitudePruning) -> None:
        self.forgetting = forgetting
        self.pruning_cb = pruning_cb
        self.done = 0

    @property
    def state_key(self) -> str:
        # The name checkpoints written while this class was local to a function store its state under.
        return "_round_forgetting_cls.<locals>._RoundForgetting"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the stage ``round<k>`` once the pruning callback has done round k."""
        if self.pruning_cb.round > self.done and trainer.is_global_zero:
            self.done = self.pruning_cb.round
            metrics = self.forgetting.evaluate(pl_module.model, f"round{self.done}")
            pl_module.log_dict({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    def state_dict(self) -> dict[str, Any]:
        """The number of rounds already evaluated (a resumed run does not evaluate them again)."""
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.done = int(state_dict.get("done", 0))


def segments_before_final(cfg: DictConfig, schedule: PruningSchedule, spec: AdapterMethod) -> int:
    """Epochs before RIGSA's final retraining phase (every prune done after them); 0 for the other methods."""
    if not spec.prunes or not bool(cfg.pruning.get("enabled", True)) or schedule.rounds == 0:
        return 0
    if schedule.final_epochs == 0:
        log.warning(
            "stop_at: pruning.final_epochs=0, so no validation follows the last prune: the run trains to the end"
        )
    return int(schedule.rounds * schedule.epochs_per_round)


@dataclass
class TrainCallbacks:
    """The callback list of a run, and the callbacks whose results go into its metrics."""

    callbacks: list[Any] = field(default_factory=list)
    pruning: IterativeMagnitudePruning | None = None
    stop: StopAtAccuracy | None = None
    timer: StageTimer | None = None


def build_callbacks(
    cfg: DictConfig,
    spec: AdapterMethod,
    schedule: PruningSchedule,
    run_dir: Path,
    forgetting: ForgettingEvaluator,
    curve_cb: Any | None,
    loggers: list[Any],
) -> TrainCallbacks:
    """The run's callbacks in order: IMP pruning (+ per-round forgetting), the forgetting curve, checkpoints, the
    matched-accuracy stop, the learning-rate monitor (with a logger), the progress bar (on a terminal)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

    from rigsa_lightning.adapters.rigsa.ticket import PRUNE_HISTORY_FILE
    from rigsa_lightning.config.validation import resume_folder
    from rigsa_lightning.pruning import IterativeMagnitudePruning
    from rigsa_lightning.training.stopping import StopAtAccuracy, check_stop_at
    from rigsa_lightning.training.timing import StageTimer

    # a resume carries the fit seconds of its checkpoint; a new run started from ckpt_path starts its own clock
    out = TrainCallbacks(timer=StageTimer(carry_fit=resume_folder(cfg) is not None))
    out.callbacks.append(out.timer)  # first: its validation hooks run before the forgetting curve's
    if spec.prunes and bool(cfg.pruning.get("enabled", True)):
        out.pruning = IterativeMagnitudePruning(
            cfg.pruning, schedule=schedule, history_file=run_dir / PRUNE_HISTORY_FILE
        )
        out.callbacks.append(out.pruning)
        if forgetting.after_each_round:
            out.callbacks.append(RoundForgetting(forgetting, out.pruning))
    if curve_cb is not None:
        out.callbacks.append(curve_cb)
    out.callbacks += checkpoint_callbacks(cfg, run_dir)
    ckpt_cfg = cfg.get("checkpoint", {}) or {}
    if out.pruning is not None and bool(ckpt_cfg.get("enabled", True)) and bool(ckpt_cfg.get("ticket", True)):
        from rigsa_lightning.pruning.ticket_checkpoint import TicketCheckpoint

        out.callbacks.append(TicketCheckpoint(run_dir))
    target = check_stop_at(cfg.get("stop_at"))
    if target is not None:  # matched accuracy: stop at the target, RIGSA only after its last prune
        out.stop = StopAtAccuracy(target, min_epoch=segments_before_final(cfg, schedule, spec))
        out.callbacks.append(out.stop)
    if loggers:
        out.callbacks.append(LearningRateMonitor(logging_interval="step"))
    if bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stderr.isatty():
        out.callbacks.append(RichProgressBar())
    else:  # sweeps, nohup, a log file: periodic one-line progress of the optimizer steps in the run's log
        out.callbacks.append(TrainingProgressLog())
    return out


class TrainingProgressLog(L.Callback):
    """Periodic one-line progress of the training steps when no terminal shows Lightning's bar (``RIGSA_PROGRESS``:
    ``off`` silences it): ``training steps 40/375 (11 %), 0.12 step/s, ~46 min left`` in the run's log."""

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._progress: Any = None
        self._start = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start counting from the run's current step (a resumed run counts what is left)."""
        from rigsa_lightning.progress import Progress, progress_mode

        mode = "off" if progress_mode() == "off" else "log"
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        total = total or int(trainer.estimated_stepping_batches)
        self._start = int(trainer.global_step)
        self._progress = Progress(
            "training steps",
            total=max(0, int(total) - int(trainer.global_step)),
            unit="step",
            mode=mode,
            logger=log,
            clock=self._clock,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """The optimizer steps done since the start (batches that only accumulate gradients add none)."""
        if self._progress is not None:
            self._progress.update(int(trainer.global_step) - self._start - self._progress.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The closing line (``done``, or ``stopped`` short of the total: stop_at or an interruption)."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None


def build_trainer(
    cfg: DictConfig, total_epochs: int, callbacks: list[Any], loggers: list[Any], run_dir: Path
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` for ``total_epochs`` (``optim.grad_clip``: global norm over the
    adapter tensors unless ``trainer.gradient_clip_val`` is set); checkpointing on when a checkpoint callback is."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_kwargs, dict)
    trainer_kwargs["max_epochs"] = total_epochs
    if cfg.optim.get("grad_clip") and "gradient_clip_val" not in trainer_kwargs:
        trainer_kwargs["gradient_clip_val"] = float(cfg.optim.grad_clip)
    return L.Trainer(
        **trainer_kwargs,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
