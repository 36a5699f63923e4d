"""Sparse adapter export (safetensors + JSON), validated loading, and merging into plain weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.seeding import random_mask_
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.export import load_sparse_adapter, merge_adapter, save_sparse_adapter
from rigsa_lightning.pruning import IterativeMagnitudePruning

ADAPTER = {
    "method": "rigsa",
    "seed": 1234,
    "alpha_init": 1e-6,
    "gate": "matrix",
    "targets": ["q_proj", "v_proj", "down_proj"],
}
PRUNING = {"enabled": True, "rounds": 1, "sparsity": 0.5, "epochs_per_round": 1, "final_epochs": 1}
Q = "model.layers.0.self_attn.q_proj"


def _ids() -> torch.Tensor:
    return torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(5))


def _trained(model, pruning=PRUNING, adapter=ADAPTER):
    """Inject, 'train' (perturb ΔW, open the gates), prune once, train a bit more."""
    adapters = inject_rigsa(model, adapter)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapters.values():
            m.delta.add_(torch.randn(m.delta.shape, generator=g) * 0.05)
    IterativeMagnitudePruning(pruning).prune(adapters)
    with torch.no_grad():
        for i, m in enumerate(adapters.values()):
            m.delta.add_(torch.randn(m.delta.shape, generator=g) * 0.05 * m.mask)
            m.alpha.fill_(0.5 + 0.1 * i)
    return adapters


def _export(adapters, folder: Path, adapter=ADAPTER, pruning=PRUNING) -> Path:
    return save_sparse_adapter(adapters, folder, base_model="tiny", adapter_cfg=adapter, pruning_cfg=pruning)


@pytest.mark.parametrize("pruned_value", ["zero", "init"])
def test_export_load_reproduces_logits(tiny_model, tmp_path, pruned_value):
    model, _ = tiny_model
    base = copy.deepcopy(model)
    pruning = {**PRUNING, "pruned_value": pruned_value}
    adapters = _trained(model, pruning)
    with torch.no_grad():
        expected = model(input_ids=_ids()).logits
    folder = _export(adapters, tmp_path / "adapter", pruning=pruning)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model"] == "tiny" and config["rounds"] == 1 and config["pruned_value"] == pruned_value
    assert config["density"] == pytest.approx(0.5, abs=0.01) and config["modules"][Q]["shape"] == [64, 64]
    assert config["pruning"]["sparsity"] == 0.5 and config["adapter"]["targets"] == ADAPTER["targets"]
    tensors = load_file(str(folder / "adapter.safetensors"))
    assert tensors[f"{Q}.indices"].dtype == torch.int32 and tensors[f"{Q}.values"].dtype == torch.float32
    assert tensors[f"{Q}.alpha"].shape == ()
    assert torch.equal(tensors[f"{Q}.indices"], adapters[Q].mask.reshape(-1).nonzero().reshape(-1).int())

    loaded = load_sparse_adapter(base, folder)
    assert set(loaded) == set(adapters)
    with torch.no_grad():
        got = base(input_ids=_ids()).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for n, m in loaded.items():
        assert torch.equal(m.mask, adapters[n].mask) and torch.equal(m.delta, adapters[n].delta)
        assert m.pruned_value == pruned_value


def test_merge_gives_plain_model_and_save_pretrained(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = tiny_model
    adapters = _trained(model)
    with torch.no_grad():
        expected = model(input_ids=_ids()).logits
    merged = merge_adapter(model)
    assert not any(isinstance(m, DenseDeltaLinear) for m in merged.modules())
    assert type(merged.get_submodule(Q)) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=_ids()).logits, expected, rtol=1e-5, atol=1e-5)
    merged.save_pretrained(str(tmp_path / "merged"))
    assert not any(
        "delta" in k or "mask" in k for k in load_file(str(tmp_path / "merged" / "model.safetensors"))
    )
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=_ids()).logits, expected, rtol=1e-5, atol=1e-5)
    assert len(adapters) == 6


def test_file_size_scales_with_density(tiny_model, tmp_path):
    model, _ = tiny_model
    sizes = {}
    for density in (1.0, 0.5, 0.1):
        adapters = inject_rigsa(copy.deepcopy(model), {**ADAPTER, "targets": ["re:.*"]})
        if density < 1:
            random_mask_(adapters, density, seed=0)
        folder = _export(adapters, tmp_path / f"d{density}")
        sizes[density] = (folder / "adapter.safetensors").stat().st_size
    # Each kept entry costs 8 bytes (int32 index + fp32 value); the header is a few KB.
    assert sizes[0.5] / sizes[1.0] == pytest.approx(0.5, abs=0.05)
    assert sizes[0.1] / sizes[1.0] == pytest.approx(0.1, abs=0.05)


def test_reexport_replaces_folder_atomically(tiny_model, tmp_path):
    model, _ = tiny_model
    adapters = _trained(model)
    folder = _export(adapters, tmp_path / "adapter")
    (folder / "stale.txt").write_text("old")
    _export(adapters, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# ------------------------------------------------------------------------------------------------ bad adapters
def _rewrite(folder: Path, key: str, value: torch.Tensor | None) -> None:
    tensors = load_file(str(folder / "adapter.safetensors"))
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    save_file(tensors, str(folder / "adapter.safetensors"))


def _truncate(folder: Path) -> None:
    path = folder / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(folder: Path) -> None:
    (folder / "adapter.safetensors").write_bytes(b"\x00\x01not a safetensors file")


def _rename_module(folder: Path) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["modules"]["model.layers.7.self_attn.q_proj"] = cfg["modules"].pop(Q)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(folder / "adapter.safetensors"))
    for part in ("alpha", "indices", "values"):
        tensors[f"model.layers.7.self_attn.q_proj.{part}"] = tensors.pop(f"{Q}.{part}")
    save_file(tensors, str(folder / "adapter.safetensors"))


def _reshape_module(folder: Path) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["modules"][Q]["shape"] = [64, 128]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _indices(folder: Path, fn) -> None:
    idx = load_file(str(folder / "adapter.safetensors"))[f"{Q}.indices"]
    _rewrite(folder, f"{Q}.indices", fn(idx.clone()))


def _set_first(idx: torch.Tensor, value: int) -> torch.Tensor:
    idx[0] = value
    return idx


CORRUPTIONS = {
    "truncated": (_truncate, "corrupt or truncated"),
    "garbage": (_garbage, "corrupt or truncated"),
    "missing json": (lambda f: (f / "adapter_config.json").unlink(), "has no adapter_config.json"),
    "bad json": (lambda f: (f / "adapter_config.json").write_text("{nope"), "not valid JSON"),
    "different base model (names)": (_rename_module, "different base model"),
    "different base model (shapes)": (_reshape_module, "different base model"),
    "index out of range": (lambda f: _indices(f, lambda i: _set_first(i, 64 * 64 + 5)), "out of range"),
    "negative index": (lambda f: _indices(f, lambda i: _set_first(i, -1)), "out of range"),
    "duplicated indices": (lambda f: _indices(f, lambda i: _set_first(i, int(i[1]))), "duplicated"),
    "unsorted indices": (lambda f: _indices(f, lambda i: i.flip(0)), "not sorted"),
    "float indices": (lambda f: _indices(f, lambda i: i.float()), "int32/int64"),
    "values length": (
        lambda f: _rewrite(f, f"{Q}.values", load_file(str(f / "adapter.safetensors"))[f"{Q}.values"][:-1]),
        "values for",
    ),
    "missing tensor": (lambda f: _rewrite(f, f"{Q}.alpha", None), "lacks tensor"),
    "nan alpha": (lambda f: _rewrite(f, f"{Q}.alpha", torch.tensor(float("nan"))), "NaN"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_adapter_raises_one_line_config_error(tiny_model, tmp_path, case):
    model, _ = tiny_model
    base = copy.deepcopy(model)
    folder = _export(_trained(model), tmp_path / "adapter")
    corrupt, message = CORRUPTIONS[case]
    corrupt(folder)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        load_sparse_adapter(base, folder)
    assert err.value.option == "adapter.path"
    assert message in str(err.value) and "\n" not in err.value.one_line()
    # Nothing was injected: the model is untouched.
    assert not any(isinstance(m, DenseDeltaLinear) for m in base.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_non_strict_skips_missing_modules(tiny_model, tmp_path):
    model, _ = tiny_model
    base = copy.deepcopy(model)
    folder = _export(_trained(model), tmp_path / "adapter")
    _rename_module(folder)
    loaded = load_sparse_adapter(base, folder, strict=False)
    assert len(loaded) == 5 and Q not in loaded
