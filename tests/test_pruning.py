"""Iterative magnitude pruning: schedule, exact top-k and global threshold, the Lightning callback, resume."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.pruning import (
    IterativeMagnitudePruning,
    PruningSchedule,
    compute_prune_masks,
    density_report,
    global_keep_masks,
    keep_top_k,
)

ADAPTER = {"seed": 1234, "alpha_init": 1e-6, "lr": 1e-2, "alpha_lr": 1e-2, "weight_decay": 1.0}
IMP = {"enabled": True, "rounds": 1, "sparsity": 0.5, "epochs_per_round": 1, "final_epochs": 1}


# ------------------------------------------------------------------------------------------------ schedule
def test_schedule_from_cfg():
    s = PruningSchedule.from_cfg(
        {**IMP, "rounds": 2, "sparsity": 0.75, "epochs_per_round": 2, "final_epochs": 3}
    )
    assert s.prune_epochs == [1, 3] and s.total_epochs == 7
    assert s.round_at_epoch(1) == 1 and s.round_at_epoch(3) == 2 and s.round_at_epoch(2) is None
    assert s.target_density(0) == 1.0
    assert s.target_density(1) == pytest.approx(0.5) and s.target_density(2) == pytest.approx(0.25)
    assert s.keep_fraction(1) == pytest.approx(0.5) and s.final_density == pytest.approx(0.25)
    d = PruningSchedule.from_cfg({**IMP, "rounds": 2, "densities": [0.6, 0.3]})
    assert d.target_density(2) == 0.3 and d.keep_fraction(2) == pytest.approx(0.5)
    paper = PruningSchedule.from_cfg(
        {**IMP, "rounds": 2, "sparsity": None, "keep_fraction": 0.2, "keep_of": "sign_stable"}
    )
    assert paper.final_density is None and paper.keep_fraction(2) == 0.2
    none = PruningSchedule.from_cfg({"enabled": False, "rounds": 0, "epochs_per_round": 1, "final_epochs": 2})
    assert (
        none.rounds == 0 and none.prune_epochs == [] and none.total_epochs == 2 and none.final_density == 1.0
    )
    with pytest.raises(ConfigError, match="pruning.rounds"):
        PruningSchedule.from_cfg(IMP).check_max_epochs(0)


@pytest.mark.parametrize(
    "override, option",
    [
        ({"sparsity": 1.0}, "pruning.sparsity"),
        ({"sparsity": -0.1}, "pruning.sparsity"),
        ({"rounds": -1}, "pruning.rounds"),
        ({"rounds": 1.5}, "pruning.rounds"),
        ({"rounds": 2, "densities": [0.3, 0.6]}, "pruning.densities"),
        ({"rounds": 2, "densities": [0.5]}, "pruning.densities"),
        ({"densities": [0.0]}, "pruning.densities"),
        ({"densities": [0.5], "keep_fraction": 0.5}, "pruning.keep_fraction"),
        ({"keep_fraction": 1.5}, "pruning.keep_fraction"),
        ({"sparsity": None}, "pruning.sparsity"),
        ({"keep_of": "sign_stable", "criterion": "magnitude"}, "pruning.keep_of"),
        ({"scope": "per_row"}, "pruning.scope"),
        ({"epochs_per_round": 0}, "pruning.epochs_per_round"),
    ],
)
def test_schedule_errors_are_one_line(override, option):
    with pytest.raises(ConfigError) as err:
        PruningSchedule.from_cfg({**IMP, **override})
    assert err.value.option == option
    assert "\n" not in err.value.one_line()


# ------------------------------------------------------------------------------------------------ selection
def test_keep_top_k_exact_with_ties():
    scores = torch.tensor([[3.0, 1.0, 1.0], [1.0, 2.0, 1.0]])
    cand = torch.ones(2, 3, dtype=torch.bool)
    keep = keep_top_k(scores, cand, 3)
    # 3.0 and 2.0, then the first of the tied 1.0 entries (lowest flat index).
    assert keep.tolist() == [[True, True, False], [False, True, False]]
    cand[0, 0] = False
    assert keep_top_k(scores, cand, 1).tolist() == [[False, False, False], [False, True, False]]
    assert int(keep_top_k(scores, cand, 10).sum()) == 5  # fewer candidates than k: all candidates
    assert int(keep_top_k(scores, cand, 0).sum()) == 0
    g = torch.Generator().manual_seed(0)
    big = torch.rand(300, 70, generator=g)
    cand = torch.rand(300, 70, generator=g) < 0.8
    for k in (1, 17, 5000, int(cand.sum()) - 1):
        keep = keep_top_k(big, cand, k)
        assert int(keep.sum()) == k and not bool((keep & ~cand).any())
        assert float(big[keep].min()) >= float(big[cand & ~keep].max())


def test_global_threshold_equals_torch_global_unstructured():
    from torch.nn.utils import prune as torch_prune

    g = torch.Generator().manual_seed(1)
    shapes = [(30, 20), (7, 50), (64, 16), (5, 5)]
    scores = [torch.rand(s, generator=g) * (i + 1) for i, s in enumerate(shapes)]  # distinct scales, no ties
    total = sum(s.numel() for s in scores)
    keep_n = 1234
    layers = []
    for s in scores:
        lin = nn.Linear(s.shape[1], s.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(s * torch.where(torch.rand(s.shape, generator=g) < 0.5, -1.0, 1.0))
        layers.append(lin)
    torch_prune.global_unstructured(
        [(lin, "weight") for lin in layers], pruning_method=torch_prune.L1Unstructured, amount=total - keep_n
    )
    ours = global_keep_masks(
        [lambda s=s: s for s in scores], [torch.ones_like(s, dtype=torch.bool) for s in scores], keep_n
    )
    assert sum(int(m.sum()) for m in ours) == keep_n
    for mask, lin in zip(ours, layers):
        assert torch.equal(mask, lin.weight_mask.bool())


def test_global_threshold_streams_without_concatenation(monkeypatch):
    g = torch.Generator().manual_seed(2)
    shapes = [(512, 1024)] * 6 + [(1024, 2048)]  # ~5.2M entries; the largest matrix is 2.1M
    scores = [torch.randn(s, generator=g).abs_() for s in shapes]
    cands = [torch.rand(s, generator=g) < 0.9 for s in shapes]
    k = 1_000_003
    # Reference by brute force (concatenation allowed here) before the patch.
    flat = torch.cat([torch.where(c, s, torch.tensor(-1.0)).reshape(-1) for s, c in zip(scores, cands)])
    kth = float(torch.topk(flat, k).values.min())
    del flat

    calls = {"n": 0}

    def score_fn(i):
        def f():
            calls["n"] += 1
            return scores[i]

        return f

    def forbidden(*args, **kwargs):
        raise AssertionError("global threshold must not concatenate/sort all scores")

    for name in ("cat", "concat", "concatenate", "stack", "sort", "topk", "kthvalue", "hstack", "vstack"):
        monkeypatch.setattr(torch, name, forbidden)
    masks = global_keep_masks([score_fn(i) for i in range(len(shapes))], cands, k)
    monkeypatch.undo()
    assert sum(int(m.sum()) for m in masks) == k
    assert calls["n"] == 3 * len(shapes)  # two histogram passes + one selection pass, one matrix at a time
    for s, c, m in zip(scores, cands, masks):
        assert not bool((m & ~c).any())
        assert bool((s[m] >= kth).all()) and bool((s[c & ~m] <= kth).all())


# ------------------------------------------------------------------------------------------------ one round
def _adapters(model, **over):
    return inject_rigsa(model, {**ADAPTER, **over})


def _perturb(adapters, seed=0):
    """Pretend training: move ΔW so that some signs flip and magnitudes change; gates open."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapters.values():
            m.delta.add_(torch.randn(m.delta.shape, generator=g) * 0.05)
            m.alpha.fill_(0.1)


