"""One prune round streamed over row chunks: the candidates, the scores and the new masks of every module.

* :func:`sign_stable`, :func:`prune_scores` - which entries may be kept and how they rank.
* :func:`compute_prune_masks` - the masks of one round (per matrix or one global threshold), three passes over
  row chunks with the radix select of :mod:`rigsa_lightning.pruning.select`; :class:`PruneResult` holds them and
  the counts behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rigsa_lightning.adapters.chunks import default_chunk_entries, row_chunks
from rigsa_lightning.progress import Progress
from rigsa_lightning.pruning.schedule import PruningSchedule
from rigsa_lightning.pruning.select import (
    _HI_BINS,
    _LO_BINS,
    _hi_bin,
    _hi_hist,
    _lo_hist,
    _lo_threshold,
    _masked_bits,
    _select,
    _Threshold,
    count_true,
)

log = logging.getLogger("rigsa_lightning.pruning")  # one logger for the package (its name before the split)


def sign_stable(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Entries whose sign equals the reference's (both non-zero). ``reference`` is a float tensor of values or a
    bool tensor meaning "was positive" (a sign stored at a previous prune).

    For float references this is ``delta * reference > 0`` (one fused pass, ~3x faster than comparing signs); a
    product that underflows to 0 would need both |values| below ~1e-19, far below any ΔW entry.
    """
    if reference.dtype == torch.bool:
        return ((delta > 0) == reference) & (delta != 0)
    return (delta * reference) > 0


def prune_scores(delta: torch.Tensor, alpha: torch.Tensor | float, score: str) -> torch.Tensor:
    """Non-negative fp32 scores (a new tensor): ``|ΔW|`` (delta) or ``|alpha * ΔW|`` (gated)."""
    delta = delta.detach().float()
    if score == "gated":
        alpha = alpha.detach().float() if isinstance(alpha, torch.Tensor) else float(alpha)
        return (delta * alpha).abs_()
    return delta.abs()


@dataclass
class PruneResult:
    """Masks chosen by one round (empty when streamed to ``on_mask``) and the counts behind them."""

    masks: dict[str, torch.Tensor]
    stats: dict[str, Any]


