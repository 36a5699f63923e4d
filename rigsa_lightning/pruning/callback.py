"""The Lightning side of IMP: :class:`IterativeMagnitudePruning` (prune, rewind, reset gates and optimizer
state, log, keep pruned entries exactly at their pruned value, checkpointable state) and :func:`density_report`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from rigsa_lightning.pruning.round import compute_prune_masks
from rigsa_lightning.pruning.schedule import PruningSchedule
from rigsa_lightning.pruning.select import count_true

log = logging.getLogger("rigsa_lightning.pruning")  # one logger for the package (its name before the split)


def density_report(adapters: dict[str, Any]) -> dict[str, Any]:
    """Global density, nnz and numel, and the per-module densities (``per_module``)."""
    nnz = {name: count_true(mod.mask) for name, mod in adapters.items()}
    numel = {name: int(mod.mask.numel()) for name, mod in adapters.items()}
    total = sum(numel.values())
    return {
        "density": (sum(nnz.values()) / total) if total else 1.0,
        "nnz": sum(nnz.values()),
        "numel": total,
        "per_module": {n: nnz[n] / max(1, numel[n]) for n in adapters},
    }


class IterativeMagnitudePruning(L.Callback):
    """Prune the gated adapters at the end of the scheduled epochs (see :class:`PruningSchedule`).

    Ordering: Lightning calls the non-monitoring callbacks' ``on_train_epoch_end`` first, then the
    LightningModule's, then the monitoring ones (``ModelCheckpoint``/``EarlyStopping``, also moved to the end of
    the callback list by ``_CallbackConnector._reorder_callbacks``; see ``fit_loop.on_advance_end`` in Lightning
    2.6). A checkpoint saved at train-epoch end (``save_on_train_epoch_end`` or the default with one validation per
    epoch) therefore holds the masks *after* this epoch's prune, and resuming from it does not prune again (the
    round index is part of :meth:`state_dict`). The end-of-epoch validation runs before the prune.

    Args:
        pruning_cfg: the ``pruning`` config group.
        log_per_module: also log ``prune/density/<module>`` for every adapted matrix.
        schedule: the run's schedule already parsed from ``pruning_cfg`` (parsed here when not given).
    """

    def __init__(
        self,
        pruning_cfg: Any,
        *,
        log_per_module: bool = True,
        schedule: PruningSchedule | None = None,
        history_file: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.schedule = schedule if schedule is not None else PruningSchedule.from_cfg(pruning_cfg)
        self.log_per_module = log_per_module
        # <run>/prune_history.json, rewritten after every prune: a random ticket can read the final mask's
        # per-matrix counts (adapter.density_from) as soon as the last round is done, before the run ends.
        self.history_file = Path(history_file) if history_file is not None else None
        self.round = 0  # number of prune rounds done
        self.history: list[dict[str, Any]] = []
        # "was positive" at the last prune (sign_reference=previous): the next round's sign reference
        self.references: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------- hooks
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Prune when this epoch ends a round that has not been done yet."""
        round_index = self.schedule.round_at_epoch(int(trainer.current_epoch))
        if round_index is None or round_index <= self.round:
            return
        # Sparse storage (adapter.storage): a later round ranks and rewinds the dense form, then stores the new
        # survivors sparse again (set_adapter_storage carries the optimizer state over both ways).
        set_storage = getattr(pl_module, "set_adapter_storage", None)
        if set_storage is not None:
            set_storage("dense")
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        record = self.prune(
            pl_module.adapter_modules(),
            round_index,
            optimizer=optimizer,
            epoch=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
        )
        del optimizer
        if set_storage is not None:
            set_storage(getattr(pl_module, "adapter_storage", "dense"))
        self._log(trainer, pl_module, self.metrics_of(record))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Keep pruned entries exactly at their pruned value after each optimizer step (no-op while dense)."""
        for mod in pl_module.adapter_modules().values():
            mod.enforce_mask()

    # ------------------------------------------------------------------------------------------- pruning
    def prune(
        self,
        adapters: dict[str, Any],
        round_index: int | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        epoch: int | None = None,
        global_step: int | None = None,
    ) -> dict[str, Any]:
        """Run one IMP round on ``adapters`` (usable without a Trainer); returns the history record.

        (Over ~80 lines: one prune event's steps in order, each a call; splitting it would hide the order.)
        """
        t0 = time.perf_counter()
        sched = self.schedule
        round_index = self.round + 1 if round_index is None else int(round_index)
        if round_index > sched.rounds:
            raise ValueError(f"round {round_index} > pruning.rounds={sched.rounds}")
        if round_index != self.round + 1:
            log.warning("IMP: running round %d after round %d", round_index, self.round)
        alphas: dict[int, torch.Tensor] = {}
        for mod in adapters.values():
            alphas.setdefault(id(mod.alpha), mod.alpha)
        alpha_values = torch.stack([a.detach().float().reshape(()) for a in alphas.values()]).cpu()
        new_references: dict[str, torch.Tensor] = {}

        def apply(name: str, mask: torch.Tensor) -> None:
            mod = adapters[name]
            if sched.sign_reference == "previous":  # the sign before rewinding: next round's reference
                new_references[name] = mod.delta.detach() > 0
            # the rewind draws the initial ΔW chunk by chunk (DenseDeltaLinear.apply_mask)
            mod.apply_mask(mask, rewind=sched.rewind == "init", pruned_value=sched.pruned_value)

        # Masks are applied module by module as soon as they are final (no second copy of all masks in memory).
        result = compute_prune_masks(adapters, sched, round_index, self.references, on_mask=apply)
        self.references = new_references
        prev_nnz = sum(result.stats["alive"].values())
        if sched.reset_alpha:
            with torch.no_grad():
                for mod in adapters.values():
                    mod.alpha.fill_(mod.alpha_init)
        if optimizer is not None:
            self._clear_optimizer_state(optimizer, adapters)
        self.round = round_index

        stats = result.stats
        numel = sum(stats["numel"].values())
        nnz = sum(stats["kept"].values())
        alive = sum(stats["alive"].values())
        record: dict[str, Any] = {
            "round": round_index,
            "epoch": epoch,
            "global_step": global_step,
            "target_density": stats["target_density"],
            "keep_fraction": stats["keep_fraction"],
            "density": nnz / max(1, numel),
            "nnz": nnz,
            "numel": numel,
            "sign_stable_fraction": sum(stats["sign_stable"].values()) / max(1, alive),
            "kept_sign_stable_fraction": sum(stats["kept_sign_stable"].values()) / max(1, nnz),
            # Masks are nested (only alive entries can be kept): overlap = |new ∩ old| / |old|, Jaccard likewise.
            "overlap_prev": nnz / max(1, prev_nnz),
            "jaccard_prev": nnz / max(1, prev_nnz),
            "alpha_mean": float(alpha_values.mean()),
            "alpha_min": float(alpha_values.min()),
            "alpha_max": float(alpha_values.max()),
            "too_few_candidates": list(stats["short"]),
            "per_module": {n: stats["kept"][n] / max(1, stats["numel"][n]) for n in adapters},
            "per_module_nnz": {n: int(stats["kept"][n]) for n in adapters},
            "per_module_numel": {n: int(stats["numel"][n]) for n in adapters},
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(record)
        self.write_history()
        log.info(
            "IMP round %d/%d: density %.4f (target %s), sign-stable %.3f, alpha mean %.3g, %.2f s",
            round_index,
            sched.rounds,
            record["density"],
            "data dependent" if record["target_density"] is None else f"{record['target_density']:.4f}",
            record["sign_stable_fraction"],
            record["alpha_mean"],
            record["seconds"],
        )
        return record

    def _clear_optimizer_state(self, optimizer: torch.optim.Optimizer, adapters: dict[str, Any]) -> None:
        """Drop (reset_optimizer) or zero at pruned positions (otherwise) the optimizer state of the adapters, so
        Adam's moments cannot revive pruned entries; a reset gate also loses its stale moments."""
        sched = self.schedule
        seen: set[int] = set()
        for mod in adapters.values():
            if sched.reset_optimizer:
                optimizer.state.pop(mod.delta, None)
            else:
                state = optimizer.state.get(mod.delta, {})
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == mod.delta.shape:
                        value.mul_(mod.mask)
                # `step` is kept: bias correction continues for the survivors; pruned entries have zero moments
                # and zero gradients, so their Adam update is exactly 0.
            if (sched.reset_optimizer or sched.reset_alpha) and id(mod.alpha) not in seen:
                seen.add(id(mod.alpha))
                optimizer.state.pop(mod.alpha, None)

    def write_history(self) -> None:
        """Write the prune history (every round's record) to :attr:`history_file`, atomically; no-op without one."""
        if self.history_file is None:
            return
        from rigsa_lightning.io import atomic_write_json

        atomic_write_json(
            self.history_file,
            {"rounds": self.schedule.rounds, "done": self.round, "history": self.history},
        )

    # ------------------------------------------------------------------------------------------- logging
    def metrics_of(self, record: dict[str, Any]) -> dict[str, float]:
        """Flat ``prune/*`` metrics of a history record (W&B-friendly keys)."""
        keys = (
            "round",
            "density",
            "nnz",
            "target_density",
            "sign_stable_fraction",
            "kept_sign_stable_fraction",
            "overlap_prev",
            "jaccard_prev",
            "alpha_mean",
            "alpha_min",
            "alpha_max",
            "seconds",
        )
        metrics = {f"prune/{k}": float(record[k]) for k in keys if record.get(k) is not None}
        if self.log_per_module:
            metrics.update({f"prune/density/{n}": float(v) for n, v in record["per_module"].items()})
        return metrics

    @staticmethod
    def _log(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        try:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=False, logger=True)
        except Exception as exc:  # noqa: BLE001 - logging must never break training; fall back to the loggers
            log.debug("log_dict failed (%s); logging prune metrics through the loggers", exc)
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Round index, history and sign references (masks and ΔW live in the model's state dict)."""
        return {
            "round": self.round,
            "history": list(self.history),
            "references": {n: t.detach().cpu() for n, t in self.references.items()},
            "rounds": self.schedule.rounds,
            "prune_epochs": self.schedule.prune_epochs,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (warns when the schedule changed since)."""
        if list(state_dict.get("prune_epochs", self.schedule.prune_epochs)) != self.schedule.prune_epochs:
            log.warning(
                "IMP: the checkpoint's prune epochs %s differ from the configured %s",
                state_dict.get("prune_epochs"),
                self.schedule.prune_epochs,
            )
        self.round = int(state_dict.get("round", 0))
        self.history = list(state_dict.get("history", []))
        self.references = dict(state_dict.get("references", {}))