@pytest.mark.parametrize("scope", ["per_matrix", "global"])
def test_prune_round_density_rewind_and_signs(tiny_model, scope):
    model, _ = tiny_model
    adapters = _adapters(model)
    _perturb(adapters)
    initial = {n: m.initial_delta() for n, m in adapters.items()}
    flipped = {n: torch.sign(m.delta.detach()) != torch.sign(initial[n]) for n, m in adapters.items()}
    assert sum(int(f.sum()) for f in flipped.values()) > 0
    cb = IterativeMagnitudePruning({**IMP, "scope": scope, "sparsity": 0.6})
    record = cb.prune(adapters)
    total = sum(m.mask.numel() for m in adapters.values())
    nnz = sum(m.nnz() for m in adapters.values())
    if scope == "per_matrix":
        for m in adapters.values():
            assert m.nnz() == round(0.4 * m.mask.numel())
        assert abs(nnz - 0.4 * total) <= len(adapters)
    else:
        assert nnz == round(0.4 * total)
    assert record["density"] == pytest.approx(nnz / total)
    for n, m in adapters.items():
        assert not bool((m.mask & flipped[n]).any())  # sign-flipped entries are never kept
        assert torch.equal(m.delta[m.mask], initial[n][m.mask])  # survivors rewound to their initial values
        assert bool((m.delta[~m.mask] == 0).all())  # pruned entries are exactly zero
        assert float(m.alpha.detach()) == pytest.approx(1e-6, rel=1e-6)  # gate reset
    rep = density_report(adapters)
    assert rep["nnz"] == nnz and rep["density"] == pytest.approx(nnz / total)
    assert set(rep["per_module"]) == set(adapters)


