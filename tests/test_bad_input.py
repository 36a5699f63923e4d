"""Bad input: every case is one line ``error: <option>: <problem> -> <fix>``, no traceback, nothing written.

CLI cases run ``python -m rigsa_lightning.train`` (or ``evaluate``) in a fresh folder and check the exit status 2,
the last stderr line, and that no run folder is left (sparsity and ``trainer=gpu`` through the CLI are in
tests/test_train.py). The other cases call the raising function directly (``validate_cfg``, ``load_sparse_adapter``,
``bnb_config``, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rigsa_lightning.config.errors import ConfigError
from tests.helpers import (
    SMALL,
    assert_nothing_written,
    assert_one_line_error,
    compose_cfg,
    run_cli,
    run_dirs,
)

BASE = ["experiment=rigsa_50", *SMALL]


def validate(overrides: list[str]) -> None:
    from rigsa_lightning.config.validation import validate_cfg

    validate_cfg(compose_cfg(["experiment=rigsa_50", "model=tiny", *overrides]))


# ============================================================================================ via the CLI
def test_cli_negative_rounds(tmp_path: Path) -> None:
    res = run_cli([*BASE, "pruning.rounds=-1"], tmp_path)
    assert_one_line_error(res, "pruning.rounds", "must be >= 0", "pruning.rounds=1")
    assert_nothing_written(tmp_path)


def test_cli_more_rounds_than_the_step_budget_holds(tmp_path: Path) -> None:
    """rigsa_75 prunes after epochs 0 and 1 (8 steps each here): max_steps=10 can't reach round 2."""
    res = run_cli(["experiment=rigsa_75", *SMALL, "trainer.max_steps=10"], tmp_path)
    assert_one_line_error(res, "pruning.rounds", "2 rounds need 16 optimizer steps", "trainer.max_steps")
    assert_nothing_written(tmp_path)


def test_cli_zero_train_size(tmp_path: Path) -> None:
    res = run_cli([*BASE, "data.train_size=0"], tmp_path)
    assert_one_line_error(res, "data.train_size", "must be positive", "->")
    assert_nothing_written(tmp_path)


def test_cli_resolution_larger_than_the_source(tmp_path: Path) -> None:
    res = run_cli([*BASE, "data.resolution=16"], tmp_path)
    assert_one_line_error(res, "data.resolution", "larger than the native 8x8", "<= 8")
    assert_nothing_written(tmp_path)


def test_cli_target_pattern_matching_nothing(tmp_path: Path) -> None:
    res = run_cli([*BASE, "adapter.targets=[qq_proj]"], tmp_path)
    assert_one_line_error(res, "adapter.targets", "'qq_proj' matches no linear layer", "q_proj")
    assert_nothing_written(tmp_path)


def _empty_hf_home(tmp_path: Path) -> dict[str, str]:
    """An empty HF cache: the hub id / dataset can't come from a cache filled by an earlier session."""
    hf = tmp_path / "hf_home"
    hf.mkdir()
    return {"HF_HOME": str(hf), "HF_DATASETS_CACHE": str(hf / "datasets"), "HF_HUB_CACHE": str(hf / "hub")}


def test_cli_unknown_model_id_offline(tmp_path: Path) -> None:
    args = [*BASE, "model.name_or_path=some-org/missing-model"]
    res = run_cli(args, tmp_path, env=_empty_hf_home(tmp_path))
    assert_one_line_error(res, "model.name_or_path", "some-org/missing-model", "->")
    assert_nothing_written(tmp_path)


def test_cli_unreachable_data_source(tmp_path: Path) -> None:
    res = run_cli([*BASE, "data=mnist"], tmp_path, env=_empty_hf_home(tmp_path))
    assert_one_line_error(res, "data.source", "mnist", "data.path")
    assert_nothing_written(tmp_path)


