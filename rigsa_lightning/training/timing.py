"""Where a run's training time goes: optimizer steps, validation, the forgetting curve, pruning events.

:class:`StageTimer` is a Lightning callback that adds up wall-clock seconds per stage of ``trainer.fit``:

* ``time/steps_s`` - training batches, from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
  clipping and the optimizer step), with ``time/steps_n`` the number of batches;
* ``time/val_s`` - the validation loops (``on_validation_start`` to ``on_validation_end``, sanity check excluded;
  the timer is the first callback, so the forgetting curve scored in a later ``on_validation_end`` is not in it);
* ``time/curve_s`` - the forgetting curve (the seconds recorded in each of its points);
* ``time/prune_s`` - the IMP rounds (the pruning callback's recorded seconds per round);
* ``time/fit_other_s`` - the rest of ``time/train_s`` (checkpoints, data loading between batches, logging);
* ``time/train_before_s`` - in a resumed run, the fit seconds of the processes before it, up to the checkpoint it
  continued from (each checkpoint carries them), so that ``time/train_s`` and ``time/total_s`` are the whole run's;
  the time lost to the interruption (steps redone since the checkpoint, the restart) is left out. 0 for a run that
  was not resumed, a new run started from another run's checkpoint (``ckpt_path``) included; absent when the
  checkpoint predates it (then ``time/train_s`` is the last process's);
* ``time/search_s`` / ``time/final_s`` - with pruning, the steps, validations, curve points and prunes up to and
  including the last prune (the mask search, the lottery-ticket protocol's cost of finding the ticket) and after it
  (the final retraining); together they are the four stage totals above.

Seconds are accumulated in the callback's state, so a resumed run continues the totals of the run it resumes (the
stage totals of a new run started from ``ckpt_path`` continue its checkpoint's too, its fit clock does not).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

__all__ = ["StageTimer", "time_breakdown"]


class StageTimer(L.Callback):
    """Accumulates the seconds of training steps and validation loops (see the module docstring)."""

    def __init__(self, carry_fit: bool = True) -> None:
        """``carry_fit``: continue the fit seconds a loaded checkpoint carries (a resume), else start from 0 (a
        new run started from another run's checkpoint)."""
        self.carry_fit = carry_fit
        self.steps_s = 0.0
        self.steps_n = 0
        self.val_s = 0.0
        # (global step after the batch, steps_s so far) and (global step, seconds) per validation loop: which
        # phase each second belongs to is known only once the last prune is (time/search_s)
        self.step_marks: list[tuple[int, float]] = []
        self.val_loops: list[tuple[int, float]] = []
        # the fit seconds of the processes before this one (a resumed run), None when its checkpoint lacks them
        self.fit_before_s: float | None = 0.0
        self._fit_t0: float | None = None
        self._batch_t0: float | None = None
        self._val_t0: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start this process's fit clock (a resumed run's checkpoint state is loaded before this hook)."""
        if not self.carry_fit:
            self.fit_before_s = 0.0
        self._fit_t0 = time.perf_counter()

    def fit_s(self) -> float | None:
        """The run's fit seconds so far: the earlier processes' (up to their checkpoint) plus this one's."""
        if self.fit_before_s is None:
            return None
        return self.fit_before_s + (time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        """Start timing one training batch."""
        self._batch_t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Add the batch's seconds (forward, backward, optimizer step)."""
        if self._batch_t0 is not None:
            self.steps_s += time.perf_counter() - self._batch_t0
            self.steps_n += 1
            self._batch_t0 = None
            step = int(trainer.global_step)
            if (
                self.step_marks and self.step_marks[-1][0] == step
            ):  # gradient accumulation: one optimizer step
                self.step_marks[-1] = (step, self.steps_s)
            else:
                self.step_marks.append((step, self.steps_s))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start timing a validation loop (not the sanity check)."""
        self._val_t0 = None if trainer.sanity_checking else time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add the loop's seconds (runs before the forgetting curve's hook of the same name)."""
        if self._val_t0 is not None:
            seconds = time.perf_counter() - self._val_t0
            self.val_s += seconds
            self.val_loops.append((int(trainer.global_step), seconds))
            self._val_t0 = None

    def state_dict(self) -> dict[str, Any]:
        """The totals so far (a resumed run continues them)."""
        state: dict[str, Any] = {
            "steps_s": self.steps_s,
            "steps_n": self.steps_n,
            "val_s": self.val_s,
            "step_marks": [list(m) for m in self.step_marks],
            "val_loops": [list(v) for v in self.val_loops],
        }
        fit_s = self.fit_s()
        if fit_s is not None:
            state["fit_s"] = fit_s
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the totals of the run being resumed."""
        self.steps_s = float(state_dict.get("steps_s", 0.0))
        self.steps_n = int(state_dict.get("steps_n", 0))
        self.val_s = float(state_dict.get("val_s", 0.0))
        self.step_marks = [(int(g), float(t)) for g, t in state_dict.get("step_marks", [])]
        self.val_loops = [(int(g), float(t)) for g, t in state_dict.get("val_loops", [])]
        fit_s = state_dict.get("fit_s")
        self.fit_before_s = float(fit_s) if fit_s is not None else None

    def steps_s_until(self, step: int) -> float:
        """The seconds of the training steps up to global step ``step`` (inclusive)."""
        done = [t for g, t in self.step_marks if g <= step]
        return done[-1] if done else 0.0


def time_breakdown(
    timer: StageTimer | None,
    train_s: float,
    curve_points: list[dict[str, Any]] | None = None,
    prune_history: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """``time/*`` metrics of a fit: steps, validation, forgetting curve, pruning and the rest of ``train_s``.

    ``train_s`` is this process's fit; a resumed run adds the earlier processes' (``time/train_before_s``) and
    returns the sum as ``time/train_s``. ``curve_points`` are the forgetting curve's points (each with its
    ``seconds``), ``prune_history`` the pruning callback's records (each with its ``seconds``); both are
    checkpointed, so a resumed run counts them whole.
    """
    if timer is None:
        return {}
    out: dict[str, float] = {}
    if timer.fit_before_s is not None:
        out["time/train_before_s"] = timer.fit_before_s
        train_s = timer.fit_before_s + float(train_s)
        out["time/train_s"] = train_s
    curve_s = sum(float(p.get("seconds", 0.0)) for p in (curve_points or []))
    prune_s = sum(float(rec.get("seconds", 0.0)) for rec in (prune_history or []))
    out |= {
        "time/steps_s": timer.steps_s,
        "time/steps_n": float(timer.steps_n),
        "time/step_mean_s": timer.steps_s / timer.steps_n if timer.steps_n else float("nan"),
        "time/val_s": timer.val_s,
        "time/curve_s": curve_s,
        "time/prune_s": prune_s,
    }
    out["time/fit_other_s"] = max(0.0, float(train_s) - timer.steps_s - timer.val_s - curve_s - prune_s)
    prunes = [rec for rec in (prune_history or []) if isinstance(rec.get("global_step"), (int, float))]
    if prunes:  # the mask search apart from the final retraining
        last = int(max(rec["global_step"] for rec in prunes))
        search = timer.steps_s_until(last) + prune_s
        search += sum(t for g, t in timer.val_loops if g <= last)
        search += sum(
            float(p.get("seconds", 0.0)) for p in (curve_points or []) if float(p.get("step", 0)) <= last
        )
        out["time/search_s"] = search
        out["time/final_s"] = timer.steps_s + timer.val_s + curve_s + prune_s - search
    return out
