"""Memory-lean storage of a pruned RIGSA adapter: only the kept entries of ΔW live (values + flat indices).

After IMP has pruned ΔW to a density ``d`` (3.46% in the paper), the dense-storage :class:`DenseDeltaLinear` still
holds a dense ΔW, its dense gradient, two dense AdamW moments and a bool mask: 17 bytes per entry whatever ``d``.
:class:`SparseDeltaLinear` holds, per *kept* entry, its value (fp32 1-D parameter), the value's gradient, its two
AdamW moments and an int32 flat index: 20 bytes per kept entry, i.e. ``~1.18·d`` of the dense state.

Forward (same maths, same result as the dense-storage module)::

    W = W0 (cloned) ; W.flat[indices] += alpha * values      # one dense temporary per layer, freed after use
    y = x Wᵀ + b

The dense ``W`` is *not* saved for backward (that would keep one dense matrix per layer alive until backward):
:class:`_SparseDeltaLinearFn` saves ``x``, ``values`` and ``alpha`` and rebuilds ``W`` in backward. The weight
gradient is only needed at the kept entries:

* ``grad_mode="dense"``: ``(gᵀ x).flatten()[indices]`` - the full weight-gradient matmul, then a gather (bitwise
  equal to the dense-storage module's gradient at the kept entries);
* ``grad_mode="sampled"``: a sampled dense-dense product (SDDMM, ``torch.sparse.sampled_addmm`` on a CSR pattern
  built on the fly from ``indices``): only the ``nnz`` needed dot products (``2·T·nnz`` flops instead of
  ``2·T·out·in``). Equal up to float summation order. CPU and CUDA; fp32/fp64 (bf16 inputs are upcast).
* ``grad_mode="auto"`` (default): sampled below ``SAMPLED_MAX_DENSITY`` (measured crossover on CPU ~0.2-0.3).

``pruned_value="init"`` (pruned entries frozen at their initial value) keeps that frozen part as one dense buffer
(no gradient, no moments) and always uses the dense weight gradient (the gate's gradient needs the full product).

Conversion between the two storages (and the optimizer state across it) lives in ``storage.py``.

(Just over ~400 lines: the layer and its custom autograd function stay in one file, as ``layer.py``'s do.)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rigsa_lightning.adapters.rigsa.constants import GRAD_MODES
from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups
from rigsa_lightning.adapters.rigsa.layer import AdapterLayer, merged_weight
from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta

__all__ = [
    "GRAD_MODES",
    "SAMPLED_MAX_DENSITY",
    "SparseDeltaLinear",
    "sparse_param_groups",
    "sampled_weight_grad",
]

#: The forward swaps the kept entries into W0 (O(nnz) random access) up to this density, copies W0 above (CPU: the
#: swap's 5 scattered passes over nnz entries cost about a 4-byte copy of the matrix near d = 0.1).
SWAP_MAX_DENSITY = 0.1
#: ``grad_mode="auto"`` uses the sampled product at densities up to this (CPU: SDDMM ~ dense matmul near 0.25).
SAMPLED_MAX_DENSITY = 0.2


# --------------------------------------------------------------------------------------------------- kernels
def _csr_pattern(indices: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A CSR tensor with the sparsity pattern of the (sorted, row-major) flat ``indices`` and zero values: the row
    pointers by a binary search of each row's first flat index (``O(out · log nnz)``), the columns by one pass."""
    out_features, in_features = shape
    starts = torch.arange(out_features + 1, dtype=indices.dtype, device=indices.device) * in_features
    crow = torch.searchsorted(indices, starts, out_int32=True)
    cols = torch.remainder(indices, in_features).to(torch.int32)
    zeros = torch.zeros(indices.numel(), dtype=dtype, device=indices.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, zeros, shape, check_invariants=False)


