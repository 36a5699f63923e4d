"""Sparse storage inside the training loop (adapter.storage): the same training as dense storage, checkpoints in
the sparse layout, optimizer state carried across storage changes, random masks sparse from the start."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.storage import remap_param_state, to_dense_storage, to_sparse_storage
from tests.helpers import SMALL, load_ckpt, only_run_dir, run_cli, tail

EXACT = [*SMALL, "trainer.precision=32-true", "adapter.sparse_grad=dense"]


def _train(tmp_path: Path, name: str, args: list[str]) -> Path:
    root = tmp_path / name
    root.mkdir()
    res = run_cli(args, root)
    assert res.returncode == 0, tail(res)
    return only_run_dir(root)


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter.safetensors"))


def _assert_close_adapters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key.endswith(".indices"):
            assert torch.equal(a[key], b[key]), key  # the same entries survive every prune
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-7, msg=key)


def test_sparse_storage_trains_like_dense_storage_across_two_prunes(tmp_path: Path) -> None:
    """rigsa_75 (two rounds, the second ranks the re-densified adapter) with AdamW moments kept through the prunes
    (pruning.reset_optimizer=false, so a wrong gather/scatter of the moments would change the trajectory)."""
    args = ["experiment=rigsa_75", *EXACT, "pruning.reset_optimizer=false"]
    dense = _train(tmp_path, "dense", [*args, "adapter.storage=dense"])
    sparse = _train(tmp_path, "sparse", [*args, "adapter.storage=sparse"])
    _assert_close_adapters(_adapter(dense), _adapter(sparse))
    m_dense = json.loads((dense / "metrics.json").read_text())
    m_sparse = json.loads((sparse / "metrics.json").read_text())
    assert m_dense["adapter/density"] == m_sparse["adapter/density"] == 0.25
    assert abs(m_dense["final_val/loss"] - m_sparse["final_val/loss"]) < 1e-4

    # Training state per epoch (after its first step): dense storage stays at 17 B per entry (ΔW 4 + grad 4 +
    # AdamW 8 + mask 1); sparse storage falls to 20 B per kept entry (value 4 + grad 4 + AdamW 8 + index 4).
    hist_dense, hist_sparse = m_dense["memory/adapter_state"], m_sparse["memory/adapter_state"]
    assert [h["epoch"] for h in hist_sparse] == [0, 1, 2]
    assert [h["storage"] for h in hist_sparse] == ["dense", "sparse", "sparse"]
    assert [h["storage"] for h in hist_dense] == ["dense"] * 3
    numel = hist_dense[0]["nnz"]
    steps = 4 * 14  # AdamW's fp32 `step` tensor of each of the 14 adapted matrices
    for h in hist_dense:
        assert h["total_bytes"] - h["alpha_bytes"] == 17 * numel + steps
    for h in hist_sparse[1:]:
        assert h["total_bytes"] - h["alpha_bytes"] == 20 * h["nnz"] + steps
    assert [h["nnz"] for h in hist_sparse] == [numel, numel // 2, numel // 4]
    assert hist_sparse[2]["total_bytes"] / hist_dense[2]["total_bytes"] < 0.3  # 20 x 0.25 / 17 = 0.294

    # Checkpoint layouts: dense ΔW + bool masks, or kept values + int32 indices (4x fewer entries at 25%).
    sd_dense = load_ckpt(dense / "checkpoints" / "last.ckpt")
    sd_sparse = load_ckpt(sparse / "checkpoints" / "last.ckpt")
    dense_keys = [k for k in sd_dense["state_dict"] if k.endswith(".delta")]
    sparse_keys = [k for k in sd_sparse["state_dict"] if k.endswith(".values")]
    assert dense_keys and len(dense_keys) == len(sparse_keys)
    assert not any(k.endswith((".delta", ".mask")) for k in sd_sparse["state_dict"])
    n_dense = sum(sd_dense["state_dict"][k].numel() for k in dense_keys)
    n_sparse = sum(sd_sparse["state_dict"][k].numel() for k in sparse_keys)
    assert n_sparse == round(0.25 * n_dense)
    # Optimizer state follows the layout: AdamW moments of the kept values only.
    moments = [
        s["exp_avg"].numel()
        for s in sd_sparse["optimizer_states"][0]["state"].values()
        if s["exp_avg"].dim() == 1
    ]
    assert sum(moments) == n_sparse


def test_random_mask_is_stored_sparse_from_the_start(tmp_path: Path) -> None:
    args = ["experiment=random_mask_50", *EXACT]
    dense = _train(tmp_path, "dense", [*args, "adapter.storage=dense"])
    sparse = _train(tmp_path, "sparse", [*args])  # adapter.storage=auto: sparse on one device
    _assert_close_adapters(_adapter(dense), _adapter(sparse))
    state = load_ckpt(sparse / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.endswith(".values") for k in state) and not any(k.endswith(".mask") for k in state)
    metrics = json.loads((sparse / "metrics.json").read_text())
    assert metrics["adapter/density"] == 0.5
    # What is trained is what is stored: the kept values and the gates.
    assert metrics["params/trainable"] == metrics["params/trainable_alive"]
    assert metrics["params/adapter_nnz"] == metrics["params/adapter_entries"] // 2


def test_bad_storage_value_is_one_line(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", *SMALL, "adapter.storage=compressed"], tmp_path)
    assert res.returncode == 2, tail(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: adapter.storage"), tail(res)
    assert "auto" in lines[-1] and "Traceback" not in res.stderr


def _pruned(seed: int = 0) -> DenseDeltaLinear:
    gen = torch.Generator().manual_seed(seed)
    mod = DenseDeltaLinear(nn.Linear(12, 9), init_seed=3)
    with torch.no_grad():
        mod.delta.add_(torch.randn(mod.delta.shape, generator=gen))
    mod.apply_mask(torch.rand(9, 12, generator=gen) < 0.3)
    return mod


def test_optimizer_state_round_trips_between_storages() -> None:
    dense = _pruned()
    sparse = to_sparse_storage(dense)
    mask = dense.mask
    state = {
        "step": torch.tensor(7.0),
        "exp_avg": torch.randn(9, 12) * mask,  # dense storage: zero moments at pruned entries
        "exp_avg_sq": torch.rand(9, 12) * mask,
    }
    gathered = remap_param_state(state, dense, sparse)
    assert gathered["step"] is state["step"]
    assert torch.equal(gathered["exp_avg"], state["exp_avg"][mask])  # row-major order of the kept entries
    back = remap_param_state(gathered, sparse, to_dense_storage(sparse))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(back[key], state[key])


def test_sparse_storage_under_ddp_is_refused_before_anything_runs(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", *SMALL, "trainer=ddp", "adapter.storage=sparse"], tmp_path)
    assert res.returncode == 2, tail(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: adapter.storage") and "single-device" in lines[-1], tail(res)
    assert "adapter.storage=auto" in lines[-1] and "Traceback" not in res.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))  # nothing written