class _Source:
    """What one round reads of one module, one row chunk at a time.

    The sign reference is the initial ΔW (drawn again chunk by chunk in each pass: see
    :func:`~rigsa_lightning.adapters.rigsa.seeding.initial_delta_chunks`) or the "was positive" bool tensor of the
    previous prune. Candidates, scores and bit patterns exist one row chunk at a time; no whole-matrix temporary.
    """

    def __init__(
        self,
        name: str,
        mod: Any,
        schedule: PruningSchedule,
        reference: torch.Tensor | None,
        chunk_entries: int,
    ) -> None:
        self.name = name
        self.mod = mod
        self.delta = mod.delta.detach()
        self.ref = reference.to(self.delta.device) if reference is not None else None
        self.criterion = schedule.criterion
        self.score = schedule.score
        self.slices = row_chunks(tuple(self.delta.shape), chunk_entries)

    def chunks(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """One pass: ``(rows, candidates, sign-stable alive entries)`` per row chunk, in order."""
        refs = (
            (self.ref[sl] for sl in self.slices)
            if self.ref is not None
            else self.mod.initial_delta_chunks(self.slices)
        )
        for sl, ref in zip(self.slices, refs):
            stable = self.mod.mask[sl] & sign_stable(self.delta[sl], ref)
            del ref
            yield sl, (stable if self.criterion == "sign_magnitude" else self.mod.mask[sl]), stable

    def bits(self, sl: slice, cand: torch.Tensor) -> torch.Tensor:
        """Masked score bit patterns of the rows ``sl`` (flat int32)."""
        return _masked_bits(prune_scores(self.delta[sl], self.mod.alpha, self.score), cand, inplace=True)


class _Round:
    """The state of one round: its options, the per-module counts and (without ``on_mask``) the masks.

    A group of matrices (one matrix for ``scope: per_matrix``, all of them for ``global``) goes through three
    passes over row chunks: :meth:`_count_pass`, :meth:`_threshold_pass`, :meth:`_select_pass`.
    """

    def __init__(
        self,
        adapters: dict[str, Any],
        schedule: PruningSchedule,
        round_index: int,
        references: dict[str, torch.Tensor] | None,
        on_mask: Callable[[str, torch.Tensor], None] | None,
        chunk_entries: int | None,
    ) -> None:
        self.adapters = adapters
        self.schedule = schedule
        self.round_index = round_index
        self.references = references
        self.on_mask = on_mask
        self.names = list(adapters)
        if not chunk_entries:  # temporaries of a chunk stay a fraction of the largest matrix
            chunk_entries = default_chunk_entries(
                max((adapters[n].mask.numel() for n in self.names), default=1)
            )
        self.chunk_entries = int(chunk_entries)
        self.target = schedule.target_density(round_index)
        self.fraction = schedule.keep_fraction(round_index)
        self.alive: dict[str, int] = {}
        self.stable_alive: dict[str, int] = {}
        self.n_cand: dict[str, int] = {}
        self.kept: dict[str, int] = {}
        self.kept_stable: dict[str, int] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.short: list[str] = []
        #: Progress in matrix passes (three per matrix; set by :func:`compute_prune_masks`).
        self.bar = Progress("IMP round", mode="off")

    def source(self, name: str) -> _Source:
        """What the round reads of module ``name`` (with its previous-prune sign reference when configured)."""
        ref = None
        if self.schedule.sign_reference == "previous" and self.references and name in self.references:
            ref = self.references[name]
        return _Source(name, self.adapters[name], self.schedule, ref, self.chunk_entries)

    def _sources(self, group: list[str], held: _Source | None) -> Iterator[_Source]:
        if held is not None:
            yield held
            self.bar.update(1)
        else:
            for n in group:
                yield self.source(n)
                self.bar.update(1)

    def run_group(self, group: list[str], held: _Source | None) -> None:
        """Choose the masks of ``group`` (handed to ``on_mask`` or kept); ``held``: its only source, if given."""
        # histograms stay on the adapters' device (no sync per chunk)
        device = self.adapters[group[0]].delta.device
        hi_counts, excluded = self._count_pass(self._sources(group, held), device)
        group_cand = sum(self.n_cand[n] for n in group)
        if self.schedule.keep_of == "all":
            k = int(round(float(self.target) * sum(self.adapters[n].mask.numel() for n in group)))
        else:
            k = int(round(self.fraction * group_cand))
        if k > group_cand:
            where = group[0] if len(group) == 1 else "all matrices"
            self.short.append(f"{where} ({group_cand} < {k})")
        threshold = None
        if 0 < k < group_cand:
            threshold = self._threshold_pass(self._sources(group, held), hi_counts, excluded, k)
        else:
            self.bar.update(len(group))  # no threshold pass
        self._select_pass(self._sources(group, held), k, threshold)

    def _count_pass(self, sources: Iterator[_Source], device: torch.device) -> tuple[torch.Tensor, int]:
        """Pass 1: count each module's candidates, sign-stable and alive entries; the histogram of the top 16
        score bits and the number of non-candidates."""
        hi_counts = torch.zeros(_HI_BINS, dtype=torch.int64, device=device)
        excluded = 0
        for src in sources:
            n_c = n_s = 0
            for sl, cand, stable in src.chunks():
                c = count_true(cand)
                n_c += c
                n_s += c if cand is stable else count_true(stable)
                excluded += cand.numel() - c
                hi_counts += _hi_hist(src.bits(sl, cand))
            self.n_cand[src.name], self.stable_alive[src.name] = n_c, n_s
            self.alive[src.name] = count_true(src.mod.mask)
            del src  # before the next source regenerates its initial ΔW
        return hi_counts, excluded

    @staticmethod
    def _threshold_pass(
        sources: Iterator[_Source], hi_counts: torch.Tensor, excluded: int, k: int
    ) -> _Threshold:
        """Pass 2: the exact threshold, from the histogram of the low 16 bits inside the top-bits bin ``hi``."""
        hi, above_hi = _hi_bin(hi_counts, excluded, k)
        lo_counts = torch.zeros(_LO_BINS, dtype=torch.int64, device=hi_counts.device)
        for src in sources:
            for sl, cand, _ in src.chunks():
                _lo_hist(src.bits(sl, cand), hi, lo_counts)
            del src
        return _lo_threshold(lo_counts, hi, above_hi, excluded, k)

    def _select_pass(self, sources: Iterator[_Source], k: int, threshold: _Threshold | None) -> None:
        """Pass 3: select; each module's mask is final (and handed to ``on_mask``) before the next is built."""
        ties = threshold.ties if threshold is not None else 0
        for src in sources:
            key = src.name
            new_mask = torch.zeros_like(src.mod.mask)
            n_kept = n_kept_stable = 0
            if k > 0:
                for sl, cand, stable in src.chunks():
                    if threshold is None:  # k >= candidates: keep them all
                        keep = cand
                    else:
                        keep, ties = _select(src.bits(sl, cand), cand, threshold, ties)
                        keep = keep.view(cand.shape)
                    new_mask[sl] = keep
                    n = count_true(keep)
                    n_kept += n
                    # With sign_magnitude the candidates are the sign-stable entries: every kept one is stable.
                    n_kept_stable += n if cand is stable else count_true(keep & stable)
            self.kept[key], self.kept_stable[key] = n_kept, n_kept_stable
            if self.on_mask is not None:
                self.on_mask(key, new_mask)
            else:
                self.masks[key] = new_mask
            del new_mask, src

    def result(self) -> PruneResult:
        """The masks (unless streamed) and the counts, after warning about groups with too few candidates."""
        short = self.short
        if short:
            log.warning(
                "IMP round %d: fewer %s entries than the target keeps in %d place(s); keeping only those: %s",
                self.round_index,
                "sign-stable" if self.schedule.criterion == "sign_magnitude" else "alive",
                len(short),
                ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""),
            )
        stats = {
            "alive": self.alive,
            "sign_stable": self.stable_alive,
            "candidates": self.n_cand,
            "kept": self.kept,
            "kept_sign_stable": self.kept_stable,
            "numel": {n: self.adapters[n].mask.numel() for n in self.names},
            "short": short,
            "target_density": self.target,
            "keep_fraction": self.fraction,
        }
        return PruneResult(masks=self.masks, stats=stats)


