"""Adapter methods: one entry point that loads the base model and injects what ``adapter.method`` asks for.

Methods: ``rigsa`` (gated sparse adapter, pruned by IMP), ``random_mask`` (same adapter, random fixed mask),
``lora``, ``qlora`` (LoRA on a 4-bit NF4 base), ``full`` (full fine-tuning of the target matrices), ``none``
(zero-shot: evaluations only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rigsa_lightning.errors import ConfigError

METHODS = ("rigsa", "random_mask", "lora", "qlora", "full", "none")
GATED_METHODS = ("rigsa", "random_mask")


@dataclass
class PreparedModel:
    """A base model with its adapter injected, and what the LightningModule needs to train and export it."""

    model: nn.Module
    tokenizer: Any
    method: str
    model_key: str
    gated: dict[str, nn.Module] = field(default_factory=dict)  # GatedSparseLinear modules (rigsa/random_mask)
    targets: dict[str, nn.Module] = field(default_factory=dict)  # full fine-tuning targets


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if cfg is not None else default


def model_key(model_cfg: Any, path: str) -> str:
    """A stable identifier of the base model for caches (name, the resolved folder's config, the dtype; QLoRA adds
    its 4-bit settings in :func:`prepare_model`)."""
    name = str(_get(model_cfg, "name_or_path"))
    dtype = _get(model_cfg, "dtype", None)
    suffix = f"|dtype={dtype}" if dtype else ""  # the precision is part of what a cached "before" measured
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        stat = (p / "config.json").stat()
        return f"{name}|{p.resolve()}|{stat.st_size}{suffix}"
    return name + suffix


def resolve_random_mask_density(adapter_cfg: Any, pruning_cfg: Any) -> float:
    """Density of a random mask: ``adapter.density``, or (when null) the final density of the pruning schedule."""
    density = _get(adapter_cfg, "density")
    if density is None:
        # lazy: pruning imports adapters at module level, so adapters may only import it when called
        from rigsa_lightning.pruning.schedule import PruningSchedule

        schedule = PruningSchedule.from_cfg(pruning_cfg)
        density = schedule.final_density
        if density is None:
            raise ConfigError(
                "adapter.density",
                "random_mask needs a density but the pruning schedule's final density is data dependent "
                "(keep_of=sign_stable)",
                "set adapter.density=<value>, e.g. 0.0346 (experiment=random_mask_paper)",
            )
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ConfigError("adapter.density", f"{density} is outside (0, 1]", "use a density such as 0.5")
    return density


def prepare_model(cfg: Any, cache_dir: str | os.PathLike | None = None) -> PreparedModel:
    """Load ``cfg.model`` and inject ``cfg.adapter`` (the whole run config is passed for the pruning schedule)."""
    from rigsa_lightning.models import load_model, resolve_model_path

    adapter_cfg = cfg.adapter
    method = str(_get(adapter_cfg, "method"))
    if method not in METHODS:
        raise ConfigError("adapter.method", f"unknown method {method!r}", f"use one of {list(METHODS)}")
    path = resolve_model_path(cfg.model, cache_dir)
    key = model_key(cfg.model, path)
    if method == "qlora":  # QLoRA's base is the 4-bit model: its own "before" (and drift reference)
        quant = _get(adapter_cfg, "quant", None) or {}
        key += "|4bit:" + ",".join(f"{k}={_get(quant, k)}" for k in ("type", "double_quant", "compute_dtype"))

    if method == "qlora":
        from rigsa_lightning.adapters.lora import apply_lora, load_qlora_base

        model, tok = load_qlora_base(cfg.model, adapter_cfg, cache_dir)
        model = apply_lora(model, adapter_cfg)
        return PreparedModel(model, tok, method, key)

    model, tok = load_model(cfg.model, cache_dir)
    if bool(_get(cfg.model, "gradient_checkpointing", False)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    if method in GATED_METHODS:
        from rigsa_lightning.adapters.gated_sparse import inject_gated_sparse, random_mask_

        gated = inject_gated_sparse(model, adapter_cfg)
        if method == "random_mask":
            density = resolve_random_mask_density(adapter_cfg, cfg.pruning)
            random_mask_(gated, density, int(_get(adapter_cfg, "mask_seed", 0)))
        return PreparedModel(model, tok, method, key, gated=gated)
    if method == "lora":
        from rigsa_lightning.adapters.lora import apply_lora

        return PreparedModel(apply_lora(model, adapter_cfg), tok, method, key)
    if method == "full":
        from rigsa_lightning.adapters.full import apply_full

        return PreparedModel(model, tok, method, key, targets=apply_full(model, adapter_cfg))
    from rigsa_lightning.adapters.full import apply_none

    apply_none(model)
    return PreparedModel(model, tok, method, key)


def param_groups(prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups for the prepared method (only adapter tensors are trainable)."""
    if prepared.method in GATED_METHODS:
        from rigsa_lightning.adapters.gated_sparse import adapter_param_groups

        return adapter_param_groups(prepared.gated, adapter_cfg)
    if prepared.method in ("lora", "qlora"):
        from rigsa_lightning.adapters.lora import lora_param_groups

        return lora_param_groups(prepared.model, adapter_cfg)
    if prepared.method == "full":
        from rigsa_lightning.adapters.full import full_param_groups

        return full_param_groups(prepared.targets, adapter_cfg)
    return []
