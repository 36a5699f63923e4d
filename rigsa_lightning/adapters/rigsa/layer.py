"""The RIGSA adapter: a frozen linear layer plus a gated, masked, randomly initialised full-rank ΔW.

``y = x @ (W0 + alpha * effective_delta())ᵀ + b`` with

* ``W0``, ``b`` the frozen base weights;
* ``delta`` (ΔW, fp32, full rank) drawn at random from a per-module seed (so the initial ΔW can be regenerated for
  rewinding instead of being stored);
* ``alpha`` a learnable gate (ReZero analog) initialised at ``alpha_init`` (1e-6): at init the adapted model equals
  the base model to ~1e-6 relative, yet ΔW and alpha both receive gradients;
* ``mask`` a bool buffer (persistent: it lives in checkpoints): pruned entries are zero (``pruned_value: zero``)
  or frozen at their initial value (``pruned_value: init``).

The module follows PEFT's layer contract (``base_layer``, ``get_delta_weight``, ``merge``, ``unmerge``). See
docs/ARCHITECTURE.md for the contract and ``rigsa_lightning/conf/adapter/rigsa.yaml`` for the options.
This is the dense storage (:class:`DenseDeltaLinear`: the whole ΔW + a bool mask); ``sparse.py`` holds the
same adapter storing only the kept entries, ``seeding.py`` the ΔW draw, ``inject.py`` the injection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rigsa_lightning.adapters.chunks import float_mask, row_chunks
from rigsa_lightning.adapters.rigsa.constants import FORWARD_MODES, KEEP_INIT, PRUNED_VALUES
from rigsa_lightning.adapters.rigsa.seeding import INIT_SCHEMES, generate_initial_delta, initial_delta_chunks
from rigsa_lightning.config.errors import ConfigError


def merged_weight(w0: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``W0 + alpha·ΔW`` in W0's dtype, entry for entry (both storages use it, so they give the same numbers):
    one fused pass (``addcmul``) when W0 has ΔW's dtype, else ``W0 + (alpha·ΔW).to(W0's dtype)`` (a bf16 base)."""
    if w0.dtype == delta.dtype:
        return torch.addcmul(w0, delta, alpha.to(delta.dtype))
    return w0 + (alpha * delta).to(w0.dtype)


class _MergedLinearFn(torch.autograd.Function):
    """``y = x (W0 + alpha·ΔW)ᵀ + b`` (the merged form) with the gradients written out: ``G = gᵀx`` once (one GEMM
    in the compute dtype, as autograd's linear), ``grad_alpha = <G, ΔW>`` as one dot product (no ``G ⊙ ΔW``
    temporary) and ``grad_ΔW = alpha·G`` in place in ``G``. Same maths as autograd through ``F.linear(x, W0 +
    alpha*ΔW)``: the weight gradient is bitwise the same, the gate's gradient equal up to summation order."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w0: torch.Tensor,
        bias: torch.Tensor | None,
        alpha: torch.Tensor,
        delta: torch.Tensor,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``y``; saves ``x`` and the merged weight in the compute dtype (what autograd's linear saves), ΔW, alpha."""
        weight = merged_weight(w0, alpha, delta).to(compute_dtype)
        xc = x.to(compute_dtype)
        y = F.linear(xc, weight, None if bias is None else bias.to(compute_dtype))
        ctx.save_for_backward(xc, weight, alpha, delta)
        ctx.x_dtype = x.dtype
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        """Gradients of ``x``, the bias, ``alpha`` and ΔW."""
        xc, weight, alpha, delta = ctx.saved_tensors
        need_x, _, need_b, need_alpha, need_delta = ctx.needs_input_grad[:5]
        out_f, in_f = weight.shape
        g2 = grad_out.reshape(-1, out_f).to(weight.dtype)
        grad_x = grad_b = grad_alpha = grad_delta = None
        if need_x:
            grad_x = (g2 @ weight).reshape(*grad_out.shape[:-1], in_f).to(ctx.x_dtype)
        if need_b and ctx.has_bias:
            grad_b = grad_out.reshape(-1, out_f).sum(0)
        if need_alpha or need_delta:
            grad_w = (g2.t() @ xc.reshape(-1, in_f)).to(delta.dtype)  # a fresh tensor in ΔW's dtype
            if need_alpha:
                grad_alpha = (
                    torch.dot(grad_w.reshape(-1), delta.reshape(-1)).reshape(alpha.shape).to(alpha.dtype)
                )
            if need_delta:
                grad_delta = grad_w.mul_(alpha.to(grad_w.dtype))
        return grad_x, None, grad_b, grad_alpha, grad_delta, None


