"""Training entry point: ``python -m rigsa_lightning.train experiment=rigsa_50`` (Hydra; ``-m`` for sweeps).

``train(cfg)`` is a plain function returning a metrics dict; :func:`run_job` wraps it so the W&B run is always
finished (multirun jobs never merge), bad input is one line, and failures are logged with the run folder.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rigsa_lightning.runtime import configure_offline_environment

configure_offline_environment()  # before datasets/transformers/lm_eval are imported anywhere

import rigsa_lightning.config  # noqa: E402,F401  (registers resolvers)
import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from rigsa_lightning.config import CONFIG_DIR, check_experiment_args  # noqa: E402
from rigsa_lightning.errors import ConfigError  # noqa: E402
from rigsa_lightning.io import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("rigsa_lightning.train")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def validate_cfg(cfg: DictConfig) -> None:
    """Reject bad input before anything is loaded or written (one-line errors naming the option)."""
    import torch

    from rigsa_lightning.adapters import METHODS
    from rigsa_lightning.pruning import PruningSchedule

    method = cfg.adapter.get("method")
    if method not in METHODS:
        raise ConfigError("adapter.method", f"unknown method {method!r}", f"use one of {list(METHODS)}")
    accel = str(cfg.trainer.get("accelerator", "cpu"))
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer", "trainer=gpu but no GPU is visible on this machine", "use trainer=cpu")
    PruningSchedule.from_cfg(cfg.pruning)  # validates sparsity / rounds / densities
    if method == "qlora":
        from rigsa_lightning.adapters.lora import bnb_config

        bnb_config(cfg.adapter)  # raises the one-line error when bitsandbytes is missing
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError("ckpt_path", f"{cfg.ckpt_path} does not exist", "point it at a .ckpt file of this run")


def segment_epochs(cfg: DictConfig) -> tuple[int, list[int]]:
    """Total epochs and the epoch lengths of the LR-schedule segments (one per IMP round, then the final phase)."""
    from rigsa_lightning.pruning import PruningSchedule

    schedule = PruningSchedule.from_cfg(cfg.pruning)
    total = int(schedule.total_epochs)
    if cfg.adapter.method == "rigsa" and schedule.rounds > 0 and bool(cfg.pruning.get("enabled", True)):
        segs = [int(schedule.epochs_per_round)] * int(schedule.rounds)
        if schedule.final_epochs > 0:
            segs.append(int(schedule.final_epochs))
        return total, segs
    return total, [total]


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Lightning loggers per ``logger.type`` (W&B offline unless an API key and network are there)."""
    from lightning.pytorch.loggers import CSVLogger

    kind = str(cfg.logger.get("type", "csv"))
    loggers: list[Any] = []
    if kind == "none":
        return loggers
    loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if kind == "wandb":
        from rigsa_lightning.tracking import make_wandb_logger

        loggers.append(make_wandb_logger(cfg, run_dir))
    return loggers


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment end to end and return its metrics (also written to ``metrics.json``)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from rigsa_lightning.adapters import GATED_METHODS, prepare_model
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.evaluation import export_adapter, score_textual_mnist
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.module import RigsaLitModule
    from rigsa_lightning.pruning import IterativeMagnitudePruning

    t0 = time.time()
    timings: dict[str, float] = {}
    validate_cfg(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.paths.run_dir)
    cache_dir = Path(cfg.paths.cache_dir)
    L.seed_everything(int(cfg.seed), workers=True)
    method = str(cfg.adapter.method)

    # ---------------------------------------------------------------- model + data
    prepared = prepare_model(cfg, cache_dir)
    timings["time/load_s"] = time.time() - t0
    t = time.time()
    dm = TextualMNISTDataModule(cfg.data, prepared.tokenizer, cache_dir=str(cache_dir), seed=int(cfg.data.seed))
    dm.prepare_data()
    dm.setup("fit")
    timings["time/data_s"] = time.time() - t

    forgetting = ForgettingEvaluator(cfg.eval, prepared.tokenizer, prepared.model_key, str(cache_dir), str(run_dir))
    skipped = forgetting.preflight()  # logs one line per skipped benchmark

    total_epochs, segments = segment_epochs(cfg)
    lit = RigsaLitModule(prepared, cfg, dm.digit_token_ids, segments)
    lit.train()  # from_pretrained returns eval mode; LoRA dropout and HF gradient checkpointing need train mode
    precision = str(cfg.trainer.get("precision", "32-true"))
    resuming = bool(cfg.get("ckpt_path"))

    # ---------------------------------------------------------------- before training
    t = time.time()
    metrics: dict[str, Any] = {"method": method, "name": cfg.name, "seed": int(cfg.seed), "run_dir": str(run_dir)}
    base = score_textual_mnist(prepared.model, dm, "test", precision, cfg, cache_key=prepared.model_key)
    metrics.update({f"textual_mnist/zero_shot_{k}": v for k, v in base.items()})
    if bool(cfg.eval.get("enabled", True)) or bool(cfg.eval.get("drift", {}).get("enabled", False)):
        metrics.update(forgetting.evaluate(prepared.model, "before"))
    timings["time/eval_before_s"] = time.time() - t

    # ---------------------------------------------------------------- training
    pruning_cb = None
    t = time.time()
    if method != "none":
        callbacks: list[Any] = []
        if method == "rigsa" and bool(cfg.pruning.get("enabled", True)):
            pruning_cb = IterativeMagnitudePruning(cfg.pruning)
            callbacks.append(pruning_cb)
        ckpt_cfg = cfg.get("checkpoint", {}) or {}
        if bool(ckpt_cfg.get("enabled", True)):
            # save_on_train_epoch_end: the checkpoint is taken after the pruning event of that epoch.
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(run_dir / "checkpoints"),
                    save_last=True,
                    save_top_k=0,
                    save_on_train_epoch_end=True,
                    every_n_train_steps=ckpt_cfg.get("every_n_train_steps"),
                )
            )
        loggers = build_loggers(cfg, run_dir)
        if loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
        assert isinstance(trainer_kwargs, dict)
        trainer_kwargs["max_epochs"] = total_epochs
        if trainer_kwargs.get("enable_progress_bar", True) and sys.stderr.isatty():
            callbacks.append(RichProgressBar())
        trainer = L.Trainer(
            **trainer_kwargs,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run_dir),
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        )
        trainer.fit(lit, datamodule=dm, ckpt_path=str(cfg.ckpt_path) if resuming else None)
        if not trainer.is_global_zero:
            return {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("val/", "train/")):
                metrics[f"final_{key}"] = float(value)
        for lg in loggers:
            lg.finalize("success")
    else:
        loggers = build_loggers(cfg, run_dir)
    timings["time/train_s"] = time.time() - t

    # ---------------------------------------------------------------- after training
    t = time.time()
    after = score_textual_mnist(prepared.model, dm, "test", precision, cfg)
    metrics.update({f"textual_mnist/{k}": v for k, v in after.items()})
    if bool(cfg.eval.get("enabled", True)) or bool(cfg.eval.get("drift", {}).get("enabled", False)):
        metrics.update(forgetting.evaluate(prepared.model, "after"))
    forgetting_summary = forgetting.summary()
    metrics.update({k: v for k, v in forgetting_summary.items() if k != "skipped"})
    metrics["forget/skipped"] = sorted(skipped)
    forgetting.write(str(run_dir))
    timings["time/eval_after_s"] = time.time() - t

    metrics.update(lit.parameter_counts())
    if method in GATED_METHODS:
        from rigsa_lightning.pruning import density_report

        report = density_report(prepared.gated)
        metrics["adapter/density"] = float(report["density"])
        metrics.update({f"alpha/{k.split('/')[-1]}": v for k, v in lit.gate_stats().items()})
    if pruning_cb is not None:
        metrics["prune/history"] = pruning_cb.history
    adapter_dir = export_adapter(prepared, cfg, run_dir / "adapter")
    if adapter_dir is not None:
        size = sum(f.stat().st_size for f in adapter_dir.iterdir() if f.is_file())
        metrics["adapter/bytes"] = int(size)
        metrics["adapter/path"] = str(adapter_dir)
    timings["time/total_s"] = time.time() - t0
    timings["memory/peak_rss_gb"] = _peak_rss_gb()
    metrics.update(timings)
    metrics["status"] = "completed"
    atomic_write_json(run_dir / "metrics.json", metrics)
    from rigsa_lightning.tracking import log_summary

    log_summary(loggers, metrics)
    return metrics


