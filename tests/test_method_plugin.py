"""A method is one module plus one YAML: a method written outside the package (LN tuning: only the RMSNorm weights
train) is registered through ``RIGSA_METHOD_MODULES``, its config group file found through Hydra's
``hydra.searchpath``, and it runs end to end on the tiny model; the option check and the report learn a method
registered after they were imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rigsa_lightning.adapters import registry
from rigsa_lightning.adapters.registry import AdapterMethod, get_method, method_names, register_method
from rigsa_lightning.config.access import CONFIG_DIR
from rigsa_lightning.config.errors import ConfigError
from tests.helpers import only_run_dir, run_cli, tail

# The plugin: a complete method module, as a user would write it next to their own code (no torch at import).
PLUGIN = '''
"""LN tuning: train only the RMSNorm weights of the base model (every other parameter frozen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rigsa_lightning.adapters import PreparedModel, load_base
from rigsa_lightning.adapters.registry import AdapterMethod, register_method


def norm_weights(model: Any) -> dict[str, Any]:
    return {name: p for name, p in model.named_parameters() if name.endswith("norm.weight")}


class LnTuning(AdapterMethod):
    name = "ln_tuning"
    export_kind = "ln"
    export_file = "ln_weights.safetensors"
    label = "LN tuning"
    order = 6
    color = "#17becf"

    def prepare(self, cfg: Any, cache_dir: Any) -> PreparedModel:
        model, tok, key = load_base(cfg, cache_dir)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in norm_weights(model).values():
            p.requires_grad_(True)
        return PreparedModel(model, tok, self.name, key)

    def param_groups(self, prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
        params = list(norm_weights(prepared.model).values())
        return [{"params": params, "lr": float(adapter_cfg.lr), "weight_decay": float(adapter_cfg.weight_decay)}]

    def export(self, prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in norm_weights(prepared.model).items()}
        save_file(tensors, str(folder / self.export_file))
        return folder

    def load_export(self, model: Any, folder: Path) -> Any:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(folder) / self.export_file)), strict=False)
        return model


