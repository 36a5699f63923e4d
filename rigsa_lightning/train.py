"""Training entry point: ``python -m rigsa_lightning.train experiment=rigsa_50`` (Hydra; ``-m`` for sweeps).

``train(cfg)`` is a plain function returning a metrics dict, in named steps: load model + data, before-training
evaluation, fit, after-training evaluation + export, metrics. The Hydra main runs it through
:func:`rigsa_lightning.task.run_job` (W&B always finished, bad input one line, failures recorded in the run folder).

Imports go one way: this entry point -> ``task`` -> ``validation`` / ``callbacks`` -> the components.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rigsa_lightning.runtime import configure_offline_environment, quiet_console, reset_peak_rss

configure_offline_environment()  # before datasets/transformers/lm_eval are imported anywhere

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import rigsa_lightning.config.access  # noqa: E402,F401  (registers resolvers)
from rigsa_lightning.adapters.registry import AdapterMethod, get_method  # noqa: E402
from rigsa_lightning.config.access import CONFIG_DIR  # noqa: E402
from rigsa_lightning.config.arguments import prepare_args  # noqa: E402
from rigsa_lightning.config.errors import ConfigError  # noqa: E402
from rigsa_lightning.config.validation import (  # noqa: E402
    check_max_steps,
    check_run_start,
    resolve_auto_precision,
    validate_cfg,
)
from rigsa_lightning.io import atomic_write_json  # noqa: E402
from rigsa_lightning.task import is_multirun, run_job  # noqa: E402

if TYPE_CHECKING:
    from rigsa_lightning.adapters import PreparedModel
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.pruning import PruningSchedule
    from rigsa_lightning.training.callbacks import TrainCallbacks
    from rigsa_lightning.training.module import RigsaLitModule

log = logging.getLogger("rigsa_lightning.train")


def _peak_rss_gb() -> float:
    """Peak RSS (GiB) since :func:`train` started (the kernel counter is reset there; see runtime.reset_peak_rss)."""
    from rigsa_lightning.runtime import peak_rss_bytes

    return peak_rss_bytes() / 1024**3


def segment_epochs(cfg: DictConfig, schedule: PruningSchedule) -> tuple[int, list[int]]:
    """Total epochs and the epoch lengths of the LR-schedule segments (one per IMP round, then the final phase)."""
    total = int(schedule.total_epochs)
    prunes = get_method(cfg.adapter.method).prunes  # IMP rounds: one LR segment each
    if prunes and schedule.rounds > 0 and bool(cfg.pruning.get("enabled", True)):
        segs = [int(schedule.epochs_per_round)] * int(schedule.rounds)
        if schedule.final_epochs > 0:
            segs.append(int(schedule.final_epochs))
        return total, segs
    return total, [total]


def _start_run(cfg: DictConfig) -> tuple[Path, Path | None, Path | None]:
    """Precision, threads, the run folder and where the run starts from (resume / checkpoint), the seed."""
    import lightning as L
    import torch

    resolve_auto_precision(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.paths.run_dir)
    resume, ckpt_path = check_run_start(cfg, run_dir, multirun=is_multirun())
    L.seed_everything(int(cfg.seed), workers=True)
    return run_dir, resume, ckpt_path


def _load_model(cfg: DictConfig) -> PreparedModel:
    """The base model with the method's adapter injected (``torch.compile`` when ``compile`` asks for it)."""
    from rigsa_lightning.adapters import prepare_model
    from rigsa_lightning.models import compile_forward
    from rigsa_lightning.models.head import split_causal_lm

    prepared = prepare_model(cfg, Path(cfg.paths.cache_dir))
    if compile_forward(prepared.model, cfg.get("compile")):
        where = "decoder body; LM head eager" if split_causal_lm(prepared.model) else "whole model"
        log.info("torch.compile: model forward wrapped (backend %s) - %s", cfg.compile.backend, where)
    return prepared


