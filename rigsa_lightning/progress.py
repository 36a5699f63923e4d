"""Progress of a long stage: a tqdm bar on a terminal, periodic one-line log messages otherwise.

Every stage that can take more than a few seconds (forgetting scoring, GSM8k generation, the forgetting curve, the
end-of-run Textual MNIST scoring, an IMP round) reports through :class:`Progress`::

    with Progress("forgetting before: piqa log-likelihoods", total=len(requests), unit="req") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

or wraps an iterable with :func:`track`. Where the output goes:

* stderr is a terminal: a tqdm bar with items/s and the time left, shown once the stage has run ``DELAY_S``
  seconds (quick stages stay silent) and removed when it ends;
* otherwise (sweeps, ``nohup``, a log file): a line through :mod:`logging` (the run's log) such as
  ``forgetting before: piqa log-likelihoods 400/1200 (33 %), 10.6 req/s, ~75 s left`` once the stage has run
  ``DELAY_S`` seconds, then at every further 10 % and at least every ``INTERVAL_S`` seconds, and one closing
  ``... done`` line when any line was written.

``RIGSA_PROGRESS`` picks the mode: ``auto`` (default: bar on a terminal, log lines otherwise), ``bar``, ``log`` or
``off``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["Progress", "track", "progress_mode", "format_duration", "DELAY_S", "INTERVAL_S", "STEP_FRACTION"]

log = logging.getLogger("rigsa_lightning.progress")

#: Seconds a stage runs before anything is shown (bar) or logged (lines).
DELAY_S = 5.0
#: Longest gap between two log lines of a running stage.
INTERVAL_S = 30.0
#: A log line at every further such fraction of the total.
STEP_FRACTION = 0.1
#: The environment variable that picks the mode.
ENV_VAR = "RIGSA_PROGRESS"
MODES = ("auto", "bar", "log", "off")

T = TypeVar("T")


def _clock() -> float:
    """Seconds of a monotonic clock (tests replace it)."""
    return time.monotonic()


def progress_mode(stream: Any = None) -> str:
    """``bar``, ``log`` or ``off``: ``$RIGSA_PROGRESS`` when set (``auto`` or an unknown value: decide), else a bar
    when ``stream`` (default stderr) is a terminal and log lines otherwise."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        log.warning("%s=%r is not one of %s; using auto", ENV_VAR, mode, ", ".join(MODES))
        mode = "auto"
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "log"


def format_duration(seconds: float) -> str:
    """``75 s``, ``12 min``, ``2.1 h``: a short human duration."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _format_rate(rate: float, unit: str) -> str:
    if rate >= 10 or rate == 0:
        return f"{rate:.1f} {unit}/s"
    return f"{rate:.2f} {unit}/s"


class Progress:
    """Progress of one stage (see the module docstring); a context manager.

    Args:
        desc: what runs, e.g. ``"forgetting before: piqa, hellaswag log-likelihoods"``.
        total: the number of items (None: unknown; no percentage or time left).
        unit: the item's name in the rate (``it``, ``req``, ``doc``, ...).
        mode: ``bar``, ``log`` or ``off``; None: :func:`progress_mode`.
        logger: where log lines go (default ``rigsa_lightning.progress``).
        clock: seconds of a monotonic clock (default :func:`time.monotonic`; tests pass a fake one).
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "it",
        mode: str | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.desc = str(desc)
        self.total = int(total) if total is not None else None
        self.unit = unit
        self.mode = mode if mode is not None else progress_mode()
        if self.mode not in ("bar", "log", "off"):
            raise ValueError(f"progress mode must be bar, log or off, got {self.mode!r}")
        self.logger = logger or log
        self._clock = clock or _clock
        self.n = 0
        self.lines = 0
        self.closed = False
        self.start = self._clock()
        self._last_line = self.start
        self._last_step = 0
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, desc=self.desc, unit=unit, delay=DELAY_S, leave=False, dynamic_ncols=True
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(done=exc[0] is None)

    # ------------------------------------------------------------------ reporting
    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        if self.closed or n <= 0:
            return
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
        elif self.mode == "log":
            self._maybe_log()

    def _step(self) -> int:
        """The number of whole ``STEP_FRACTION`` steps done (0 without a total)."""
        if not self.total:
            return 0
        return int(min(self.n, self.total) / self.total / STEP_FRACTION + 1e-9)

    def _maybe_log(self) -> None:
        now = self._clock()
        if now - self.start < DELAY_S:
            return
        step = self._step()
        if self.lines and step <= self._last_step and now - self._last_line < INTERVAL_S:
            return
        if self.total is not None and self.n >= self.total:
            return  # the closing line says it
        self._last_step = step
        self._last_line = now
        self.lines += 1
        self.logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line at ``now``: ``<desc> 400/1200 (33 %), 10.6 it/s, ~75 s left``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        if self.total:
            pct = 100.0 * self.n / self.total
            text = f"{self.desc} {self.n}/{self.total} ({pct:.0f} %), {_format_rate(rate, self.unit)}"
            if rate > 0:
                text += f", ~{format_duration((self.total - self.n) / rate)} left"
            return text
        return f"{self.desc} {self.n} {self.unit}, {_format_rate(rate, self.unit)}"

    def close(self, done: bool = True) -> None:
        """End the stage: remove the bar, or log the closing line when any progress line was written (``done``, or
        ``stopped`` after an exception or short of the total)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.lines:
            elapsed = self._clock() - self.start
            complete = self.total is None or self.n >= self.total
            state = "done" if done and complete else "stopped"
            count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n} {self.unit}"
            self.logger.info(
                "%s %s: %s in %s (%s)",
                self.desc,
                state,
                count,
                format_duration(elapsed),
                _format_rate(self.n / max(elapsed, 1e-9), self.unit),
            )


def track(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    *,
    weight: Callable[[T], int] | None = None,
    **kwargs: Any,
) -> Iterator[T]:
    """Yield the items of ``iterable`` while reporting them as :class:`Progress` (``total`` default: ``len``).

    ``weight(item)`` counts an item as several (a batch as its rows); ``kwargs`` go to :class:`Progress`.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total=total, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(weight(item) if weight is not None else 1)
