"""The adapter-method registry: every method answers every hook call sites use, unknown names are one-line errors,
a new method is one registration away, the option choices are the registered names, and no torch at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rigsa_lightning.adapters import registry
from rigsa_lightning.adapters.registry import (
    AdapterMethod,
    find_method,
    gated_methods,
    get_method,
    method_for_export,
    method_for_export_kind,
    method_names,
    register_method,
)
from rigsa_lightning.config.access import CONFIG_DIR
from rigsa_lightning.config.errors import ConfigError

BUILTINS = ("rigsa", "random_mask", "lora", "qlora", "full", "none")
# What each call site asked of the method names before the registry (the behaviour the flags keep).
FLAGS = {  # name: (gated, prunes, quantized, trains, export_kind)
    "rigsa": (True, True, False, True, "sparse"),
    "random_mask": (True, False, False, True, "sparse"),
    "lora": (False, False, False, True, "peft"),
    "qlora": (False, False, True, True, "peft"),
    "full": (False, False, False, True, "full"),
    "none": (False, False, False, False, None),
}
HOOKS = (
    "check",
    "prepare",
    "param_groups",
    "parameter_counts",
    "export",
    "detects",
    "load_export",
    "merge",
    "run_tags",
    "config_density",
)


def test_builtin_methods_and_their_flags() -> None:
    assert method_names() == BUILTINS
    assert registry.METHODS == BUILTINS
    assert gated_methods() == ("rigsa", "random_mask")
    for name, (gated, prunes, quantized, trains, kind) in FLAGS.items():
        method = get_method(name)
        assert method.name == name and find_method(name) is method
        flags = (method.gated, method.prunes, method.quantized, method.trains)
        assert flags == (gated, prunes, quantized, trains)
        assert method.export_kind == kind and (method.export_file is None) == (kind is None)
        for hook in HOOKS:
            assert callable(getattr(method, hook)), (name, hook)
    assert method_for_export_kind("sparse").name == "rigsa"
    assert method_for_export_kind("peft").name == "lora"
    assert method_for_export_kind("full").name == "full"


def test_export_file_names_are_the_implementations() -> None:
    from rigsa_lightning.adapters.full.model import FULL_WEIGHTS
    from rigsa_lightning.adapters.lora.model import ADAPTER_WEIGHTS
    from rigsa_lightning.export import WEIGHTS_NAME

    expected = {"sparse": WEIGHTS_NAME, "peft": ADAPTER_WEIGHTS, "full": FULL_WEIGHTS}
    for name in method_names():
        method = get_method(name)
        if method.export_kind is not None:
            assert method.export_file == expected[method.export_kind], name


def test_unknown_method_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        get_method("lora2")
    err = info.value
    assert err.option == "adapter.method" and "'lora2'" in err.problem
    assert "\n" not in err.one_line() and all(name in str(err.fix) for name in BUILTINS)
    assert find_method("lora2") is None and find_method(None) is None
    with pytest.raises(ValueError):
        method_for_export_kind("nope")


def test_options_choices_are_the_registry() -> None:
    from rigsa_lightning.config.options import METHODS, OPTIONS

    assert METHODS == method_names()
    assert OPTIONS["adapter.method"].choices == method_names()
    # and every method has its config group file naming it
    for name in method_names():
        data = yaml.safe_load((Path(CONFIG_DIR) / "adapter" / f"{name}.yaml").read_text())
        assert data["method"] == name


def test_options_report_and_registry_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import rigsa_lightning.config.options, rigsa_lightning.report.table, rigsa_lightning.report.figures\n"
        "from rigsa_lightning.adapters.registry import get_method, gated_methods\n"
        "get_method('rigsa'); gated_methods()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_config_density_as_the_report_reads_it() -> None:
    values = {"pruning.sparsity": 0.75, "adapter.density": 0.1}

    def get(key: str) -> float:
        return values.get(key, float("nan"))

    assert get_method("rigsa").config_density(get) == pytest.approx(0.25)
    assert get_method("random_mask").config_density(get) == pytest.approx(0.1)
    values.pop("adapter.density")
    assert get_method("random_mask").config_density(get) == pytest.approx(0.25)
    assert get_method("full").config_density(get) == 1.0
    for name in ("lora", "qlora", "none"):
        assert get_method(name).config_density(get) is None


# ------------------------------------------------------------------------------- every hook on a tiny model
def _cfg(name: str) -> Any:
    from hydra import compose, initialize_config_dir

    overrides = [f"adapter={name}", "model=tiny", "model.dtype=float32"]
    if name == "random_mask":
        overrides.append("adapter.density=0.5")
    if name == "qlora":
        overrides.append("adapter.quant.compute_dtype=float32")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("name", BUILTINS)
def test_every_method_answers_every_hook(name: str, cache_dir: str, tmp_path: Path) -> None:
    """prepare -> param_groups -> parameter_counts -> export -> detects -> load_export -> merge, per method."""
    from rigsa_lightning.adapters import export_adapter, param_groups, prepare_model
    from rigsa_lightning.evaluate import adapter_kind, attach_adapter
    from rigsa_lightning.models import load_model

    method = get_method(name)
    cfg = _cfg(name)
    if method.quantized:
        pytest.importorskip("bitsandbytes")
    method.check(cfg)
    assert all(isinstance(t, str) for t in method.run_tags(cfg))
    prepared = prepare_model(cfg, cache_dir)
    assert prepared.method == name and bool(prepared.gated) == method.gated
    groups = param_groups(prepared, cfg.adapter)
    assert bool(groups) == method.trains
    counts = method.parameter_counts(prepared)
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    assert counts["params/trainable"] == trainable and (trainable > 0) == method.trains
    if not method.trains:
        assert counts["params/adapter_nnz"] == 0
    elif method.gated:
        assert counts["params/adapter_entries"] >= counts["params/adapter_nnz"] > 0
    elif method.trains:
        assert counts["params/adapter_nnz"] == trainable

    folder = export_adapter(prepared, cfg, tmp_path / "adapter")
    if method.export_kind is None:
        assert folder is None and not (tmp_path / "adapter").exists()
        return
    assert folder == tmp_path / "adapter" and method.detects(folder)
    assert method_for_export(folder).export_kind == method.export_kind == adapter_kind(folder)
    if method.quantized:
        return  # a 4-bit base has its own loader; the PEFT round trip is the lora case
    ids = torch.randint(0, 1000, (2, 10))
    expected = _logits(prepared.model, ids)
    fresh, _ = load_model(cfg.model, cache_dir)
    loaded, kind = attach_adapter(fresh, folder)
    assert kind == method.export_kind
    torch.testing.assert_close(_logits(loaded, ids), expected, rtol=1e-5, atol=1e-5)
    plain = method_for_export_kind(kind).merge(loaded)
    torch.testing.assert_close(_logits(plain, ids), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- a new method
class _Loaded:
    """What the dummy method's loader returns (and its merge saves)."""

    def __init__(self, model: Any, folder: Path) -> None:
        self.model, self.folder, self.merged = model, folder, False

    def save_pretrained(self, folder: str, safe_serialization: bool = True) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, "merged.txt").write_text("merged" if self.merged else "not merged")


