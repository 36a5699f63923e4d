"""The adapter contract every method folder builds on: :class:`AdapterMethod` (the flags and hooks call sites use),
:class:`PreparedModel` (a base model with its adapter injected) and loading the base model once for any method.

A leaf of ``adapters/``: the method folders (``rigsa/``, ``lora/``, ``full/``) import it, the registry
(``registry.py``) collects their methods; importing it imports no torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass
class PreparedModel:
    """A base model with its adapter injected, and what the LightningModule needs to train and export it."""

    model: nn.Module
    tokenizer: Any
    method: str
    model_key: str
    gated: dict[str, nn.Module] = field(default_factory=dict)  # DenseDeltaLinear modules (rigsa/random_mask)
    targets: dict[str, nn.Module] = field(default_factory=dict)  # full fine-tuning targets


def model_key(model_cfg: Any, path: str) -> str:
    """A stable identifier of the base model for caches (name, the resolved folder's config, the dtype; QLoRA adds
    its 4-bit settings in its ``prepare``)."""
    name = str(get(model_cfg, "name_or_path"))
    dtype = get(model_cfg, "dtype", None)
    suffix = f"|dtype={dtype}" if dtype else ""  # the precision is part of what a cached "before" measured
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        stat = (p / "config.json").stat()
        # The embedded model's folder is converted from the package's file, wherever the cache lives: its name
        # identifies it (the caches then carry over to another cache folder or machine); a local folder is its path.
        where = "" if name.startswith("embedded:") else f"|{p.resolve()}"
        return f"{name}{where}|{stat.st_size}{suffix}"
    return name + suffix


def base_model_key(cfg: Any, cache_dir: str | os.PathLike | None) -> str:
    """:func:`model_key` of ``cfg.model`` once its path is resolved (the embedded model converted once)."""
    from rigsa_lightning.models import resolve_model_path

    return model_key(cfg.model, resolve_model_path(cfg.model, cache_dir))


def load_base(cfg: Any, cache_dir: str | os.PathLike | None) -> tuple[Any, Any, str]:
    """The full-precision base model, its tokenizer and :func:`base_model_key` (gradient checkpointing enabled
    when ``model.gradient_checkpointing`` is set)."""
    from rigsa_lightning.models import load_model

    key = base_model_key(cfg, cache_dir)
    model, tok = load_model(cfg.model, cache_dir)
    if bool(get(cfg.model, "gradient_checkpointing", False)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tok, key


class AdapterMethod:
    """One adaptation method: its flags and the hooks call sites use (defaults: the method has nothing to do).

    Flags: ``name`` (the ``adapter.method`` value); ``gated`` (gated sparse adapters with an alpha gate and a mask in
    ``PreparedModel.gated``: sparse storage, density and gate statistics apply); ``prunes`` (the IMP schedule and
    callback apply: LR segments per round, ``stop_at`` after the last prune); ``quantized`` (a 4-bit base: its own
    zero-shot and "before" caches); ``trains`` (False: zero-shot, nothing is fitted); ``export_kind`` /
    ``export_file`` (the name of the folder format the method exports and the file that identifies it; None: no
    export).
    """

    name: ClassVar[str] = ""
    gated: ClassVar[bool] = False
    prunes: ClassVar[bool] = False
    quantized: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    export_kind: ClassVar[str | None] = None
    export_file: ClassVar[str | None] = None
    label: ClassVar[str] = ""
    order: ClassVar[int | None] = None
    color: ClassVar[str | None] = None

    def check(self, cfg: Any) -> None:
        """Early checks that need a library or files (run by train's ``validate_cfg``); raise ConfigError."""

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """Load ``cfg.model`` and inject this method's adapter (the whole run config: the pruning group too)."""
        raise NotImplementedError(f"adapter method {self.name!r} has no prepare()")

    def param_groups(self, prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
        """AdamW parameter groups of the trainable tensors (empty: nothing trains)."""
        return []

    def parameter_counts(self, prepared: PreparedModel) -> dict[str, int]:
        """``params/trainable`` and ``params/adapter_nnz`` (every trainable entry is an adapter entry)."""
        trainable = trainable_count(prepared.model)
        return {"params/trainable": trainable, "params/adapter_nnz": trainable}

    def export(self, prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
        """Write what users take away into ``folder``; return it, or None when the method exports nothing."""
        return None

    def detects(self, folder: Path) -> bool:
        """Whether ``folder`` holds this method's export format."""
        return self.export_file is not None and (Path(folder) / self.export_file).is_file()

    def load_export(self, model: Any, folder: Path) -> Any:
        """Load an exported folder onto ``model``; return the (possibly wrapped) model."""
        raise ConfigError("adapter_path", f"method {self.name!r} exports no adapter to load")

    def merge(self, model: Any) -> Any:
        """The model with the loaded adapter baked into plain weights (default: it already is plain)."""
        return model

    def run_tags(self, cfg: Any) -> list[str]:
        """Tracking tags naming this method's budget (e.g. ``sparsity:0.5``)."""
        return []

    def config_density(self, get: Callable[[str], float]) -> float | None:
        """The adapter density a run's config implies (report fallback when ``adapter/density`` is absent);
        ``get("group.key")`` returns a number or NaN. None: not defined for this method."""
        return None


def trainable_count(model: Any) -> int:
    """Number of trainable entries of ``model`` (shared parameters counted once)."""
    return int(sum({id(p): p.numel() for p in model.parameters() if p.requires_grad}.values()))


def finite_or_none(value: float) -> float | None:
    """``value`` when it is a finite number, else None."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
