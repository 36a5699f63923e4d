"""RIGSA adapters as PEFT SHiRA folders: PEFT's own loader and merge give this package's merged model bit for bit."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
from rigsa_lightning.adapters.rigsa.peft_export import (
    SPLIT_MANIFEST,
    export_peft,
    load_peft_export,
    max_r,
)
from rigsa_lightning.export import main, merge_adapter, save_sparse_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER = {"method": "rigsa", "seed": 1234, "alpha_init": 1e-6, "gate": "matrix", "targets": TARGETS}
LOW = (0.05, 0.12, 0.2, 0.3, 0.4)  # per-matrix densities of the single-folder case (5-40 %)


def _ids() -> torch.Tensor:
    return torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(7))


def _rigsa(model, densities, pruned_value: str = "zero") -> dict:
    """A real inject_rigsa adapter with a hand-set mask of the given density per matrix, trained-looking ΔW and
    per-matrix gates of both signs."""
    adapters = inject_rigsa(model, ADAPTER)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i, (name, m) in enumerate(adapters.items()):
            density = densities(name) if callable(densities) else densities[i % len(densities)]
            m.delta.add_(torch.randn(m.delta.shape, generator=g) * 0.05)
            mask = torch.rand(m.delta.shape, generator=g) < density
            m.apply_mask(mask, rewind=False, pruned_value=pruned_value)
            m.alpha.fill_((-1) ** i * (0.3 + 0.07 * i))
    return adapters


def _save(adapters, folder: Path, pruned_value: str = "zero") -> Path:
    return save_sparse_adapter(
        adapters,
        folder,
        base_model="tiny",
        adapter_cfg=ADAPTER,
        pruning_cfg={"enabled": True, "rounds": 1, "sparsity": 0.8, "pruned_value": pruned_value},
    )


def _reference(model) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """This package's merge (``merge_adapter``): the merged weights and their logits."""
    with torch.no_grad():
        merged = merge_adapter(model)
        logits = merged(input_ids=_ids()).logits
    return {k: v.clone() for k, v in merged.state_dict().items()}, logits