def compute_prune_masks(
    adapters: dict[str, Any],
    schedule: PruningSchedule,
    round_index: int,
    references: dict[str, torch.Tensor] | None = None,
    on_mask: Callable[[str, torch.Tensor], None] | None = None,
    *,
    chunk_entries: int | None = None,
) -> PruneResult:
    """Choose the masks of round ``round_index`` (1-based), streaming over row chunks.

    Per group of matrices (each matrix alone for ``scope: per_matrix``, all of them for ``global``), three passes
    over row chunks: (1) count candidates and build the histogram of the top 16 score bits, (2) the histogram of
    the low 16 bits inside the threshold's bin, (3) select exactly ``k`` entries and build the new mask. The sign
    reference (initial ΔW) is drawn again chunk by chunk in every pass, so the only whole-matrix tensor a round
    creates is the new bool mask (1/4 of an fp32 matrix); with the chunk temporaries (1/``CHUNK_FRACTION`` of the
    largest matrix each) and the fixed histograms (0.75 MiB) the extra memory stays below 2x the largest matrix
    whatever the number of matrices (``make bench``: bench/pruning_event.py).

    Without ``on_mask`` the adapters are not changed and the masks are returned. With it, ``on_mask(name, mask)``
    is called as soon as a module's mask is final and the masks are not kept. A module's mask only depends on its
    own tensors (and, for global scope, the threshold), so applying it right away is safe.

    ``references`` holds, for ``sign_reference: previous``, the "was positive" bool tensors saved at the previous
    prune; otherwise (and in round 1) the reference sign is the initial ΔW's.
    """
    rnd = _Round(adapters, schedule, round_index, references, on_mask, chunk_entries)
    with Progress(
        f"IMP round {round_index}: matrix passes", total=3 * len(rnd.names), unit="pass"
    ) as rnd.bar:
        if schedule.scope == "per_matrix":
            for name in rnd.names:
                src = rnd.source(name)
                rnd.run_group([name], src)  # the three passes reuse this one source
                del src
        else:
            rnd.run_group(rnd.names, None)
    return rnd.result()
