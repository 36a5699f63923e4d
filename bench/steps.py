"""Training-step harness shared by the step benchmarks: one base model, several adapter sets swapped in and out.

:class:`Host` holds one SmolLM2 model; each *variant* is a set of modules installed at the 210 target linears
(the frozen originals, trainable copies, dense-storage or sparse-storage RIGSA adapters wrapping the same frozen
base layers) with its own optimizer. Swapping is a ``setattr`` per module, so alternating variants costs nothing
and the frozen base weights exist once. PEFT LoRA, which rewrites the model, gets its own model copy.

A step is what the Lightning module does per batch: forward (``use_cache=False``) of the decoder body, the LM head
and the shifted cross-entropy at the supervised positions only (``rigsa_lightning.models.head``; ``full_head=True``: over
every position, as before), backward, gradient clipping at 1.0 over the trainable tensors, AdamW step (fused, as
``optim.impl``), ``zero_grad`` (set to None), then the adapter's post-step hook (``enforce_mask`` for masked dense
storage).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import TARGETS
from rigsa_lightning.adapters.targets import find_target_linears, replace_module


@dataclass
class Variant:
    """One way of training the model: modules to install, an optimizer, and flags."""

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer | None
    params: list[torch.Tensor] = field(default_factory=list)
    input_grad: bool = False  # frozen floor: make the embeddings' output require grad so backward runs
    post: Callable[[], None] | None = None


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], full_head: bool = False) -> torch.Tensor:
    """Shifted next-token cross-entropy of ``model`` on ``batch`` as ``RigsaLitModule`` computes it: the LM head at
    the supervised (and ``answer_pos``) positions only, fp32 loss. ``full_head``: the head over every position and
    the whole ``[batch, seq, vocab]`` logits cast to fp32 (the step before the restricted head)."""
    if not full_head:
        from rigsa_lightning.models.head import supervised_loss_and_answer_logits

        return supervised_loss_and_answer_logits(model, batch)[0]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    shift = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(shift.reshape(-1, shift.size(-1)), labels.reshape(-1), ignore_index=-100)


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    params: list[torch.Tensor],
    post: Callable[[], None] | None = None,
    clip: float | None = 1.0,
    full_head: bool = False,
    bf16: bool = False,
) -> float:
    """One training step; returns the loss. ``bf16``: forward and loss under CPU bf16 autocast (Lightning's
    ``bf16-mixed``); ``full_head``: see :func:`lm_loss`."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        loss = lm_loss(model, batch, full_head=full_head)
    loss.backward()
    if optimizer is not None:
        if clip and params:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if post is not None:
        post()
    return float(loss.detach())


class Host:
    """One model, several swappable variants (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.originals: dict[str, nn.Linear] = dict(find_target_linears(model, TARGETS))
        self.variants: dict[str, Variant] = {}
        self.active: str | None = None
        self._input_grad = False
        emb = model.get_input_embeddings()
        emb.register_forward_hook(self._emb_hook)

    def _emb_hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output.requires_grad_(True) if self._input_grad else output

    def add(self, key: str, variant: Variant) -> None:
        """Register a variant (its modules must cover the target names; missing ones get the originals)."""
        modules = dict(self.originals)
        modules.update(variant.modules)
        variant.modules = modules
        self.variants[key] = variant

    def remove(self, key: str) -> None:
        """Forget a variant (frees its adapter tensors and optimizer state once unreferenced)."""
        if self.active == key:
            self.activate_modules(self.originals)
            self.active = None
        self.variants.pop(key, None)

    def activate_modules(self, modules: dict[str, nn.Module]) -> None:
        """Install ``modules`` at the target names."""
        for name, module in modules.items():
            replace_module(self.model, name, module)

    def activate(self, key: str) -> None:
        """Install variant ``key`` (no-op when active)."""
        if self.active == key:
            return
        variant = self.variants[key]
        self.activate_modules(variant.modules)
        self._input_grad = variant.input_grad
        self.active = key

    def step_fn(
        self, key: str, batch: dict[str, torch.Tensor], full_head: bool = False, bf16: bool = False
    ) -> Callable[[], float]:
        """A zero-argument training step of variant ``key`` (activates it first)."""

        def step() -> float:
            self.activate(key)
            v = self.variants[key]
            return train_step(
                self.model, batch, v.optimizer, v.params, v.post, full_head=full_head, bf16=bf16
            )

        return step


def frozen_variant() -> Variant:
    """The forward+backward floor: nothing trains, the input embeddings' output requires grad."""
    return Variant(modules={}, optimizer=None, input_grad=True)