def test_cli_missing_eval_data_dir_file(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    (bench / "piqa").mkdir(parents=True)  # the folder exists, its validation file does not
    args = [
        "experiment=rigsa_50",
        *[a for a in SMALL if not a.startswith("eval=")],
        "eval=forgetting",
        "eval.tasks=[piqa]",
        f"eval.data_dir={bench}",
        "eval.drift.enabled=false",
    ]
    res = run_cli(args, tmp_path)
    assert_one_line_error(res, "eval.data_dir", str(bench / "piqa" / "validation.jsonl"), "->")
    assert_nothing_written(tmp_path)


def _eval_args(bench: Path, *extra: str) -> list[str]:
    return [
        "experiment=rigsa_50",
        *[a for a in SMALL if not a.startswith("eval=")],
        "eval=forgetting",
        f"eval.data_dir={bench}",
        "eval.drift.enabled=false",
        *extra,
    ]


def test_cli_eval_limit_larger_than_the_split(tmp_path: Path, forgetting_data: Path) -> None:
    res = run_cli(_eval_args(forgetting_data, "eval.tasks=[piqa]", "eval.limit.piqa=5000"), tmp_path)
    line = assert_one_line_error(res, "eval.limit.piqa", "5000", "1838", "piqa/validation.jsonl")
    assert "at most 1838" in line
    assert_nothing_written(tmp_path)


def test_cli_eval_file_with_wrong_fields(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    (bench / "piqa").mkdir(parents=True)
    bad = bench / "piqa" / "validation.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    res = run_cli(_eval_args(bench, "eval.tasks=[piqa]", "eval.limit=1"), tmp_path)
    assert_one_line_error(res, "eval.data_dir", str(bad), "goal", "sol1")
    assert_nothing_written(tmp_path)


def test_cli_bad_eval_limit_keeps_earlier_results(tmp_path: Path, forgetting_data: Path) -> None:
    """A bad value next to an earlier run's results: one line before any loading, the earlier run untouched."""
    old = tmp_path / "outputs" / "runs" / "2026-01-01" / "00-00-00_rigsa_50"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"status": "completed"}')
    res = run_cli(_eval_args(forgetting_data, "eval.tasks=[hellaswag]", "eval.limit=0"), tmp_path)
    assert_one_line_error(res, "eval.limit", "got 0")
    assert run_dirs(tmp_path) == [old]
    assert (old / "metrics.json").read_text() == '{"status": "completed"}'


def test_cli_qlora_without_bitsandbytes(tmp_path: Path) -> None:
    """A bitsandbytes that can't be imported (shadowed by a module raising ImportError) stops a QLoRA run."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bitsandbytes.py").write_text("raise ImportError('No module named bitsandbytes')\n")
    pythonpath = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    res = run_cli(["experiment=qlora_r16", *SMALL], tmp_path, env={"PYTHONPATH": pythonpath})
    assert_one_line_error(res, "adapter", "QLoRA needs bitsandbytes", "adapter=lora")
    assert_nothing_written(tmp_path)


def test_cli_unknown_experiment_lists_the_valid_ones(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_33", *SMALL], tmp_path)
    line = assert_one_line_error(res, "experiment", "'rigsa_33'", "valid:")
    for name in ("rigsa_50", "rigsa_75", "lora_r16", "zero_shot"):
        assert name in line
    assert not (tmp_path / "outputs").exists()


# ============================================================================================ direct checks
@pytest.mark.parametrize("value", ["-0.1", "1.0", "1.5", "nan"])
def test_sparsity_outside_unit_interval(value: str) -> None:
    with pytest.raises(ConfigError, match=r"pruning\.sparsity.*outside \[0, 1\)"):
        validate([f"pruning.sparsity={value}"])


def test_rounds_below_zero_and_non_integer() -> None:
    with pytest.raises(ConfigError, match=r"pruning\.rounds: must be >= 0"):
        validate(["pruning.rounds=-2"])
    with pytest.raises(ConfigError, match=r"pruning\.rounds: must be an integer"):
        validate(["pruning.rounds=1.5"])


def test_more_rounds_than_trainer_epochs() -> None:
    with pytest.raises(
        ConfigError, match=r"pruning\.rounds: 2 rounds of 1 epoch\(s\) need more than max_epochs=1"
    ):
        validate(["experiment=rigsa_75", "trainer.max_epochs=1"])


@pytest.mark.parametrize(
    "key, value", [("train_size", 0), ("val_size", 0), ("test_size", -3), ("train_size", "x")]
)
def test_zero_or_invalid_split_sizes(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key}"):
        validate([f"data.{key}={value}"])


def test_empty_train_split_when_the_others_take_everything() -> None:
    from rigsa_lightning.data.sources import make_splits

    labels = torch.arange(100).remainder(10).numpy()
    cfg = {"source": "digits", "train_size": None, "val_size": 60, "test_size": 40, "seed": 0}
    with pytest.raises(ConfigError, match=r"data\.train_size: null \(all remaining\) leaves no"):
        make_splits(labels, None, cfg)


def test_resolution_checked_before_loading_for_known_sources() -> None:
    with pytest.raises(ConfigError, match=r"data\.resolution: 29 is larger than the native 28x28"):
        validate(["data=mnist5k", "data.resolution=29"])
    validate(["data=mnist5k", "data.resolution=14"])  # fine


def test_gpu_trainer_without_gpu_direct() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match=r"^trainer: "):
        validate(["trainer=gpu"])


def test_qlora_without_bitsandbytes_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    from rigsa_lightning.adapters.lora.model import bnb_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(ConfigError, match="QLoRA needs bitsandbytes, which is not installed") as info:
        bnb_config({"quant": {}})
    assert info.value.option == "adapter" and "adapter=lora" in info.value.one_line()
    with pytest.raises(ConfigError, match="QLoRA needs bitsandbytes"):
        from rigsa_lightning.config.validation import validate_cfg

        validate_cfg(compose_cfg(["experiment=qlora_r16", "model=tiny"]))


# ============================================================================================ adapter files
def _tiny(cache_dir: str, **spec: int) -> Any:
    from rigsa_lightning.models import load_model

    model, _ = load_model({"name_or_path": "tiny", "tiny": spec, "dtype": "float32"}, cache_dir)
    return model


def _export(model: Any, folder: Path, density: float = 0.5) -> Path:
    from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
    from rigsa_lightning.export import save_sparse_adapter

    adapter_cfg = {"method": "rigsa", "targets": ["q_proj", "v_proj"], "seed": 3}
    gated = inject_rigsa(model, adapter_cfg, density=density)
    return save_sparse_adapter(gated, folder, base_model="tiny", adapter_cfg=adapter_cfg, pruning_cfg={})


@pytest.fixture()
def adapter_dir(tmp_path: Path, cache_dir: str) -> Path:
    """A valid sparse adapter of the default tiny model (2 layers, hidden 64)."""
    return _export(_tiny(cache_dir), tmp_path / "adapter")


def test_adapter_of_a_model_with_other_shapes(tmp_path: Path, cache_dir: str) -> None:
    from rigsa_lightning.export import load_sparse_adapter

    folder = _export(_tiny(cache_dir, hidden_size=32, intermediate_size=64), tmp_path / "narrow")
    with pytest.raises(ConfigError, match="adapter file for a different base model: .* has shape") as info:
        load_sparse_adapter(_tiny(cache_dir), folder)
    assert info.value.option == "adapter.path" and "->" in info.value.one_line()


def test_adapter_of_a_model_with_other_module_names(tmp_path: Path, cache_dir: str) -> None:
    from rigsa_lightning.export import load_sparse_adapter

    folder = _export(_tiny(cache_dir, num_hidden_layers=3), tmp_path / "deep")  # layers.2.* missing below
    with pytest.raises(
        ConfigError, match=r"different base model: module 'model\.layers\.2\..*' is not a linear"
    ):
        load_sparse_adapter(_tiny(cache_dir), folder)


def test_evaluate_cli_rejects_an_adapter_of_another_model(tmp_path: Path, cache_dir: str) -> None:
    if not (Path(__file__).resolve().parents[1] / "rigsa_lightning" / "evaluate.py").is_file():
        pytest.skip("python -m rigsa_lightning.evaluate is not there yet")
    folder = _export(_tiny(cache_dir, hidden_size=32, intermediate_size=64), tmp_path / "narrow")
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "rigsa_lightning.evaluate",
            "threads=1",
            "model=tiny",
            "eval=none",
            "textual_mnist=false",
            f"adapter_path={folder}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_one_line_error(res, "adapter.path", "different base model", "->")
    assert_nothing_written(tmp_path)


def test_truncated_adapter_weights(adapter_dir: Path, cache_dir: str) -> None:
    from rigsa_lightning.export import load_sparse_adapter

    weights = adapter_dir / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"adapter\.path: .*adapter\.safetensors is corrupt or truncated"):
        load_sparse_adapter(_tiny(cache_dir), adapter_dir)


def test_corrupt_adapter_weights_and_config(adapter_dir: Path) -> None:
    from rigsa_lightning.export import read_sparse_adapter

    weights = adapter_dir / "adapter.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\xff" * 64 + good[64:])  # garbage header length / header
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        read_sparse_adapter(adapter_dir)
    weights.write_bytes(good)
    (adapter_dir / "adapter_config.json").write_text('{"format": "rigsa-sparse-adapter", "modu')
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_sparse_adapter(adapter_dir)


def _rewrite_indices(folder: Path, edit: Any) -> None:
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith(".indices"))
    tensors[key] = edit(tensors[key].clone())
    save_file(tensors, str(weights))


def test_adapter_index_out_of_range(adapter_dir: Path, cache_dir: str) -> None:
    from rigsa_lightning.export import load_sparse_adapter

    def too_big(idx: torch.Tensor) -> torch.Tensor:
        idx[-1] = 64 * 64  # q_proj is 64x64: valid indices are 0..4095
        return idx

    _rewrite_indices(adapter_dir, too_big)
    with pytest.raises(ConfigError, match="index 4096 is out of range for shape"):
        load_sparse_adapter(_tiny(cache_dir), adapter_dir)


def test_adapter_negative_index(adapter_dir: Path) -> None:
    from rigsa_lightning.export import read_sparse_adapter

    def negative(idx: torch.Tensor) -> torch.Tensor:
        idx[0] = -1
        return idx

    _rewrite_indices(adapter_dir, negative)
    with pytest.raises(ConfigError, match="index -1 is out of range"):
        read_sparse_adapter(adapter_dir)


def test_adapter_duplicated_indices(adapter_dir: Path, cache_dir: str) -> None:
    from rigsa_lightning.export import load_sparse_adapter

    def duplicate(idx: torch.Tensor) -> torch.Tensor:
        idx[1] = idx[0]
        return idx

    _rewrite_indices(adapter_dir, duplicate)
    with pytest.raises(ConfigError, match="duplicated indices"):
        load_sparse_adapter(_tiny(cache_dir), adapter_dir)


def test_adapter_missing_files(tmp_path: Path) -> None:
    from rigsa_lightning.export import read_sparse_adapter

    with pytest.raises(ConfigError, match="has no adapter_config.json and adapter.safetensors"):
        read_sparse_adapter(tmp_path)