register_method(LnTuning())
'''

YAML = """\
# LN tuning (a method from outside the package): only the RMSNorm weights train.
method: ln_tuning
targets: []
lr: 0.05
weight_decay: 0.0
"""


def _write_plugin(root: Path) -> tuple[Path, Path]:
    """The plugin module folder and the extra config folder (``<conf>/adapter/ln_tuning.yaml``)."""
    code, conf = root / "plugins", root / "conf"
    code.mkdir()
    (code / "ln_tuning_method.py").write_text(textwrap.dedent(PLUGIN))
    (conf / "adapter").mkdir(parents=True)
    (conf / "adapter" / "ln_tuning.yaml").write_text(YAML)
    return code, conf


def _plugin_env(code: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, registry.METHOD_MODULES_ENV: "ln_tuning_method"}


def test_a_method_from_outside_the_package_runs_end_to_end(tmp_path: Path, tiny_model_dir: str) -> None:
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rigsa_lightning.pruning import PruningSchedule

    code, conf = _write_plugin(tmp_path)
    args = [
        f"hydra.searchpath=[file://{conf}]",
        "adapter=ln_tuning",
        "model=tiny",
        "debug=fast",
        "eval.enabled=false",
        "print_config=false",
    ]
    res = run_cli(args, tmp_path, env=_plugin_env(code))
    assert res.returncode == 0, tail(res)
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "ln_tuning" and metrics["status"] == "completed"
    # the tiny Llama: 2 blocks x 2 RMSNorms + the final norm, 64 weights each; nothing else trains
    assert metrics["params/trainable"] == metrics["params/adapter_nnz"] == (2 * 2 + 1) * 64
    run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    epochs = PruningSchedule.from_cfg(
        run_cfg.pruning
    ).total_epochs  # every method trains the schedule's epochs
    assert metrics["time/steps_n"] == 2 * epochs  # debug=fast: 2 batches per epoch
    assert 0.0 <= metrics["textual_mnist/acc"] <= 1.0

    # the export is the plugin's own format, holding exactly the trained norm weights
    folder = Path(metrics["adapter/path"])
    weights = load_file(str(folder / "ln_weights.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype="float32")
    norms = {n: p for n, p in base.named_parameters() if n.endswith("norm.weight")}
    assert sorted(weights) == sorted(norms)
    assert all(not weights[n].equal(norms[n]) for n in norms)  # every norm moved (lr 0.05, 2 steps)

    # the report shows it under its own label, from the same registration
    res = subprocess.run(
        [sys.executable, "-m", "rigsa_lightning.report", str(tmp_path / "outputs")],
        env={**os.environ, **_plugin_env(code)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (results,) = (tmp_path / "outputs").rglob("results.md")
    assert "| LN tuning |" in results.read_text()


def test_an_unknown_plugin_module_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_cli(
        ["adapter=full", "model=tiny", "debug=fast"],
        tmp_path,
        env={registry.METHOD_MODULES_ENV: "no_such_module"},
    )
    assert res.returncode == 2, tail(res)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: {registry.METHOD_MODULES_ENV}: can't import method module 'no_such_module'"
    ), last
    assert "Traceback" not in res.stderr


class _Toy(AdapterMethod):
    name = "toy_plugin"
    label = "toy method"
    order = 7
    color = "#123456"


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_the_option_check_accepts_a_method_registered_after_import(monkeypatch: pytest.MonkeyPatch) -> None:
    from rigsa_lightning.config import options
    from rigsa_lightning.config.options import OPTIONS, check_options
    from rigsa_lightning.report.figures import _method_color
    from rigsa_lightning.report.table import _group_sort_key

    cfg = _compose(["adapter=full", "adapter.method=toy_plugin", "+lr_by_method.toy_plugin=0.001"])
    with pytest.raises(ConfigError) as info:  # before registration: not a method
        check_options(cfg)
    assert info.value.one_line().startswith("error: adapter.method: unknown value 'toy_plugin'")

    get_method("rigsa")  # built-ins loaded before the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    register_method(_Toy())
    assert options.METHODS == method_names() and options.METHODS[-1] == "toy_plugin"
    assert OPTIONS["adapter.method"].choices == method_names()
    assert "lr_by_method.toy_plugin" in OPTIONS and "final_lr_by_method.toy_plugin" in OPTIONS
    check_options(cfg)  # the method and its study learning rate are options now
    with pytest.raises(ConfigError, match=r"^lr_by_method\.toy_plugin: must be >= 0"):
        check_options(_compose(["adapter=full", "adapter.method=toy_plugin", "+lr_by_method.toy_plugin=-1"]))

    # the report asks the method for its label, place and colour
    assert registry.method_label("toy_plugin") == "toy method" and registry.method_label("nope") == "nope"
    assert _group_sort_key("toy_plugin", "a", 1.0) < _group_sort_key("nope", "a", 1.0)
    assert _group_sort_key("full", "a", 1.0) < _group_sort_key("toy_plugin", "a", 1.0)
    assert _method_color("toy_plugin") == "#123456" and _method_color("rigsa") == "#1f77b4"

    monkeypatch.undo()  # unregistered: rejected again, and its options are gone
    assert "toy_plugin" not in method_names() and "lr_by_method.toy_plugin" not in OPTIONS
    with pytest.raises(ConfigError, match="^adapter.method: unknown value"):
        check_options(cfg)


def test_pruning_schedule_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from rigsa_lightning.pruning.schedule import PRUNED_VALUES, PruningSchedule\n"
        "from rigsa_lightning.adapters.rigsa.constants import PRUNED_VALUES as LEAF\n"
        "assert PRUNED_VALUES is LEAF\n"
        "import rigsa_lightning.pruning, rigsa_lightning.adapters.rigsa, rigsa_lightning.adapters.seeds\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    # the adapter checks the same values
    from rigsa_lightning.adapters.rigsa.constants import PRUNED_VALUES
    from rigsa_lightning.adapters.rigsa.layer import PRUNED_VALUES as LAYER_VALUES

    assert LAYER_VALUES is PRUNED_VALUES  # one tuple, typed once
