"""Training entry point: ``python -m rigsa_lightning.train experiment=rigsa_50`` (Hydra; ``-m`` for sweeps).

``train(cfg)`` is a plain function returning a metrics dict; :func:`run_job` wraps it so the W&B run is always
finished (multirun jobs never merge), bad input is one line, and failures are logged with the run folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rigsa_lightning.runtime import configure_offline_environment, quiet_console, reset_peak_rss

configure_offline_environment()  # before datasets/transformers/lm_eval are imported anywhere

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import rigsa_lightning.config  # noqa: E402,F401  (registers resolvers)
from rigsa_lightning.adapters.registry import get_method  # noqa: E402
from rigsa_lightning.config import CONFIG_DIR, check_experiment_args, is_null, is_secret  # noqa: E402
from rigsa_lightning.errors import ConfigError  # noqa: E402
from rigsa_lightning.io import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("rigsa_lightning.train")


def _peak_rss_gb() -> float:
    """Peak RSS (GiB) since :func:`train` started (the kernel counter is reset there; see runtime.reset_peak_rss)."""
    from rigsa_lightning.runtime import peak_rss_bytes

    return peak_rss_bytes() / 1024**3


# Entries of a run folder that mean "a run already lives here" (a new run never writes into such a folder).
RUN_MARKERS = ("metrics.json", "checkpoints", "failed.json", "adapter")
# Native image sizes of the sources whose size is known without loading them.
_NATIVE_SIZE = {"digits": 8, "mnist5k": 28}


def resume_folder(cfg: DictConfig | dict) -> Path | None:
    """The run folder ``resume=`` points at (None when not resuming)."""
    value = cfg.get("resume")
    return None if is_null(value) else Path(os.path.expanduser(str(value)))


def check_resume_folder(value: Any) -> Path:
    """Validate ``resume=<run folder>``: it must hold ``checkpoints/last.ckpt`` and no finished run; return it."""
    fix = "resume=outputs/runs/<date>/<time>_<name> (a run folder holding checkpoints/last.ckpt)"
    if str(value).lower() in ("true", "1", "yes"):
        raise ConfigError("resume", "needs the run folder to continue, not a flag", fix)
    folder = Path(os.path.expanduser(str(value)))
    if not folder.is_dir():
        raise ConfigError("resume", f"{folder} does not exist", fix)
    if not (folder / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(
            "resume",
            f"{folder} has no checkpoints/last.ckpt (not a run folder, or the run stopped before its first epoch ended)",
            "start a new run",
        )
    if (folder / "metrics.json").is_file():
        raise ConfigError("resume", f"{folder} already completed (it has metrics.json)", "start a new run")
    return folder


def _check_data_early(data: Any) -> None:
    """Split sizes and the resolution of sources with a known image size (before any model is loaded)."""
    for key in ("train_size", "val_size", "test_size"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"data.{key}", f"must be a positive integer or null (all), got {value!r}")
        if value <= 0:
            raise ConfigError(
                f"data.{key}", f"must be positive, got {value}", "use a positive number of examples"
            )
    source = str(data.get("source", "digits"))
    native = _NATIVE_SIZE.get(source) or (28 if source == "mnist" and not data.get("path") else None)
    if native is not None:
        from rigsa_lightning.data.sources import check_resolution

        check_resolution(data, (native, native))


def validate_cfg(cfg: DictConfig) -> None:
    """Reject bad input before anything is loaded or written (one-line errors naming the option)."""
    import torch

    from rigsa_lightning.options import check_options
    from rigsa_lightning.pruning import PruningSchedule

    check_options(cfg)  # every option's type and range, unknown keys, relations between options
    spec = get_method(cfg.adapter.get("method"))  # one-line error for an unknown method
    accel = str(cfg.trainer.get("accelerator", "cpu"))
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer", "trainer=gpu but no GPU is visible on this machine", "use trainer=cpu")
    schedule = PruningSchedule.from_cfg(cfg.pruning)  # validates sparsity / rounds / densities
    if spec.prunes:
        schedule.check_max_epochs(cfg.trainer.get("max_epochs"))  # more rounds than the trainer's epochs
    _check_data_early(cfg.data)
    from rigsa_lightning.stopping import check_stop_at

    check_stop_at(cfg.get("stop_at"))
    from rigsa_lightning.models import check_compile_cfg

    check_compile_cfg(cfg.get("compile"))
    from rigsa_lightning.module import adamw_impl_kwargs

    # One-line errors for a bad optim.impl / lm_head.
    adamw_impl_kwargs(str((cfg.get("optim") or {}).get("impl", "fused")))
    from rigsa_lightning.head import check_lm_head

    check_lm_head(cfg.get("lm_head", "scored"))
    _check_storage_early(cfg)
    if cfg.get("eval") is not None:
        from rigsa_lightning.forgetting import check_eval_cfg

        check_eval_cfg(cfg.eval)  # eval.limit / scorer / ... and the files under eval.data_dir
    spec.check(cfg)  # checks that need a library (QLoRA: bitsandbytes)
    if resume_folder(cfg) is not None:
        check_resume_folder(cfg.resume)
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(
            "ckpt_path", f"{cfg.ckpt_path} does not exist", "point it at a .ckpt file of this run"
        )


def resolve_auto_precision(cfg: DictConfig) -> str:
    """Replace ``trainer.precision=auto`` by what this machine runs fast (bf16-mixed only where bf16 is native,
    :func:`rigsa_lightning.runtime.resolve_precision`); return the precision in use."""
    from omegaconf import open_dict

    from rigsa_lightning.runtime import resolve_precision

    given = str(cfg.trainer.get("precision", "32-true"))
    resolved = resolve_precision(given, str(cfg.trainer.get("accelerator", "cpu")))
    if resolved != given:
        with open_dict(cfg):
            cfg.trainer.precision = resolved
        log.info("trainer.precision=auto -> %s on this machine", resolved)
    return resolved


def _check_storage_early(cfg: DictConfig) -> None:
    """``adapter.storage`` / ``adapter.sparse_grad`` values, and sparse storage only without a multi-process
    strategy (RigsaLitModule.resolve_storage checks the live strategy again)."""
    from rigsa_lightning.adapters.sparse_delta import multi_device_error, storage_options

    storage, _ = storage_options(cfg.adapter)
    strategy = str(cfg.trainer.get("strategy", "auto") or "auto").lower()
    if storage == "sparse" and strategy.startswith(("ddp", "fsdp", "deepspeed")):
        raise multi_device_error(f"trainer.strategy={strategy}")


def check_checkpoint(cfg: DictConfig, path: Path, option: str) -> None:
    """Load ``path`` safely (``weights_only``, memory-mapped) and compare its stored options with ``cfg``.

    A resume must continue the same trajectory: differing options are an error for ``resume`` and a warning for
    ``ckpt_path`` (a new run started from a checkpoint may change them on purpose).
    """
    import torch

    from rigsa_lightning.module import CKPT_KEY, config_differences, trajectory_config

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - corrupt zip, truncated file, disallowed pickle content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            option,
            f"checkpoint {path} can't be loaded safely (corrupt, truncated or not a weights-only checkpoint: "
            f"{first[:200]})",
            "point it at another checkpoint or start a new run",
        ) from exc
    extra = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    saved = extra.get("config") if isinstance(extra, dict) else None
    try:
        progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        mid_epoch = not progress["is_last_batch"] and progress["current"]["completed"] > 0
    except (KeyError, TypeError):
        mid_epoch = False
    if mid_epoch:
        log.warning(
            "%s was saved mid-epoch (global step %s): Lightning replays that epoch's data from its start, so the "
            "continued run is close to, not bit-identical with, an uninterrupted one (epoch-end checkpoints are exact)",
            path,
            ckpt.get("global_step"),
        )
    del ckpt
    if saved is None:
        log.warning("checkpoint %s holds no run options (older format): they are not compared", path)
        return
    diffs = config_differences(saved, trajectory_config(cfg))
    if not diffs:
        return
    shown = "; ".join(diffs[:4]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 4 else "")
    if option == "resume":
        raise ConfigError(
            "resume",
            f"options differ from the run being resumed: {shown}",
            "drop these overrides to continue it exactly, or start a new run from it with ckpt_path="
            + str(path),
        )
    log.warning("ckpt_path: options differ from the checkpoint's run: %s", shown)


def check_run_folder_free(run_dir: Path) -> None:
    """A new run never writes into a folder that already holds a run (its results, checkpoints or failure)."""
    taken = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if taken:
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} already holds a run ({', '.join(taken)}); a new run never writes into another run's folder",
            f"use a new folder, or resume={run_dir} to continue that run",
        )


def segment_epochs(cfg: DictConfig) -> tuple[int, list[int]]:
    """Total epochs and the epoch lengths of the LR-schedule segments (one per IMP round, then the final phase)."""
    from rigsa_lightning.pruning import PruningSchedule

    schedule = PruningSchedule.from_cfg(cfg.pruning)
    total = int(schedule.total_epochs)
    prunes = get_method(cfg.adapter.method).prunes  # IMP rounds: one LR segment each
    if prunes and schedule.rounds > 0 and bool(cfg.pruning.get("enabled", True)):
        segs = [int(schedule.epochs_per_round)] * int(schedule.rounds)
        if schedule.final_epochs > 0:
            segs.append(int(schedule.final_epochs))
        return total, segs
    return total, [total]


def segments_before_final(cfg: DictConfig) -> int:
    """Epochs before RIGSA's final retraining phase (every prune done after them); 0 for the other methods."""
    from rigsa_lightning.pruning import PruningSchedule

    schedule = PruningSchedule.from_cfg(cfg.pruning)
    prunes = get_method(cfg.adapter.method).prunes
    if not prunes or not bool(cfg.pruning.get("enabled", True)) or schedule.rounds == 0:
        return 0
    if schedule.final_epochs == 0:
        log.warning(
            "stop_at: pruning.final_epochs=0, so no validation follows the last prune: the run trains to the end"
        )
    return int(schedule.rounds * schedule.epochs_per_round)