def _load_data(cfg: DictConfig, prepared: PreparedModel, schedule: PruningSchedule) -> TextualMNISTDataModule:
    """The task's data module (Textual MNIST, or ``data.source=chat``: your own chat data), set up for fitting;
    ``trainer.max_steps`` checked against its size."""
    from rigsa_lightning.data.chat import ChatDataModule
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule

    module = ChatDataModule if str(cfg.data.get("source")) == "chat" else TextualMNISTDataModule
    dm = module(  # the splits from data.seed, the training order from the run seed
        cfg.data, prepared.tokenizer, cache_dir=str(Path(cfg.paths.cache_dir)), seed=int(cfg.seed)
    )
    dm.prepare_data()
    dm.setup("fit")
    check_max_steps(
        cfg, dm, schedule
    )  # before the forgetting preflight writes its task files into the run folder
    return dm


def _score_task(
    model: Any, dm: Any, cfg: DictConfig, cache_key: str | None = None
) -> tuple[str, dict[str, float]]:
    """The test split's task metrics and their prefix: ``textual_mnist`` (acc, gen_acc), or a data module's own
    (``chat``: exact_match, loss, token_acc)."""
    from rigsa_lightning.training.scoring import score_textual_mnist

    precision = str(cfg.trainer.get("precision", "32-true"))
    if hasattr(dm, "score_split"):
        return dm.metric_prefix, dm.score_split(model, "test", precision)
    return "textual_mnist", score_textual_mnist(model, dm, "test", precision, cfg, cache_key=cache_key)


def _forgetting_enabled(cfg: DictConfig) -> bool:
    return bool(cfg.eval.get("enabled", True)) or bool(cfg.eval.get("drift", {}).get("enabled", False))


def _evaluate_before(
    cfg: DictConfig,
    spec: AdapterMethod,
    prepared: PreparedModel,
    dm: TextualMNISTDataModule,
    forgetting: ForgettingEvaluator,
    metrics: dict[str, Any],
) -> Any | None:
    """Zero-shot Textual MNIST and the forgetting stage ``before`` into ``metrics``; the forgetting-curve callback
    (its own small subset, paired with the base model) when ``eval.curve`` asks for one."""
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.forgetting.curve import ForgettingCurve, curve_eval_cfg

    prefix, base = _score_task(prepared.model, dm, cfg, cache_key=prepared.model_key)
    metrics.update({f"{prefix}/zero_shot_{k}": v for k, v in base.items()})
    if _forgetting_enabled(cfg):
        metrics.update(forgetting.evaluate(prepared.model, "before"))
    curve_cfg = curve_eval_cfg(cfg.eval) if spec.trains else None
    if curve_cfg is None:
        return None
    curve_eval = ForgettingEvaluator(
        curve_cfg, prepared.tokenizer, prepared.model_key, str(Path(cfg.paths.cache_dir)), None
    )
    curve_eval.verbose = False
    curve_eval.evaluate(prepared.model, "before")
    return ForgettingCurve(curve_eval, run_dir=Path(cfg.paths.run_dir))


def _fit(
    cfg: DictConfig,
    spec: AdapterMethod,
    schedule: PruningSchedule,
    lit: RigsaLitModule,
    dm: TextualMNISTDataModule,
    forgetting: ForgettingEvaluator,
    curve_cb: Any | None,
    ckpt_path: Path | None,
    total_epochs: int,
    metrics: dict[str, Any],
) -> tuple[TrainCallbacks | None, list[Any]]:
    """Train (methods that train) and add the final ``val/`` and ``train/`` numbers to ``metrics``; return the
    callbacks and loggers (callbacks None on the non-zero ranks of a multi-process run, which stop there)."""
    from rigsa_lightning.training.callbacks import (
        TrainCallbacks,
        build_callbacks,
        build_loggers,
        build_trainer,
    )

    run_dir = Path(cfg.paths.run_dir)
    loggers = build_loggers(cfg, run_dir, ckpt_path)
    if not spec.trains:
        return TrainCallbacks(), loggers
    cbs = build_callbacks(cfg, spec, schedule, run_dir, forgetting, curve_cb, loggers)
    trainer = build_trainer(cfg, total_epochs, cbs.callbacks, loggers, run_dir)
    # weights_only: checkpoints hold tensors and primitives only (module.on_save_checkpoint keeps it so).
    trainer.fit(
        lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path is not None else None, weights_only=True
    )
    if not trainer.is_global_zero:
        return None, loggers
    for key, value in trainer.callback_metrics.items():
        if key.startswith(("val/", "train/")):
            metrics[f"final_{key}"] = float(value)
    if lit.adapter_state_history:  # per epoch: storage, kept entries, bytes of the adapter training state
        metrics["memory/adapter_state"] = list(lit.adapter_state_history)
    for lg in loggers:
        lg.finalize("success")
    return cbs, loggers