def _reference_masks(adapters, sched, round_index=1, references=None):
    """Naive selection: stable sort of all candidate scores (descending; ties to the lower matrix, then the lower
    flat index), per matrix or over the concatenation of all matrices."""
    cands, scores = {}, {}
    for n, m in adapters.items():
        d = m.delta.detach()
        ref = references[n] if references else m.initial_delta()
        stable = ((d > 0) == ref) & (d != 0) if ref.dtype == torch.bool else d * ref > 0
        cands[n] = (m.mask & stable) if sched.criterion == "sign_magnitude" else m.mask.clone()
        s = (d.float() * m.alpha.detach().float()).abs() if sched.score == "gated" else d.abs()
        scores[n] = torch.where(cands[n], s, torch.full_like(s, -1.0)).reshape(-1)
    groups = [[n] for n in adapters] if sched.scope == "per_matrix" else [list(adapters)]
    out = {}
    for group in groups:
        flat = torch.cat([scores[n] for n in group])
        n_cand = sum(int(cands[n].sum()) for n in group)
        if sched.keep_of == "all":
            k = round(sched.target_density(round_index) * sum(adapters[n].mask.numel() for n in group))
        else:
            k = round(sched.keep_fraction(round_index) * n_cand)
        order = torch.sort(-flat, stable=True).indices[: min(k, n_cand)]
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order] = True
        for n in group:
            size = adapters[n].mask.numel()
            out[n], keep = keep[:size].view(adapters[n].mask.shape), keep[size:]
    return out


@pytest.mark.parametrize("chunk_entries", [7, 96, None])
@pytest.mark.parametrize(
    "over",
    [
        {"scope": "per_matrix"},
        {"scope": "global"},
        {"scope": "global", "criterion": "magnitude", "score": "gated"},
        {"scope": "per_matrix", "sparsity": None, "keep_fraction": 0.3, "keep_of": "sign_stable"},
        {"scope": "global", "sparsity": None, "keep_fraction": 0.3, "keep_of": "sign_stable"},
    ],
)
def test_streamed_round_equals_naive_sort_with_ties(tiny_model, over, chunk_entries):
    """Row-chunked passes (chunks of 7 entries cut rows; 96 spans several rows) select exactly the entries a full
    stable sort selects, ties included (ΔW quantised to a coarse grid: thousands of equal scores)."""
    model, _ = tiny_model
    adapters = _adapters(copy.deepcopy(model), gate="layer")
    _perturb(adapters)
    with torch.no_grad():
        for i, m in enumerate(adapters.values()):
            m.delta.copy_(torch.round(m.delta * 40) / 40)
            m.alpha.fill_(0.1 * (1 + i % 3))
    sched = PruningSchedule.from_cfg({**IMP, **over})
    expected = _reference_masks(adapters, sched)
    res = compute_prune_masks(adapters, sched, 1, chunk_entries=chunk_entries)
    for n in adapters:
        assert torch.equal(res.masks[n], expected[n]), n
        assert res.stats["kept"][n] == int(expected[n].sum())


