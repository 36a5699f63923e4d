"""``python -m rigsa_lightning.evaluate``: score a model (base, base + exported adapter, or merged) without training.

Examples::

    python -m rigsa_lightning.evaluate                                       # the embedded base model
    python -m rigsa_lightning.evaluate adapter_path=outputs/runs/.../adapter # base vs base + adapter (deltas)
    python -m rigsa_lightning.evaluate adapter_path=... merge_to=merged/      # also write a plain merged model
    python -m rigsa_lightning.evaluate model.name_or_path=merged/ eval.data_dir=/data/benchmarks

Writes ``evaluation.json`` (Textual MNIST acc / gen_acc, forgetting before / after / delta) and ``forgetting.json``
in ``outputs/runs/<date>/<time>_evaluate/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rigsa_lightning.runtime import configure_offline_environment

configure_offline_environment()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import rigsa_lightning.config.access  # noqa: E402,F401  (registers resolvers)
from rigsa_lightning.adapters.registry import method_for_export, method_for_export_kind  # noqa: E402
from rigsa_lightning.config.access import CONFIG_DIR  # noqa: E402
from rigsa_lightning.config.errors import ConfigError  # noqa: E402
from rigsa_lightning.config.validation import resolve_auto_precision  # noqa: E402
from rigsa_lightning.io import atomic_write_json  # noqa: E402
from rigsa_lightning.task import run_job  # noqa: E402

log = logging.getLogger("rigsa_lightning.evaluate")


def adapter_kind(folder: Path) -> str:
    """The export format in ``folder`` (``sparse``: RIGSA / random mask, ``peft``: LoRA / QLoRA, ``full``), as the
    registered method that detects it names it; a one-line ConfigError when no method's format is there."""
    return str(method_for_export(folder).export_kind)


def attach_adapter(model: Any, folder: Path) -> tuple[Any, str]:
    """Load an exported adapter onto ``model``; returns the (possibly wrapped) model and the adapter kind."""
    method = method_for_export(folder)
    return method.load_export(model, folder), str(method.export_kind)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the configured model (and adapter) on Textual MNIST and the forgetting tasks; return the metrics."""
    import torch

    from rigsa_lightning.adapters import model_key
    from rigsa_lightning.config.options import check_options
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.models import load_model, resolve_model_path
    from rigsa_lightning.training.scoring import score_textual_mnist

    check_options(cfg)  # every option's type and range before anything loads
    t0 = time.time()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.paths.run_dir)
    cache_dir = Path(cfg.paths.cache_dir)
    adapter_path = Path(str(cfg.adapter_path)) if cfg.get("adapter_path") else None
    if adapter_path is not None and not adapter_path.is_dir():
        raise ConfigError(
            "adapter_path", f"{adapter_path} does not exist", "point it at the adapter/ folder of a run"
        )
    if adapter_path is not None:
        adapter_kind(adapter_path)
    path = resolve_model_path(cfg.model, cache_dir)
    key = model_key(cfg.model, path)
    model, tok = load_model(cfg.model, cache_dir)
    model.eval()
    precision = resolve_auto_precision(cfg)
    metrics: dict[str, Any] = {"model": str(cfg.model.name_or_path), "adapter_path": str(adapter_path or "")}

    dm = None
    if cfg.get("textual_mnist", True):
        dm = TextualMNISTDataModule(cfg.data, tok, cache_dir=str(cache_dir), seed=int(cfg.data.seed))
        dm.prepare_data()
        dm.setup("test")
    forgetting = ForgettingEvaluator(cfg.eval, tok, key, str(cache_dir), str(run_dir))
    forgetting.preflight()
    stage = "before" if adapter_path is not None else "eval"
    if dm is not None:
        base = score_textual_mnist(model, dm, "test", precision, cfg=cfg)
        metrics.update({f"textual_mnist/{k}/{stage}": v for k, v in base.items()})
    forgetting.write_each_stage = adapter_path is None  # with an adapter: written once it is known to fit
    forgetting.evaluate(model, "before")  # the base model: cached across runs
    if adapter_path is not None:
        model, kind = attach_adapter(model, adapter_path)
        forgetting.write_each_stage = True
        forgetting.save_stage("before")
        metrics["adapter_kind"] = kind
        model.eval()
        if dm is not None:
            after = score_textual_mnist(model, dm, "test", precision, cfg=cfg)
            metrics.update({f"textual_mnist/{k}/after": v for k, v in after.items()})
        forgetting.evaluate(model, "after")
        if cfg.get("merge_to"):
            metrics["merged_to"] = str(merge_and_save(model, kind, Path(str(cfg.merge_to)), tok))
    metrics.update({k: v for k, v in forgetting.summary().items()})
    forgetting.write(str(run_dir))
    metrics["time/total_s"] = time.time() - t0
    atomic_write_json(run_dir / "evaluation.json", metrics)
    return metrics


def merge_and_save(model: Any, kind: str, folder: Path, tokenizer: Any) -> Path:
    """Bake the adapter into plain weights and ``save_pretrained`` an ordinary transformers model."""
    plain = method_for_export_kind(kind).merge(model)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError("merge_to", f"{folder} exists and is not empty", "choose a new folder")
    plain.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    metrics = run_job(cfg, evaluate)  # bad input: one line, exit 2, the empty run folder removed
    if not metrics:  # a multirun job that failed (recorded in its failed.json)
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"{k:45s} {v:.4f}")
    print(f"results: {Path(cfg.paths.run_dir) / 'evaluation.json'}")


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
