"""``full`` (full fine-tuning of the target matrices) and ``none`` (zero-shot: nothing trains, nothing is
exported). Registry entries (no torch at import): the implementation is ``model.py``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.base import AdapterMethod, PreparedModel, load_base, trainable_count


class Full(AdapterMethod):
    """Full fine-tuning of the weights of the same target linears the adapters use (the forgetting reference)."""

    name = "full"
    export_kind = "full"
    export_file = "full_weights.safetensors"  # model.FULL_WEIGHTS
    label = "full fine-tuning"
    order = 5
    color = "#9467bd"

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The base model with only the target weights trainable."""
        from rigsa_lightning.adapters.full.model import apply_full

        model, tok, key = load_base(cfg, cache_dir)
        return PreparedModel(model, tok, self.name, key, targets=apply_full(model, cfg.adapter))

    def param_groups(self, prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
        """The target weights."""
        from rigsa_lightning.adapters.full.model import full_param_groups

        return full_param_groups(prepared.targets, adapter_cfg)

    def export(self, prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
        """The fine-tuned target weights (``full_weights.safetensors`` + ``full_weights.json``)."""
        from rigsa_lightning.adapters.full.model import save_full_weights

        save_full_weights(prepared.targets, folder, str(cfg.model.name_or_path))
        return folder

    def load_export(self, model: Any, folder: Path) -> Any:
        """Copy the exported target weights into ``model`` (already a plain model: nothing to merge)."""
        from rigsa_lightning.adapters.full.model import load_full_weights

        load_full_weights(model, folder)
        return model

    def config_density(self, get: Callable[[str], float]) -> float | None:
        """Every entry of the targets trains."""
        return 1.0


class NoAdapter(AdapterMethod):
    """``none``: the base model as it is (zero-shot evaluations; the train job skips fitting)."""

    name = "none"
    trains = False
    label = "zero-shot"
    order = 0
    color = "#555555"

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The base model with every parameter frozen."""
        from rigsa_lightning.adapters.full.model import apply_none

        model, tok, key = load_base(cfg, cache_dir)
        apply_none(model)
        return PreparedModel(model, tok, self.name, key)

    def parameter_counts(self, prepared: PreparedModel) -> dict[str, int]:
        """Nothing is an adapter entry."""
        return {"params/trainable": trainable_count(prepared.model), "params/adapter_nnz": 0}
