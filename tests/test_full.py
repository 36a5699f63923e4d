"""Full fine-tuning of the target matrices and ``none`` (zero-shot): what trains, counts, export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rigsa_lightning.adapters.full.model import (
    apply_full,
    apply_none,
    full_param_groups,
    full_stats,
    load_full_weights,
    save_full_weights,
)
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.models import load_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def full_cfg(**over) -> dict:
    cfg = {"method": "full", "targets": list(TARGETS), "lr": 1e-3, "weight_decay": 0.0}
    cfg.update(over)
    return cfg


def random_batch(n: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2000, (n, t), generator=torch.Generator().manual_seed(seed))


def test_full_trains_only_target_weights(tiny_model) -> None:
    model, _ = tiny_model
    targets = apply_full(model, full_cfg())
    assert len(targets) == 2 * 7
    expected = sum(m.in_features * m.out_features for m in targets.values())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    assert set(trainable) == {f"{name}.weight" for name in targets}
    stats = full_stats(targets)
    assert stats["trainable_params"] == expected and stats["target_matrices"] == 14
    assert stats["adapter_bytes"] == 4 * expected

    groups = full_param_groups(targets, full_cfg(lr=2e-5, weight_decay=0.01))
    assert len(groups) == 1 and groups[0]["lr"] == 2e-5 and groups[0]["weight_decay"] == 0.01
    assert sum(p.numel() for p in groups[0]["params"]) == expected

    ids = random_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_full_subset_and_errors(tiny_model) -> None:
    model, _ = tiny_model
    targets = apply_full(model, full_cfg(targets=["q_proj", r"re:layers\.1\.mlp\.up_proj"]))
    assert list(targets) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.up_proj",
    ]
    with pytest.raises(ConfigError, match="adapter.targets"):
        apply_full(model, full_cfg(targets=["nope_proj"]))
    # A target weight shared with a non-target module is refused (training it would change that module too).
    attn = model.model.layers[0].self_attn
    attn.o_proj.weight = attn.q_proj.weight
    with pytest.raises(ConfigError, match="tied"):
        apply_full(model, full_cfg(targets=["q_proj"]))


def test_none_freezes_everything(tiny_model) -> None:
    model, _ = tiny_model
    apply_none(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0


def test_full_weights_export_roundtrip(tiny_model_dir: str, tmp_path: Path) -> None:
    model, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    cfg = full_cfg()
    targets = apply_full(model, cfg)
    opt = torch.optim.AdamW(full_param_groups(targets, cfg))
    ids = random_batch()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    folder = tmp_path / "adapter"
    path = save_full_weights(targets, folder, base_model=tiny_model_dir)
    assert path == folder / "full_weights.safetensors"
    meta = json.loads((folder / "full_weights.json").read_text())
    assert (
        meta["base_model"] == tiny_model_dir and meta["num_params"] == full_stats(targets)["trainable_params"]
    )
    assert meta["targets"]["model.layers.0.mlp.down_proj"] == [64, 128]
    assert full_stats(targets, folder)["adapter_bytes_on_disk"] > 4 * meta["num_params"]
    assert sorted(p.name for p in folder.iterdir()) == ["full_weights.json", "full_weights.safetensors"]

    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    fresh, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    with torch.no_grad():
        before = fresh(input_ids=ids).logits
    assert not torch.allclose(before, expected)  # the steps changed the model
    assert len(load_full_weights(fresh, folder)) == 14
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, expected, atol=1e-6, rtol=0)
