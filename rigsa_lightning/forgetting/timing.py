"""Where an lm-eval run's time goes: each request type's wall time (``loglikelihood``: the multiple-choice tasks;
``generate_until``: GSM8k's generation) and the reference-solution NLL, and from them the seconds per benchmark."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

#: lm-eval's request types whose time is measured (the scorer's methods), and the reference NLL of GSM8k.
REQUEST_TYPES = ("loglikelihood", "generate_until")


def time_requests(lm: Any) -> dict[str, float]:
    """Wrap ``lm``'s request methods (on this instance only) to add up their wall time per request type; return the
    totals (seconds by type, and ``gold_nll`` for the reference solutions' NLL, added by the caller)."""
    totals = dict.fromkeys((*REQUEST_TYPES, "gold_nll"), 0.0)
    for name in REQUEST_TYPES:
        method = getattr(lm, name)

        def timed(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - started

        setattr(lm, name, timed)
    return totals


def tasks_by_type(tasks: Sequence[Any]) -> dict[str, list[str]]:
    """The task names of each request type (``loglikelihood``: multiple choice; ``generate_until``: GSM8k)."""
    out: dict[str, list[str]] = {}
    for task in tasks:
        kind = "generate_until" if task.OUTPUT_TYPE == "generate_until" else "loglikelihood"
        out.setdefault(kind, []).append(str(task.config.task))
    return {k: sorted(v) for k, v in out.items()}


def benchmark_seconds(timing: Mapping[str, Any] | None) -> dict[str, float]:
    """Seconds per benchmark from :func:`run_lm_eval`'s ``timing``: each request type's time under its tasks' names
    (``piqa+hellaswag`` when several multiple-choice tasks share the loglikelihood requests: lm-eval batches them
    together), the reference NLL added to the generation tasks'."""
    if not timing:
        return {}
    seconds, tasks = timing.get("seconds") or {}, timing.get("tasks") or {}
    out: dict[str, float] = {}
    for kind, names in tasks.items():
        spent = float(seconds.get(kind, 0.0))
        if kind == "generate_until":
            spent += float(seconds.get("gold_nll", 0.0))
        if names:
            out["+".join(names)] = round(spent, 3)
    return out