def _evaluate_after(
    cfg: DictConfig,
    spec: AdapterMethod,
    prepared: PreparedModel,
    dm: TextualMNISTDataModule,
    forgetting: ForgettingEvaluator,
    skipped: list[str],
    metrics: dict[str, Any],
) -> None:
    """Textual MNIST and the forgetting stage ``after`` (the summary, ``forgetting.json``) into ``metrics``."""
    started = time.time()
    prefix, after = _score_task(prepared.model, dm, cfg)
    metrics.update({f"{prefix}/{k}": v for k, v in after.items()})
    metrics[f"time/eval_after/{prefix}_s"] = round(time.time() - started, 3)
    if _forgetting_enabled(cfg):
        # zero-shot: the model is unchanged, score it once
        if not spec.trains and "before" in forgetting.stages:
            metrics.update(
                forgetting.copy_stage("before", "after", "no training: the model is the base model")
            )
        else:
            metrics.update(forgetting.evaluate(prepared.model, "after"))
            for part, seconds in forgetting.stage_seconds("after").items():
                metrics[f"time/eval_after/{part}_s"] = seconds
    forgetting_summary = forgetting.summary()
    metrics.update({k: v for k, v in forgetting_summary.items() if k != "skipped"})
    metrics["forget/skipped"] = sorted(skipped)
    forgetting.write(str(Path(cfg.paths.run_dir)))


def _model_metrics(
    cfg: DictConfig,
    spec: AdapterMethod,
    prepared: PreparedModel,
    lit: RigsaLitModule,
    cbs: TrainCallbacks,
    curve_cb: Any | None,
    metrics: dict[str, Any],
) -> None:
    """Parameter counts, density and gates, pruning history, stop and curve results; the exported adapter."""
    from rigsa_lightning.adapters import export_adapter

    metrics.update(lit.parameter_counts())
    if spec.gated:
        from rigsa_lightning.pruning import density_report

        report = density_report(prepared.gated)
        metrics["adapter/density"] = float(report["density"])
        metrics.update({f"alpha/{k.split('/')[-1]}": v for k, v in lit.gate_stats().items()})
    if cbs.pruning is not None:
        metrics["prune/history"] = cbs.pruning.history
    if cbs.stop is not None:
        metrics.update(cbs.stop.metrics())
    if curve_cb is not None:
        metrics["forget_curve"] = curve_cb.points
    adapter_dir = export_adapter(prepared, cfg, Path(cfg.paths.run_dir) / "adapter")
    if adapter_dir is not None:
        size = sum(f.stat().st_size for f in adapter_dir.iterdir() if f.is_file())
        metrics["adapter/bytes"] = int(size)
        metrics["adapter/path"] = str(adapter_dir)


def _write_metrics(run_dir: Path, metrics: dict[str, Any], loggers: list[Any]) -> None:
    """``metrics.json`` (a resumed run that completes is no longer failed), and the summary to the loggers."""
    from rigsa_lightning.training.tracking import log_summary

    atomic_write_json(run_dir / "metrics.json", metrics)
    for stale in ("failed.json", "FAILED"):
        (run_dir / stale).unlink(missing_ok=True)
    log_summary(loggers, metrics)