class _DummyMethod(AdapterMethod):
    name = "dummy_test"
    export_kind = "dummy"
    export_file = "dummy.bin"

    def export(self, prepared: Any, cfg: Any, folder: Path) -> Path | None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.export_file).write_bytes(b"x")
        return folder

    def load_export(self, model: Any, folder: Path) -> Any:
        return _Loaded(model, folder)

    def merge(self, model: Any) -> Any:
        model.merged = True
        return model


class _Tokenizer:
    def save_pretrained(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, "tokenizer.txt").write_text("tok")


def test_registering_a_method_makes_it_available_everywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rigsa_lightning.adapters import PreparedModel, export_adapter
    from rigsa_lightning.evaluate import adapter_kind, attach_adapter, merge_and_save

    get_method("rigsa")  # built-ins loaded before the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    dummy = register_method(_DummyMethod())
    assert get_method("dummy_test") is dummy and method_names() == (*BUILTINS, "dummy_test")
    assert registry.METHODS[-1] == "dummy_test" and "dummy_test" not in gated_methods()
    with pytest.raises(ValueError, match="already registered"):
        register_method(_DummyMethod())

    prepared = PreparedModel(model=None, tokenizer=None, method="dummy_test", model_key="k")  # type: ignore[arg-type]
    folder = export_adapter(prepared, None, tmp_path / "adapter")  # type: ignore[arg-type]
    assert folder is not None and method_for_export(folder) is dummy and adapter_kind(folder) == "dummy"
    loaded, kind = attach_adapter("model", folder)
    assert isinstance(loaded, _Loaded) and loaded.model == "model" and kind == "dummy"
    merged = merge_and_save(loaded, kind, tmp_path / "merged", _Tokenizer())
    assert (merged / "merged.txt").read_text() == "merged"

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="dummy.bin"):  # the new format is named in the error
        adapter_kind(tmp_path / "empty")


def test_each_run_seed_is_a_replicate(cache_dir: str) -> None:
    """``seed`` varies the initial ΔW and the random mask (and the training order); ``seed=0`` keeps the adapter's
    own seeds, so a study's seed-0 jobs are the runs they were."""
    from omegaconf import OmegaConf

    from rigsa_lightning.adapters import prepare_model, replicate_seeds

    cfg = _cfg("random_mask")  # density 0.5
    cfg.seed = 0
    assert replicate_seeds(cfg) is cfg
    cfg.seed = 2
    shifted = replicate_seeds(cfg)
    assert (shifted.adapter.seed, shifted.adapter.mask_seed) == (
        cfg.adapter.seed + 2,
        cfg.adapter.mask_seed + 2,
    )
    assert OmegaConf.select(cfg, "adapter.seed") == 1234  # the run's own config is left as written

    def draws(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg.seed = seed
        mod = next(iter(prepare_model(cfg, cache_dir).gated.values()))
        return mod.delta.detach().clone(), mod.mask.detach().clone()

    (d0, m0), (d0b, m0b), (d1, m1) = draws(0), draws(0), draws(1)
    assert torch.equal(d0, d0b) and torch.equal(m0, m0b)  # a seed is reproducible
    assert not torch.equal(d0, d1) and not torch.equal(m0, m1)  # another seed is another replicate