def _check_max_steps(cfg: DictConfig, dm: Any) -> None:
    """``trainer.max_steps`` must leave room for every prune round (once the steps per epoch are known)."""
    from rigsa_lightning.pruning import PruningSchedule

    max_steps = cfg.trainer.get("max_steps")
    if max_steps is None or int(max_steps) < 0 or not get_method(cfg.adapter.method).prunes:
        return
    schedule = PruningSchedule.from_cfg(cfg.pruning)
    if not schedule.rounds:
        return
    batches = len(dm.train_dataloader())
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float) and 0 < limit <= 1:
        batches = max(1, int(batches * limit))
    per_epoch = max(1, batches // max(1, int(cfg.trainer.get("accumulate_grad_batches") or 1)))
    needed = (schedule.prune_epochs[-1] + 1) * per_epoch
    if int(max_steps) < needed:
        raise ConfigError(
            "pruning.rounds",
            f"{schedule.rounds} rounds need {needed} optimizer steps ({per_epoch} per epoch) but trainer.max_steps="
            f"{max_steps}",
            "raise trainer.max_steps (-1: no limit) or lower pruning.rounds",
        )


def checkpoint_callbacks(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """``checkpoints/last.ckpt`` rewritten (atomically) at every epoch end and, optionally, every N steps.

    Lightning 2.6's ``save_last`` only writes ``last.ckpt`` when a top-k checkpoint was saved at the same step, so
    with ``save_top_k=0`` nothing was written before the end of training. Here the single kept top-k file *is*
    ``last.ckpt`` (``filename="last"``, no version counter: each save replaces it). Monitoring callbacks run after
    the others at epoch end, so the epoch-end checkpoint holds the masks after that epoch's pruning event.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_cfg = cfg.get("checkpoint", {}) or {}
    if not bool(ckpt_cfg.get("enabled", True)):
        return []
    common: dict[str, Any] = {
        "dirpath": str(run_dir / "checkpoints"),
        "filename": "last",
        "monitor": None,
        "save_top_k": 1,
        "save_last": False,
        "enable_version_counter": False,
    }
    callbacks = [ModelCheckpoint(**common, save_on_train_epoch_end=True)]
    every = ckpt_cfg.get("every_n_train_steps")
    if every:
        callbacks.append(
            ModelCheckpoint(**common, every_n_train_steps=int(every), save_on_train_epoch_end=False)
        )
    return callbacks


def _round_forgetting_cls() -> type:
    import lightning as L

    class _RoundForgetting(L.Callback):
        def __init__(self, forgetting: Any, pruning_cb: Any) -> None:
            self.forgetting = forgetting
            self.pruning_cb = pruning_cb
            self.done = 0

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            # Runs after the pruning callback (it is added after it): evaluates the freshly pruned+rewound model.
            if self.pruning_cb.round > self.done and trainer.is_global_zero:
                self.done = self.pruning_cb.round
                metrics = self.forgetting.evaluate(pl_module.model, f"round{self.done}")
                pl_module.log_dict({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

        def state_dict(self) -> dict[str, Any]:
            return {"done": self.done}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.done = int(state_dict.get("done", 0))

    return _RoundForgetting


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


def train(cfg: DictConfig, *, validate: bool = True) -> dict[str, Any]:
    """Run one experiment end to end and return its metrics (also written to ``metrics.json``).

    ``validate=False`` when the caller (:func:`run_job`) already ran :func:`validate_cfg` on this config.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from rigsa_lightning.adapters import export_adapter, prepare_model
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.forgetting.curve import ForgettingCurve, curve_eval_cfg
    from rigsa_lightning.module import RigsaLitModule
    from rigsa_lightning.pruning import IterativeMagnitudePruning
    from rigsa_lightning.scoring import score_textual_mnist

    t0 = time.time()
    timings: dict[str, float] = {}
    reset_peak_rss()  # this job's own peak, also in a sequential multirun
    if validate:
        validate_cfg(cfg)
    resolve_auto_precision(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.paths.run_dir)
    cache_dir = Path(cfg.paths.cache_dir)
    resume = resume_folder(cfg)
    ckpt_path: Path | None = Path(str(cfg.ckpt_path)) if cfg.get("ckpt_path") else None
    if resume is not None:
        if _is_multirun() and not cfg.get("skip_completed", False):
            raise ConfigError(
                "resume", "can't be combined with a multirun (-m)", "resume one job folder at a time"
            )
        if resume.resolve() != run_dir.resolve():
            raise ConfigError(
                "hydra.run.dir",
                f"is {run_dir} but resume={resume}",
                "drop the hydra.run.dir override when resuming",
            )
        ckpt_path = ckpt_path or resume / "checkpoints" / "last.ckpt"
        log.info(
            "resuming %s from %s (before-training numbers: again on the untouched base model, cached)",
            run_dir,
            ckpt_path,
        )
    else:
        check_run_folder_free(run_dir)
    if ckpt_path is not None:
        check_checkpoint(cfg, ckpt_path, "resume" if resume is not None else "ckpt_path")
    L.seed_everything(int(cfg.seed), workers=True)
    method = str(cfg.adapter.method)
    spec = get_method(method)

    # ---------------------------------------------------------------- model + data
    prepared = prepare_model(cfg, cache_dir)
    from rigsa_lightning.head import split_causal_lm
    from rigsa_lightning.models import compile_forward

    if compile_forward(prepared.model, cfg.get("compile")):
        where = "decoder body; LM head eager" if split_causal_lm(prepared.model) else "whole model"
        log.info("torch.compile: model forward wrapped (backend %s) - %s", cfg.compile.backend, where)
    timings["time/load_s"] = time.time() - t0
    t = time.time()
    dm = TextualMNISTDataModule(
        cfg.data, prepared.tokenizer, cache_dir=str(cache_dir), seed=int(cfg.data.seed)
    )
    dm.prepare_data()
    dm.setup("fit")
    _check_max_steps(cfg, dm)  # before the forgetting preflight writes its task files into the run folder
    timings["time/data_s"] = time.time() - t

    forgetting = ForgettingEvaluator(
        cfg.eval, prepared.tokenizer, prepared.model_key, str(cache_dir), str(run_dir)
    )
    skipped = forgetting.preflight()  # logs one line per skipped benchmark

    total_epochs, segments = segment_epochs(cfg)
    lit = RigsaLitModule(prepared, cfg, dm.digit_token_ids, segments)
    lit.train()  # from_pretrained returns eval mode; LoRA dropout and HF gradient checkpointing need train mode
    precision = str(cfg.trainer.get("precision", "32-true"))

    # ---------------------------------------------------------------- before training
    t = time.time()
    metrics: dict[str, Any] = {
        "method": method,
        "name": cfg.name,
        "seed": int(cfg.seed),
        "run_dir": str(run_dir),
        "trainer/precision": precision,
    }
    base = score_textual_mnist(prepared.model, dm, "test", precision, cfg, cache_key=prepared.model_key)
    metrics.update({f"textual_mnist/zero_shot_{k}": v for k, v in base.items()})
    if bool(cfg.eval.get("enabled", True)) or bool(cfg.eval.get("drift", {}).get("enabled", False)):
        metrics.update(forgetting.evaluate(prepared.model, "before"))
    curve_cb = None
    curve_cfg = curve_eval_cfg(cfg.eval) if spec.trains else None
    if curve_cfg is not None:  # forgetting along training: its own small subset, paired with the base model
        curve_eval = ForgettingEvaluator(
            curve_cfg, prepared.tokenizer, prepared.model_key, str(cache_dir), None
        )
        curve_eval.verbose = False
        curve_eval.evaluate(prepared.model, "before")
        curve_cb = ForgettingCurve(curve_eval)
    timings["time/eval_before_s"] = time.time() - t

    # ---------------------------------------------------------------- training
    from rigsa_lightning.stopping import StopAtAccuracy, check_stop_at

    pruning_cb = None
    stop_cb: StopAtAccuracy | None = None
    t = time.time()
    if spec.trains:
        callbacks: list[Any] = []
        if spec.prunes and bool(cfg.pruning.get("enabled", True)):
            pruning_cb = IterativeMagnitudePruning(cfg.pruning)
            callbacks.append(pruning_cb)
            if forgetting.after_each_round:
                callbacks.append(_round_forgetting_cls()(forgetting, pruning_cb))
        if curve_cb is not None:
            callbacks.append(curve_cb)
        callbacks += checkpoint_callbacks(cfg, run_dir)
        target = check_stop_at(cfg.get("stop_at"))
        if target is not None:  # matched accuracy: stop at the target, RIGSA only after its last prune
            first_final = segments_before_final(cfg)
            stop_cb = StopAtAccuracy(target, min_epoch=first_final)
            callbacks.append(stop_cb)
        loggers = build_loggers(cfg, run_dir)
        if loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
        assert isinstance(trainer_kwargs, dict)
        trainer_kwargs["max_epochs"] = total_epochs
        if cfg.optim.get("grad_clip") and "gradient_clip_val" not in trainer_kwargs:
            trainer_kwargs["gradient_clip_val"] = float(
                cfg.optim.grad_clip
            )  # global norm over adapter tensors
        if trainer_kwargs.get("enable_progress_bar", True) and sys.stderr.isatty():
            callbacks.append(RichProgressBar())
        trainer = L.Trainer(
            **trainer_kwargs,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run_dir),
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        )
        # weights_only: checkpoints hold tensors and primitives only (module.on_save_checkpoint keeps it so).
        trainer.fit(
            lit,
            datamodule=dm,
            ckpt_path=str(ckpt_path) if ckpt_path is not None else None,
            weights_only=True,
        )
        if not trainer.is_global_zero:
            return {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("val/", "train/")):
                metrics[f"final_{key}"] = float(value)
        if lit.adapter_state_history:  # per epoch: storage, kept entries, bytes of the adapter training state
            metrics["memory/adapter_state"] = list(lit.adapter_state_history)
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
        # zero-shot: the model is unchanged, score it once
        if not spec.trains and "before" in forgetting.stages:
            metrics.update(
                forgetting.copy_stage("before", "after", "no training: the model is the base model")
            )
        else:
            metrics.update(forgetting.evaluate(prepared.model, "after"))
    forgetting_summary = forgetting.summary()
    metrics.update({k: v for k, v in forgetting_summary.items() if k != "skipped"})
    metrics["forget/skipped"] = sorted(skipped)
    forgetting.write(str(run_dir))
    timings["time/eval_after_s"] = time.time() - t

    metrics.update(lit.parameter_counts())
    if spec.gated:
        from rigsa_lightning.pruning import density_report

        report = density_report(prepared.gated)
        metrics["adapter/density"] = float(report["density"])
        metrics.update({f"alpha/{k.split('/')[-1]}": v for k, v in lit.gate_stats().items()})
    if pruning_cb is not None:
        metrics["prune/history"] = pruning_cb.history
    if stop_cb is not None:
        metrics.update(stop_cb.metrics())
    if curve_cb is not None:
        metrics["forget_curve"] = curve_cb.points
    adapter_dir = export_adapter(prepared, cfg, run_dir / "adapter")
    if adapter_dir is not None:
        size = sum(f.stat().st_size for f in adapter_dir.iterdir() if f.is_file())
        metrics["adapter/bytes"] = int(size)
        metrics["adapter/path"] = str(adapter_dir)
    timings["time/total_s"] = time.time() - t0
    timings["memory/peak_rss_gb"] = _peak_rss_gb()
    metrics.update(timings)
    metrics["status"] = "completed"
    if resume is not None:
        metrics["resumed_from"] = str(ckpt_path)
    atomic_write_json(run_dir / "metrics.json", metrics)
    for stale in ("failed.json", "FAILED"):  # a resumed run that completes is no longer failed
        (run_dir / stale).unlink(missing_ok=True)
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
    keys += sorted(
        k for k in metrics if k.startswith("forget/") and k.endswith("/delta") and "drift" not in k
    )
    for key in keys:
        if key in metrics:
            v = metrics[key]
            text = f"{v:.4f}" if isinstance(v, float) else str(v)
            if f"{key}_ci_lo" in metrics:  # paired change with its 95% bootstrap CI (and McNemar's p)
                text += f" [{metrics[key + '_ci_lo']:+.4f}, {metrics[key + '_ci_hi']:+.4f}]"
                if f"{key}_p" in metrics:
                    text += f" p={metrics[key + '_p']:.2g}"
            table.add_row(key, text)
    console = Console()
    console.print(table)
    if metrics.get("forget/skipped"):
        console.print(
            f"forgetting benchmarks skipped: {', '.join(metrics['forget/skipped'])} (see the log line above)"
        )
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
    from rigsa_lightning.module import NonFiniteError
    from rigsa_lightning.tracking import finish_wandb

    run_dir = Path(cfg.paths.run_dir)
    multirun = _is_multirun()
    if cfg.get("skip_completed", False):  # a study rerun: finished jobs are kept, interrupted ones continue
        done = completed_metrics(run_dir)
        if done is not None:
            log.info("skip_completed: %s already holds a completed run: skipped", run_dir)
            return done
        try:
            prepare_job_folder(cfg, run_dir)
        except SkipJob as exc:
            log.warning("skip_completed: %s", exc)
            return None
    try:
        validate_cfg(cfg)  # bad input: one line, before the config tree is printed and anything loads
        quiet_console()  # every line once, no adverts; third-party warnings in the run's log file only
        if cfg.get("print_config", True):
            from rigsa_lightning.config import print_config_tree

            print_config_tree(cfg)
        metrics = train(cfg, validate=False)
        if metrics:
            _print_summary(metrics, run_dir)
        return metrics
    except NonFiniteError as exc:
        last = run_dir / "checkpoints" / "last.ckpt"
        kept = str(last) if last.is_file() else None
        msg = str(exc)
        log.error("run stopped: %s (run folder %s; last good checkpoint %s)", msg, run_dir, kept)
        atomic_write_json(
            run_dir / "failed.json",
            {"status": "failed", "error": msg, "kind": "non_finite", "last_checkpoint": kept},
        )
        atomic_write_text(run_dir / "FAILED", msg + "\n")
        if multirun:
            return None
        print(f"error: non-finite training state: {msg}", file=sys.stderr)
        if kept:
            print(
                f"last good checkpoint: {kept} (continue with a lower lr: ckpt_path={kept})", file=sys.stderr
            )
        else:
            print("no checkpoint had been written yet (the first epoch did not end)", file=sys.stderr)
        sys.exit(1)
    except ConfigError as exc:
        if multirun:
            atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": exc.one_line()})
            log.error("%s (job folder %s)", exc.one_line(), run_dir)
            return None
        _clean_empty_run_dir(run_dir)
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    except BaseException as exc:  # noqa: BLE001 - logged with the run folder, then re-raised or recorded
        msg = f"{type(exc).__name__}: {exc}"
        log.exception("run failed (run folder %s): %s", run_dir, msg)
        if run_dir.is_dir():
            atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": msg})
            atomic_write_text(run_dir / "FAILED", msg + "\n")
        if multirun and not isinstance(exc, KeyboardInterrupt):
            return None
        raise
    finally:
        finish_wandb()  # the one place: every path out of the job (also sys.exit) passes here


class SkipJob(Exception):
    """A job folder that ``skip_completed`` leaves as it is (a deterministic failure)."""


def completed_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed run in ``run_dir`` (None when there is none)."""
    import json

    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "completed" else None


def prepare_job_folder(cfg: DictConfig, run_dir: Path) -> None:
    """``skip_completed``: continue an interrupted job from its last checkpoint (``resume``), or move a failed
    job's folder aside (``<folder>.failed-<time>``, nothing deleted) so the job starts again."""
    import json

    from omegaconf import open_dict

    failed = run_dir / "failed.json"
    if failed.is_file():
        try:
            kind = json.loads(failed.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind == "non_finite":  # the same trajectory would diverge again: not retried, listed by the report
            raise SkipJob(f"{run_dir} diverged (non-finite training state, failed.json): not retried")
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        log.info("skip_completed: continuing the interrupted run in %s from its last checkpoint", run_dir)
        with open_dict(cfg):
            cfg.resume = str(run_dir)
        return
    taken = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if taken:
        aside = run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.mkdir(parents=True)
        for entry in run_dir.iterdir():  # the new attempt keeps its Hydra bookkeeping and log file
            if entry.name != ".hydra" and not entry.name.endswith(".log"):
                entry.rename(aside / entry.name)
        log.warning("skip_completed: %s held a failed run without a checkpoint: moved to %s", run_dir, aside)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_job(cfg)
    if metrics and "textual_mnist/acc" in metrics:
        return float(metrics["textual_mnist/acc"])
    return None


def _override_key(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def _arg_value(args: list[str], key: str) -> str | None:
    value = None
    for arg in args:
        if "=" in arg and _override_key(arg) == key:
            value = arg.split("=", 1)[1]
    return value


def prepare_args(args: list[str]) -> list[str]:
    """Check the command line before Hydra creates or touches any folder; return the arguments to run with.

    * ``experiment=``/``sweep=`` name existing files (the error lists the valid ones);
    * ``resume=<run folder>`` points at a resumable run; that run's own overrides (its ``.hydra/overrides.yaml``,
      saved as ``overrides.original.yaml`` before Hydra rewrites it) are put in front, so ``resume=<folder>`` alone
      continues it with the same options (an override given again on this command line wins, and the checkpoint
      check then reports the difference);
    * ``hydra.run.dir=<folder>`` never names a folder that already holds a run, unless resuming it;
    * no credential is passed as an override (it would be written into the run folder).
    """
    check_experiment_args(args)
    for arg in args:
        key = _override_key(arg)
        if "=" in arg and is_secret(key):
            raise ConfigError(
                key,
                "credentials must not be passed as config overrides (they would be written to .hydra/config.yaml)",
                "set WANDB_API_KEY in the environment or run `wandb login` (stored in ~/.netrc)",
            )
    multirun = any(a in ("-m", "--multirun") for a in args)
    resume = _arg_value(args, "resume")
    if resume is not None and not is_null(resume):
        if multirun:
            raise ConfigError(
                "resume", "can't be combined with a multirun (-m)", "resume one job folder at a time"
            )
        folder = check_resume_folder(resume)
        # Hydra rewrites .hydra/overrides.yaml at every start (also of a failed resume attempt): the run's own
        # overrides are kept once, before the first resume, in overrides.original.yaml.
        overrides_file = folder / ".hydra" / "overrides.yaml"
        original_file = folder / ".hydra" / "overrides.original.yaml"
        if overrides_file.is_file() and not original_file.is_file():
            atomic_write_text(original_file, overrides_file.read_text())
        if original_file.is_file():
            import yaml

            original = yaml.safe_load(original_file.read_text()) or []
            given = {_override_key(a) for a in args if "=" in a}
            skip = given | {"resume", "ckpt_path", "hydra.run.dir"}
            kept = [str(o) for o in original if _override_key(str(o)) not in skip]
            if kept:
                print(f"resume: continuing {folder} with its original overrides: {' '.join(kept)}")
            return kept + list(args)
        return list(args)
    run_dir = _arg_value(args, "hydra.run.dir")
    skip_completed = str(_arg_value(args, "skip_completed") or "").lower() in ("true", "1", "yes")
    if run_dir and not multirun and not skip_completed:  # skip_completed reuses its job folder on purpose
        check_run_folder_free(Path(os.path.expanduser(run_dir)))
    return list(args)


def main() -> None:
    """Console entry point (validates experiment names, resume and run folders before Hydra sees them)."""
    try:
        sys.argv = [sys.argv[0], *prepare_args(sys.argv[1:])]
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _hydra_main()


if __name__ == "__main__":
    main()
