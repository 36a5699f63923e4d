"""When IMP prunes and how much it keeps: :class:`PruningSchedule` and the options of the ``pruning`` group.

Everything the paper leaves open is an option (conf/pruning/imp.yaml documents each default); ``from_cfg``
validates them all and raises :class:`~rigsa_lightning.config.errors.ConfigError` with a one-line fix. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rigsa_lightning.adapters.rigsa.constants import PRUNED_VALUES
from rigsa_lightning.config.access import choice, get
from rigsa_lightning.config.errors import ConfigError

KEEP_OF = ("all", "sign_stable")
CRITERIA = ("sign_magnitude", "magnitude")
SCORES = ("delta", "gated")
SCOPES = ("per_matrix", "global")
SIGN_REFERENCES = ("init", "previous")
REWINDS = ("init", "none")
# PRUNED_VALUES ("zero", "init") is the adapter's (adapters/rigsa/constants.py): DenseDeltaLinear.apply_mask checks
# it too.


def _int(cfg: Any, key: str, default: int) -> int:
    value = get(cfg, key, default, null_is_default=True)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"pruning.{key}", f"must be an integer, got {value!r}")
    return int(value)


def _epochs(cfg: Any, enabled: bool) -> tuple[int, int, int]:
    """``(rounds, epochs_per_round, final_epochs)``, validated (rounds is 0 when pruning is disabled)."""
    rounds = _int(cfg, "rounds", 1 if enabled else 0)
    if rounds < 0:
        raise ConfigError("pruning.rounds", f"must be >= 0, got {rounds}", "use e.g. pruning.rounds=1")
    if not enabled:
        rounds = 0
    epochs_per_round = _int(cfg, "epochs_per_round", 1)
    if epochs_per_round < 1:
        raise ConfigError("pruning.epochs_per_round", f"must be >= 1, got {epochs_per_round}")
    final_epochs = _int(cfg, "final_epochs", 1)
    if final_epochs < 0:
        raise ConfigError("pruning.final_epochs", f"must be >= 0, got {final_epochs}")
    if rounds * epochs_per_round + final_epochs < 1:
        raise ConfigError(
            "pruning.final_epochs", "the schedule has no training epoch", "set final_epochs >= 1"
        )
    return rounds, epochs_per_round, final_epochs


def _amount(cfg: Any, rounds: int) -> tuple[float | None, tuple[float, ...] | None, float | None]:
    """``(sparsity, densities, keep_fraction)``: how much the rounds prune, validated."""
    sparsity = get(cfg, "sparsity")
    if sparsity is not None:
        sparsity = float(sparsity)
        if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
            raise ConfigError(
                "pruning.sparsity",
                f"{sparsity} is outside [0, 1)",
                "use a fraction such as 0.5 (50% pruned)",
            )
    densities = get(cfg, "densities")
    if densities is not None:
        densities = tuple(float(d) for d in densities)
        if rounds and len(densities) != rounds:
            raise ConfigError(
                "pruning.densities",
                f"has {len(densities)} entries for {rounds} rounds",
                "give one cumulative density per round",
            )
        prev = 1.0
        for d in densities:
            if not 0.0 < d <= 1.0:
                raise ConfigError(
                    "pruning.densities", f"{d} is outside (0, 1]", "use densities such as [0.5]"
                )
            if d > prev:
                raise ConfigError(
                    "pruning.densities",
                    f"{list(densities)} is not decreasing",
                    "list cumulative densities, each <= the previous one",
                )
            prev = d
    keep_fraction = get(cfg, "keep_fraction")
    if keep_fraction is not None:
        keep_fraction = float(keep_fraction)
        if not 0.0 < keep_fraction <= 1.0:
            raise ConfigError("pruning.keep_fraction", f"{keep_fraction} is outside (0, 1]", "use e.g. 0.2")
        if densities is not None:
            raise ConfigError(
                "pruning.keep_fraction",
                "both keep_fraction and densities are set",
                "set one of them to null",
            )
    if rounds > 0 and sparsity is None and densities is None and keep_fraction is None:
        raise ConfigError(
            "pruning.sparsity",
            "no amount of pruning given",
            "set pruning.sparsity, densities or keep_fraction",
        )
    return sparsity, densities, keep_fraction


@dataclass(frozen=True)
class PruningSchedule:
    """When IMP prunes and how much it keeps (all options of the ``pruning`` group, validated)."""

    enabled: bool
    rounds: int
    epochs_per_round: int
    final_epochs: int
    sparsity: float | None
    densities: tuple[float, ...] | None
    keep_fraction_cfg: float | None
    keep_of: str = "all"
    criterion: str = "sign_magnitude"
    score: str = "delta"
    scope: str = "per_matrix"
    sign_reference: str = "init"
    rewind: str = "init"
    pruned_value: str = "zero"
    reset_alpha: bool = True
    reset_optimizer: bool = True

    @classmethod
    def from_cfg(cls, cfg: Any) -> PruningSchedule:
        """Build and validate from the ``pruning`` config group (DictConfig or dict); raises ConfigError."""
        enabled = bool(get(cfg, "enabled", True, null_is_default=True))
        rounds, epochs_per_round, final_epochs = _epochs(cfg, enabled)
        sparsity, densities, keep_fraction = _amount(cfg, rounds)
        keep_of = choice(cfg, "keep_of", KEEP_OF, "all", option="pruning.keep_of")
        criterion = choice(cfg, "criterion", CRITERIA, "sign_magnitude", option="pruning.criterion")
        if keep_of == "sign_stable" and criterion != "sign_magnitude":
            raise ConfigError(
                "pruning.keep_of",
                "keep_of=sign_stable needs criterion=sign_magnitude",
                "use pruning.criterion=sign_magnitude or pruning.keep_of=all",
            )
        return cls(
            enabled=enabled,
            rounds=rounds,
            epochs_per_round=epochs_per_round,
            final_epochs=final_epochs,
            sparsity=sparsity,
            densities=densities,
            keep_fraction_cfg=keep_fraction,
            keep_of=keep_of,
            criterion=criterion,
            score=choice(cfg, "score", SCORES, "delta", option="pruning.score"),
            scope=choice(cfg, "scope", SCOPES, "per_matrix", option="pruning.scope"),
            sign_reference=choice(
                cfg, "sign_reference", SIGN_REFERENCES, "init", option="pruning.sign_reference"
            ),
            rewind=choice(cfg, "rewind", REWINDS, "init", option="pruning.rewind"),
            pruned_value=choice(cfg, "pruned_value", PRUNED_VALUES, "zero", option="pruning.pruned_value"),
            reset_alpha=bool(get(cfg, "reset_alpha", True, null_is_default=True)),
            reset_optimizer=bool(get(cfg, "reset_optimizer", True, null_is_default=True)),
        )

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: ``rounds * epochs_per_round + final_epochs``."""
        return self.rounds * self.epochs_per_round + self.final_epochs

    @property
    def prune_epochs(self) -> list[int]:
        """0-based epoch indices at whose end a prune happens (``epochs_per_round * k - 1``, k = 1..rounds)."""
        return [self.epochs_per_round * k - 1 for k in range(1, self.rounds + 1)]

    def round_at_epoch(self, epoch: int) -> int | None:
        """The 1-based round that prunes at the end of ``epoch``, or None."""
        epochs = self.prune_epochs
        return epochs.index(epoch) + 1 if epoch in epochs else None

    def keep_fraction(self, round_index: int) -> float:
        """Fraction kept by round ``round_index`` (1-based): of all alive entries (keep_of=all, i.e. the ratio of
        consecutive target densities) or of the sign-stable candidates (keep_of=sign_stable)."""
        self._check_round(round_index)
        if self.keep_fraction_cfg is not None:
            return self.keep_fraction_cfg
        if self.densities is not None:
            prev = 1.0 if round_index == 1 else self.densities[round_index - 2]
            return self.densities[round_index - 1] / prev
        return (1.0 - float(self.sparsity or 0.0)) ** (1.0 / self.rounds)

    def target_density(self, round_index: int) -> float | None:
        """Cumulative density after round ``round_index`` (1.0 for round 0); None for keep_of=sign_stable (data
        dependent)."""
        if round_index == 0:
            return 1.0
        self._check_round(round_index)
        if self.keep_of == "sign_stable":
            return None
        if self.densities is not None:
            return self.densities[round_index - 1]
        if self.keep_fraction_cfg is not None:
            return self.keep_fraction_cfg**round_index
        return (1.0 - float(self.sparsity or 0.0)) ** (round_index / self.rounds)

    @property
    def final_density(self) -> float | None:
        """Density after the last round (1.0 without pruning; None when data dependent)."""
        return self.target_density(self.rounds)

    def check_max_epochs(self, max_epochs: int | None) -> None:
        """Raise ConfigError when a trainer limited to ``max_epochs`` would never reach the last prune."""
        if max_epochs is not None and max_epochs >= 0 and self.rounds and max_epochs <= self.prune_epochs[-1]:
            raise ConfigError(
                "pruning.rounds",
                f"{self.rounds} rounds of {self.epochs_per_round} epoch(s) need more than max_epochs={max_epochs}",
                f"use at least {self.total_epochs} epochs or fewer rounds",
            )

    def _check_round(self, round_index: int) -> None:
        if not 1 <= round_index <= self.rounds:
            raise ValueError(f"round {round_index} is outside 1..{self.rounds}")
