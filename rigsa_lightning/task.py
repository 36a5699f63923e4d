"""One Hydra job of an entry point (``train``, ``evaluate``): the same handling of success, bad input and failure.

:func:`run_job` runs the job's work function and guarantees, on every path out of it:

* W&B is finished once (in ``finally``), so multirun jobs never merge into one W&B run;
* bad input (:class:`ConfigError`) is one line on stderr and exit status 2, and the run folder it would have used is
  removed when it holds nothing but Hydra's bookkeeping; in a multirun the job records ``failed.json`` and the sweep
  goes on;
* an interruption (Ctrl-C, SIGTERM) is not a failure: nothing is recorded as failed, the process stops (a sweep
  does not go on to its next job; SIGTERM exits with status 143) and the same command continues the job;
* a non-finite training state (:class:`~rigsa_lightning.training.module.NonFiniteError`) and any other failure are logged
  with the run folder and recorded in ``failed.json`` / ``FAILED``;
* ``skip_completed`` (a study rerun): a completed job is skipped, an interrupted one continues, a failed one is
  moved aside and started again (:func:`completed_metrics`, :func:`prepare_job_folder`, :class:`SkipJob`);
* ``skip_completed`` also claims the job folder first (:func:`claim_job_folder`, ``.job.lock``): two processes
  running the same grid (two slots of a study) never run, continue or move aside the same job; each takes the jobs
  the other does not hold.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from rigsa_lightning.adapters.rigsa.ticket import TICKET_FILE, TICKET_START, TICKET_START_SOURCE
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.config.validation import RUN_MARKERS
from rigsa_lightning.io import atomic_write_json, atomic_write_text, copy_changed_files

log = logging.getLogger("rigsa_lightning.train")

JobWork = Callable[[DictConfig], "dict[str, Any] | None"]


class SkipJob(Exception):
    """A job folder that ``skip_completed`` leaves as it is (a deterministic failure)."""


def is_multirun() -> bool:
    """Whether this process runs a Hydra multirun (``-m``); False outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def clean_empty_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's bookkeeping (bad input must write nothing)."""
    if not run_dir.is_dir():
        return
    # Hydra's bookkeeping, this process's claim (``skip_completed``) and the copy of a winning ticket it started from
    ours = (".hydra", LOCK_NAME, TICKET_START, TICKET_START_SOURCE)
    leftovers = [p for p in run_dir.iterdir() if p.name not in ours and not p.name.endswith(".log")]
    if not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)


def completed_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed run in ``run_dir`` (None when there is none)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "completed" else None


