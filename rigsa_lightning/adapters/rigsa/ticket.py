"""The random ticket of the lottery-ticket protocol: a random mask with a RIGSA run's per-matrix kept counts.

Frankle & Carbin (2019) compare a winning ticket (the IMP mask, survivors rewound to their initial values) with a
*random ticket*: the same initialisation and, layer by layer, the same number of kept weights, chosen uniformly at
random. ``adapter.density_from=<RIGSA run>`` makes ``random_mask`` that control: it reads how many entries each
matrix of the paired run's final mask keeps and draws a uniformly random mask with exactly those counts
(:func:`rigsa_lightning.adapters.rigsa.seeding.random_mask_counts_`); the ΔW init is the same draw as the RIGSA run's
when the seeds are (``adapter.seed + seed``).

Accepted sources (no torch needed to read them, so the option is checked before a model loads):

* a RIGSA run folder: its ``prune_history.json`` (written after every prune, so the control can start as soon as
  the paired run's last round is done), else its ``metrics.json`` (``prune/history``);
* either file itself;
* an exported RIGSA adapter folder (``adapter_config.json``: each module's ``nnz`` and ``shape``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigsa_lightning.config.errors import ConfigError

__all__ = [
    "PRUNE_HISTORY_FILE",
    "TICKET_FILE",
    "TICKET_START",
    "TICKET_START_SOURCE",
    "TicketCounts",
    "read_ticket_counts",
]

PRUNE_HISTORY_FILE = "prune_history.json"
#: The winning ticket's packed post-prune checkpoint in a run folder (rigsa_lightning.pruning.ticket_checkpoint).
TICKET_FILE = "ticket.ckpt.xz"
#: Where a new run started from a winning ticket (``ckpt_path=<RIGSA run>/ticket.ckpt.xz``) keeps the checkpoint
#: unpacked from it, in its own folder (with ``ticket_start.json``: the ticket's path).
TICKET_START = "ticket_start.ckpt"
#: Beside it: the ticket's path (metrics.json's ``started_from``, also once the run was interrupted and continued).
TICKET_START_SOURCE = "ticket_start.json"
OPTION = "adapter.density_from"
_FIX = "point adapter.density_from at a finished rigsa run folder (or its exported adapter folder)"


@dataclass(frozen=True)
class TicketCounts:
    """Per-matrix kept entries of a RIGSA run's final mask.

    ``counts`` holds exact counts where the source recorded them; older prune histories recorded only each
    matrix's density, which :meth:`kept_counts` turns back into counts with the live model's matrix sizes.
    """

    source: Path
    counts: dict[str, int] | None
    densities: dict[str, float]
    numels: dict[str, int] | None

    @property
    def density(self) -> float | None:
        """The overall density (kept / entries) when the sizes are known."""
        if self.counts is None or self.numels is None:
            return None
        return sum(self.counts.values()) / max(1, sum(self.numels.values()))

    def kept_counts(self, numels: Mapping[str, int]) -> dict[str, int]:
        """Kept entries per module of the live model (``numels``: entries per adapted matrix).

        Raises ``ConfigError`` when the modules or their sizes differ from the source's (another model or
        ``adapter.targets``), or when a recorded density is not a whole number of entries of the live matrix.
        """
        names = set(self.densities)
        if names != set(numels):
            extra = sorted(set(numels) - names)
            gone = sorted(names - set(numels))
            what = f"module {extra[0]} is not in it" if extra else f"its module {gone[0]} is not adapted here"
            raise ConfigError(
                OPTION,
                f"{self.source} does not match this model's adapted matrices ({what})",
                "pair the random ticket with a rigsa run of the same model and adapter.targets",
            )
        out: dict[str, int] = {}
        for name, numel in numels.items():
            if self.numels is not None and int(self.numels[name]) != int(numel):
                raise ConfigError(
                    OPTION,
                    f"module {name} has {numel} entries here and {self.numels[name]} in {self.source}",
                    "pair the random ticket with a rigsa run of the same model",
                )
            if self.counts is not None:
                out[name] = int(self.counts[name])
                continue
            exact = self.densities[name] * int(numel)
            count = int(round(exact))
            if abs(exact - count) > 1e-6 * max(1.0, exact):
                raise ConfigError(
                    OPTION,
                    f"module {name}: density {self.densities[name]!r} is not a whole number of its {numel} entries",
                    "pair the random ticket with a rigsa run of the same model",
                )
            out[name] = count
        return out


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(OPTION, f"cannot read {path} ({type(exc).__name__})", _FIX) from None


def _from_history(history: Any, path: Path, rounds: int | None, done: int | None) -> TicketCounts:
    if not isinstance(history, list) or not history:
        raise ConfigError(OPTION, f"{path} records no prune round (not a pruned rigsa run)", _FIX)
    if rounds is not None and done is not None and done < rounds:
        raise ConfigError(
            OPTION,
            f"the run of {path} has done {done} of its {rounds} prune rounds",
            "wait until its last round is done, or point at a finished rigsa run",
        )
    last = history[-1]
    per_module = last.get("per_module") if isinstance(last, dict) else None
    if not isinstance(per_module, dict) or not per_module:
        raise ConfigError(OPTION, f"{path}: the last prune record has no per-module densities", _FIX)
    counts = last.get("per_module_nnz")
    numels = last.get("per_module_numel")
    return TicketCounts(
        source=path,
        counts={k: int(v) for k, v in counts.items()} if isinstance(counts, dict) else None,
        densities={k: float(v) for k, v in per_module.items()},
        numels={k: int(v) for k, v in numels.items()} if isinstance(numels, dict) else None,
    )


def _from_adapter(path: Path) -> TicketCounts:
    config = _load_json(path)
    modules = config.get("modules") if isinstance(config, dict) else None
    if not isinstance(modules, dict) or not modules or config.get("method") != "rigsa":
        raise ConfigError(OPTION, f"{path} is not an exported rigsa adapter", _FIX)
    if int(config.get("rounds", 0) or 0) < 1:
        raise ConfigError(OPTION, f"{path}: the adapter was never pruned (rounds 0)", _FIX)
    numels = {n: int(m["shape"][0]) * int(m["shape"][1]) for n, m in modules.items()}
    counts = {n: int(m["nnz"]) for n, m in modules.items()}
    return TicketCounts(
        source=path,
        counts=counts,
        densities={n: counts[n] / max(1, numels[n]) for n in modules},
        numels=numels,
    )


def read_ticket_counts(source: str | os.PathLike) -> TicketCounts:
    """The per-matrix kept counts of the RIGSA run (or exported adapter) at ``source``; ``ConfigError`` otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(OPTION, f"{path} does not exist", _FIX)
    if path.is_dir():
        for name in (
            PRUNE_HISTORY_FILE,
            "metrics.json",
            "adapter_config.json",
            "adapter/adapter_config.json",
        ):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ConfigError(
                OPTION, f"{path} holds no {PRUNE_HISTORY_FILE}, metrics.json or adapter_config.json", _FIX
            )
    if path.name == "adapter_config.json":
        return _from_adapter(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ConfigError(OPTION, f"{path} is not a JSON object", _FIX)
    if "history" in data:  # prune_history.json
        return _from_history(data["history"], path, data.get("rounds"), data.get("done"))
    if data.get("method") not in (None, "rigsa"):
        raise ConfigError(OPTION, f"{path} is a {data.get('method')} run, not a rigsa run", _FIX)
    return _from_history(data.get("prune/history"), path, None, None)
