"""Injection of RIGSA adapters into a model, their gates and their optimizer parameter groups.

:func:`inject_rigsa` freezes the model and wraps every target linear in a :class:`DenseDeltaLinear` (seeded per
module name, gates shared per ``adapter.gate``, optionally a random mask); :func:`adapter_param_groups` gives AdamW
the ΔW (or kept values) and the unique gates.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.constants import GATES
from rigsa_lightning.adapters.rigsa.layer import FORWARD_MODES, KEEP_INIT, DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.seeding import INIT_SCHEMES, derive_seed, random_mask_
from rigsa_lightning.adapters.seeds import ADAPTER_SEED, MASK_SEED
from rigsa_lightning.adapters.targets import find_target_linears, replace_module
from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_BLOCK_PREFIX = re.compile(r"^(.*?(?:^|\.)\d+)(?:\.|$)")


# ``adapter.<key>: null`` means the default.
_get = functools.partial(get, null_is_default=True)


def gate_key(name: str, gate: str) -> str:
    """The key of the alpha a module uses: its own name (matrix), its block ``...layers.<i>`` (layer), or global."""
    if gate == "matrix":
        return name
    if gate == "global":
        return "global"
    match = _BLOCK_PREFIX.match(name)
    return match.group(1) if match else name


def _check_choice(value: Any, choices: tuple[str, ...], option: str) -> str:
    value = str(value)
    if value not in choices:
        raise ConfigError(option, f"unknown value {value!r}", f"use one of {list(choices)}")
    return value


def inject_rigsa(
    model: nn.Module, adapter_cfg: Any, *, density: float | None = None
) -> dict[str, DenseDeltaLinear]:
    """Freeze every parameter of ``model`` and wrap each target linear in a :class:`DenseDeltaLinear`.

    Args:
        model: a (transformers) model, modified in place.
        adapter_cfg: the ``adapter`` config group (DictConfig or dict); see conf/adapter/rigsa.yaml.
        density: initial random-mask density; defaults to ``adapter_cfg.density`` (null or 1.0: dense).

    Returns:
        ``{module name: DenseDeltaLinear}`` in model order (e.g. ``model.layers.0.self_attn.q_proj``).
    """
    targets = _get(adapter_cfg, "targets", DEFAULT_TARGETS)
    init = _check_choice(_get(adapter_cfg, "init", "kaiming_uniform"), INIT_SCHEMES, "adapter.init")
    gate = _check_choice(_get(adapter_cfg, "gate", "matrix"), GATES, "adapter.gate")
    forward_mode = _check_choice(
        _get(adapter_cfg, "forward_mode", "merged"), FORWARD_MODES, "adapter.forward_mode"
    )
    keep_init = _check_choice(_get(adapter_cfg, "keep_init", "regenerate"), KEEP_INIT, "adapter.keep_init")
    init_std = float(_get(adapter_cfg, "init_std", 0.02))
    if init == "normal" and not init_std > 0:
        raise ConfigError("adapter.init_std", f"must be > 0 for init=normal, got {init_std}", "use e.g. 0.02")
    alpha_init = float(_get(adapter_cfg, "alpha_init", 1e-6))
    seed = int(_get(adapter_cfg, "seed", ADAPTER_SEED))
    if density is None:
        density = _get(adapter_cfg, "density", None)

    for p in model.parameters():
        p.requires_grad_(False)
    linears = find_target_linears(model, targets)
    gates: dict[str, nn.Parameter] = {}
    adapters: dict[str, DenseDeltaLinear] = {}
    for name, linear in linears.items():
        key = gate_key(name, gate)
        alpha = None
        if gate != "matrix":
            if key not in gates:
                gates[key] = nn.Parameter(
                    torch.tensor(alpha_init, dtype=torch.float32, device=linear.weight.device)
                )
            alpha = gates[key]
        module = DenseDeltaLinear(
            linear,
            init_seed=derive_seed(seed, name),
            alpha=alpha,
            alpha_init=alpha_init,
            init=init,
            init_std=init_std,
            forward_mode=forward_mode,
            keep_init=keep_init,
            gate_key=key,
        )
        replace_module(model, name, module)
        adapters[name] = module
    if density is not None and float(density) < 1.0:
        random_mask_(adapters, float(density), int(_get(adapter_cfg, "mask_seed", MASK_SEED)))
    return adapters


def unique_alphas(adapters: dict[str, nn.Module]) -> list[nn.Parameter]:
    """The distinct gate parameters (shared gates counted once), in module order."""
    seen: dict[int, nn.Parameter] = {}
    for module in adapters.values():
        seen.setdefault(id(module.alpha), module.alpha)
    return list(seen.values())


def adapter_param_groups(adapters: dict[str, nn.Module], adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups: ΔW (dense storage) or its kept values (sparse storage) with
    ``adapter.weight_decay`` at ``adapter.lr``; the gates without decay at ``adapter.alpha_lr``. Only adapter
    tensors appear (the base model is frozen)."""
    lr = float(_get(adapter_cfg, "lr", 1e-3))
    alpha_lr = _get(adapter_cfg, "alpha_lr", None)
    alpha_lr = lr if alpha_lr is None else float(alpha_lr)
    weight_decay = float(_get(adapter_cfg, "weight_decay", 1.0))
    return [
        {
            "params": [m.trainable_delta() for m in adapters.values()],
            "lr": lr,
            "weight_decay": weight_decay,
            "name": "delta",
        },
        {"params": unique_alphas(adapters), "lr": alpha_lr, "weight_decay": 0.0, "name": "alpha"},
    ]