def adamw(groups: Any, impl: str = "fused") -> torch.optim.Optimizer:
    """AdamW as ``RigsaLitModule`` builds it (``optim.impl``: fused by default; ``loop`` is torch's CPU default)."""
    from rigsa_lightning.training.schedule import adamw_impl_kwargs

    return torch.optim.AdamW(groups, **adamw_impl_kwargs(impl))


def full_variant(host: Host, lr: float = 1e-5, impl: str = "fused") -> Variant:
    """Full fine-tuning of the 210 target matrices (trainable copies of the frozen originals)."""
    modules: dict[str, nn.Module] = {}
    params: list[torch.Tensor] = []
    for name, lin in host.originals.items():
        copy = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
        with torch.no_grad():
            copy.weight.copy_(lin.weight)
            if lin.bias is not None:
                copy.bias.copy_(lin.bias)
                copy.bias.requires_grad_(False)
        copy.weight.requires_grad_(True)
        modules[name] = copy
        params.append(copy.weight)
    opt = adamw([{"params": params, "lr": lr, "weight_decay": 0.0}], impl)
    return Variant(modules=modules, optimizer=opt, params=params)


def rigsa_adapters(host: Host, seed: int = 1234) -> dict[str, nn.Module]:
    """Dense-storage RIGSA adapters (density 1, merged form) around the frozen originals."""
    from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
    from rigsa_lightning.adapters.rigsa.seeding import derive_seed

    out: dict[str, nn.Module] = {}
    for name, lin in host.originals.items():
        out[name] = DenseDeltaLinear(lin, init_seed=derive_seed(seed, name), gate_key=name)
    return out


def rigsa_variant(
    adapters: dict[str, nn.Module], lr: float = 1e-3, enforce: bool = False, impl: str = "fused"
) -> Variant:
    """AdamW over ΔW (weight decay 1.0) and the gates, as ``adapter_param_groups`` builds it (works for both
    storages). ``enforce`` runs ``enforce_mask`` after each step (masked dense storage, as the IMP callback)."""
    from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups
    from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
    from rigsa_lightning.adapters.rigsa.sparse import SparseDeltaLinear, sparse_param_groups

    cfg = {"lr": lr, "alpha_lr": lr, "weight_decay": 1.0}
    first = next(iter(adapters.values()))
    if isinstance(first, SparseDeltaLinear):
        groups = sparse_param_groups(adapters, cfg)  # type: ignore[arg-type]
    else:
        assert isinstance(first, DenseDeltaLinear)
        groups = adapter_param_groups(adapters, cfg)  # type: ignore[arg-type]
    params = [p for g in groups for p in g["params"]]
    opt = adamw(groups, impl)
    post = None
    if enforce:

        def post() -> None:
            for m in adapters.values():
                m.enforce_mask()  # type: ignore[operator]

    return Variant(modules=dict(adapters), optimizer=opt, params=params, post=post)


def lora_model(
    r: int = 16, dropout: float = 0.05, impl: str = "fused"
) -> tuple[nn.Module, list[torch.Tensor], torch.optim.Optimizer]:
    """A separate SmolLM2 with PEFT LoRA (r, alpha 2r, ``dropout``: 0.05 as conf/adapter/lora.yaml) on the same
    targets, and its AdamW."""
    from bench.common import load_smollm2
    from rigsa_lightning.adapters.lora.model import apply_lora, lora_param_groups

    model, _ = load_smollm2()
    cfg = {"r": r, "lora_alpha": 2 * r, "dropout": dropout, "targets": TARGETS, "lr": 2e-4, "seed": 1234}
    peft_model = apply_lora(model, cfg)
    peft_model.train()
    groups = lora_param_groups(peft_model, cfg)
    params = [p for g in groups for p in g["params"]]
    return peft_model, params, adamw(groups, impl)
