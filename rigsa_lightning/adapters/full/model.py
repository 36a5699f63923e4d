"""Full fine-tuning of the target matrices (the forgetting reference) and ``none`` (zero-shot: nothing trains).

``full`` trains the *weights* of the same decoder-block linears that RIGSA/LoRA adapt; everything else (embeddings,
norms, LM head and any bias of a target linear) stays frozen. Biases are left out on purpose: the adapters never
touch them (PEFT LoRA runs with ``bias="none"``, RIGSA adapts W only), so the trainable count is exactly
``sum(out * in)`` over the targets and the comparison is about the same matrices. Llama-style models have no biases
in these projections anyway.

Export: the fine-tuned target weights go to ``<folder>/full_weights.safetensors`` (keys ``<module>.weight``) with a
``full_weights.json`` description; :func:`load_full_weights` puts them back into a fresh base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rigsa_lightning.adapters.targets import find_target_linears
from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_write, atomic_write_json

FULL_WEIGHTS = "full_weights.safetensors"
FULL_META = "full_weights.json"
FORMAT = "rigsa-full-weights"
FORMAT_VERSION = 1


def apply_none(model: nn.Module) -> None:
    """Freeze every parameter (``adapter=none``: zero-shot, evaluations only)."""
    for param in model.parameters():
        param.requires_grad_(False)


def apply_full(model: nn.Module, adapter_cfg: Any) -> dict[str, nn.Linear]:
    """Freeze the model, then unfreeze the weight (not the bias) of every target linear; return them by name.

    Targets follow ``adapter.targets`` (suffixes or ``re:`` regexes, decoder-block linears only); an entry that
    matches nothing raises :class:`ConfigError`. A target whose weight is shared with a non-target module (tied
    weights) is refused, since training it would silently change that module too.
    """
    apply_none(model)
    targets = find_target_linears(model, get(adapter_cfg, "targets", None))
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(name)
    for name, linear in targets.items():
        if linear.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ConfigError(
                "adapter.method",
                f"full fine-tuning needs floating-point weights, {name} is {linear.weight.dtype}",
                "load the model without quantisation (adapter=full never uses 4-bit)",
            )
        others = [o for o in owners.get(id(linear.weight), []) if o != name and o not in targets]
        if others:
            raise ConfigError(
                "adapter.targets",
                f"{name}.weight is tied to {others[0]}, which is not a target",
                "drop that target or untie the weights",
            )
        linear.weight.requires_grad_(True)
    return targets


def full_param_groups(targets: dict[str, nn.Linear], adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups: one group with every target weight, ``adapter.lr`` and ``adapter.weight_decay``.

    Weight decay pulls the weights toward zero (not toward W0), as plain AdamW fine-tuning does; the default is 0.
    """
    params = [linear.weight for linear in targets.values() if linear.weight.requires_grad]
    if not params:
        raise ConfigError(
            "adapter", "full fine-tuning has no trainable target weight", "call apply_full first"
        )
    return [
        {
            "params": params,
            "lr": float(get(adapter_cfg, "lr", 1.0e-5)),
            "weight_decay": float(get(adapter_cfg, "weight_decay", 0.0)),
            "name": "full",
        }
    ]


def full_stats(targets: dict[str, nn.Linear], folder: str | os.PathLike | None = None) -> dict[str, int]:
    """Budget numbers of full fine-tuning.

    ``trainable_params`` (sum of the target weights' numel), ``nonzero_adapter_entries`` (non-zero entries of those
    weights: the update is dense, every entry may move), ``adapter_bytes`` (in memory), ``target_matrices``, and
    ``adapter_bytes_on_disk`` (the two export files) when ``folder`` is given.
    """
    weights = [linear.weight for linear in targets.values()]
    stats = {
        "trainable_params": int(sum(w.numel() for w in weights)),
        "nonzero_adapter_entries": int(sum(int(torch.count_nonzero(w.detach())) for w in weights)),
        "adapter_bytes": int(sum(w.numel() * w.element_size() for w in weights)),
        "target_matrices": len(weights),
    }
    if folder is not None:
        folder = Path(folder)
        stats["adapter_bytes_on_disk"] = int(
            sum((folder / f).stat().st_size for f in (FULL_WEIGHTS, FULL_META) if (folder / f).is_file())
        )
    return stats


def save_full_weights(targets: dict[str, nn.Linear], folder: str | os.PathLike, base_model: str) -> Path:
    """Write the fine-tuned target weights to ``folder/full_weights.safetensors`` (+ ``full_weights.json``) atomically.

    ``base_model`` names the base the weights belong to (``model.name_or_path``); it is stored in both the
    safetensors metadata and the JSON. Returns the safetensors path.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {
        f"{name}.weight": linear.weight.detach().to("cpu").contiguous() for name, linear in targets.items()
    }
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base_model": str(base_model),
        "targets": {name: list(linear.weight.shape) for name, linear in targets.items()},
        "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", "") if tensors else None,
        "num_params": int(sum(t.numel() for t in tensors.values())),
    }
    path = atomic_write(
        folder / FULL_WEIGHTS,
        lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "base_model": str(base_model)}),
    )
    atomic_write_json(folder / FULL_META, meta)
    return path


def load_full_weights(model: nn.Module, folder: str | os.PathLike) -> list[str]:
    """Copy exported target weights back into ``model`` (same architecture); return the module names loaded."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / FULL_WEIGHTS
    if not path.is_file():
        raise ConfigError("adapter", f"{path} does not exist", "point it at the adapter folder of a full run")
    meta_path = folder / FULL_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(
                "adapter", f"{meta_path} is not a {FORMAT} file", "use the folder written by a full run"
            )
    tensors = load_file(str(path))
    loaded: list[str] = []
    with torch.no_grad():
        for key, value in tensors.items():
            name = key[: -len(".weight")]
            try:
                linear = model.get_submodule(name)
            except AttributeError as exc:
                raise ConfigError(
                    "adapter",
                    f"{name} (in {path.name}) is not a module of the model",
                    "use the base it was trained from",
                ) from exc
            if tuple(linear.weight.shape) != tuple(value.shape):
                raise ConfigError(
                    "adapter",
                    f"{key} has shape {tuple(value.shape)}, the model has {tuple(linear.weight.shape)}",
                    "load it into the base model it was trained from",
                )
            linear.weight.copy_(value.to(linear.weight.dtype))
            loaded.append(name)
    return loaded
