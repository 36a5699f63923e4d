"""Safety: safetensors + JSON only (no pickles), weights-only checkpoint loading, no remote code, no secrets written."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import SMALL, only_run_dir, run_cli, tail

SECRET = "secret-xyz"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib", ".npy", ".npz")
PACKAGE = Path(__file__).resolve().parents[1] / "rigsa_lightning"


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One small RIGSA run with the W&B logger (offline) and an API key in the environment."""
    root = tmp_path_factory.mktemp("wandb_run")
    args = [
        "experiment=rigsa_50",
        *[a for a in SMALL if a != "logger=csv"],
        "logger=wandb",
        "logger.mode=offline",
    ]
    res = run_cli([*args, "data.train_size=16"], root, env={"WANDB_API_KEY": SECRET})
    assert res.returncode == 0, tail(res)
    return only_run_dir(root), res


def is_pickle(path: Path) -> bool:
    """A raw pickle (protocol 2+ opcode) or a torch zip archive holding a ``data.pkl``."""
    head = path.read_bytes()[:2]
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith(".pkl") for name in zf.namelist())
    return False


def test_run_folder_has_no_pickles_apart_from_lightning_checkpoints(wandb_run: tuple[Path, Any]) -> None:
    run_dir, _ = wandb_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        if path.suffix == ".ckpt":
            assert path.parent.name == "checkpoints", path
            continue
        assert path.suffix not in PICKLE_SUFFIXES, path
        assert not is_pickle(path), path
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == [
        "README.md",  # the model card
        "adapter.safetensors",
        "adapter_config.json",
    ]


def test_checkpoint_holds_only_adapter_state_and_loads_weights_only(wandb_run: tuple[Path, Any]) -> None:
    run_dir, _ = wandb_run
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    # Adapter tensors only, in the storage in use after the prune (sparse: kept values + indices; dense: ΔW + mask).
    sparse = {"values", "indices", "frozen", "alpha", "delta_seed"}
    dense = {"delta", "alpha", "mask", "delta_seed", "pruned_init"}
    suffixes = {k.rsplit(".", 1)[-1] for k in keys}
    assert keys and (suffixes <= sparse or suffixes <= dense), suffixes
    assert "values" in suffixes  # adapter.storage=auto on one device: stored sparse after the prune


def test_wandb_api_key_never_written(wandb_run: tuple[Path, Any]) -> None:
    run_dir, res = wandb_run
    assert (run_dir / "wandb").is_dir(), "the W&B logger ran (offline)"
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert SECRET not in res.stdout and SECRET not in res.stderr


def test_secret_passed_as_override_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", *SMALL, f"+logger.api_key={SECRET}"], tmp_path)
    assert res.returncode == 2, tail(res)
    line = res.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: logger.api_key: credentials must not be passed") and "WANDB_API_KEY" in line
    )
    assert SECRET not in line
    assert not (tmp_path / "outputs").exists()


def _safetensors_model_folder(folder: Path) -> None:
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in names, names
    assert "config.json" in names
    for path in folder.iterdir():
        assert path.suffix not in PICKLE_SUFFIXES, path
        assert path.suffix in {".json", ".safetensors", ".jinja", ".txt", ".model", ".md"}, path


def test_converted_models_are_safetensors(tiny_model_dir: str, smollm2_dir: str) -> None:
    _safetensors_model_folder(Path(tiny_model_dir))
    _safetensors_model_folder(Path(smollm2_dir))


def test_merged_model_is_safetensors(tmp_path: Path, tiny_model: tuple[Any, Any]) -> None:
    from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
    from rigsa_lightning.evaluate import merge_and_save

    model, tok = tiny_model
    inject_rigsa(model, {"targets": ["q_proj"], "seed": 1})
    folder = merge_and_save(model, "sparse", tmp_path / "merged", tok)
    _safetensors_model_folder(folder)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_every_checkpoint_load_is_weights_only() -> None:
    """``torch.load`` everywhere, and ``Trainer.fit(ckpt_path=...)``, pass ``weights_only=True``."""
    loads = fits = 0
    for path in PACKAGE.rglob("*.py"):
        for call in _calls(ast.parse(path.read_text())):
            func = call.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and getattr(func.value, "id", "") == "torch"
            ):
                loads += 1
                assert _keyword(call, "weights_only") is True, (
                    f"{path}:{call.lineno} torch.load without weights_only"
                )
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "fit"
                and _keyword(call, "ckpt_path") is not None
            ):
                fits += 1
                assert _keyword(call, "weights_only") is True, (
                    f"{path}:{call.lineno} fit without weights_only"
                )
    assert loads >= 2 and fits >= 1


def test_trust_remote_code_is_off_unless_configured(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str
) -> None:
    from hydra import compose, initialize_config_dir

    import rigsa_lightning.models as models
    from rigsa_lightning.config.access import CONFIG_DIR, available

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in available("model"):
            cfg = compose(config_name="train", overrides=[f"model={name}"])
            assert cfg.model.trust_remote_code is False, name
        assert compose(config_name="evaluate").model.trust_remote_code is False

    seen: list[Any] = []
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    models.load_model({"name_or_path": tiny_model_dir})  # no trust_remote_code key at all
    models.load_model({"name_or_path": tiny_model_dir, "trust_remote_code": True})
    assert seen == [False, True]