def sampled_weight_grad(
    grad_out: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """``(grad_outᵀ @ x).flatten()[indices]`` computed only at ``indices`` (SDDMM), fp32 (or fp64) 1-D.

    ``grad_out``: (N, out), ``x``: (N, in); ``indices`` sorted row-major flat indices into (out, in).
    """
    dtype = grad_out.dtype if grad_out.dtype in (torch.float32, torch.float64) else torch.float32
    if indices.numel() == 0:
        return torch.zeros(0, dtype=dtype, device=grad_out.device)
    pattern = _csr_pattern(indices, shape, dtype)
    g_t = grad_out.to(dtype).t().contiguous()  # (out, N): the kernel reads rows of both operands
    prod = torch.sparse.sampled_addmm(pattern, g_t, x.to(dtype), beta=0.0, alpha=1.0)
    return prod.values()


def _rebuild_weight(
    w0: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, frozen: torch.Tensor
) -> torch.Tensor:
    """``W0 + alpha·(frozen + scatter(values))`` as a new dense tensor (``pruned_value="init"``), bitwise the dense
    module's merged weight."""
    eff = frozen.clone()
    eff.view(-1)[indices] = values
    return merged_weight(w0, alpha, eff)


def _kept_weight(
    w0_flat: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """``W0 + alpha·ΔW`` at the kept entries only (in W0's dtype): :func:`merged_weight` on the gathered entries,
    so bitwise the dense module's merged weight there (``W0 + alpha·0 == W0`` everywhere else)."""
    return merged_weight(w0_flat.index_select(0, indices), alpha, values)


def _fresh_weight(
    w0: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A fresh contiguous copy of ``W0`` in ``dtype`` (the rounding of ``.to(dtype)``) with the kept entries set to
    ``merged_weight`` there: bitwise the dense module's merged weight in ``dtype``."""
    weight = torch.empty(w0.shape, dtype=dtype, device=w0.device)
    weight.copy_(w0)
    weight.view(-1).index_put_((indices,), _kept_weight(w0.reshape(-1), alpha, values, indices).to(dtype))
    return weight


class _SwappedWeight:
    """Context manager: the kept entries of ``W0`` hold ``merged`` (``W0 + alpha·ΔW`` there) inside the block and
    ``original`` (their values in ``W0``, gathered by the caller) again on exit - bit for bit, also on an exception.

    The merged weight then costs ``O(nnz)`` (two scatters) instead of a copy of the dense matrix. It writes through
    ``.data`` (no version-counter bump: nothing outside the block ever sees the swapped values)."""

    def __init__(
        self, w0: torch.Tensor, merged: torch.Tensor, original: torch.Tensor, indices: torch.Tensor
    ) -> None:
        self.flat = w0.data.view(-1)
        self.merged = merged
        self.original = original
        self.indices = indices

    def __enter__(self) -> None:
        self.flat.index_put_((self.indices,), self.merged)

    def __exit__(self, *exc: object) -> None:
        self.flat.index_put_((self.indices,), self.original)


class _SparseDeltaLinearFn(torch.autograd.Function):
    """``y = x (W0 + alpha·scatter(values))ᵀ + b`` without a dense copy of ``W0`` in the adapter's own precision.

    * compute dtype = W0's dtype (fp32 training, a bf16 base; W0 contiguous) and density <= ``SWAP_MAX_DENSITY``:
      the kept entries are swapped into ``W0`` around the matmul (:class:`_SwappedWeight`), in forward and again in
      backward for the input gradient; nothing dense is saved (the frozen floor saves nothing dense either). Above
      that density the random-access swap costs more than a copy: a fresh copy (:func:`_fresh_weight`), rebuilt in
      backward.
    * compute dtype != W0's dtype (bf16 autocast over fp32 weights; or a non-contiguous W0): ``W0`` is cast once (as autocast casts the
      frozen weight of a plain linear layer), the kept entries are written into the cast copy, and that copy is
      saved for the input gradient (the same tensor autocast's linear would save).
    * ``pruned_value="init"`` (``frozen``): the dense ``W0 + alpha·(frozen + scatter(values))`` is rebuilt.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w0: torch.Tensor,
        bias: torch.Tensor | None,
        alpha: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        frozen: torch.Tensor | None,
        compute_dtype: torch.dtype,
        grad_mode: str,
        swap: bool = True,
    ) -> torch.Tensor:
        """``y``; saves ``x`` (in the compute dtype), the gate, values and indices (and the cast weight under
        autocast)."""
        xc = x.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        weight = original = merged = None
        if frozen is not None:
            y = F.linear(xc, _rebuild_weight(w0, alpha, values, indices, frozen).to(compute_dtype), b)
        elif swap and compute_dtype == w0.dtype and w0.is_contiguous():
            original = w0.view(-1).index_select(0, indices)
            merged = merged_weight(original, alpha, values)
            with _SwappedWeight(w0, merged, original, indices):
                y = F.linear(xc, w0, b)
        else:
            weight = _fresh_weight(w0, alpha, values, indices, compute_dtype)
            y = F.linear(xc, weight, b)
            if compute_dtype == w0.dtype:
                weight = None  # not kept: rebuilt in backward (nothing dense saved in W0's own precision)
        # The swap's nnz originals and merged values are kept for backward's swap (O(nnz): ∝ density).
        ctx.save_for_backward(xc, alpha, values, indices, frozen, weight, original, merged)
        ctx.w0 = w0  # a frozen parameter (not an activation): held by reference
        ctx.x_dtype = x.dtype
        ctx.compute_dtype = compute_dtype
        ctx.grad_mode = grad_mode
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        """Gradients of ``x``, the bias, ``alpha`` and the kept ``values``."""
        xc, alpha, values, indices, frozen, weight, original, merged = ctx.saved_tensors
        w0 = ctx.w0
        need_x, _, need_b, need_alpha, need_values = ctx.needs_input_grad[:5]
        shape = (w0.shape[0], w0.shape[1])
        cd = ctx.compute_dtype
        g2 = grad_out.reshape(-1, shape[0])
        x2 = xc.reshape(-1, shape[1])
        grad_x = grad_b = grad_alpha = grad_values = None
        if need_x:
            gc = g2.to(cd)
            if weight is not None:
                grad_x = gc @ weight
            elif frozen is not None:
                grad_x = gc @ _rebuild_weight(w0, alpha, values, indices, frozen).to(cd)
            elif merged is not None:
                with _SwappedWeight(w0, merged, original, indices):
                    grad_x = gc @ w0
            else:
                grad_x = gc @ _fresh_weight(w0, alpha, values, indices, cd)
            grad_x = grad_x.reshape(*grad_out.shape[:-1], shape[1]).to(ctx.x_dtype)
        if need_b and ctx.has_bias:
            grad_b = g2.sum(0)
        if need_alpha or need_values:
            if ctx.grad_mode == "sampled" and frozen is None:
                kept = sampled_weight_grad(g2, x2, indices, shape)
                # The dense module's weight gradient is one GEMM in the compute dtype: round the same way.
                kept = kept.to(cd).to(values.dtype)
                full = None
            else:
                full = (g2.t() @ x2).to(values.dtype)  # the dense weight gradient (out, in)
                kept = full.view(-1)[indices]
            if need_values:
                grad_values = alpha.to(values.dtype) * kept
            if need_alpha:
                if frozen is None:
                    grad_alpha = torch.dot(kept, values).reshape(alpha.shape).to(alpha.dtype)
                else:
                    assert full is not None
                    eff = frozen.clone()
                    eff.view(-1)[indices] = values
                    grad_alpha = (full * eff).sum().reshape(alpha.shape).to(alpha.dtype)
        return grad_x, None, grad_b, grad_alpha, grad_values, None, None, None, None, None


# --------------------------------------------------------------------------------------------------- module
class SparseDeltaLinear(AdapterLayer):
    """A pruned RIGSA adapter storing only its kept entries: ``y = x (W0 + alpha·ΔW)ᵀ + b``.

    Attributes:
        base_layer: the frozen ``nn.Linear`` (shared with the dense-storage module it was converted from).
        values: ``nn.Parameter`` (nnz,) fp32 - the kept entries of ΔW in row-major order.
        indices: int32 (or int64) buffer (nnz,) - their sorted flat indices into the (out, in) matrix.
        alpha: the gate (possibly shared with other modules, as in the dense module).
        frozen: with ``pruned_value="init"``, the initial ΔW at pruned entries (zeros at kept ones); else None.
        grad_mode: ``auto`` | ``sampled`` | ``dense`` (see the module docstring).
        delta_seed, init, init_std, alpha_init, gate_key, forward_mode: carried over from the dense module.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        values: torch.Tensor,
        indices: torch.Tensor,
        *,
        init_seed: int,
        alpha: nn.Parameter | None = None,
        alpha_init: float = 1e-6,
        init: str = "kaiming_uniform",
        init_std: float = 0.02,
        gate_key: str = "",
        pruned_value: str = "zero",
        frozen: torch.Tensor | None = None,
        grad_mode: str = "auto",
        forward_mode: str = "merged",
    ) -> None:
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        if pruned_value not in ("zero", "init"):
            raise ValueError(f"pruned_value must be 'zero' or 'init', got {pruned_value!r}")
        if pruned_value == "init" and frozen is None:
            raise ValueError("pruned_value='init' needs the frozen initial values")
        if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
            raise ValueError("indices must be a 1-D int32/int64 tensor")
        if values.shape != indices.shape:
            raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} differ")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        numel = self.in_features * self.out_features
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise ValueError("indices out of range")
        if indices.dtype == torch.int32 and numel >= 2**31:
            raise ValueError("int32 indices cannot address a matrix of >= 2**31 entries; use int64")
        device = base_layer.weight.device
        self.values = nn.Parameter(values.detach().to(device=device, dtype=torch.float32).clone())
        self.register_buffer("indices", indices.detach().to(device).clone(), persistent=True)
        self.register_buffer("delta_seed", torch.tensor(int(init_seed), dtype=torch.int64), persistent=True)
        if frozen is not None:
            frozen = frozen.detach().to(device=device, dtype=torch.float32).reshape(self.out_features, -1)
        self.register_buffer("frozen", frozen, persistent=True)  # None (pruned_value zero): not in state_dict
        if alpha is None:
            alpha = nn.Parameter(torch.tensor(float(alpha_init), dtype=torch.float32, device=device))
        self.alpha = alpha
        self.alpha_init = float(alpha_init)
        self.init = init
        self.init_std = float(init_std)
        self.gate_key = gate_key
        self.pruned_value = pruned_value
        self.grad_mode = grad_mode
        self.forward_mode = forward_mode
        self.merged = False

    # ----------------------------------------------------------------------------------------------- state
    @property
    def mask(self) -> torch.Tensor:
        """The dense bool mask (built on demand; not stored)."""
        mask = torch.zeros(self.out_features * self.in_features, dtype=torch.bool, device=self.indices.device)
        mask[self.indices] = True
        return mask.view(self.out_features, self.in_features)

    def trainable_delta(self) -> nn.Parameter:
        """The parameter the optimizer updates: the kept values."""
        return self.values

    def enforce_mask(self) -> None:
        """No-op: pruned entries are not stored, so no update can move them."""

    def numel(self) -> int:
        """Entries of the (out, in) matrix."""
        return self.out_features * self.in_features

    def nnz(self) -> int:
        """Number of kept entries."""
        return int(self.indices.numel())

    def density(self) -> float:
        """Fraction of kept entries."""
        return self.nnz() / max(1, self.out_features * self.in_features)

    def resolved_grad_mode(self) -> str:
        """``sampled`` or ``dense``: what backward does for this module (``auto`` resolved by density)."""
        if self.pruned_value == "init":
            return "dense"
        if self.grad_mode == "auto":
            return "sampled" if self.density() <= SAMPLED_MAX_DENSITY else "dense"
        return self.grad_mode

    def initial_delta(self) -> torch.Tensor:
        """The initial ΔW, regenerated from the seed (as :meth:`DenseDeltaLinear.initial_delta`)."""
        return generate_initial_delta(
            (self.out_features, self.in_features),
            self.init_seed,
            self.init,
            self.init_std,
            self.values.device,
        )

    def effective_delta(self) -> torch.Tensor:
        """Dense ΔW as the forward sees it (a new tensor; no gradient)."""
        if self.frozen is not None:
            eff = self.frozen.clone()
        else:
            eff = torch.zeros(self.out_features, self.in_features, device=self.values.device)
        eff.view(-1)[self.indices] = self.values.detach()
        return eff

    def get_delta_weight(self) -> torch.Tensor:
        """``alpha * effective_delta()`` (fp32)."""
        return self.alpha.detach() * self.effective_delta()

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the adapter's own tensors: ``values``, ``indices``, ``frozen`` (not gradients or moments)."""
        out = {
            "values": self.values.numel() * self.values.element_size(),
            "indices": self.indices.numel() * self.indices.element_size(),
        }
        if self.frozen is not None:
            out["frozen"] = self.frozen.numel() * self.frozen.element_size()
        return out

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapted linear map; the dense ΔW/W exist only as per-call temporaries."""
        if self.merged:
            return self.base_layer(x)
        w0 = self.base_layer.weight
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            compute_dtype = torch.get_autocast_dtype(device_type)
        else:
            compute_dtype = x.dtype
        with torch.autocast(device_type=device_type, enabled=False):
            return _SparseDeltaLinearFn.apply(
                x,
                w0,
                self.base_layer.bias,
                self.alpha,
                self.values,
                self.indices,
                self.frozen,
                compute_dtype,
                self.resolved_grad_mode(),
                self.density() <= SWAP_MAX_DENSITY,
            )

    def extra_repr(self) -> str:
        """Shape, gate and options in ``repr(model)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz()}, "
            f"density={self.density():.4f}, grad_mode={self.grad_mode}, gate={self.gate_key!r}"
        )


def sparse_param_groups(adapters: dict[str, SparseDeltaLinear], adapter_cfg: Any = None) -> list[dict]:
    """AdamW groups of :func:`~rigsa_lightning.adapters.rigsa.inject.adapter_param_groups` (the kept values with
    ``adapter.weight_decay`` at ``adapter.lr``, the unique gates without decay at ``adapter.alpha_lr``)."""
    return adapter_param_groups(adapters, adapter_cfg or {})
