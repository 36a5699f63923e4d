"""Sparse storage of a pruned RIGSA adapter (adapters/rigsa/sparse.py, storage.py): exact equivalence with the
dense-storage DenseDeltaLinear (forward, gradients at kept entries, AdamW trajectory), conversions, memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa
from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.seeding import random_mask_
from rigsa_lightning.adapters.rigsa.sparse import (
    SAMPLED_MAX_DENSITY,
    SWAP_MAX_DENSITY,
    SparseDeltaLinear,
    sampled_weight_grad,
    sparse_param_groups,
)
from rigsa_lightning.adapters.rigsa.storage import (
    adapter_state_bytes,
    convert_adapters,
    to_dense_storage,
    to_sparse_storage,
)


def make_module(
    out_f: int = 24,
    in_f: int = 40,
    density: float = 0.2,
    bias: bool = True,
    pruned_value: str = "zero",
    seed: int = 0,
) -> DenseDeltaLinear:
    """A pruned dense-storage adapter with a non-trivial gate and trained-looking ΔW."""
    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_f, out_f, bias=bias)
    module = DenseDeltaLinear(base, init_seed=seed + 7, gate_key="m")
    with torch.no_grad():
        module.alpha.fill_(0.37)
        module.delta.add_(torch.randn(module.delta.shape, generator=gen) * 0.05)
    mask = torch.rand(out_f, in_f, generator=gen) < density
    module.apply_mask(mask, rewind=False, pruned_value=pruned_value)
    return module


def grads(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input grad, ΔW/values grad and gate grad of one backward (fresh grads)."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(gy)
    param = module.values if isinstance(module, SparseDeltaLinear) else module.delta
    return y.detach(), x.grad, param.grad.clone(), module.alpha.grad.clone()


@pytest.mark.parametrize("pruned_value", ["zero", "init"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_grads_exact_with_dense_gradient(pruned_value, bias):
    dense = make_module(bias=bias, pruned_value=pruned_value)
    sparse = to_sparse_storage(dense, grad_mode="dense")
    assert sparse.alpha is dense.alpha and sparse.base_layer is dense.base_layer
    x = torch.randn(3, 5, 40)
    gy = torch.randn(3, 5, 24)
    y_d, gx_d, gdelta, ga_d = grads(dense, x, gy)
    y_s, gx_s, gvals, ga_s = grads(sparse, x, gy)
    idx = sparse.indices.long()
    assert torch.equal(y_d, y_s)  # bitwise: W0 + alpha*0 == W0 outside the kept entries
    assert torch.equal(gx_d, gx_s)
    assert torch.equal(gdelta.reshape(-1)[idx], gvals)  # exactly the dense gradient at the kept entries
    assert torch.equal(
        gdelta.reshape(-1)[~dense.mask.reshape(-1)],
        torch.zeros_like(gdelta.reshape(-1)[: (~dense.mask).sum()]),
    )
    torch.testing.assert_close(ga_s, ga_d, rtol=1e-5, atol=1e-6)  # the gate's sum runs over fewer terms


def test_sampled_gradient_matches_dense():
    dense = make_module(out_f=48, in_f=64, density=0.05)
    sparse = to_sparse_storage(dense, grad_mode="sampled")
    assert sparse.resolved_grad_mode() == "sampled"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 33, 64, generator=gen)
    gy = torch.randn(2, 33, 48, generator=gen)
    y_d, gx_d, gdelta, ga_d = grads(dense, x, gy)
    y_s, gx_s, gvals, ga_s = grads(sparse, x, gy)
    assert torch.equal(y_d, y_s) and torch.equal(gx_d, gx_s)
    # Sums of 66 products of O(1) terms in another order: absolute error ~1e-6 where they cancel.
    torch.testing.assert_close(gvals, gdelta.reshape(-1)[sparse.indices.long()], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga_s, ga_d, rtol=1e-5, atol=1e-6)


def test_sampled_weight_grad_kernel_and_auto_mode():
    g, x = torch.randn(50, 7), torch.randn(50, 9)
    idx = torch.tensor([0, 5, 17, 40, 62], dtype=torch.int32)
    torch.testing.assert_close(sampled_weight_grad(g, x, idx, (7, 9)), (g.t() @ x).reshape(-1)[idx.long()])
    assert sampled_weight_grad(g, x, idx[:0], (7, 9)).numel() == 0
    low = to_sparse_storage(make_module(density=SAMPLED_MAX_DENSITY / 2))
    high = to_sparse_storage(make_module(density=0.6))
    assert low.resolved_grad_mode() == "sampled" and high.resolved_grad_mode() == "dense"
    assert to_sparse_storage(make_module(pruned_value="init", density=0.05)).resolved_grad_mode() == "dense"


def test_adamw_trajectory_identical_to_dense_storage():
    dense = make_module(density=0.3, bias=False)
    sparse = to_sparse_storage(dense, grad_mode="dense")
    sparse.alpha = nn.Parameter(dense.alpha.detach().clone())  # separate gates: two independent trainings
    cfg = {"lr": 1e-2, "alpha_lr": 1e-2, "weight_decay": 1.0}
    opt_d = torch.optim.AdamW(adapter_param_groups({"m": dense}, cfg))
    opt_s = torch.optim.AdamW(sparse_param_groups({"m": sparse}, cfg))
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(4, 40, generator=gen)
        for module, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad(set_to_none=True)
            module(x).pow(2).sum().backward()
            opt.step()
        dense.enforce_mask()
    idx = sparse.indices.long()
    assert torch.equal(dense.delta.detach().reshape(-1)[idx], sparse.values.detach())
    assert not dense.delta.detach()[~dense.mask].any()  # pruned entries stayed exactly zero
    torch.testing.assert_close(sparse.alpha.detach(), dense.alpha.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pruned_value", ["zero", "init"])
def test_round_trip_to_dense_storage_is_exact(pruned_value):
    dense = make_module(pruned_value=pruned_value)
    back = to_dense_storage(to_sparse_storage(dense))
    assert isinstance(back, DenseDeltaLinear)
    assert torch.equal(back.delta, dense.delta) and torch.equal(back.mask, dense.mask)
    assert back.alpha is dense.alpha and back.init_seed == dense.init_seed
    assert back.pruned_value == pruned_value
    x = torch.randn(6, 40)
    assert torch.equal(back(x), dense(x))
    torch.testing.assert_close(back.effective_delta(), dense.effective_delta(), rtol=0, atol=0)


def test_state_is_proportional_to_density():
    dense = make_module(out_f=64, in_f=96, density=0.05, bias=False)
    sparse = to_sparse_storage(dense)
    assert sparse.indices.dtype == torch.int32
    states = {}
    for name, module in (("dense", dense), ("sparse", sparse)):
        param = module.values if name == "sparse" else module.delta
        opt = torch.optim.AdamW([param])
        module(torch.randn(3, 96)).sum().backward()
        opt.step()
        states[name] = adapter_state_bytes({"m": module}, opt)
    nnz, numel = sparse.nnz(), dense.mask.numel()
    assert states["sparse"]["delta"] == 4 * nnz and states["sparse"]["grad"] == 4 * nnz
    assert states["sparse"]["optimizer"] >= 8 * nnz and states["sparse"]["mask"] == 4 * nnz
    assert states["dense"]["delta"] == 4 * numel and states["dense"]["mask"] == numel
    density = nnz / numel
    assert states["sparse"]["total"] <= (density + 0.02) * states["dense"]["total"]


def test_convert_model_round_trip_keeps_logits_and_shared_gates(tiny_model):
    model, _ = tiny_model
    adapters = inject_rigsa(model, {"seed": 1, "gate": "layer", "alpha_init": 0.5})
    random_mask_(adapters, 0.1, seed=0)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    sparse = convert_adapters(model, adapters, "sparse")
    assert all(isinstance(m, SparseDeltaLinear) for m in sparse.values())
    assert dict(model.named_modules())[next(iter(sparse))] is next(iter(sparse.values()))
    a = sparse["model.layers.0.self_attn.q_proj"].alpha
    assert a is sparse["model.layers.0.mlp.down_proj"].alpha  # gate: layer stays shared
    assert a is not sparse["model.layers.1.mlp.down_proj"].alpha
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(m.values.grad is not None for m in sparse.values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(m.nnz() for m in sparse.values()) + 2  # + 2 layer gates
    back = convert_adapters(model, sparse, "dense")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
    assert all(torch.equal(back[n].mask, adapters[n].mask) for n in adapters)


def test_merge_unmerge_and_empty_mask():
    dense = make_module()
    sparse = to_sparse_storage(dense)
    x = torch.randn(4, 40)
    y = sparse(x)
    sparse.merge()
    torch.testing.assert_close(sparse(x), y, rtol=1e-5, atol=1e-6)
    sparse.unmerge()
    torch.testing.assert_close(sparse(x), y, rtol=1e-5, atol=1e-6)
    empty = to_sparse_storage(make_module(density=0.0))
    assert empty.nnz() == 0 and empty.density() == 0.0
    out = empty(x.requires_grad_(True))
    out.sum().backward()
    assert empty.values.grad.numel() == 0 and float(empty.alpha.grad) == 0.0


def test_bf16_autocast_matches_dense_storage():
    dense = make_module(density=0.1)
    sparse = to_sparse_storage(dense)
    x = torch.randn(3, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_d = dense(x)
        y_s = sparse(x)
    assert y_s.dtype == torch.bfloat16
    assert torch.equal(y_d, y_s)
    y_s.float().sum().backward()
    assert sparse.values.grad.dtype == torch.float32 and torch.isfinite(sparse.values.grad).all()


def test_int64_indices_and_bad_input():
    dense = make_module()
    sparse = to_sparse_storage(dense, index_dtype=torch.int64)
    assert sparse.indices.dtype == torch.int64
    x = torch.randn(2, 40)
    assert torch.equal(sparse(x), dense(x))
    with pytest.raises(ValueError, match="grad_mode"):
        to_sparse_storage(dense, grad_mode="magic")
    with pytest.raises(ValueError, match="out of range"):
        SparseDeltaLinear(nn.Linear(4, 3), torch.zeros(1), torch.tensor([12], dtype=torch.int32), init_seed=0)


@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_bf16_autocast_gradients_match_dense_storage(grad_mode):
    """Under bf16 autocast (fp32 weights) the sparse module writes the kept entries into the cast weight: output and
    input gradient bitwise the dense module's; value gradients the dense module's bf16 weight gradient (bitwise with
    the dense GEMM; the sampled product rounded to bf16 as the dense GEMM's output is)."""
    dense = make_module(out_f=48, in_f=64, density=0.1)
    sparse = to_sparse_storage(dense, grad_mode=grad_mode)
    assert sparse.resolved_grad_mode() == grad_mode
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 37, 64, generator=gen)
    gy = torch.randn(2, 37, 48, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_d, gx_d, gdelta, ga_d = grads(dense, x, gy)
        y_s, gx_s, gvals, ga_s = grads(sparse, x, gy)
    assert y_s.dtype == torch.bfloat16 and gx_s.dtype == torch.float32 and gvals.dtype == torch.float32
    assert torch.equal(y_d, y_s) and torch.equal(gx_d, gx_s)
    ref = gdelta.reshape(-1)[sparse.indices.long()]
    if grad_mode == "dense":
        assert torch.equal(gvals, ref)
    else:
        # Rounded to bf16 like the dense GEMM's output: the same numbers but where the two summation orders fall
        # on different sides of a bf16 rounding boundary (one bf16 ulp apart there).
        assert (gvals == ref).float().mean() > 0.9
        torch.testing.assert_close(gvals, ref, rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(ga_s, ga_d, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("density", [0.05, 0.3])
@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_kept_entries_swapped_into_w0_and_restored_bitwise(grad_mode, density):
    """fp32 (and a bf16 base): up to SWAP_MAX_DENSITY the kept entries are swapped into W0 for the matmuls and
    restored bit for bit, also when the matmul raises; above it a fresh copy takes them. Either way forward and input
    gradient equal the dense module's and W0 is left as it was."""
    assert (density <= SWAP_MAX_DENSITY) == (density == 0.05)
    for dtype in (torch.float32, torch.bfloat16):
        dense = make_module(density=density, seed=4)
        dense.base_layer.to(dtype)
        sparse = to_sparse_storage(dense, grad_mode=grad_mode)
        w0 = sparse.base_layer.weight
        before, version = w0.detach().clone(), w0._version
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(4, 6, 40, generator=gen).to(dtype)
        gy = torch.randn(4, 6, 24, generator=gen).to(dtype)
        y_d, gx_d, gdelta, ga_d = grads(dense, x, gy)
        y_s, gx_s, gvals, ga_s = grads(sparse, x, gy)
        assert torch.equal(w0, before) and w0._version == version  # no autograd-visible write
        assert torch.equal(y_d, y_s) and torch.equal(gx_d, gx_s)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(gvals, gdelta.reshape(-1)[sparse.indices.long()], rtol=tol, atol=tol)
        with pytest.raises(RuntimeError):
            sparse(torch.randn(3, 41).to(dtype))  # wrong width: F.linear raises inside the swap
        assert torch.equal(w0, before)


def test_non_contiguous_base_weight_takes_the_copy_path():
    """A base weight stored transposed (non-contiguous) cannot be swapped in place: a fresh copy gets the kept
    entries, with the same numbers as the dense module, and W0 is left untouched."""
    dense = make_module(density=0.2, seed=6)
    w = dense.base_layer.weight.detach()
    dense.base_layer.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=False)
    assert not dense.base_layer.weight.is_contiguous()
    sparse = to_sparse_storage(dense)
    before = dense.base_layer.weight.detach().clone()
    x, gy = torch.randn(5, 40), torch.randn(5, 24)
    y_d, gx_d, gdelta, _ = grads(dense, x, gy)
    y_s, gx_s, gvals, _ = grads(sparse, x, gy)
    assert torch.equal(y_d, y_s) and torch.equal(gx_d, gx_s)
    torch.testing.assert_close(gvals, gdelta.reshape(-1)[sparse.indices.long()], rtol=1e-5, atol=1e-5)
    assert torch.equal(sparse.base_layer.weight, before)