def _assert_same_model(peft_merged, weights: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
    state = peft_merged.state_dict()
    assert set(state) == set(weights)
    different = [k for k in weights if not torch.equal(state[k], weights[k])]
    assert not different, f"merged weights differ: {different[:3]}"
    with torch.no_grad():
        assert torch.equal(peft_merged(input_ids=_ids()).logits, logits)


def _check_folder_format(folder: Path, shapes: dict[str, list[int]]) -> int:
    """SHiRA's layout: per module r·(in+out) entries, int32 (2, N) indices in range, no duplicates, fp32 values;
    returns the folder's r."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SHIRA" and cfg["mask_type"] != "random"
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    r = cfg["r"]
    for name in cfg["target_modules"]:
        out_f, in_f = shapes[name]
        idx = tensors[f"base_model.model.{name}.shira_indices"]
        val = tensors[f"base_model.model.{name}.shira_weight"]
        assert idx.dtype == torch.int32 and val.dtype == torch.float32
        assert idx.shape == (2, r * (in_f + out_f)) and val.shape == (r * (in_f + out_f),)
        assert r <= max_r((out_f, in_f)) and r * (in_f + out_f) <= in_f * out_f
        flat = idx[0].long() * in_f + idx[1].long()
        assert int(idx[0].max()) < out_f and int(idx[1].max()) < in_f and int(idx.min()) >= 0
        assert torch.unique(flat).numel() == flat.numel()
    assert len(tensors) == 2 * len(cfg["target_modules"])
    return r


def test_single_folder_merges_bit_identically(tiny_model, tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel

    from rigsa_lightning.models import load_model

    model, _ = tiny_model
    adapters = _rigsa(model, LOW)
    src = _save(adapters, tmp_path / "run" / "adapter")
    shapes = {n: [m.out_features, m.in_features] for n, m in adapters.items()}
    kept = {n: (m.mask.clone(), (m.alpha * m.delta).detach().clone()) for n, m in adapters.items()}
    densities = [m.density() for m in adapters.values()]
    assert 0.03 < min(densities) and max(densities) < 0.43
    weights, logits = _reference(model)

    main([str(src), "--to", "peft", str(tmp_path / "peft")])
    out = capsys.readouterr().out
    assert "peft: wrote" in out and "split" not in out
    folder = tmp_path / "peft"
    assert not (folder / SPLIT_MANIFEST).exists()
    r = _check_folder_format(folder, shapes)
    # The kept entries hold α·ΔW, every other stored entry is a zero at a position the adapter does not use.
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for name, (mask, update) in kept.items():
        idx = tensors[f"base_model.model.{name}.shira_indices"].long()
        val = tensors[f"base_model.model.{name}.shira_weight"]
        stored_kept = mask[idx[0], idx[1]]
        assert int(stored_kept.sum()) == int(mask.sum())
        assert torch.equal(val[stored_kept], update[idx[0], idx[1]][stored_kept])
        assert torch.equal(val[~stored_kept], torch.zeros(int((~stored_kept).sum())))
    assert r == max(-(-int(mask.sum()) // sum(shapes[n])) for n, (mask, _) in kept.items())

    base, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    peft_model = PeftModel.from_pretrained(base, str(folder))
    with torch.no_grad():  # PEFT's unmerged forward (W0 + sparse update per call) gives the merged logits too
        assert torch.equal(peft_model(input_ids=_ids()).logits, logits)
    _assert_same_model(peft_model.merge_and_unload(), weights, logits)
    _assert_same_model(_run_card_code(folder, tiny_model_dir), weights, logits)


def _run_card_code(folder: Path, model_dir: str):
    """Run the python block of the folder's README.md (base model id and folder filled in); returns ``merged``."""
    card = (folder / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'from_pretrained("tiny", dtype="float32")' in code and "merge_and_unload" in code
    code = code.replace('"tiny"', repr(model_dir)).replace("<this folder>", str(folder))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the card's code, as a user runs it
    return namespace["merged"]


def test_split_over_several_folders_merges_bit_identically(tiny_model, tiny_model_dir, tmp_path, capsys):
    """q/o at 90 % need r >= 29 but k/v (32x64) allow r <= 21; gate_proj dense (128x64) exceeds any r: its entries
    go to two folders. PEFT loads every folder (load_adapter) and merges them: exact."""
    from peft import PeftModel

    from rigsa_lightning.models import load_model

    def density(name: str) -> float:
        if name.endswith(("q_proj", "o_proj")):
            return 0.9
        if name.endswith("layers.0.mlp.gate_proj"):
            return 1.01  # every entry kept
        return 0.3

    model, _ = tiny_model
    adapters = _rigsa(model, density)
    src = _save(adapters, tmp_path / "run" / "adapter")
    shapes = {n: [m.out_features, m.in_features] for n, m in adapters.items()}
    weights, logits = _reference(model)

    main([str(src), "--to", "peft", str(tmp_path / "peft")])
    out = capsys.readouterr().out
    assert "split into" in out and "load_adapter" in out
    manifest = json.loads((tmp_path / "peft" / SPLIT_MANIFEST).read_text())
    names = manifest["adapters"]
    assert len(names) >= 3 and all(f"{tmp_path / 'peft' / n}" in out for n in names)
    rs = [_check_folder_format(tmp_path / "peft" / n, shapes) for n in names]
    assert rs == manifest["r"] and len(set(rs)) >= 2
    holders = [
        n
        for n, mods in zip(names, manifest["modules"], strict=True)
        if "model.layers.0.mlp.gate_proj" in mods
    ]
    assert len(holders) == 2  # the dense non-square matrix is split over two folders

    # What a PEFT user types: from_pretrained the first folder, load_adapter the others, merge them all.
    base, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft" / names[0]), adapter_name=names[0])
    for n in names[1:]:
        peft_model.load_adapter(str(tmp_path / "peft" / n), adapter_name=n)
    _assert_same_model(peft_model.merge_and_unload(adapter_names=names), weights, logits)
    # The card's own code block, run as it is written (only the placeholders filled in).
    _assert_same_model(_run_card_code(tmp_path / "peft", tiny_model_dir), weights, logits)
    # This package's loader: every part active at once.
    base2, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    _assert_same_model(load_peft_export(base2, tmp_path / "peft").merge_and_unload(), weights, logits)


def test_bfloat16_base_with_values_rounded_first(tiny_model_dir, tmp_path):
    """On a bf16 base, merge adds the update in bf16: ``--dtype bfloat16`` rounds α·ΔW first and PEFT's merge matches."""
    from peft import PeftModel

    from rigsa_lightning.models import load_model

    model, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "bfloat16"})
    base = copy.deepcopy(model)
    src = _save(_rigsa(model, LOW), tmp_path / "adapter")
    with torch.no_grad():
        merged = merge_adapter(model)
    export_peft(src, tmp_path / "peft", dtype="bfloat16")
    assert 'from_pretrained("tiny", dtype="bfloat16")' in (tmp_path / "peft" / "README.md").read_text()
    peft_merged = PeftModel.from_pretrained(base, str(tmp_path / "peft")).merge_and_unload()
    state = peft_merged.state_dict()
    for key, value in merged.state_dict().items():
        assert state[key].dtype == torch.bfloat16 and torch.equal(state[key], value), key


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_errors_are_one_line(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    dense = _save(_rigsa(model, LOW, pruned_value="init"), tmp_path / "init" / "adapter", pruned_value="init")
    err = _one_line_error(capsys, [str(dense), "--to", "peft", str(tmp_path / "out")])
    assert "pruned_value=init" in err and "dense" in err and not (tmp_path / "out").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(capsys, [str(empty), "--to", "peft", str(tmp_path / "out")])
    assert "not a RIGSA export" in err

    err = _one_line_error(capsys, [str(tmp_path / "missing"), "--to", "peft", str(tmp_path / "out")])
    assert "is not a folder" in err


def test_destination_and_format_errors(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    src = _save(_rigsa(model, LOW), tmp_path / "run" / "adapter")
    err = _one_line_error(capsys, [str(src), "--to", "peft", str(src)])
    assert err.startswith("error: --to:") and "overlaps" in err
    err = _one_line_error(capsys, [str(src), "--to", "onnx", str(tmp_path / "x")])
    assert "unknown format 'onnx'" in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    err = _one_line_error(capsys, [str(src), "--to", "peft", str(other)])
    assert "is not a PEFT export" in err and (other / "keep.txt").read_text() == "user data"
    # A PEFT folder given as the source is named as such.
    main([str(src), "--to", "peft", str(tmp_path / "peft")])
    capsys.readouterr()
    err = _one_line_error(capsys, [str(tmp_path / "peft"), "--to", "peft", str(tmp_path / "peft2")])
    assert "PEFT adapter, not a RIGSA export" in err
    # Re-exporting over a previous PEFT export replaces it.
    main([str(src), "--to", "peft", str(tmp_path / "peft")])
    assert "peft: wrote" in capsys.readouterr().out


def test_end_of_run_export_peft_and_its_early_check(tiny_model, tiny_model_dir, tmp_path):
    """``export.peft: true``: the run's adapter/ also as adapter_peft/ (cards in both, the metrics name it); with
    ``pruning.pruned_value=init`` the option is refused before anything runs."""
    from peft import PeftModel

    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.options import check_relations
    from rigsa_lightning.export import finish_run_exports
    from rigsa_lightning.models import load_model

    model, _ = tiny_model
    run = tmp_path / "run"
    _save(_rigsa(model, LOW), run / "adapter")
    weights, logits = _reference(model)
    cfg = {"adapter": {"method": "rigsa"}, "model": {"dtype": "float32"}, "export": {"peft": True}}
    added = finish_run_exports(cfg, run, {"textual_mnist/acc": 0.625, "seed": 3})
    assert added == {"adapter/peft_path": str(run / "adapter_peft"), "adapter/peft_adapters": 1}
    for sub in ("adapter", "adapter_peft"):
        assert "Textual MNIST test accuracy: **0.6250**" in (run / sub / "README.md").read_text()
    base, _ = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    _assert_same_model(
        PeftModel.from_pretrained(base, str(run / "adapter_peft")).merge_and_unload(), weights, logits
    )

    # Off (the default), or a method without a gated adapter: cards only.
    for off in ({**cfg, "export": {"peft": False}}, {**cfg, "adapter": {"method": "lora"}}):
        other = tmp_path / f"other_{off['adapter']['method']}_{off['export']['peft']}"
        shutil.copytree(run / "adapter", other / "adapter")
        assert finish_run_exports(off, other, {}) == {} and not (other / "adapter_peft").exists()
        assert (other / "adapter" / "README.md").is_file()

    bad = {**cfg, "pruning": {"pruned_value": "init"}}
    with pytest.raises(
        ConfigError, match=r"^export\.peft: pruning\.pruned_value=init .* -> set export\.peft=false"
    ):
        check_relations(bad)
    check_relations({**bad, "adapter": {"method": "lora"}})  # not a gated adapter: the option does not apply


def test_run_folder_instead_of_its_adapter_names_the_adapter(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    _save(_rigsa(model, LOW), tmp_path / "run" / "adapter")
    err = _one_line_error(capsys, [str(tmp_path / "run"), "--to", "peft", str(tmp_path / "out")])
    assert err.endswith(f"-> use {tmp_path / 'run' / 'adapter'}")