class AdapterLayer(nn.Module):
    """What both storages of the gated adapter share (PEFT-style layer contract): the frozen ``base_layer`` and
    its ``weight``/``bias``, the ΔW seed (``delta_seed`` buffer), and ``merge``/``unmerge`` of
    ``get_delta_weight()`` (``alpha`` times the effective ΔW) into the base weight."""

    base_layer: nn.Linear
    delta_seed: torch.Tensor
    alpha: nn.Parameter
    alpha_init: float
    init: str
    init_std: float
    gate_key: str
    forward_mode: str
    merged: bool

    @property
    def init_seed(self) -> int:
        """Seed of the initial ΔW."""
        return int(self.delta_seed)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (so code reading ``module.weight`` of a linear layer keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias."""
        return self.base_layer.bias

    def get_delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """``alpha * effective ΔW`` (fp32)."""
        raise NotImplementedError

    def _check_mergeable(self) -> None:
        """Raise when the base weight cannot take the update (quantised bases)."""

    def merge(self) -> None:
        """Add ``get_delta_weight()`` into the base weight; the forward then skips the adapter."""
        if self.merged:
            return
        self._check_mergeable()
        with torch.no_grad():
            w0 = self.base_layer.weight
            w0.add_(self.get_delta_weight().detach().to(device=w0.device, dtype=w0.dtype))
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the merged update back out of the base weight (exact up to float rounding)."""
        if not self.merged:
            return
        with torch.no_grad():
            w0 = self.base_layer.weight
            w0.sub_(self.get_delta_weight().detach().to(device=w0.device, dtype=w0.dtype))
        self.merged = False


class DenseDeltaLinear(AdapterLayer):
    """``y = x (W0 + alpha * effective_delta())ᵀ + b`` around a frozen ``nn.Linear`` (see the module docstring).

    Args:
        base_layer: the wrapped linear layer (frozen here).
        init_seed: seed of the initial ΔW (see :func:`derive_seed`); stored as a persistent buffer so a checkpoint
            carries the seed it was trained with.
        alpha: a gate parameter to share with other modules (``gate: layer|global``); a new one when None.
        alpha_init: initial (and reset) value of the gate.
        init, init_std: ΔW distribution (``kaiming_uniform`` | ``normal``).
        forward_mode: ``merged`` (one matmul with ``W0 + alpha·ΔW``) or ``two_matmul``.
        keep_init: ``regenerate`` the initial ΔW from the seed when needed, or keep a ``copy`` in memory.
        gate_key: identifier of the (possibly shared) gate, for reporting and export.
        delta: explicit ΔW values (loading an exported adapter); skips the random draw.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        init_seed: int,
        alpha: nn.Parameter | None = None,
        alpha_init: float = 1e-6,
        init: str = "kaiming_uniform",
        init_std: float = 0.02,
        forward_mode: str = "merged",
        keep_init: str = "regenerate",
        gate_key: str | None = None,
        delta: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if forward_mode not in FORWARD_MODES:
            raise ConfigError(
                "adapter.forward_mode", f"unknown mode {forward_mode!r}", f"use one of {list(FORWARD_MODES)}"
            )
        if keep_init not in KEEP_INIT:
            raise ConfigError(
                "adapter.keep_init", f"unknown value {keep_init!r}", f"use one of {list(KEEP_INIT)}"
            )
        if init not in INIT_SCHEMES:
            raise ConfigError("adapter.init", f"unknown init {init!r}", f"use one of {list(INIT_SCHEMES)}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        weight = base_layer.weight
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        shape = (self.out_features, self.in_features)
        device = weight.device
        self.init = init
        self.init_std = float(init_std)
        self.forward_mode = forward_mode
        self.keep_init = keep_init
        self.alpha_init = float(alpha_init)
        self.gate_key = gate_key or ""
        self.register_buffer("delta_seed", torch.tensor(int(init_seed), dtype=torch.int64), persistent=True)
        if delta is None:
            initial = generate_initial_delta(shape, int(init_seed), init, init_std, device=device)
        else:
            if tuple(delta.shape) != shape:
                raise ValueError(f"delta has shape {tuple(delta.shape)}, expected {shape}")
            initial = delta.detach().to(device=device, dtype=torch.float32)
        self.delta = nn.Parameter(initial.clone())
        if keep_init == "copy":
            init_copy = (
                initial
                if delta is None
                else generate_initial_delta(shape, int(init_seed), init, init_std, device)
            )
            self.register_buffer("initial_copy", init_copy.clone(), persistent=False)
        else:
            self.initial_copy = None
        if alpha is None:
            alpha = nn.Parameter(torch.tensor(float(alpha_init), dtype=torch.float32, device=device))
        self.alpha = alpha
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device), persistent=True)
        # pruned_value == "init" (entries outside the mask frozen at their initial value), persistent for resume.
        self.register_buffer("pruned_init", torch.tensor(False, device=device), persistent=True)
        self.pruned_value = "zero"
        self.merged = False
        self._full: bool | None = True  # cache of mask.all() (None: recompute)
        # The initial ΔW, held only with pruned_value=init (a buffer so that .to() moves it; not checkpointed: it
        # is regenerated from the seed).
        self.register_buffer("_frozen", None, persistent=False)
        # The merged form needs a plain floating-point weight; 4-bit/quantised bases use the two-matmul form.
        self._mergeable = weight.dtype.is_floating_point and type(base_layer).forward is nn.Linear.forward

    # ----------------------------------------------------------------------------------------------- state
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._full = None
        self.pruned_value = "init" if bool(self.pruned_init) else "zero"
        self._frozen = None

    def _is_full(self) -> bool:
        if self._full is None:
            self._full = bool(self.mask.all())
        return self._full

    def initial_delta(self) -> torch.Tensor:
        """The initial ΔW (fp32, on the module's device): the stored copy, or regenerated from ``init_seed``."""
        if self.initial_copy is not None:
            return self.initial_copy
        return generate_initial_delta(
            (self.out_features, self.in_features), self.init_seed, self.init, self.init_std, self.delta.device
        )

    def initial_delta_chunks(self, slices: list[slice]) -> Iterator[torch.Tensor]:
        """The initial ΔW by consecutive row chunks (see :func:`initial_delta_chunks`; slices of the copy with
        ``keep_init: copy``)."""
        if self.initial_copy is not None:
            return (self.initial_copy[sl] for sl in slices)
        return initial_delta_chunks(
            (self.out_features, self.in_features),
            self.init_seed,
            slices,
            self.init,
            self.init_std,
            self.delta.device,
        )

    def _frozen_values(self) -> torch.Tensor:
        if self._frozen is None:
            self._frozen = self.initial_delta()
        return self._frozen

    def effective_delta(self) -> torch.Tensor:
        """ΔW as the forward sees it: ``mask ⊙ ΔW``, or ΔW at kept entries and the initial value elsewhere."""
        if self._is_full():
            return self.delta
        if self.pruned_value == "init":
            return torch.where(self.mask, self.delta, self._frozen_values())
        return self.delta * float_mask(self.mask, self.delta.dtype)  # float x float: vectorised, fwd and bwd

    def get_delta_weight(self) -> torch.Tensor:
        """``alpha * effective_delta()`` (fp32): what :meth:`merge` adds to the base weight."""
        return self.alpha * self.effective_delta()

    def trainable_delta(self) -> nn.Parameter:
        """The ΔW parameter the optimizer updates (dense storage: the whole matrix)."""
        return self.delta

    def numel(self) -> int:
        """Entries of the (out, in) matrix."""
        return self.out_features * self.in_features

    def nnz(self) -> int:
        """Number of kept (trainable) entries of ΔW."""
        return int(torch.count_nonzero(self.mask))  # no integer copy of the mask (unlike sum)

    def density(self) -> float:
        """Fraction of kept entries."""
        return self.nnz() / max(1, self.mask.numel())

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapted linear map (the base layer alone once merged)."""
        if self.merged:
            return self.base_layer(x)
        delta = self.effective_delta()
        if self.forward_mode == "merged" and self._mergeable:
            # The merged weight in W0's dtype (merged_weight); under bf16 autocast it is cast once for the matmul,
            # as F.linear would cast it; gradients of alpha and ΔW in fp32 (see _MergedLinearFn).
            device_type = x.device.type
            cd = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
            with torch.autocast(device_type=device_type, enabled=False):
                return _MergedLinearFn.apply(
                    x, self.base_layer.weight, self.base_layer.bias, self.alpha, delta, cd
                )
        y = self.base_layer(x)
        return y + F.linear(x, (self.alpha * delta).to(x.dtype)).to(y.dtype)

    def extra_repr(self) -> str:
        """Shape, gate and options in ``repr(model)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, gate={self.gate_key!r}, "
            f"forward_mode={self.forward_mode}, init={self.init}, seed={self.init_seed}"
        )

    # ----------------------------------------------------------------------------------------------- masks
    def apply_mask(
        self,
        mask: torch.Tensor,
        rewind: bool = False,
        pruned_value: str = "zero",
        initial: torch.Tensor | None = None,
    ) -> None:
        """Set the mask; optionally rewind survivors to their initial values; set pruned entries.

        Args:
            mask: bool (or 0/1) tensor of ΔW's shape, True = kept.
            rewind: survivors := initial ΔW (lottery-ticket rewinding to iteration 0).
            pruned_value: ``zero`` (pruned entries := 0) or ``init`` (pruned entries := initial ΔW, frozen).
            initial: the initial ΔW when the caller already has it (saves regenerating it).
        """
        if pruned_value not in PRUNED_VALUES:
            raise ConfigError(
                "pruning.pruned_value", f"unknown value {pruned_value!r}", f"use one of {list(PRUNED_VALUES)}"
            )
        if mask.numel() != self.mask.numel():
            raise ValueError(f"mask has {mask.numel()} entries, expected {self.mask.numel()}")
        if self.merged:
            raise RuntimeError("unmerge() the adapter before changing its mask")
        new_mask = mask.detach().reshape(self.mask.shape).to(device=self.mask.device, dtype=torch.bool)
        if initial is None and pruned_value == "init":
            initial = self.initial_delta()  # kept as the frozen values anyway
        slices = row_chunks(self.mask.shape)
        # Row chunks: the initial ΔW (when not given) and the 0/1 float mask exist one chunk at a time.
        inits: Iterator[torch.Tensor | None]
        if initial is not None:
            inits = (initial[sl] for sl in slices)
        elif rewind:
            inits = self.initial_delta_chunks(slices)
        else:
            inits = (None for _ in slices)
        with torch.no_grad():
            self.mask.copy_(new_mask)
            for sl, init_rows in zip(slices, inits):
                source = init_rows if rewind else self.delta.detach()[sl]
                assert source is not None
                if pruned_value == "zero":
                    torch.mul(source, float_mask(self.mask[sl], source.dtype), out=self.delta.data[sl])
                else:
                    torch.where(self.mask[sl], source, init_rows, out=self.delta.data[sl])
            self.pruned_init.fill_(pruned_value == "init")
        self.pruned_value = pruned_value
        self._frozen = initial if pruned_value == "init" else None
        self._full = None

    def enforce_mask(self) -> None:
        """Put pruned entries back at their pruned value (after an optimizer step; a no-op while dense).

        With a masked gradient and cleared optimizer state, AdamW already leaves zeroed entries at exactly 0; this
        is the guarantee (e.g. against momentum kept with ``reset_optimizer: false`` or a user's optimizer).
        """
        if self._is_full():
            return
        with torch.no_grad():
            if self.pruned_value == "zero":
                # ~20x faster than masked_fill_(~mask, 0) on CPU (see float_mask)
                self.delta.mul_(float_mask(self.mask, self.delta.dtype))
            else:
                torch.where(self.mask, self.delta, self._frozen_values(), out=self.delta.data)

    # ----------------------------------------------------------------------------------------------- merge
    def _check_mergeable(self) -> None:
        if not self._mergeable:
            raise ConfigError(
                "adapter.merge",
                f"cannot merge into a {type(self.base_layer).__name__} base (quantised weight)",
                "load the base model unquantised (model.dtype=float32 or bfloat16) to merge",
            )
