"""Adapter methods: one entry point that loads the base model and injects what ``adapter.method`` asks for.

Methods: ``rigsa`` (gated sparse adapter, pruned by IMP), ``random_mask`` (same adapter, random fixed mask),
``lora``, ``qlora`` (LoRA on a 4-bit NF4 base), ``full`` (full fine-tuning of the target matrices), ``none``
(zero-shot: evaluations only). Each is a folder (``rigsa/``, ``lora/``, ``full/``) whose ``method.py`` holds its
:class:`~rigsa_lightning.adapters.registry.AdapterMethod` in the registry (``registry.py``); this package imports no
torch until a method's hook runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.base import PreparedModel, base_model_key, load_base, model_key
from rigsa_lightning.adapters.registry import get_method
from rigsa_lightning.adapters.seeds import ADAPTER_SEED, MASK_SEED
from rigsa_lightning.config.access import get


def replicate_seeds(cfg: Any) -> Any:
    """``cfg`` with the adapter's seeds offset by the run's ``seed``: ``adapter.seed + seed`` draws the initial ΔW
    (LoRA's A), ``adapter.mask_seed + seed`` a random mask. So each run seed is a replicate (another initialisation,
    another mask, with the training order it also seeds), and ``seed=0`` keeps the seeds as written."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    offset = int(get(cfg, "seed", 0) or 0)
    if not offset or not isinstance(cfg, DictConfig):
        return cfg
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, default in (("seed", ADAPTER_SEED), ("mask_seed", MASK_SEED)):
            out.adapter[key] = int(OmegaConf.select(out, f"adapter.{key}", default=default)) + offset
    return out


def prepare_model(cfg: Any, cache_dir: str | os.PathLike | None = None) -> PreparedModel:
    """Load ``cfg.model`` and inject ``cfg.adapter`` (the whole run config is passed for the pruning schedule), its
    seeds offset by the run seed (:func:`replicate_seeds`)."""
    return get_method(str(get(cfg.adapter, "method"))).prepare(replicate_seeds(cfg), cache_dir)


def export_adapter(prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
    """Write what users take away: the sparse adapter (RIGSA / random mask), a PEFT folder (LoRA / QLoRA) or the
    fine-tuned target weights (full), per the method's ``export``. Returns the folder, or None for ``none``."""
    return get_method(prepared.method).export(prepared, cfg, folder)


def param_groups(prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups for the prepared method (only adapter tensors are trainable)."""
    return get_method(prepared.method).param_groups(prepared, adapter_cfg)


__all__ = [
    "PreparedModel",
    "base_model_key",
    "export_adapter",
    "load_base",
    "model_key",
    "param_groups",
    "prepare_model",
    "replicate_seeds",
]
