"""Iterative magnitude pruning (IMP) of the gated sparse adapters, on epoch boundaries.

The paper: train one epoch; among the entries whose sign has not changed, keep the largest by magnitude; repeat;
then retrain with the final mask. Everything it leaves open is an option of the ``pruning`` config group
(conf/pruning/imp.yaml documents each default).

* ``schedule.py`` - :class:`PruningSchedule`: epochs, prune events, per-round keep fractions and target
  densities (validated), and the option tuples.
* ``select.py`` - exact top-k by a streamed two-pass radix select: :func:`keep_top_k` (one matrix),
  :func:`global_keep_masks` / :func:`iter_global_keep_masks` (one threshold over all matrices),
  :func:`count_true`.
* ``round.py`` - one prune round streamed over row chunks: :func:`sign_stable`, :func:`prune_scores`,
  :func:`compute_prune_masks` -> :class:`PruneResult`.
* ``callback.py`` - :class:`IterativeMagnitudePruning` (the Lightning callback) and :func:`density_report`.

Imports: ``pruning`` imports two leaves of ``adapters`` (``adapters.chunks``, ``adapters.rigsa.constants``); of
``adapters``, only ``adapters/rigsa/method.py`` (the ``random_mask`` entry) imports ``pruning.schedule``, which
imports no torch.
Importing this package imports no torch either: the names below are loaded from their module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rigsa_lightning.pruning.callback import IterativeMagnitudePruning, density_report
    from rigsa_lightning.pruning.round import PruneResult, compute_prune_masks, prune_scores, sign_stable
    from rigsa_lightning.pruning.schedule import (
        CRITERIA,
        KEEP_OF,
        PRUNED_VALUES,
        REWINDS,
        SCOPES,
        SCORES,
        SIGN_REFERENCES,
        PruningSchedule,
    )
    from rigsa_lightning.pruning.select import (
        count_true,
        global_keep_masks,
        iter_global_keep_masks,
        keep_top_k,
    )

_EXPORTS = {
    "CRITERIA": "schedule",
    "KEEP_OF": "schedule",
    "PRUNED_VALUES": "schedule",
    "REWINDS": "schedule",
    "SCOPES": "schedule",
    "SCORES": "schedule",
    "SIGN_REFERENCES": "schedule",
    "IterativeMagnitudePruning": "callback",
    "PruneResult": "round",
    "PruningSchedule": "schedule",
    "compute_prune_masks": "round",
    "count_true": "select",
    "density_report": "callback",
    "global_keep_masks": "select",
    "iter_global_keep_masks": "select",
    "keep_top_k": "select",
    "prune_scores": "round",
    "sign_stable": "round",
}
__all__ = [
    "CRITERIA",
    "KEEP_OF",
    "PRUNED_VALUES",
    "REWINDS",
    "SCOPES",
    "SCORES",
    "SIGN_REFERENCES",
    "IterativeMagnitudePruning",
    "PruneResult",
    "PruningSchedule",
    "compute_prune_masks",
    "count_true",
    "density_report",
    "global_keep_masks",
    "iter_global_keep_masks",
    "keep_top_k",
    "prune_scores",
    "sign_stable",
]


def __getattr__(attr: str) -> Any:
    """The public names, imported from their module on first access (``schedule`` alone needs no torch)."""
    if attr in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[attr]}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