def test_sign_reference_previous_second_round_equals_naive(tiny_model):
    model, _ = tiny_model
    adapters = _adapters(copy.deepcopy(model))
    _perturb(adapters, seed=1)
    cb = IterativeMagnitudePruning({**IMP, "rounds": 2, "sparsity": 0.75, "sign_reference": "previous"})
    cb.prune(adapters)
    refs = {n: t.clone() for n, t in cb.references.items()}
    assert set(refs) == set(adapters) and all(t.dtype == torch.bool for t in refs.values())
    _perturb(adapters, seed=2)
    expected = _reference_masks(adapters, cb.schedule, 2, refs)
    res = compute_prune_masks(adapters, cb.schedule, 2, refs, chunk_entries=50)
    for n in adapters:
        assert torch.equal(res.masks[n], expected[n]), n


def test_magnitude_criterion_keeps_largest_and_keep_of_sign_stable(tiny_model):
    model, _ = tiny_model
    adapters = _adapters(copy.deepcopy(model))
    _perturb(adapters)
    res = compute_prune_masks(adapters, PruningSchedule.from_cfg({**IMP, "criterion": "magnitude"}), 1)
    for n, m in adapters.items():
        keep = res.masks[n]
        assert int(keep.sum()) == round(0.5 * m.mask.numel())
        d = m.delta.detach().abs()
        assert float(d[keep].min()) >= float(d[~keep].max())
    sched = PruningSchedule.from_cfg(
        {**IMP, "sparsity": None, "keep_fraction": 0.2, "keep_of": "sign_stable"}
    )
    res = compute_prune_masks(adapters, sched, 1)
    for n in adapters:
        n_stable = res.stats["sign_stable"][n]
        assert int(res.masks[n].sum()) == round(0.2 * n_stable)


def test_too_few_sign_stable_entries_warns_and_keeps_only_those(tiny_model, caplog):
    model, _ = tiny_model
    adapters = _adapters(model)
    name, mod = next(iter(adapters.items()))
    with torch.no_grad():
        mod.delta.neg_()  # every sign flipped except a few entries
        mod.delta.view(-1)[:10].neg_()
    with caplog.at_level("WARNING"):
        res = compute_prune_masks(adapters, PruningSchedule.from_cfg(IMP), 1)
    assert int(res.masks[name].sum()) == 10
    assert "fewer sign-stable entries" in caplog.text and name in caplog.text