def _print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics.get('name')} — results", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [
        "textual_mnist/zero_shot_acc",
        "textual_mnist/zero_shot_gen_acc",
        "textual_mnist/acc",
        "textual_mnist/gen_acc",
        "adapter/density",
        "params/trainable",
        "params/adapter_nnz",
        "adapter/bytes",
        "forget/drift/kl/after",
        "forget/drift/nll/before",
        "forget/drift/nll/after",
        "time/total_s",
        "memory/peak_rss_gb",
    ]
    keys += sorted(k for k in metrics if k.startswith("forget/") and k.endswith("/delta") and "drift" not in k)
    for key in keys:
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    console = Console()
    console.print(table)
    if metrics.get("forget/skipped"):
        console.print(f"forgetting benchmarks skipped: {', '.join(metrics['forget/skipped'])} (see the log line above)")
    # Plain prints: paths must never be wrapped or styled, users copy them.
    print(f"run folder : {run_dir}")
    print(f"metrics    : {run_dir / 'metrics.json'}")
    if metrics.get("adapter/path"):
        print(f"adapter    : {metrics['adapter/path']}")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _clean_empty_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's bookkeeping (bad input must write nothing)."""
    if not run_dir.is_dir():
        return
    leftovers = [p for p in run_dir.iterdir() if p.name not in (".hydra",) and not p.name.endswith(".log")]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Run :func:`train` for one Hydra job: print the config, finish W&B, and report failures clearly."""
    from rigsa_lightning.tracking import finish_wandb

    run_dir = Path(cfg.paths.run_dir)
    multirun = _is_multirun()
    if cfg.get("print_config", True):
        from rigsa_lightning.config import print_config_tree

        print_config_tree(cfg)
    try:
        metrics = train(cfg)
        if metrics:
            _print_summary(metrics, run_dir)
        return metrics
    except ConfigError as exc:
        finish_wandb()
        if multirun:
            atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": exc.one_line()})
            log.error("%s (job folder %s)", exc.one_line(), run_dir)
            return None
        _clean_empty_run_dir(run_dir)
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    except BaseException as exc:  # noqa: BLE001 - logged with the run folder, then re-raised or recorded
        finish_wandb()
        msg = f"{type(exc).__name__}: {exc}"
        log.exception("run failed (run folder %s): %s", run_dir, msg)
        if run_dir.is_dir():
            atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": msg})
            atomic_write_text(run_dir / "FAILED", msg + "\n")
        if multirun and not isinstance(exc, KeyboardInterrupt):
            return None
        raise
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_job(cfg)
    if metrics and "textual_mnist/acc" in metrics:
        return float(metrics["textual_mnist/acc"])
    return None


def main() -> None:
    """Console entry point (validates experiment names before Hydra sees them)."""
    try:
        check_experiment_args(sys.argv[1:])
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
