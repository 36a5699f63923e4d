"""The sparse storage's step as it was before issue 27 (reference for ``bench.sparse_step``'s ``before`` row).

Forward: a fresh dense ``W0.clone()`` with ``alpha·values`` index-added per layer per step, cast to the compute
dtype; backward: the same dense copy rebuilt for the input gradient, the weight gradient at the kept entries by
``torch.sparse.sampled_addmm`` (fp32, CSR pattern from ``bincount``) below density 0.2, else the dense ``gᵀx`` and a
gather. :func:`legacy_forward` replaces a :class:`SparseDeltaLinear`'s forward with it (pruned_value zero only).
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch
import torch.nn.functional as F


def _old_pattern(indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    out_features, in_features = shape
    idx = indices.to(torch.int64)
    rows = torch.div(idx, in_features, rounding_mode="floor")
    cols = (idx - rows * in_features).to(torch.int32)
    crow = torch.zeros(out_features + 1, dtype=torch.int32)
    crow[1:] = torch.bincount(rows, minlength=out_features).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        return torch.sparse_csr_tensor(crow, cols, torch.zeros(idx.numel()), shape, check_invariants=False)


def _old_weight(
    w0: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    weight = w0.clone()
    weight.view(-1).index_add_(0, indices, (alpha * values).to(w0.dtype))
    return weight


class _OldFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, w0, bias, alpha, values, indices, compute_dtype, sampled):  # type: ignore[override]
        xc = x.to(compute_dtype)
        weight = _old_weight(w0, alpha, values, indices).to(compute_dtype)
        y = F.linear(xc, weight, None if bias is None else bias.to(compute_dtype))
        ctx.save_for_backward(xc, w0, alpha, values, indices)
        ctx.meta = (x.dtype, compute_dtype, sampled)
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        xc, w0, alpha, values, indices = ctx.saved_tensors
        x_dtype, cd, sampled = ctx.meta
        shape = (w0.shape[0], w0.shape[1])
        g2, x2 = grad_out.reshape(-1, shape[0]), xc.reshape(-1, shape[1])
        weight = _old_weight(w0, alpha, values, indices).to(cd)
        grad_x = (g2.to(cd) @ weight).reshape(*grad_out.shape[:-1], shape[1]).to(x_dtype)
        if sampled:
            g_t = g2.float().t().contiguous()
            kept = torch.sparse.sampled_addmm(
                _old_pattern(indices, shape), g_t, x2.float(), beta=0.0
            ).values()
        else:
            kept = (g2.t() @ x2).float().view(-1)[indices]
        grad_alpha = torch.dot(kept, values).reshape(alpha.shape)
        return grad_x, None, None, grad_alpha, alpha * kept, None, None, None


def _legacy(self: Any, x: torch.Tensor) -> torch.Tensor:
    dev = x.device.type
    cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    with torch.autocast(device_type=dev, enabled=False):
        return _OldFn.apply(
            x,
            self.base_layer.weight,
            self.base_layer.bias,
            self.alpha,
            self.values,
            self.indices,
            cd,
            self.density() <= 0.2,
        )


def legacy_forward(module: Any) -> Any:
    """``module`` (a SparseDeltaLinear, pruned_value zero) with the pre-issue-27 forward/backward; returns it."""
    module.forward = types.MethodType(_legacy, module)
    return module