def train(
    cfg: DictConfig, *, validate: bool = True, schedule: PruningSchedule | None = None
) -> dict[str, Any]:
    """Run one experiment end to end and return its metrics (also written to ``metrics.json``).

    ``validate=False`` when the caller already ran :func:`validate_cfg` on this config; ``schedule`` is the run's
    pruning schedule (what :func:`validate_cfg` returned; parsed from ``cfg.pruning`` when not given).

    (About 80 lines: the pipeline's named steps, each a call.)
    """
    from rigsa_lightning.forgetting import ForgettingEvaluator
    from rigsa_lightning.pruning import PruningSchedule
    from rigsa_lightning.training.module import RigsaLitModule

    t0 = time.time()
    timings: dict[str, float] = {}
    if not reset_peak_rss():  # this job's own peak, also in a sequential multirun
        log.warning(
            "peak RSS: this kernel does not reset the counter; memory/peak_rss_gb is the process's peak"
        )
    if validate:
        schedule = validate_cfg(cfg)
    schedule = schedule if schedule is not None else PruningSchedule.from_cfg(cfg.pruning)
    run_dir, resume, ckpt_path = _start_run(cfg)
    spec = get_method(str(cfg.adapter.method))

    # ---------------------------------------------------------------- model + data
    prepared = _load_model(cfg)
    timings["time/load_s"] = time.time() - t0
    t = time.time()
    dm = _load_data(cfg, prepared, schedule)
    timings["time/data_s"] = time.time() - t
    forgetting = ForgettingEvaluator(
        cfg.eval, prepared.tokenizer, prepared.model_key, str(Path(cfg.paths.cache_dir)), str(run_dir)
    )
    skipped = forgetting.preflight()  # logs one line per skipped benchmark
    total_epochs, segments = segment_epochs(cfg, schedule)
    lit = RigsaLitModule(prepared, cfg, dm.digit_token_ids, segments)
    lit.train()  # from_pretrained returns eval mode; LoRA dropout and HF gradient checkpointing need train mode

    # ---------------------------------------------------------------- before training
    t = time.time()
    metrics: dict[str, Any] = {
        "method": str(cfg.adapter.method),
        "name": cfg.name,
        "seed": int(cfg.seed),
        "run_dir": str(run_dir),
        "trainer/precision": str(cfg.trainer.get("precision", "32-true")),
    }
    curve_cb = _evaluate_before(cfg, spec, prepared, dm, forgetting, metrics)
    timings["time/eval_before_s"] = time.time() - t

    # ---------------------------------------------------------------- training
    t = time.time()
    cbs, loggers = _fit(cfg, spec, schedule, lit, dm, forgetting, curve_cb, ckpt_path, total_epochs, metrics)
    if cbs is None:  # a non-zero rank: rank 0 evaluates and writes the results
        return {}
    timings["time/train_s"] = time.time() - t  # this process's; time_breakdown makes it the whole run's
    from rigsa_lightning.training.timing import time_breakdown

    timings.update(
        time_breakdown(
            cbs.timer,
            timings["time/train_s"],
            curve_cb.points if curve_cb is not None else None,
            cbs.pruning.history if cbs.pruning is not None else None,
        )
    )

    # ---------------------------------------------------------------- after training: evaluation + export
    t = time.time()
    _evaluate_after(cfg, spec, prepared, dm, forgetting, skipped, metrics)
    timings["time/eval_after_s"] = time.time() - t
    _model_metrics(cfg, spec, prepared, lit, cbs, curve_cb, metrics)

    # ---------------------------------------------------------------- metrics
    timings["time/total_s"] = time.time() - t0 + timings.get("time/train_before_s", 0.0)  # the whole run's
    timings["memory/peak_rss_gb"] = _peak_rss_gb()
    metrics.update(timings)
    metrics["status"] = "completed"
    from rigsa_lightning.pruning.ticket_checkpoint import ticket_started_from

    started = ticket_started_from(run_dir)  # kept in the run folder: also once the run was continued
    if resume is not None:
        metrics["resumed_from"] = str(ckpt_path)
    elif cfg.get("ckpt_path"):  # a new run started from another run's checkpoint
        started = started or str(cfg.ckpt_path)
    if started:
        metrics["started_from"] = started
    from rigsa_lightning.export import finish_run_exports

    metrics.update(finish_run_exports(cfg, run_dir, metrics))  # export.peft, then a README.md card per export
    _write_metrics(run_dir, metrics, loggers)
    return metrics


def _train_job(cfg: DictConfig) -> dict[str, Any] | None:
    """One training job as :func:`run_job` runs it: validate, print the config tree, train, print the results."""
    schedule = validate_cfg(cfg)  # bad input: one line, before the config tree is printed and anything loads
    quiet_console()  # every line once, no adverts; third-party warnings in the run's log file only
    if cfg.get("print_config", True):
        from rigsa_lightning.config.access import print_config_tree

        print_config_tree(cfg)
    metrics = train(cfg, validate=False, schedule=schedule)
    if metrics:
        from rigsa_lightning.training.summary import print_summary

        print_summary(metrics, Path(cfg.paths.run_dir))
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_job(cfg, _train_job)
    for key in ("textual_mnist/acc", "chat/exact_match"):
        if metrics and key in metrics:
            return float(metrics[key])
    return None


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
