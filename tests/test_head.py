"""The LM head at the scored positions only: the loss, its gradients and the digit accuracy equal the full-logits
reference for every method (fp32), the head really runs on a handful of rows, and other models fall back."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rigsa_lightning.models.head import answer_logits, selected_logits, split_causal_lm

#: a loss computed another way may differ by a few float32 ulps (relative): 4 x 1.19e-7
ULPS = 4 * torch.finfo(torch.float32).eps
SMALL_DATA = ["data.train_size=8", "data.val_size=8", "data.test_size=8", "data.batch_size=4", "data.seed=0"]

# method -> Hydra overrides and how the adapter is put into a non-trivial state before comparing.
CASES = {
    "rigsa_dense": ["adapter=rigsa", "adapter.storage=dense"],
    "rigsa_sparse": ["adapter=rigsa", "adapter.storage=sparse"],
    "random_mask": ["adapter=random_mask", "adapter.density=0.3", "adapter.storage=sparse"],
    "lora": ["adapter=lora", "adapter.r=4", "adapter.dropout=0.0"],
    "qlora": ["adapter=qlora", "adapter.r=4", "adapter.dropout=0.0", "adapter.quant.compute_dtype=float32"],
    "full": ["adapter=full"],
}


def compose(overrides: list[str]) -> Any:
    """The train config as Hydra composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        # seed=0: the adapters are drawn from their own seeds as written (the run seed offsets them)
        return hydra_compose(config_name="train", overrides=["model=tiny", "seed=0", *SMALL_DATA, *overrides])