def _sgd_like_training(model, adapters, steps, lr=1e-2, opt=None):
    opt = opt or torch.optim.AdamW(adapter_param_groups(adapters, {**ADAPTER, "lr": lr, "alpha_lr": lr}))
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        ids = torch.randint(0, 49152, (2, 10), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_pruned_entries_never_change_under_adamw_weight_decay(tiny_model, reset_optimizer):
    model, _ = tiny_model
    adapters = _adapters(model)
    opt = _sgd_like_training(model, adapters, 2)
    cb = IterativeMagnitudePruning({**IMP, "reset_optimizer": reset_optimizer})
    cb.prune(adapters, optimizer=opt)
    if reset_optimizer:
        assert all(m.delta not in opt.state or not opt.state[m.delta] for m in adapters.values())
    else:
        for m in adapters.values():
            assert bool((opt.state[m.delta]["exp_avg"][~m.mask] == 0).all())
    pruned = {n: ~m.mask for n, m in adapters.items()}
    kept_before = {n: m.delta.detach()[m.mask].clone() for n, m in adapters.items()}
    _sgd_like_training(model, adapters, 3, opt=opt)  # no enforce_mask call: the math alone keeps them at 0
    for n, m in adapters.items():
        assert bool((m.delta.detach()[pruned[n]] == 0).all())
        assert not torch.equal(m.delta.detach()[m.mask], kept_before[n])  # survivors do train


def test_pruned_value_init_stays_frozen(tiny_model):
    model, _ = tiny_model
    adapters = _adapters(model)
    opt = _sgd_like_training(model, adapters, 1)
    cb = IterativeMagnitudePruning({**IMP, "pruned_value": "init"})
    cb.prune(adapters, optimizer=opt)
    _sgd_like_training(model, adapters, 2, opt=opt)
    for m in adapters.values():
        m.enforce_mask()  # what the callback does after each optimizer step
        assert torch.equal(m.delta.detach()[~m.mask], m.initial_delta()[~m.mask])


def test_callback_state_dict_roundtrip(tiny_model):
    model, _ = tiny_model
    adapters = _adapters(model)
    _perturb(adapters)
    cfg = {**IMP, "rounds": 2, "sign_reference": "previous"}
    cb = IterativeMagnitudePruning(cfg)
    cb.prune(adapters)
    state = copy.deepcopy(cb.state_dict())
    assert state["round"] == 1 and len(state["history"]) == 1 and set(state["references"]) == set(adapters)
    other = IterativeMagnitudePruning(cfg)
    other.load_state_dict(state)
    assert other.round == 1 and other.history == cb.history
    assert all(torch.equal(other.references[n], cb.references[n]) for n in adapters)
    _perturb(adapters, seed=1)
    twin = {n: copy.deepcopy(m) for n, m in adapters.items()}
    cb.prune(adapters)
    other.prune(twin)
    assert all(torch.equal(adapters[n].mask, twin[n].mask) for n in adapters)
    assert cb.history[-1]["round"] == 2 and cb.history[-1]["density"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------------------------ Lightning
class _TinyLit(L.LightningModule):
    def __init__(self, model, adapter_cfg):
        super().__init__()
        self.model = model.train()
        self.adapters = inject_rigsa(model, adapter_cfg)
        self.adapter_cfg = adapter_cfg

    def adapter_modules(self):
        return self.adapters

    def training_step(self, batch, batch_idx):
        ids = batch[0]
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(adapter_param_groups(self.adapters, self.adapter_cfg))


def _loader():
    g = torch.Generator().manual_seed(11)
    data = torch.utils.data.TensorDataset(torch.randint(0, 49152, (6, 10), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)


def _trainer(tmp_path: Path, max_epochs: int, callbacks):
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        deterministic=True,
    )


def test_lightning_rigsa_50_end_to_end(tiny_model, tmp_path):
    model, _ = tiny_model
    lit = _TinyLit(model, ADAPTER)
    cb = IterativeMagnitudePruning(IMP)
    trainer = _trainer(tmp_path, cb.schedule.total_epochs, [cb])
    trainer.fit(lit, train_dataloaders=_loader())
    assert trainer.current_epoch == 2 and cb.round == 1 and len(cb.history) == 1
    for m in lit.adapters.values():
        assert m.nnz() == round(0.5 * m.mask.numel())
        assert bool((m.delta.detach()[~m.mask] == 0).all())
        # The gate trained again after its reset.
        assert float(m.alpha.detach()) != pytest.approx(1e-6, rel=1e-6)
    assert density_report(lit.adapters)["density"] == pytest.approx(0.5)
    assert trainer.callback_metrics["prune/density"] == pytest.approx(0.5)
    assert "prune/density/model.layers.0.self_attn.q_proj" in trainer.callback_metrics
    csv = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "prune/density" in csv


def test_lightning_checkpoint_after_prune_resumes_identically(tiny_model, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model, _ = tiny_model
    cfg = {**IMP, "rounds": 2, "sparsity": 0.75}

    def run(folder, max_epochs, ckpt=None, base=None):
        L.seed_everything(0)
        lit = _TinyLit(copy.deepcopy(base or model), ADAPTER)
        cb = IterativeMagnitudePruning(cfg)
        saver = ModelCheckpoint(
            dirpath=str(folder), save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True
        )
        # The checkpoint callback is listed first on purpose: Lightning moves it last.
        trainer = _trainer(folder, max_epochs, [saver, cb])
        trainer.fit(lit, train_dataloaders=_loader(), ckpt_path=ckpt)
        return lit, cb

    full, cb_full = run(tmp_path / "a", 3)
    ckpts = sorted((tmp_path / "a").glob("epoch=0*.ckpt"))
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    # The epoch-0 checkpoint was written after the round-1 prune (callback order), so it holds the 50% masks.
    mask_key = next(k for k in state["state_dict"] if k.endswith("layers.0.self_attn.q_proj.mask"))
    assert state["state_dict"][mask_key].float().mean() == pytest.approx(0.5)
    resumed, cb_res = run(tmp_path / "b", 3, ckpt=str(ckpts[0]))
    assert cb_res.round == 2 and [h["round"] for h in cb_res.history] == [1, 2]
    for n, m in full.adapters.items():
        r = resumed.adapters[n]
        assert torch.equal(m.mask, r.mask)
        assert torch.equal(m.delta.detach(), r.delta.detach())
        assert torch.equal(m.alpha.detach(), r.alpha.detach())


@pytest.mark.parametrize("init", ["kaiming_uniform", "normal"])
@pytest.mark.parametrize("shape", [(37, 13), (64, 48), (5, 3), (200, 96)])
@pytest.mark.parametrize("chunk_entries", [1, 7, 48, 16 * 96, 10**6])
def test_initial_delta_chunks_equal_the_whole_draw(init, shape, chunk_entries):
    """The prune and the rewind draw the initial ΔW chunk by chunk; it must be the exact same matrix (this guards
    the assumption about torch's CPU uniform_/normal_ kernels on a torch upgrade)."""
    from rigsa_lightning.adapters.chunks import row_chunks
    from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta, initial_delta_chunks

    slices = row_chunks(shape, chunk_entries)
    chunks = list(initial_delta_chunks(shape, 77, slices, init, 0.02))
    assert [tuple(c.shape) for c in chunks] == [(sl.stop - sl.start, shape[1]) for sl in slices]
    assert torch.equal(torch.cat(chunks), generate_initial_delta(shape, 77, init, 0.02))
    with pytest.raises(ValueError, match="consecutive"):
        list(initial_delta_chunks(shape, 77, slices[1:], init))


@pytest.mark.parametrize("pruned_value", ["zero", "init"])
def test_apply_mask_streamed_rewind_equals_given_initial(tiny_model, pruned_value):
    model, _ = tiny_model
    a = _adapters(copy.deepcopy(model), init="normal")
    b = _adapters(copy.deepcopy(model), init="normal")
    _perturb(a)
    _perturb(b)
    g = torch.Generator().manual_seed(5)
    for (n, ma), mb in zip(a.items(), b.values()):
        mask = torch.rand(ma.mask.shape, generator=g) > 0.4
        ma.apply_mask(mask, rewind=True, pruned_value=pruned_value)  # initial drawn chunk by chunk
        mb.apply_mask(mask, rewind=True, pruned_value=pruned_value, initial=mb.initial_delta())
        assert torch.equal(ma.delta, mb.delta) and torch.equal(ma.mask, mb.mask), n
        expected = torch.where(
            mask, mb.initial_delta(), torch.zeros(()) if pruned_value == "zero" else mb.initial_delta()
        )
        assert torch.equal(ma.delta.detach(), expected)


def test_module_finds_the_pruning_callback_by_class_not_by_name() -> None:
    """RigsaLitModule re-applies the masks itself only without an IMP callback: a subclass of the callback counts
    as one (a lookup by class name missed it), a foreign class that happens to share the name does not."""
    from types import SimpleNamespace

    from rigsa_lightning.training.gated import GatedAdapterHooks
    from rigsa_lightning.training.module import RigsaLitModule, has_pruning_callback

    class TunedPruning(IterativeMagnitudePruning):
        pass

    impostor = type("IterativeMagnitudePruning", (L.Callback,), {})()
    assert has_pruning_callback([TunedPruning(IMP)])
    assert not has_pruning_callback([impostor])
    assert has_pruning_callback([impostor, IterativeMagnitudePruning(IMP)])

    def enforced(callbacks: list) -> int:
        calls = []
        gate = SimpleNamespace(alpha=torch.tensor(1.0), enforce_mask=lambda: calls.append(1))
        fake = SimpleNamespace(
            trainer=SimpleNamespace(callbacks=callbacks, log_every_n_steps=50),
            prepared=SimpleNamespace(gated={"layer": gate}),
            global_step=1,
        )
        fake.gated_batch_end = lambda batch_idx, enforce: GatedAdapterHooks.gated_batch_end(
            fake, batch_idx, enforce
        )
        RigsaLitModule.on_train_batch_end(fake, None, None, 1)
        return len(calls)

    assert enforced([TunedPruning(IMP)]) == 0  # the (sub)class re-applies the masks itself
    assert enforced([impostor]) == 1  # no IMP callback: the module keeps pruned entries at zero


def test_pruning_callback_takes_the_runs_schedule() -> None:
    schedule = PruningSchedule.from_cfg(IMP)
    assert IterativeMagnitudePruning(IMP, schedule=schedule).schedule is schedule
