"""What the LightningModule does for gated sparse adapters only (rigsa, random_mask; a no-op for other methods):
the storage layout (dense or sparse) and its switch, the gates and their statistics, the masks after every step,
the adapter state's memory, and laying the adapters out as a checkpoint stores them.

:class:`GatedAdapterHooks` is a mixin of :class:`~rigsa_lightning.training.module.RigsaLitModule`: it reads
``self.prepared`` (the injected model), ``self.cfg``, ``self.method`` and the Lightning attributes.
"""

from __future__ import annotations

from typing import Any

import torch

from rigsa_lightning.adapters.registry import get_method


class GatedAdapterHooks:
    """The gated adapters' part of the LightningModule (see the module docstring)."""

    prepared: Any
    cfg: Any
    method: str
    adapter_storage: str
    adapter_state_history: list[dict[str, Any]]
    _trainer: Any

    def adapter_modules(self) -> dict[str, torch.nn.Module]:
        """The gated adapters by name (DenseDeltaLinear, or SparseDeltaLinear once stored sparse; empty for
        LoRA/full/none). The dict object stays the same when the storage changes."""
        return self.prepared.gated

    # ------------------------------------------------------------------ storage
    def resolve_storage(self) -> str:
        """``adapter.storage`` resolved against the trainer: ``sparse`` or ``dense``.

        ``auto`` (default) stores pruned adapters sparse on a single-device strategy and dense under DDP/FSDP,
        whose wrappers cannot follow the parameters changing after a prune; ``sparse`` there is an error.
        """
        from rigsa_lightning.adapters.rigsa.storage import multi_device_error, storage_options

        value, _ = storage_options(self.cfg.adapter)
        if not get_method(self.method).gated:
            return "dense"
        from lightning.pytorch.strategies import SingleDeviceStrategy

        trainer = self._trainer
        single = trainer is None or isinstance(trainer.strategy, SingleDeviceStrategy)
        if value == "sparse" and not single:
            raise multi_device_error(type(trainer.strategy).__name__)
        return "sparse" if value == "sparse" or (value == "auto" and single) else "dense"

    def set_adapter_storage(self, storage: str) -> None:
        """Convert every gated adapter to ``storage`` (``sparse`` | ``dense``), in the model and in
        :meth:`adapter_modules`; during a fit the optimizer and LR scheduler follow with their state (see
        :func:`~rigsa_lightning.adapters.rigsa.storage.switch_storage`)."""
        from rigsa_lightning.adapters.rigsa.storage import switch_storage

        switch_storage(self.model, self.prepared.gated, storage, self.cfg.adapter, self._trainer)

    def gates(self) -> list[torch.Tensor]:
        """The distinct gate parameters (alpha) of the gated adapters."""
        seen: dict[int, torch.Tensor] = {}
        for mod in self.prepared.gated.values():
            seen.setdefault(id(mod.alpha), mod.alpha)
        return list(seen.values())

    def setup_storage(self) -> None:
        """Resolve the adapter storage; a fixed random mask (random_mask) is stored sparse from the start."""
        self.adapter_storage = self.resolve_storage()
        if self.adapter_storage == "sparse" and any(
            m.nnz() < m.numel() for m in self.prepared.gated.values()
        ):
            self.set_adapter_storage("sparse")

    def gated_batch_end(self, batch_idx: int, enforce: bool) -> None:
        """After every step: re-apply the masks (``enforce``: without the IMP callback, which does it itself, e.g.
        random_mask, so AdamW's decoupled decay can never move a pruned entry), stop on a non-finite gate, log the
        gate statistics every ``log_every_n_steps`` and record the adapter state after an epoch's first step."""
        for name, mod in self.prepared.gated.items():
            if enforce:
                mod.enforce_mask()
            if not torch.isfinite(mod.alpha).all():
                raise self._nonfinite(
                    f"gate {name}.alpha is {mod.alpha.detach().item()}", "lower adapter.alpha_lr"
                )
        if self.prepared.gated and self.global_step % max(1, int(self.trainer.log_every_n_steps)) == 0:
            self.log_dict(self.gate_stats(), on_step=True, on_epoch=False)
        if batch_idx == 0 and self.prepared.gated:
            self._record_adapter_state()

    def _record_adapter_state(self) -> None:
        """After the first step of an epoch (grads and AdamW moments exist): bytes of the adapters' training state
        (ΔW or kept values, grads, moments, masks or indices, gates), logged as ``memory/adapter_state_mb`` and kept
        per epoch in :attr:`adapter_state_history` (``metrics.json``: ``memory/adapter_state``)."""
        from rigsa_lightning.adapters.rigsa.storage import adapter_state_bytes, storage_of

        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        state = adapter_state_bytes(self.prepared.gated, optimizer)
        storage = {storage_of(m) for m in self.prepared.gated.values()}
        self.adapter_state_history.append(
            {
                "epoch": int(self.current_epoch),
                "storage": "/".join(sorted(storage)),
                "nnz": int(sum(m.nnz() for m in self.prepared.gated.values())),
                **{f"{k}_bytes": int(v) for k, v in state.items()},
            }
        )
        self.log("memory/adapter_state_mb", state["total"] / 2**20, on_step=True, on_epoch=False)

    def gate_stats(self) -> dict[str, float]:
        """Mean / min / max / mean-|alpha| of the gates."""
        gates = self.gates()
        if not gates:
            return {}
        a = torch.stack([g.detach().float().reshape(()) for g in gates])
        return {
            "alpha/mean": a.mean().item(),
            "alpha/min": a.min().item(),
            "alpha/max": a.max().item(),
            "alpha/abs_mean": a.abs().mean().item(),
        }

    def _match_checkpoint_storage(self, state: dict[str, Any]) -> None:
        """Lay the gated adapters out as the checkpoint stores them (sparse ``values``/``indices`` or dense
        ``delta``/``mask``) before Lightning loads it (and builds the optimizer on those parameters); the configured
        storage takes over at the next prune."""
        from rigsa_lightning.adapters.rigsa.storage import match_checkpoint_storage

        match_checkpoint_storage(self.model, self.prepared.gated, state, self.cfg.adapter)
