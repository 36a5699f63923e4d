"""Test-only fault injection, read once from the environment when the LightningModule is built (never set these
in real runs):

* ``RIGSA_TEST_KILL_AT_STEP=<n>``: SIGKILL this process when global step ``n`` starts (the kill-and-resume tests);
  ``RIGSA_TEST_KILL_SIGNAL=TERM`` sends SIGTERM instead (the interruption test);
* ``RIGSA_TEST_NAN_AT_STEP=<n>``: set one gate (alpha) to NaN when global step ``n`` starts (the NaN-stop test).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

import torch

KILL_AT_STEP_ENV = "RIGSA_TEST_KILL_AT_STEP"
NAN_AT_STEP_ENV = "RIGSA_TEST_NAN_AT_STEP"
KILL_SIGNAL_ENV = "RIGSA_TEST_KILL_SIGNAL"


def _env_step(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class FaultInjection:
    """The steps at which to kill the process or poison a gate (None: never)."""

    kill_at_step: int | None = None
    nan_at_step: int | None = None

    @classmethod
    def from_env(cls) -> FaultInjection:
        """The switches in the environment (both None unless a test sets them)."""
        return cls(_env_step(KILL_AT_STEP_ENV), _env_step(NAN_AT_STEP_ENV))

    def at_step_start(self, step: int, gated: dict[str, Any]) -> None:
        """Called when global step ``step`` starts; a no-op unless a switch names this step."""
        if self.kill_at_step is not None and step == self.kill_at_step:
            term = os.environ.get(KILL_SIGNAL_ENV, "").upper() == "TERM"
            os.kill(os.getpid(), signal.SIGTERM if term else signal.SIGKILL)
        if self.nan_at_step is not None and step == self.nan_at_step and gated:
            with torch.no_grad():
                next(iter(gated.values())).alpha.fill_(float("nan"))
