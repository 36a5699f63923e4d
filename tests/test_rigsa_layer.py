"""The gated sparse adapter (RIGSA): forward math, gradients, gates, targets, random masks, merge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa, unique_alphas
from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta, random_mask_
from rigsa_lightning.adapters.targets import find_target_linears
from rigsa_lightning.config.errors import ConfigError

CFG = {"seed": 1234, "alpha_init": 1e-6, "lr": 1e-3, "alpha_lr": 2e-3, "weight_decay": 1.0}


def _tokens(n: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (n, t), generator=torch.Generator().manual_seed(seed))


def _layer(bias: bool = True, mode: str = "merged", seed: int = 7) -> DenseDeltaLinear:
    torch.manual_seed(0)
    return DenseDeltaLinear(nn.Linear(12, 9, bias=bias), init_seed=seed, forward_mode=mode)


def test_init_logits_equal_base_and_only_adapter_is_trainable(tiny_model):
    model, _ = tiny_model
    ids = _tokens()
    with torch.no_grad():
        base = model(input_ids=ids).logits.clone()
    adapters = inject_rigsa(model, CFG)
    assert len(adapters) == 14  # 7 projections x 2 blocks
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    rel = (adapted - base).norm() / base.norm()
    assert rel < 1e-5
    assert not torch.equal(adapted, base)  # the adapter is in the forward, just gated by alpha = 1e-6

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    expected = {id(m.delta) for m in adapters.values()} | {id(a) for a in unique_alphas(adapters)}
    assert trainable == expected
    groups = adapter_param_groups(adapters, CFG)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == expected

    model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    for mod in adapters.values():
        assert mod.delta.grad is not None and mod.delta.grad.abs().sum() > 0
        assert mod.alpha.grad is not None and mod.alpha.grad.abs() > 0
        assert mod.base_layer.weight.grad is None and not mod.base_layer.weight.requires_grad
    assert model.lm_head.weight.grad is None


def test_weight_decay_on_delta_only():
    mods = {"a": _layer(), "b": _layer(seed=8)}
    with torch.no_grad():
        for m in mods.values():
            m.alpha.fill_(0.5)
    groups = adapter_param_groups(mods, CFG)
    assert groups[0]["weight_decay"] == 1.0 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == 2e-3
    opt = torch.optim.AdamW(groups)
    before = {n: m.delta.detach().clone() for n, m in mods.items()}
    for m in mods.values():
        m.delta.grad = torch.zeros_like(m.delta)
        m.alpha.grad = torch.zeros_like(m.alpha)
    opt.step()
    for n, m in mods.items():
        # Zero gradient: Adam's update is 0, only the decoupled decay acts: ΔW <- ΔW (1 - lr * wd).
        torch.testing.assert_close(m.delta.detach(), before[n] * (1 - 1e-3 * 1.0), rtol=0, atol=1e-9)
        assert float(m.alpha.detach()) == 0.5


@pytest.mark.parametrize("mode", ["merged", "two_matmul"])
def test_forward_math_exact(mode):
    layer = _layer(mode=mode)
    mask = torch.rand(9, 12, generator=torch.Generator().manual_seed(1)) < 0.4
    layer.apply_mask(mask, rewind=False)
    with torch.no_grad():
        layer.alpha.fill_(0.3)
    x = torch.randn(5, 12)
    w0, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (w0 + 0.3 * (mask * layer.delta)).T + b
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert layer.nnz() == int(mask.sum()) and math.isclose(layer.density(), int(mask.sum()) / mask.numel())


def test_merged_equals_two_matmul():
    merged, two = _layer(mode="merged"), _layer(mode="two_matmul")
    two.load_state_dict(merged.state_dict())
    mask = torch.rand(9, 12) < 0.5
    for m in (merged, two):
        m.apply_mask(mask, rewind=False)
        with torch.no_grad():
            m.alpha.fill_(-0.7)
    x = torch.randn(3, 4, 12)
    torch.testing.assert_close(merged(x), two(x), rtol=1e-5, atol=1e-6)


def test_initial_delta_kaiming_like_nn_linear_and_regenerable():
    gen = torch.Generator().manual_seed(99)
    ref = torch.empty(9, 12)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5), generator=gen)
    assert torch.equal(generate_initial_delta((9, 12), 99), ref)
    assert float(ref.abs().max()) <= 1 / math.sqrt(12)
    layer = _layer(seed=99)
    assert torch.equal(layer.delta.detach(), ref)
    with torch.no_grad():
        layer.delta.add_(1.0)
    assert torch.equal(layer.initial_delta(), ref)  # regenerated from the seed, not the trained values
    normal = generate_initial_delta((200, 300), 5, init="normal", init_std=0.02)
    assert abs(float(normal.std()) - 0.02) < 1e-3
    copy = DenseDeltaLinear(nn.Linear(12, 9), init_seed=99, keep_init="copy")
    assert torch.equal(copy.initial_delta(), ref)


def test_gate_granularity(tiny_model):
    model, _ = tiny_model
    counts = {}
    for gate in ("matrix", "layer", "global"):
        import copy

        adapters = inject_rigsa(copy.deepcopy(model), {**CFG, "gate": gate})
        counts[gate] = len(unique_alphas(adapters))
        groups = adapter_param_groups(adapters, CFG)
        assert len(groups[1]["params"]) == counts[gate]
    assert counts == {"matrix": 14, "layer": 2, "global": 1}


def test_targets_suffix_regex_and_errors(tiny_model):
    model, _ = tiny_model
    hits = find_target_linears(model, ["q_proj", "re:layers\\.1\\.mlp"])
    assert list(hits) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]
    everything = find_target_linears(model, ["re:.*"])
    assert len(everything) == 14 and "lm_head" not in everything
    with pytest.raises(ConfigError) as err:
        find_target_linears(model, ["q_proj", "qkv_proj"])
    assert (
        err.value.option == "adapter.targets" and "qkv_proj" in str(err.value) and "\n" not in str(err.value)
    )
    with pytest.raises(ConfigError, match="lm_head"):
        find_target_linears(model, ["lm_head"])
    with pytest.raises(ConfigError, match="adapter.targets"):
        inject_rigsa(model, {**CFG, "targets": ["re:(unclosed"]})
    with pytest.raises(ConfigError, match="adapter.gate"):
        inject_rigsa(model, {**CFG, "gate": "row"})


def test_random_mask_exact_and_seeded(tiny_model):
    import copy

    model, _ = tiny_model
    a = inject_rigsa(copy.deepcopy(model), CFG)
    b = inject_rigsa(copy.deepcopy(model), CFG)
    c = inject_rigsa(copy.deepcopy(model), CFG)
    random_mask_(a, 0.3, seed=5)
    random_mask_(b, 0.3, seed=5)
    random_mask_(c, 0.3, seed=6)
    for name, mod in a.items():
        assert mod.nnz() == round(0.3 * mod.mask.numel())
        assert torch.equal(mod.mask, b[name].mask)
        assert not torch.equal(mod.mask, c[name].mask)
        assert torch.equal(mod.delta[~mod.mask], torch.zeros(int((~mod.mask).sum())))
        assert torch.equal(mod.delta[mod.mask], mod.initial_delta()[mod.mask])
    # Through the config: adapter.density < 1 draws the mask at injection (the random_mask method).
    d = inject_rigsa(copy.deepcopy(model), {**CFG, "density": 0.3, "mask_seed": 5})
    assert all(torch.equal(d[n].mask, a[n].mask) for n in a)
    with pytest.raises(ConfigError, match="adapter.density"):
        random_mask_(a, 1.5, seed=0)


def test_pruned_value_init_and_enforce():
    layer = _layer()
    mask = torch.rand(9, 12) < 0.5
    with torch.no_grad():
        layer.delta.mul_(3.0)  # "trained"
    layer.apply_mask(mask, rewind=False, pruned_value="init")
    init = layer.initial_delta()
    assert torch.equal(layer.effective_delta()[~mask], init[~mask])
    assert torch.equal(layer.effective_delta()[mask], 3.0 * init[mask])
    with torch.no_grad():
        layer.delta.add_(0.01)  # drift everywhere (e.g. weight decay)
    layer.enforce_mask()
    assert torch.equal(layer.delta[~mask], init[~mask])
    assert torch.equal(layer.delta[mask], 3.0 * init[mask] + 0.01)
    x = torch.randn(4, 12)
    layer(x).sum().backward()
    assert torch.equal(layer.delta.grad[~mask], torch.zeros(int((~mask).sum())))  # frozen: no gradient

    zero = _layer()
    zero.apply_mask(mask, rewind=True, pruned_value="zero")
    with torch.no_grad():
        zero.delta.add_(0.01)
    zero.enforce_mask()
    assert bool((zero.delta[~mask] == 0).all())


def test_merge_unmerge_and_state_dict_roundtrip():
    layer = _layer()
    layer.apply_mask(torch.rand(9, 12) < 0.5, rewind=False, pruned_value="init")
    with torch.no_grad():
        layer.alpha.fill_(0.25)
    x = torch.randn(4, 12)
    y = layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0, rtol=0, atol=1e-6)

    other = _layer(seed=3)  # different seed: the checkpoint's seed, mask and mode win
    other.load_state_dict(layer.state_dict())
    assert other.init_seed == layer.init_seed and other.pruned_value == "init"
    assert torch.equal(other.mask, layer.mask)
    torch.testing.assert_close(other(x), layer(x))


def test_bf16_base_and_autocast(tiny_model):
    model, _ = tiny_model
    ids = _tokens()
    adapters = inject_rigsa(model, CFG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids).logits
    assert torch.isfinite(out).all()
    out.float().mean().backward()
    assert all(m.delta.grad is not None and m.delta.grad.dtype == torch.float32 for m in adapters.values())
    model.to(torch.bfloat16)  # bf16 base: ΔW follows (module.to casts parameters), forward stays consistent
    with torch.no_grad():
        out16 = model(input_ids=ids).logits
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


def _autograd_reference(layer: DenseDeltaLinear, x: torch.Tensor, gy: torch.Tensor, bf16: bool) -> tuple:
    """Output and gradients of the merged form through plain autograd (``F.linear(x, W0 + alpha * ΔW_eff)``),
    the formulation the written-out ``_MergedLinearFn`` replaces."""
    delta = layer.delta.detach().clone().requires_grad_(True)
    alpha = layer.alpha.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    eff = delta * layer.mask.to(delta.dtype)
    w0 = layer.base_layer.weight
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = torch.nn.functional.linear(xr, w0 + (alpha * eff).to(w0.dtype), layer.base_layer.bias)
    y.backward(gy)
    return y.detach(), xr.grad, delta.grad, alpha.grad


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12)])
def test_merged_gradients_equal_plain_autograd(bf16, shape):
    """The merged form's custom backward: the same weight and input gradients as autograd through F.linear (the
    same GEMMs), the gate's gradient up to summation order; fp32 and bf16 autocast, 2-D and 3-D inputs."""
    layer = _layer()
    layer.apply_mask(torch.rand(9, 12, generator=torch.Generator().manual_seed(3)) < 0.6, rewind=False)
    with torch.no_grad():
        layer.alpha.fill_(0.41)
        layer.delta.mul_(3.0)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=gen)
    gy = torch.randn(*shape[:-1], 9, generator=gen)
    y_ref, gx_ref, gd_ref, ga_ref = _autograd_reference(layer, x, gy, bf16)
    xr = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = layer(xr)
    y.backward(gy)
    assert y.dtype == y_ref.dtype and xr.grad.dtype == x.dtype and layer.delta.grad.dtype == torch.float32
    # W0 + alpha*ΔW in one fused pass (addcmul) instead of mul then add: the merged weight may differ by 1 ulp.
    tol = {"rtol": 1e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(y.detach(), y_ref, **tol)
    torch.testing.assert_close(xr.grad, gx_ref, **tol)
    # The weight gradient does not depend on W: bitwise autograd's (pruned entries: exactly 0 through the mask).
    assert torch.equal(layer.delta.grad, gd_ref)
    torch.testing.assert_close(layer.alpha.grad, ga_ref, rtol=1e-5, atol=1e-7)


def test_merged_weight_is_one_rounding_of_the_exact_sum():
    """merged_weight (fused W0 + alpha*ΔW) is the exact sum within one fp32 rounding, and the same numbers on any
    subset of entries (what the sparse storage gathers)."""
    from rigsa_lightning.adapters.rigsa.layer import merged_weight

    gen = torch.Generator().manual_seed(0)
    w0, delta = torch.randn(1001, generator=gen), torch.randn(1001, generator=gen)
    alpha = torch.tensor(0.37)
    out = merged_weight(w0, alpha, delta)
    exact = w0.double() + alpha.double() * delta.double()
    torch.testing.assert_close(out.double(), exact, rtol=2**-23, atol=0)
    idx = torch.randperm(1001, generator=gen)[:77].sort().values
    assert torch.equal(merged_weight(w0[idx], alpha, delta[idx]), out[idx])
    base16 = w0.bfloat16()  # a bf16 base: the update is cast first, as before
    assert torch.equal(merged_weight(base16, alpha, delta), base16 + (alpha * delta).bfloat16())