def build(case: str, cache_dir: str, extra: tuple[str, ...] = ()) -> tuple[Any, dict[str, torch.Tensor]]:
    """A RigsaLitModule of ``case`` with a non-trivial adapter state, and one real Textual MNIST batch."""
    from rigsa_lightning.adapters import prepare_model
    from rigsa_lightning.adapters.rigsa.seeding import random_mask_
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.training.module import RigsaLitModule

    cfg = compose([*CASES[case], *extra])
    torch.manual_seed(0)
    prepared = prepare_model(cfg, cache_dir)
    dm = TextualMNISTDataModule(cfg.data, prepared.tokenizer, cache_dir=cache_dir, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    module = RigsaLitModule(prepared, cfg, dm.digit_token_ids)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if case == "rigsa_sparse":
            random_mask_(prepared.gated, 0.5, seed=3)  # as after a prune at density 0.5
        for mod in prepared.gated.values():  # open the gates: ΔW must matter
            mod.alpha.fill_(0.5)
        for name, p in prepared.model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for lin in prepared.targets.values():
            lin.weight.add_(0.05 * torch.randn(lin.weight.shape, generator=gen))
    module.setup("fit")  # sparse storage (random_mask, a pruned RIGSA adapter) converts here
    if case in ("rigsa_sparse", "random_mask"):
        from rigsa_lightning.adapters.rigsa.storage import storage_of

        assert {storage_of(m) for m in prepared.gated.values()} == {"sparse"}
    batch = next(iter(dm.train_dataloader()))
    return module, batch


def reference(module: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-logits loss (every position through the head, shifted cross-entropy in fp32) and the full logits."""
    logits = module.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    shift = logits[:, :-1, :].float()
    loss = F.cross_entropy(
        shift.reshape(-1, shift.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    return loss, logits


def grads(module: Any, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of ``loss`` for every trainable tensor (then cleared)."""
    module.model.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_restricted_head_equals_full_logits(case: str, cache_dir: str) -> None:
    module, batch = build(case, cache_dir)
    module.train()
    assert split_causal_lm(module.model) is not None  # the restricted path is the one under test, no fallback
    ref_loss, ref_logits = reference(module, batch)
    ref_grads = grads(module, ref_loss)
    loss, at_answer = module._loss_and_logits(batch)
    new_grads = grads(module, loss)

    assert ref_loss.dtype == loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss.item() > 0.1
    # the same sum in another order: equal up to a few float32 ulps of the loss (~1e-6 at a loss of ~10)
    assert abs(loss.item() - ref_loss.item()) <= ULPS * abs(ref_loss.item())
    assert ref_grads and set(new_grads) == set(ref_grads)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable <= set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(new_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)

    rows = torch.arange(batch["input_ids"].size(0))
    torch.testing.assert_close(at_answer, ref_logits[rows, batch["answer_pos"]], rtol=0, atol=1e-6)
    acc = module.digit_accuracy(at_answer, batch)
    assert acc.item() == module.digit_accuracy(ref_logits.detach(), batch).item()


def test_head_runs_on_the_scored_rows_only(cache_dir: str) -> None:
    """The head sees (supervised positions + answer positions) rows, not batch x seq; ``lm_head=full`` (the step
    before, for comparisons) runs it everywhere and gives the same loss."""
    module, batch = build("rigsa_dense", cache_dir)
    full_module, _ = build("rigsa_dense", cache_dir, extra=("lm_head=full",))
    losses = []
    shapes = []
    for mod in (module, full_module):
        _, head = split_causal_lm(mod.model)  # type: ignore[misc]
        seen: list[tuple[int, ...]] = []
        hook = head.register_forward_hook(lambda m, inp, out, seen=seen: seen.append(tuple(out.shape)))
        try:
            losses.append(mod._loss_and_logits(batch)[0].item())
        finally:
            hook.remove()
        shapes.append(seen)
    labels = batch["labels"]
    scored = (labels[:, 1:] != -100).clone()
    scored[torch.arange(labels.size(0)), batch["answer_pos"]] = True  # answer_pos < seq - 1 here
    n, t = labels.shape
    vocab = module.model.config.vocab_size
    assert shapes[0] == [(int(scored.sum()), vocab)]
    assert int(scored.sum()) <= 3 * n < n * t
    assert shapes[1] == [(n, t, vocab)]
    assert abs(losses[0] - losses[1]) <= ULPS * abs(losses[1])


def test_bad_lm_head_value_is_a_config_error() -> None:
    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.models.head import check_lm_head

    assert check_lm_head("full") and not check_lm_head("scored")
    with pytest.raises(ConfigError, match="lm_head"):
        check_lm_head("partial")


class _ScaledHead(torch.nn.Linear):
    """A head that is not a plain linear layer (doubles its logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_other_heads_fall_back_to_the_full_forward(tiny_model, caplog: pytest.LogCaptureFixture) -> None:
    model, _ = tiny_model
    old = model.get_output_embeddings()
    head = _ScaledHead(old.in_features, old.out_features, bias=False)
    with torch.no_grad():
        head.weight.copy_(old.weight)
    model.set_output_embeddings(head)
    model.eval()
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, 3] = select[1, 5] = select[1, 8] = True
    with caplog.at_level(logging.INFO, logger="rigsa_lightning.models.head"):
        assert split_causal_lm(model) is None
        assert split_causal_lm(model) is None
    assert sum("full-logits forward" in r.getMessage() for r in caplog.records) == 1  # one line per model
    with torch.no_grad():
        full = model(input_ids=ids).logits
        got = selected_logits(model, ids, None, select)
        at = answer_logits(model, ids, None, torch.tensor([3, 5]))
    torch.testing.assert_close(got, full[select], rtol=0, atol=0)  # the head's doubling is kept
    torch.testing.assert_close(at, full[[0, 1], [3, 5]], rtol=0, atol=0)
    model.config.final_logit_softcapping = 30.0
    model.set_output_embeddings(old)
    assert split_causal_lm(model) is None  # logit soft-capping after the head: fall back too


# ------------------------------------------------------------------------------------------------ AdamW impl
def _adamw_run(impl: str, steps: int = 5) -> list[torch.Tensor]:
    """``steps`` AdamW steps of ``optim.impl`` on small dense and sparse-like adapter tensors with the train job's
    groups (decay 1.0 on ΔW, none on the gates); returns the parameters."""
    from rigsa_lightning.training.schedule import adamw_impl_kwargs

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=gen)) for s in [(24, 40), (7, 9), (333,)]]
    gates = [torch.nn.Parameter(torch.full((), 1e-6)) for _ in range(3)]
    opt = torch.optim.AdamW(
        [
            {"params": params, "lr": 1e-3, "weight_decay": 1.0},
            {"params": gates, "lr": 1e-2, "weight_decay": 0.0},
        ],
        betas=(0.9, 0.999),
        eps=1e-8,
        **adamw_impl_kwargs(impl),
    )
    for _ in range(steps):
        for p in params + gates:
            p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params + gates]


def test_adamw_impls_take_the_same_steps() -> None:
    """fused (the default) equals torch's per-tensor loop up to fp32 rounding; foreach equals it bitwise."""
    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.training.schedule import adamw_impl_kwargs

    loop, fused, foreach = _adamw_run("loop"), _adamw_run("fused"), _adamw_run("foreach")
    start = _adamw_run("loop", steps=0)
    for a, b, c, s in zip(loop, fused, foreach, start):
        assert not torch.equal(a, s)  # the steps moved every tensor
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
        assert torch.equal(c, a)
    with pytest.raises(ConfigError, match="optim.impl"):
        adamw_impl_kwargs("adam8bit")


def test_fused_adamw_is_clipped_under_bf16_mixed(cache_dir: str) -> None:
    """Lightning's bf16-mixed plugin refuses to clip before a fused optimizer; the module clips itself (bf16 has no
    gradient scaler, so the gradients are the true ones) and the total norm ends at the clip value."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    module, batch = build("rigsa_dense", cache_dir)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    module._trainer = SimpleNamespace(precision_plugin=plugin)  # what configure_gradient_clipping reads
    params = [p for p in module.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, fused=True)
    module._loss_and_logits(batch)[0].backward()
    before = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert before > 1e-3
    with pytest.raises(RuntimeError, match="fused"):
        plugin.clip_gradients(opt, 1e-3)  # Lightning's own path
    module.configure_gradient_clipping(opt, 1e-3, "norm")
    after = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert after.item() == pytest.approx(1e-3, rel=1e-4)


def test_checkpoints_from_before_optim_impl_resume_with_the_loop() -> None:
    """A checkpoint written before ``optim.impl`` existed trained with AdamW's per-tensor loop: resuming it asks for
    ``optim.impl=loop`` (the default fused differs) instead of failing on a missing key."""
    from rigsa_lightning.training.checkpoint import config_differences

    old = {"seed": 42, "optim.eps": 1e-8}
    assert config_differences(old, {"seed": 42, "optim.eps": 1e-8, "optim.impl": "loop"}) == []
    assert config_differences(old, {"seed": 42, "optim.eps": 1e-8, "optim.impl": "fused"}) == [
        "optim.impl='fused' (checkpoint: 'loop')"
    ]
    new = {**old, "optim.impl": "fused"}
    assert config_differences(new, {**new}) == []