def prepare_job_folder(cfg: DictConfig, run_dir: Path) -> None:
    """``skip_completed``: continue an interrupted job from its own last checkpoint (``resume``; also a job that
    started from another run's checkpoint with ``ckpt_path``), or move a failed job's folder aside
    (``<folder>.failed-<time>``, nothing deleted) so the job starts again."""
    failed = run_dir / "failed.json"
    if failed.is_file():
        try:
            kind = json.loads(failed.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind == "non_finite":  # the same trajectory would diverge again: not retried, listed by the report
            raise SkipJob(f"{run_dir} diverged (non-finite training state, failed.json): not retried")
    own = run_dir / "checkpoints" / "last.ckpt"
    ticket = run_dir / TICKET_FILE
    if not own.is_file() and ticket.is_file():  # a job archived at its winning ticket, on a fresh machine
        from rigsa_lightning.pruning.ticket_checkpoint import checkpoint_from_ticket

        try:
            checkpoint_from_ticket(run_dir)
        except ValueError as exc:  # kept beside; the job starts over
            bad = run_dir / f"{TICKET_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            ticket.rename(bad)
            log.warning("skip_completed: %s; moved to %s", exc, bad.name)
    if own.is_file():
        log.info("skip_completed: continuing the interrupted run in %s from its last checkpoint", run_dir)
        with open_dict(cfg):
            cfg.resume = str(run_dir)
            # the job's own progress, not the checkpoint a job started with ``ckpt_path`` began from
            cfg.ckpt_path = str(own)
        # an earlier attempt to continue it that failed: kept beside, no longer the job's state
        if failed.is_file():
            failed.rename(run_dir / f"failed-{time.strftime('%Y%m%d-%H%M%S')}.json")
        return
    taken = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    if taken:
        aside = run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.mkdir(parents=True)
        for entry in run_dir.iterdir():  # the new attempt keeps its Hydra bookkeeping, log file and claim
            if entry.name not in (".hydra", LOCK_NAME) and not entry.name.endswith(".log"):
                entry.rename(aside / entry.name)
        log.warning("skip_completed: %s held a failed run without a checkpoint: moved to %s", run_dir, aside)


#: The job folder's claim file (``skip_completed``): who runs the job, refreshed while it runs.
LOCK_NAME = ".job.lock"
#: A claim by a process on another machine (a shared file system) is live while refreshed within this many seconds.
LOCK_STALE_S = 600.0
#: How often a held claim is refreshed (its modification time).
LOCK_REFRESH_S = 60.0


@dataclass
class JobClaim:
    """A held claim on a job folder: refreshed by a daemon thread until :meth:`release`."""

    path: Path
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> JobClaim:
        """Refresh the claim every :data:`LOCK_REFRESH_S` seconds in the background; return self."""

        def refresh() -> None:
            while not self.stop.wait(LOCK_REFRESH_S):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self.thread = threading.Thread(target=refresh, name="job-claim", daemon=True)
        self.thread.start()
        return self

    def release(self) -> None:
        """Stop refreshing and remove the claim file if it is still this process's."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        holder = _claim_holder(self.path)
        if (
            holder is not None
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        ):
            self.path.unlink(missing_ok=True)


def _claim_holder(path: Path) -> dict[str, Any] | None:
    """The claim file's content (host, pid, started), None when it is missing or unreadable."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _claim_is_live(holder: dict[str, Any] | None, path: Path) -> bool:
    """Whether the claim's holder still runs the job: a live process on this machine (not this process: a claim
    this process left behind is stale), or on another machine a claim refreshed within :data:`LOCK_STALE_S`."""
    if holder is None:
        return False
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's live process
            return True
        return True
    try:
        return time.time() - path.stat().st_mtime < LOCK_STALE_S
    except OSError:
        return False


def secondary_rank() -> bool:
    """Whether this process is a non-zero rank of a distributed job (Lightning's DDP children, torchrun, SLURM
    tasks): part of a job that rank 0 has claimed, never a claimant itself."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def claim_job_folder(run_dir: Path) -> JobClaim | dict[str, Any]:
    """Claim ``run_dir`` for this process (``.job.lock``: host, pid, start time, created atomically with its
    content); return the held :class:`JobClaim`, or the holder's record when another live process holds it. A stale
    claim (its process is gone, or another machine's claim not refreshed for :data:`LOCK_STALE_S`) is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = run_dir / f"{LOCK_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic: fails when a claim exists, never leaves an empty one
                return JobClaim(path).start()
            except FileExistsError:
                holder = _claim_holder(path)
                if _claim_is_live(holder, path):
                    return holder or {}
                log.warning("skip_completed: %s held a stale claim %s: taken over", run_dir, holder)
                path.unlink(missing_ok=True)
        return _claim_holder(path) or {}
    finally:
        tmp.unlink(missing_ok=True)


#: Where a job keeps the Hydra config files of the process that trained it (``.hydra/<AS_RUN>/``, ``skip_completed``).
AS_RUN = "as_run"


def keep_job_config(run_dir: Path) -> None:
    """Copy the job's ``.hydra/*.yaml`` (just written by Hydra for this process) to ``.hydra/as_run/``: the record of
    the command that trained it, which a later rerun of a sweep cannot overwrite."""
    if (run_dir / ".hydra").is_dir():
        copy_changed_files(run_dir / ".hydra", run_dir / ".hydra" / AS_RUN)


def restore_job_config(run_dir: Path) -> bool:
    """Put a completed job's own config files back into ``.hydra/`` (Hydra rewrote them for the rerun that skipped
    it); False when nothing was put back (they were unchanged, or the job completed before they were kept)."""
    return copy_changed_files(run_dir / ".hydra" / AS_RUN, run_dir / ".hydra")


def _skip_completed(cfg: DictConfig, run_dir: Path) -> tuple[bool, dict[str, Any] | None]:
    """``skip_completed``: ``(True, result)`` when the job is not run again, else ``(False, None)``. A skipped
    completed job keeps the config of the run that trained it; a job that runs keeps this process's."""
    done = completed_metrics(run_dir)
    if done is not None:
        restore_job_config(run_dir)
        log.info("skip_completed: %s already holds a completed run: skipped", run_dir)
        return True, done
    try:
        prepare_job_folder(cfg, run_dir)
    except SkipJob as exc:
        log.warning("skip_completed: %s", exc)
        return True, None
    keep_job_config(run_dir)
    return False, None


def _non_finite(exc: Exception, run_dir: Path, multirun: bool) -> None:
    """Record a diverged run (``failed.json`` kind ``non_finite``, the last good checkpoint); exit 1 outside a
    multirun."""
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
        return
    print(f"error: non-finite training state: {msg}", file=sys.stderr)
    if kept:
        print(f"last good checkpoint: {kept} (continue with a lower lr: ckpt_path={kept})", file=sys.stderr)
    else:
        print("no checkpoint had been written yet (the first epoch did not end)", file=sys.stderr)
    sys.exit(1)


def _bad_input(exc: ConfigError, run_dir: Path, multirun: bool) -> None:
    """Bad input: recorded in ``failed.json`` in a multirun, else one line on stderr, nothing written, exit 2."""
    if multirun:
        atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": exc.one_line()})
        log.error("%s (job folder %s)", exc.one_line(), run_dir)
        return
    clean_empty_run_dir(run_dir)
    print(exc.one_line(), file=sys.stderr)
    sys.exit(2)


def _finish_wandb() -> None:
    """Finish the W&B run, if W&B was used at all (an evaluation never imports it)."""
    if "wandb" in sys.modules:
        from rigsa_lightning.training.tracking import finish_wandb

        finish_wandb()


def detach_file_logs(folder: Path) -> None:
    """Remove (and close) the root logger's file handlers that write inside ``folder``: Hydra opens the job's log
    file (``<run_dir>/train.log``) before the job starts, and a job another process holds must not get this
    process's lines in its log. Hydra configures logging afresh for the next job of a sweep."""
    folder = folder.resolve()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (
            isinstance(handler, logging.FileHandler)
            and folder in Path(handler.baseFilename).resolve().parents
        ):
            root.removeHandler(handler)
            handler.close()


def run_job(cfg: DictConfig, work: JobWork) -> dict[str, Any] | None:
    """Run ``work(cfg)`` as one Hydra job in ``cfg.paths.run_dir`` (see the module docstring); return its result,
    or None for a multirun job that failed or was skipped for good."""
    from rigsa_lightning.training.module import NonFiniteError

    run_dir = Path(cfg.paths.run_dir)
    multirun = is_multirun()
    claim: JobClaim | None = None
    if cfg.get("skip_completed", False):  # a study rerun: finished jobs are kept, interrupted ones continue
        if completed_metrics(run_dir) is None and not secondary_rank():  # one claim per job: rank 0's
            held = claim_job_folder(run_dir)
            if not isinstance(held, JobClaim):
                # the job's log file is its holder's: this process writes nothing there
                detach_file_logs(run_dir)
                log.warning(
                    "skip_completed: %s is being run by another process (host %s, pid %s, since %s): skipped",
                    run_dir,
                    held.get("host"),
                    held.get("pid"),
                    held.get("started"),
                )
                return None
            claim = held
        skipped, result = _skip_completed(cfg, run_dir)
        if skipped:
            if claim is not None:
                claim.release()
            return result
    try:
        return work(cfg)
    except NonFiniteError as exc:
        _non_finite(exc, run_dir, multirun)
        return None
    except ConfigError as exc:
        _bad_input(exc, run_dir, multirun)
        return None
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (Lightning's SIGTERMException)
        sigterm = type(exc).__name__ == "SIGTERMException"
        log.warning(
            "run interrupted by %s (run folder %s): not a failure; the same command continues it from its last "
            "checkpoint with skip_completed=true, and the rest of a sweep does not start",
            "SIGTERM" if sigterm else type(exc).__name__,
            run_dir,
        )
        if sigterm:
            raise SystemExit(128 + signal.SIGTERM) from exc  # the exit status of a process ended by SIGTERM
        raise
    except BaseException as exc:  # noqa: BLE001 - logged with the run folder, then re-raised or recorded
        msg = f"{type(exc).__name__}: {exc}"
        log.exception("run failed (run folder %s): %s", run_dir, msg)
        if run_dir.is_dir():
            atomic_write_json(run_dir / "failed.json", {"status": "failed", "error": msg})
            atomic_write_text(run_dir / "FAILED", msg + "\n")
        if multirun:
            return None
        raise
    finally:
        _finish_wandb()  # the one place: every path out of the job (also sys.exit) passes here
        if claim is not None:
            claim.release()
