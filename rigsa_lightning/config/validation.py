"""Config validation before anything is loaded or written: one-line :class:`ConfigError` naming the option.

:func:`validate_cfg` runs :func:`rigsa_lightning.config.options.check_options` (every option's type and range) first, then
the checks that need more than the option schema (the method, the machine, the pruning schedule, data sizes,
checkpoints). The run-folder checks (:func:`check_run_start`, :func:`check_checkpoint`) and the checks that need the
loaded data (:func:`check_max_steps`) run from :func:`rigsa_lightning.train.train` once those are known.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, open_dict

from rigsa_lightning.adapters.registry import get_method
from rigsa_lightning.adapters.rigsa.ticket import TICKET_FILE
from rigsa_lightning.config.access import is_null
from rigsa_lightning.config.errors import ConfigError

if TYPE_CHECKING:
    from rigsa_lightning.pruning import PruningSchedule

log = logging.getLogger("rigsa_lightning.train")

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
    if (folder / "metrics.json").is_file():
        raise ConfigError("resume", f"{folder} already completed (it has metrics.json)", "start a new run")
    if not (folder / "checkpoints" / "last.ckpt").is_file() and (folder / TICKET_FILE).is_file():
        from rigsa_lightning.pruning.ticket_checkpoint import checkpoint_from_ticket

        try:
            checkpoint_from_ticket(folder)  # an archived job's winning ticket: continue from it
        except ValueError as exc:
            raise ConfigError("resume", str(exc), f"remove {TICKET_FILE} to start the run over") from exc
    if not (folder / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(
            "resume",
            f"{folder} has no checkpoints/last.ckpt (not a run folder, or the run stopped before its first epoch ended)",
            "start a new run",
        )
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
    if source == "chat":  # your own data: every row checked now (one line naming file, row and column)
        from rigsa_lightning.data.chat_rows import check_chat_data

        check_chat_data(data)
        return
    native = _NATIVE_SIZE.get(source) or (28 if source == "mnist" and not data.get("path") else None)
    if native is not None:
        from rigsa_lightning.data.sources import check_resolution

        check_resolution(data, (native, native))


def _check_storage_early(cfg: DictConfig) -> None:
    """``adapter.storage`` / ``adapter.sparse_grad`` values, and sparse storage only without a multi-process
    strategy (RigsaLitModule.resolve_storage checks the live strategy again)."""
    from rigsa_lightning.adapters.rigsa.storage import multi_device_error, storage_options

    storage, _ = storage_options(cfg.adapter)
    strategy = str(cfg.trainer.get("strategy", "auto") or "auto").lower()
    if storage == "sparse" and strategy.startswith(("ddp", "fsdp", "deepspeed")):
        raise multi_device_error(f"trainer.strategy={strategy}")


def _check_components(cfg: DictConfig) -> None:
    """Options checked by the component that uses them (stop_at, compile, optim.impl, lm_head, storage, eval)."""
    from rigsa_lightning.models import check_compile_cfg
    from rigsa_lightning.models.head import check_lm_head
    from rigsa_lightning.training.schedule import adamw_impl_kwargs
    from rigsa_lightning.training.stopping import check_stop_at

    check_stop_at(cfg.get("stop_at"))
    check_compile_cfg(cfg.get("compile"))
    adamw_impl_kwargs(
        str((cfg.get("optim") or {}).get("impl", "fused"))
    )  # one-line error for a bad optim.impl
    check_lm_head(cfg.get("lm_head", "scored"))
    _check_storage_early(cfg)
    if cfg.get("eval") is not None:
        from rigsa_lightning.forgetting import check_eval_cfg

        check_eval_cfg(cfg.eval)  # eval.limit / scorer / ... and the files under eval.data_dir


def validate_cfg(cfg: DictConfig) -> PruningSchedule:
    """Reject bad input before anything is loaded or written (one-line errors naming the option).

    Returns the run's validated :class:`~rigsa_lightning.pruning.PruningSchedule` (parsed once here, then passed
    to whatever needs it).
    """
    import torch

    from rigsa_lightning.config.options import check_options
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
    _check_components(cfg)
    spec.check(cfg)  # checks that need a library (QLoRA: bitsandbytes)
    if resume_folder(cfg) is not None:
        check_resume_folder(cfg.resume)
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(
            "ckpt_path",
            f"{cfg.ckpt_path} does not exist",
            f"point it at a .ckpt file of this run, or at a RIGSA run's {TICKET_FILE}",
        )
    return schedule


def resolve_auto_precision(cfg: DictConfig) -> str:
    """Replace ``trainer.precision=auto`` by what this machine runs fast (bf16-mixed only where bf16 is native,
    :func:`rigsa_lightning.runtime.resolve_precision`); return the precision in use."""
    from rigsa_lightning.runtime import resolve_precision

    given = str(cfg.trainer.get("precision", "32-true"))
    resolved = resolve_precision(given, str(cfg.trainer.get("accelerator", "cpu")))
    if resolved != given:
        with open_dict(cfg):
            cfg.trainer.precision = resolved
        log.info("trainer.precision=auto -> %s on this machine", resolved)
    return resolved


def check_checkpoint(cfg: DictConfig, path: Path, option: str) -> None:
    """Load ``path`` safely (``weights_only``, memory-mapped) and compare its stored options with ``cfg``.

    A resume must continue the same trajectory: differing options are an error for ``resume`` and a warning for
    ``ckpt_path`` (a new run started from a checkpoint may change them on purpose).
    """
    import torch

    from rigsa_lightning.training.checkpoint import (
        CKPT_KEY,
        config_differences,
        saved_loader_positions,
        trajectory_config,
    )

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
    if mid_epoch and not saved_loader_positions(ckpt):
        log.warning(
            "%s was saved mid-epoch (global step %s) without the training loader's position (an older checkpoint): "
            "Lightning replays that epoch's data from its start, so the continued run is close to, not "
            "bit-identical with, an uninterrupted one (epoch-end checkpoints are exact)",
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


def check_run_start(cfg: DictConfig, run_dir: Path, *, multirun: bool) -> tuple[Path | None, Path | None]:
    """Where the run starts from: ``(resume folder or None, checkpoint to load or None)``.

    A resumed run continues in its own folder (not in a multirun unless ``skip_completed`` set it) from
    ``checkpoints/last.ckpt`` unless ``ckpt_path`` is given; a new run needs a free folder. A new run given a RIGSA
    run's ``ticket.ckpt.xz`` starts from that winning ticket (unpacked into its folder,
    :func:`~rigsa_lightning.pruning.ticket_checkpoint.start_from_ticket`). The checkpoint's stored options are
    compared with ``cfg`` (:func:`check_checkpoint`).
    """
    from rigsa_lightning.pruning.ticket_checkpoint import is_ticket_file, start_from_ticket

    resume = resume_folder(cfg)
    ckpt_path: Path | None = Path(str(cfg.ckpt_path)) if cfg.get("ckpt_path") else None
    if resume is not None:
        if multirun and not cfg.get("skip_completed", False):
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
        if ckpt_path is not None and is_ticket_file(ckpt_path):  # a winning ticket: its final retraining anew
            ckpt_path = start_from_ticket(ckpt_path, run_dir)
    if ckpt_path is not None:
        check_checkpoint(cfg, ckpt_path, "resume" if resume is not None else "ckpt_path")
    return resume, ckpt_path


def check_max_steps(cfg: DictConfig, dm: Any, schedule: PruningSchedule) -> None:
    """``trainer.max_steps`` must leave room for every prune round (once the steps per epoch are known)."""
    max_steps = cfg.trainer.get("max_steps")
    if max_steps is None or int(max_steps) < 0 or not get_method(cfg.adapter.method).prunes:
        return
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
