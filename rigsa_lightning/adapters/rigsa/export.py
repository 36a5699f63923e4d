"""Export, load and merge the sparse RIGSA adapter.

Format (``format_version`` 1), a folder with two files:

* ``adapter.safetensors`` - for each adapted module ``<name>.alpha`` (0-dim fp32 gate), ``<name>.indices`` (flat
  row-major indices of the kept ΔW entries, sorted ascending, int32 when the matrix has < 2**31 entries else
  int64) and ``<name>.values`` (the kept ΔW values, fp32). Size grows with the density, not the matrix size.
* ``adapter_config.json`` - base model, targets, per-module shape / nnz / density / init seed / gate group, the
  totals, the number of prune rounds and the full adapter and pruning configs. With ``pruned_value: init`` the
  pruned entries are not stored: the loader regenerates them from each module's init seed.

The folder is written in a temporary sibling and renamed into place, so a kill never leaves a half adapter.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
from rigsa_lightning.adapters.targets import replace_module
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "rigsa-sparse-adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"


def _to_plain(cfg: Any) -> Any:
    """A DictConfig / dict / None as plain JSON-able containers."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(cfg, dict):
        return {k: _to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_to_plain(v) for v in cfg]
    return cfg


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def save_sparse_adapter(
    adapters: dict[str, Any],
    folder: str | os.PathLike,
    *,
    base_model: str,
    adapter_cfg: Any,
    pruning_cfg: Any,
    extra: dict | None = None,
) -> Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` into ``folder`` (replaced atomically); return it."""
    from rigsa_lightning.adapters.rigsa.storage import storage_of

    adapter_plain = _to_plain(adapter_cfg)
    pruning_plain = _to_plain(pruning_cfg)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    pruned_values = set()
    total_nnz = 0
    total_numel = 0
    for name, mod in adapters.items():
        numel = mod.numel()
        if storage_of(mod) == "sparse":  # SparseDeltaLinear: already kept values + indices
            indices = mod.indices.detach().long()
            values = mod.values.detach().float().cpu().contiguous()
        else:
            indices = mod.mask.detach().reshape(-1).nonzero().reshape(-1)
            values = mod.delta.detach().reshape(-1)[indices].float().cpu().contiguous()
        tensors[f"{name}.alpha"] = mod.alpha.detach().float().reshape(()).cpu().clone()
        tensors[f"{name}.indices"] = indices.to(_index_dtype(numel)).cpu().contiguous()
        tensors[f"{name}.values"] = values
        nnz = int(indices.numel())
        pruned_values.add(mod.pruned_value)
        modules[name] = {
            "shape": [mod.out_features, mod.in_features],
            "nnz": nnz,
            "density": nnz / max(1, numel),
            "init_seed": mod.init_seed,
            "init": mod.init,
            "init_std": mod.init_std,
            "gate": mod.gate_key,
            "pruned_value": mod.pruned_value,
        }
        total_nnz += nnz
        total_numel += numel
    if len(pruned_values) > 1:
        raise ValueError(f"modules disagree on pruned_value: {sorted(pruned_values)}")
    enabled = bool(pruning_plain.get("enabled", True)) if isinstance(pruning_plain, dict) else False
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": str(base_model),
        "method": adapter_plain.get("method", "rigsa") if isinstance(adapter_plain, dict) else "rigsa",
        "targets": adapter_plain.get("targets") if isinstance(adapter_plain, dict) else None,
        "pruned_value": next(iter(pruned_values), "zero"),
        "rounds": int(pruning_plain.get("rounds", 0) or 0) if enabled else 0,
        "nnz": total_nnz,
        "numel": total_numel,
        "density": total_nnz / max(1, total_numel),
        "modules": modules,
        "adapter": adapter_plain,
        "pruning": pruning_plain,
        "extra": _to_plain(extra) if extra else {},
    }
    return write_adapter_files(folder, tensors, config)


def write_adapter_files(
    folder: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """Write ``tensors`` (``<module>.alpha / .indices / .values``) and ``config`` as an exported adapter in
    ``folder``, replacing an existing one atomically once the new one is complete; return the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(
            tensors,
            str(tmp / WEIGHTS_NAME),
            metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
        )
        with open(tmp / WEIGHTS_NAME, "rb") as fh:
            os.fsync(fh.fileno())
        atomic_write_json(tmp / CONFIG_NAME, config)
    return folder


# ====================================================================================================== load
def _bad(problem: str, fix: str | None = None, option: str = "adapter.path") -> ConfigError:
    return ConfigError(option, problem.replace("\n", " "), fix)


def read_sparse_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate the files of an exported adapter (no model needed); returns (config, tensors)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights_path.is_file():
        raise _bad(
            f"{folder} has no {CONFIG_NAME} and {WEIGHTS_NAME}", "point it at an exported adapter folder"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise _bad(f"{cfg_path} is not valid JSON ({exc})", "re-export the adapter") from exc
    if (
        not isinstance(config, dict)
        or config.get("format") != FORMAT
        or not isinstance(config.get("modules"), dict)
    ):
        raise _bad(
            f"{cfg_path} is not a RIGSA sparse adapter config", "point it at an exported adapter folder"
        )
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise _bad(
            f"adapter format version {config['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _bad(f"{weights_path} is corrupt or truncated ({first})", "re-export the adapter") from exc

    expected = set()
    for name, info in config["modules"].items():
        for part in ("alpha", "indices", "values"):
            key = f"{name}.{part}"
            expected.add(key)
            if key not in tensors:
                raise _bad(f"{weights_path.name} lacks tensor {key!r}", "re-export the adapter")
        shape = info.get("shape")
        if not (
            isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)
        ):
            raise _bad(f"module {name}: invalid shape {shape!r} in {CONFIG_NAME}")
        numel = shape[0] * shape[1]
        idx, val, alpha = tensors[f"{name}.indices"], tensors[f"{name}.values"], tensors[f"{name}.alpha"]
        if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1:
            raise _bad(
                f"module {name}: indices must be a 1-D int32/int64 tensor, got {idx.dtype} {tuple(idx.shape)}"
            )
        if not val.dtype.is_floating_point or val.dim() != 1:
            raise _bad(
                f"module {name}: values must be a 1-D float tensor, got {val.dtype} {tuple(val.shape)}"
            )
        if val.numel() != idx.numel():
            raise _bad(f"module {name}: {val.numel()} values for {idx.numel()} indices")
        if alpha.numel() != 1 or not alpha.dtype.is_floating_point:
            raise _bad(f"module {name}: alpha must be one float, got {alpha.dtype} {tuple(alpha.shape)}")
        if not torch.isfinite(alpha).all() or not torch.isfinite(val).all():
            raise _bad(f"module {name}: alpha or values contain NaN/Inf")
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= numel:
                raise _bad(f"module {name}: index {lo if lo < 0 else hi} is out of range for shape {shape}")
            if idx.numel() > 1:
                step = idx[1:] - idx[:-1]
                if bool((step == 0).any()) or int(torch.unique(idx).numel()) != idx.numel():
                    raise _bad(f"module {name}: duplicated indices", "re-export the adapter")
                if bool((step < 0).any()):
                    raise _bad(f"module {name}: indices are not sorted ascending", "re-export the adapter")
    extra_keys = sorted(set(tensors) - expected)
    if extra_keys:
        raise _bad(f"{weights_path.name} has tensors not listed in {CONFIG_NAME}: {extra_keys[:3]}")
    return config, tensors


def load_sparse_adapter(
    model: nn.Module, folder: str | os.PathLike, *, strict: bool = True
) -> dict[str, DenseDeltaLinear]:
    """Inject an exported adapter into ``model`` (base weights frozen) so it reproduces the trained model.

    Validates everything before touching the model (ConfigError naming ``adapter.path``): corrupt files, tensors,
    indices (dtype, bounds, duplicates, order), module names and shapes. ``strict=False`` skips modules the model
    lacks (with a warning) instead of failing; shapes must always match.
    """
    config, tensors = read_sparse_adapter(folder)
    modules = dict(model.named_modules())
    plan: dict[str, nn.Linear] = {}
    for name, info in config["modules"].items():
        target = modules.get(name)
        if isinstance(target, DenseDeltaLinear):
            target = target.base_layer
        if not isinstance(target, nn.Linear):
            if strict:
                raise _bad(
                    f"adapter file for a different base model: module {name!r} is not a linear layer of this model "
                    f"(adapter base model: {config.get('base_model')!r})",
                    "load it onto the base model it was trained on",
                )
            log.warning("adapter module %s is not in the model: skipped", name)
            continue
        shape = [int(target.out_features), int(target.in_features)]
        if shape != list(info["shape"]):
            raise _bad(
                f"adapter file for a different base model: {name} has shape {info['shape']} in the adapter but "
                f"{shape} in the model (adapter base model: {config.get('base_model')!r})",
                "load it onto the base model it was trained on",
            )
        plan[name] = target

    pruned_value = str(config.get("pruned_value", "zero"))
    for p in model.parameters():
        p.requires_grad_(False)
    gates: dict[str, nn.Parameter] = {}
    adapters: dict[str, DenseDeltaLinear] = {}
    for name, linear in plan.items():
        info = config["modules"][name]
        device = linear.weight.device
        idx = tensors[f"{name}.indices"].to(device=device, dtype=torch.int64)
        values = tensors[f"{name}.values"].to(device=device, dtype=torch.float32)
        alpha_value = float(tensors[f"{name}.alpha"].reshape(()))
        group = str(info.get("gate") or name)
        alpha = gates.get(group)
        if alpha is None:
            alpha = nn.Parameter(torch.tensor(alpha_value, dtype=torch.float32, device=device))
            gates[group] = alpha
        numel = info["shape"][0] * info["shape"][1]
        flat_delta = torch.zeros(numel, dtype=torch.float32, device=device)
        flat_delta[idx] = values
        flat_mask = torch.zeros(numel, dtype=torch.bool, device=device)
        flat_mask[idx] = True
        adapter_cfg = config.get("adapter") or {}
        module = DenseDeltaLinear(
            linear,
            init_seed=int(info.get("init_seed", 0)),
            alpha=alpha,
            alpha_init=float(adapter_cfg.get("alpha_init", 1e-6) or 1e-6),
            init=str(info.get("init", "kaiming_uniform")),
            init_std=float(info.get("init_std", 0.02)),
            forward_mode=str(adapter_cfg.get("forward_mode", "merged") or "merged"),
            gate_key=group,
            delta=flat_delta.view(info["shape"]),
        )
        # rewind=False keeps the loaded values; pruned_value=init regenerates the frozen initial entries.
        module.apply_mask(flat_mask.view(info["shape"]), rewind=False, pruned_value=pruned_value)
        replace_module(model, name, module)
        adapters[name] = module
    return adapters


# ====================================================================================================== merge
def merge_adapter(model: nn.Module) -> nn.Module:
    """Replace every :class:`DenseDeltaLinear` by its base ``nn.Linear`` with ``W0 + alpha·ΔW`` baked in.

    The result is a plain transformers model (no adapter modules, no inference overhead) that ``save_pretrained``
    can write. The base parameters keep ``requires_grad=False`` (set by injection). Returns ``model``.
    """
    names = [name for name, mod in model.named_modules() if isinstance(mod, DenseDeltaLinear)]
    for name in names:
        mod = model.get_submodule(name)
        assert isinstance(mod, DenseDeltaLinear)
        mod.merge()
        replace_module(model, name, mod.base_layer)
    return model
