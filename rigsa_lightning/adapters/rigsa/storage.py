"""Conversion between the two storages of a RIGSA adapter, and what a training run needs around it.

* :func:`to_sparse_storage` / :func:`to_dense_storage` (one module, exact round trip), :func:`sparse_from_tensors`
  (a checkpoint's sparse layout), :func:`convert_adapters` (a whole model);
* :func:`switch_storage`: the conversion during a fit, with the optimizer and LR scheduler rebuilt on the new
  parameters and their state carried over (:func:`remap_param_state`); :func:`match_checkpoint_storage`: the
  layout a checkpoint was written in;
* ``adapter.storage`` / ``adapter.sparse_grad``: :func:`storage_options`, :func:`multi_device_error`,
  :func:`storage_of`; :func:`adapter_state_bytes` measures the training state of either storage.

Switching storage in a training run needs a new optimizer (the parameters change); see ``bench/README.md``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.constants import STORAGES
from rigsa_lightning.adapters.rigsa.inject import unique_alphas
from rigsa_lightning.adapters.rigsa.layer import AdapterLayer, DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.sparse import GRAD_MODES, SparseDeltaLinear
from rigsa_lightning.adapters.targets import replace_module
from rigsa_lightning.config.errors import ConfigError

#: ``adapter.storage``: auto (sparse on one device, dense under DDP/FSDP), sparse, dense.


def to_sparse_storage(
    module: DenseDeltaLinear, *, index_dtype: torch.dtype = torch.int32, grad_mode: str = "auto"
) -> SparseDeltaLinear:
    """The same adapter (same base layer, same gate object, same kept values) with sparse storage.

    The forward output is bitwise equal to ``module``'s; gradients at the kept entries are equal (bitwise with
    ``grad_mode="dense"``, up to summation order with ``sampled``). ``module`` itself is left unchanged.
    """
    if module.merged:
        raise RuntimeError("unmerge() the adapter before converting its storage")
    numel = module.mask.numel()
    if index_dtype == torch.int32 and numel >= 2**31:
        index_dtype = torch.int64
    flat_mask = module.mask.reshape(-1)
    indices = flat_mask.nonzero().reshape(-1)  # sorted, row-major
    values = module.delta.detach().reshape(-1)[indices]
    frozen = None
    if module.pruned_value == "init" and not module._is_full():
        frozen = module._frozen_values().detach().clone().reshape(-1)
        frozen[indices] = 0.0
    return sparse_from_tensors(module, values, indices.to(index_dtype), frozen, grad_mode=grad_mode)


def sparse_from_tensors(
    module: DenseDeltaLinear,
    values: torch.Tensor,
    indices: torch.Tensor,
    frozen: torch.Tensor | None = None,
    *,
    grad_mode: str = "auto",
) -> SparseDeltaLinear:
    """A :class:`SparseDeltaLinear` on ``module``'s base layer, gate and seed with the given kept ``values`` at
    ``indices`` (and ``frozen`` pruned values): how a checkpoint written in sparse storage is laid out again."""
    return SparseDeltaLinear(
        module.base_layer,
        values,
        indices,
        pruned_value="init" if frozen is not None else "zero",
        frozen=frozen,
        grad_mode=grad_mode,
        **_shared_init_kwargs(module),
    )


def _shared_init_kwargs(module: AdapterLayer) -> dict[str, Any]:
    """Constructor arguments both storages take from each other: the ΔW seed and distribution, the same gate
    object (shared gates stay shared), its initial value and key, the forward form."""
    return {
        "init_seed": module.init_seed,
        "alpha": module.alpha,
        "alpha_init": module.alpha_init,
        "init": module.init,
        "init_std": module.init_std,
        "gate_key": module.gate_key,
        "forward_mode": module.forward_mode,
    }


def storage_options(adapter_cfg: Any) -> tuple[str, str]:
    """``(adapter.storage, adapter.sparse_grad)``, validated (one-line ConfigError naming the option)."""
    storage = str(adapter_cfg.get("storage", "auto") or "auto")
    if storage not in STORAGES:
        raise ConfigError("adapter.storage", f"unknown value {storage!r}", f"use one of {list(STORAGES)}")
    grad = str(adapter_cfg.get("sparse_grad", "auto") or "auto")
    if grad not in GRAD_MODES:
        raise ConfigError("adapter.sparse_grad", f"unknown value {grad!r}", f"use one of {list(GRAD_MODES)}")
    return storage, grad


def multi_device_error(strategy: str) -> Exception:
    """The error for ``adapter.storage=sparse`` with a multi-process strategy (DDP/FSDP wrappers register the
    parameters once and cannot follow them changing after a prune)."""
    return ConfigError(
        "adapter.storage",
        f"sparse storage needs a single-device strategy, not {strategy}",
        "use adapter.storage=auto (dense under DDP/FSDP) or adapter.storage=dense",
    )


def storage_of(module: nn.Module) -> str:
    """``sparse`` for a :class:`SparseDeltaLinear`, ``dense`` otherwise."""
    return "sparse" if isinstance(module, SparseDeltaLinear) else "dense"


def remap_param_state(state: dict[str, Any], old: nn.Module, new: nn.Module) -> dict[str, Any]:
    """An optimizer's per-parameter state (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``) of ``old``'s trainable
    ΔW laid out for ``new``'s: gathered at the kept entries (dense -> sparse) or scattered into zeros (sparse ->
    dense). Entries outside the mask have zero moments in dense storage, so the round trip is exact."""
    old_p, new_p = old.trainable_delta(), new.trainable_delta()  # type: ignore[operator]
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != old_p.shape or old_p.shape == new_p.shape:
            out[key] = value
        elif isinstance(new, SparseDeltaLinear):
            out[key] = value.reshape(-1)[new.indices.long()].clone()
        else:
            assert isinstance(old, SparseDeltaLinear)
            dense = torch.zeros(new_p.numel(), dtype=value.dtype, device=value.device)
            dense[old.indices.long()] = value
            out[key] = dense.view(new_p.shape)
    return out


def to_dense_storage(module: SparseDeltaLinear) -> DenseDeltaLinear:
    """Back to a dense-storage :class:`DenseDeltaLinear` (same base layer and gate; exact values and mask)."""
    if module.merged:
        raise RuntimeError("unmerge() the adapter before converting its storage")
    dense = DenseDeltaLinear(
        module.base_layer,
        delta=module.effective_delta(),
        **_shared_init_kwargs(module),
    )
    mask = module.mask
    if not bool(mask.all()):
        if module.pruned_value == "init":
            # delta holds the frozen initial values at pruned entries already; apply_mask regenerates the initial
            # ΔW from the seed (the same values there) as the module's frozen reference.
            dense.apply_mask(mask, rewind=False, pruned_value="init")
        else:
            dense.apply_mask(mask, rewind=False, pruned_value="zero")
    return dense


def convert_adapters(
    model: nn.Module,
    adapters: dict[str, nn.Module],
    storage: str,
    *,
    index_dtype: torch.dtype = torch.int32,
    grad_mode: str = "auto",
) -> dict[str, nn.Module]:
    """Replace every adapter of ``model`` (``{module name: adapter}``) by its ``storage`` (sparse|dense) form.

    Returns the new ``{name: module}``. The old modules (and their dense tensors) are no longer referenced by
    ``model``; an optimizer built on the old parameters must be rebuilt.
    """
    if storage not in ("sparse", "dense"):
        raise ValueError(f"storage must be 'sparse' or 'dense', got {storage!r}")
    out: dict[str, nn.Module] = {}
    for name, module in adapters.items():
        if storage == "sparse":
            new = (
                module
                if isinstance(module, SparseDeltaLinear)
                else to_sparse_storage(module, index_dtype=index_dtype, grad_mode=grad_mode)  # type: ignore[arg-type]
            )
        else:
            new = module if isinstance(module, DenseDeltaLinear) else to_dense_storage(module)  # type: ignore[arg-type]
        if new is not module:
            replace_module(model, name, new)
        out[name] = new
    return out


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def adapter_state_bytes(
    adapters: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None = None
) -> dict[str, int]:
    """Bytes of the adapters' training state, measured on the tensors that exist (shared tensors once).

    Keys: ``delta`` (ΔW or kept values), ``grad`` (their ``.grad``), ``optimizer`` (every tensor in the optimizer
    state of those parameters, e.g. AdamW's two moments), ``mask`` (bool masks or flat indices), ``frozen`` (frozen
    initial values / kept copies), ``alpha`` (gates, their grads and moments), ``total``.
    """
    seen: set[int] = set()
    out = {"delta": 0, "grad": 0, "optimizer": 0, "mask": 0, "frozen": 0, "alpha": 0}

    def add(key: str, t: torch.Tensor | None) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        out[key] += _nbytes(t)

    def opt_state(p: torch.Tensor) -> list[torch.Tensor]:
        if optimizer is None:
            return []
        state = optimizer.state.get(p, {})
        return [v for v in state.values() if isinstance(v, torch.Tensor)]

    for module in adapters.values():
        if isinstance(module, SparseDeltaLinear):
            param = module.values
            add("mask", module.indices)
            add("frozen", module.frozen)
        else:
            param = module.delta  # type: ignore[assignment]
            add("mask", module.mask)  # type: ignore[arg-type]
            add("frozen", getattr(module, "_frozen", None))
            add("frozen", getattr(module, "initial_copy", None))
        add("delta", param)
        add("grad", param.grad)
        for t in opt_state(param):
            add("optimizer", t)
        alpha = module.alpha  # type: ignore[assignment]
        add("alpha", alpha)
        add("alpha", alpha.grad)
        for t in opt_state(alpha):
            add("alpha", t)
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------------- in training
def switch_storage(
    model: nn.Module, gated: dict[str, nn.Module], storage: str, adapter_cfg: Any, trainer: Any = None
) -> None:
    """Convert every adapter in ``gated`` to ``storage`` (``sparse``: kept values + int32 indices, ~20 bytes per
    kept entry with AdamW instead of 17 per entry; ``dense``), in ``model`` and in ``gated`` (the same dict object).

    During a fit (``trainer`` with an optimizer) the optimizer and LR scheduler are rebuilt on the new parameters,
    carrying over the AdamW moments (gathered/scattered at the kept entries), the gates' state, the current
    learning rates and the scheduler position: the next step is the one the other storage would take (exactly with
    ``adapter.sparse_grad=dense``; up to float summation order with the sampled weight gradient).
    """
    if not gated or all(storage_of(m) == storage for m in gated.values()):
        return
    optimizer = trainer.optimizers[0] if trainer is not None and trainer.optimizers else None
    old = dict(gated)
    new = convert_adapters(model, gated, storage, grad_mode=storage_options(adapter_cfg)[1])
    gated.clear()
    gated.update(new)
    if optimizer is None:
        return
    states = {
        n: optimizer.state[m.trainable_delta()]
        for n, m in old.items()
        if m.trainable_delta() in optimizer.state
    }
    gate_states = {id(a): optimizer.state[a] for a in unique_alphas(gated) if a in optimizer.state}
    lrs = [(g["lr"], g.get("initial_lr")) for g in optimizer.param_groups]
    schedulers = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
    del optimizer
    trainer.strategy.setup_optimizers(trainer)
    new_opt = trainer.optimizers[0]
    for name, state in states.items():
        new_opt.state[new[name].trainable_delta()] = remap_param_state(state, old[name], new[name])
    for gate in unique_alphas(gated):
        if id(gate) in gate_states:
            new_opt.state[gate] = gate_states[id(gate)]
    for group, (lr, initial_lr) in zip(new_opt.param_groups, lrs):
        group["lr"] = lr
        if initial_lr is not None:
            group["initial_lr"] = initial_lr
    for config, state in zip(trainer.lr_scheduler_configs, schedulers):
        config.scheduler.load_state_dict(state)


def match_checkpoint_storage(
    model: nn.Module,
    gated: dict[str, nn.Module],
    state: dict[str, Any],
    adapter_cfg: Any,
    prefix: str = "model.",
) -> None:
    """Lay the adapters in ``gated`` out as the checkpoint ``state`` (a LightningModule state dict, adapter keys
    under ``prefix``) stores them: sparse ``values``/``indices`` or dense ``delta``/``mask``. Replaces modules in
    ``model`` and in ``gated``."""
    grad_mode = storage_options(adapter_cfg)[1]
    for name, mod in list(gated.items()):
        key = f"{prefix}{name}."
        if f"{key}values" in state:
            dense = mod if storage_of(mod) == "dense" else to_dense_storage(mod)  # type: ignore[arg-type]
            new = sparse_from_tensors(
                dense,  # type: ignore[arg-type]
                state[f"{key}values"],
                state[f"{key}indices"],
                state.get(f"{key}frozen"),
                grad_mode=grad_mode,
            )
        elif f"{key}delta" in state and storage_of(mod) == "sparse":
            new = to_dense_storage(mod)  # type: ignore[arg-type]
        else:
            continue
        replace_module(model, name, new)
        gated[name] = new
