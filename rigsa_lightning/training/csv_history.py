"""A CSV logger whose ``metrics.csv`` stays continuous across a resume.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its writer starts, so a resumed run used to lose every row
logged before the checkpoint (steps 0-128 of a job resumed after its first epoch). :class:`ContinuousCSVLogger`
reads the old rows first, keeps those logged up to the checkpoint's optimizer step (later ones are logged again by
the resumed run: keeping them would duplicate steps), and writes them back as the start of the new file.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger

__all__ = ["ContinuousCSVLogger", "checkpoint_position", "kept_rows"]


def checkpoint_position(ckpt_path: str | os.PathLike) -> tuple[int | None, bool]:
    """Where a Lightning checkpoint resumes logging, read in one load: ``(step, batch_end)``.

    ``step`` is the logging step it resumes at (batches that stepped; None if unreadable). ``batch_end`` says it
    was saved in ``on_train_batch_end`` (e.g. ``every_n_train_steps``; Lightning's
    ``RESTARTED_ON_TRAIN_BATCH_END``): ``step`` is then that batch's logging step, whose step rows are logged
    after the save and never again by the resumed run.
    """
    import torch

    try:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint fails later, in the trainer, with its own error
        return None, False
    loops = (ckpt.get("loops") or {}).get("fit_loop") or {}
    try:
        step: int | None = int(loops["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError):
        global_step = ckpt.get("global_step")
        step = int(global_step) if global_step is not None else None
    try:
        total = loops["epoch_loop.batch_progress"]["total"]
        batch_end = int(total["completed"]) == int(total["processed"]) - 1
    except (KeyError, TypeError, ValueError):  # an older checkpoint: the epoch-end rule
        batch_end = False
    return step, batch_end


def kept_rows(
    path: Path, resume_step: int, batch_end: bool = False
) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of ``path`` logged before the resumed run logs again (``step < resume_step``,
    plus the epoch-end rows at ``resume_step`` itself, which the checkpoint was written after; for a checkpoint
    saved at a batch's end (``batch_end``), also that batch's step rows, which the resumed run does not log
    again)."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    out = []
    for row in rows:
        try:
            step = int(float(row.get("step") or 0))
        except ValueError:
            continue
        if step < resume_step or (step == resume_step and (batch_end or not _is_step_row(row))):
            out.append(row)
    return header, out


def _is_step_row(row: dict[str, str]) -> bool:
    """A per-optimizer-step row (``*_step`` metrics or the learning rate): logged again after a resume."""
    return any(v not in ("", None) and (k.endswith("_step") or k.startswith("lr-")) for k, v in row.items())


class ContinuousCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the rows of the run it resumes (``resume_step``: the checkpoint's step)."""

    def __init__(
        self, *args: Any, resume_step: int | None = None, batch_end: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step
        self._previous: tuple[list[str], list[dict[str, str]]] | None = None
        path = Path(self.log_dir) / "metrics.csv"
        if resume_step is not None and path.is_file():
            self._previous = kept_rows(path, int(resume_step), batch_end)

    @property
    def experiment(self) -> Any:
        """The writer; on its first use after a resume the kept rows are written back (with their header)."""
        first = self._experiment is None
        writer = super().experiment
        if first and self._previous is not None and writer is not None:
            header, rows = self._previous
            self._previous = None
            keys = sorted(set(header) | set(writer.metrics_keys))
            writer.metrics_keys = keys
            with open(writer.metrics_file_path, "w", newline="") as fh:
                out = csv.DictWriter(fh, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
        return writer
