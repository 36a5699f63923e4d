"""Exact top-k selection by a streamed two-pass radix select on the bit patterns of non-negative fp32 scores.

:func:`keep_top_k` (one matrix) and :func:`global_keep_masks` / :func:`iter_global_keep_masks` (one
threshold over all matrices) select *exactly* ``k`` entries with a deterministic tie rule (lower matrix index,
then lower flat index, wins): a 2^15-bin histogram of the top 16 bits, then a 2^16-bin histogram of the low 16
bits inside the chosen bin. Scores are never concatenated or sorted: the global threshold streams over the
matrices, recomputing each score tensor, so the extra memory is a few times the largest matrix whatever the
model size (1.7B entries for SmolLM2-1.7B). The private helpers are the building blocks of a streamed round
(:func:`rigsa_lightning.pruning.round.compute_prune_masks`) and of bench/pruning_event.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from rigsa_lightning.adapters.chunks import float_mask

_HI_BINS = 1 << 15  # non-negative fp32 bit patterns have their top bit clear: the top 16 bits are < 2**15
_LO_BINS = 1 << 16


def count_true(mask: torch.Tensor) -> int:
    """Number of True entries. ``count_nonzero`` allocates nothing and is ~10x faster on CPU than ``sum``, which
    first converts a bool tensor to a 4- or 8-byte integer copy (one more matrix of memory)."""
    return int(torch.count_nonzero(mask))


@dataclass(frozen=True)
class _Threshold:
    bits: int  # keep candidates whose score bits are > bits ...
    ties: int  # ... and the first `ties` candidates equal to bits (matrix order, then flat index)


def _masked_bits(scores: torch.Tensor, candidates: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Flat int32 bit patterns of ``scores * candidates`` (monotone in the score for non-negative floats).

    Non-candidates become +0.0 (bit pattern 0): the histograms subtract them from bin 0 and the selection ANDs
    with the candidates, which is ~10x faster than ``torch.where(candidates, bits, -1)`` on CPU.
    """
    factor = float_mask(candidates.reshape(-1), scores.dtype)
    if inplace:  # scores is a temporary of the caller: no third chunk-sized tensor
        return scores.reshape(-1).mul_(factor).view(torch.int32)
    return torch.mul(scores.reshape(-1), factor).view(torch.int32)


def _hi_bin(hi_counts: torch.Tensor, excluded: int, k: int) -> tuple[int, int]:
    """From the histogram of the top 16 bits: the bin holding the k-th largest candidate and the number above it.

    ``excluded`` non-candidates sit in bin 0 (their masked bits are +0.0) and are subtracted here.
    """
    if hi_counts.numel() > 0x7F81 and bool(hi_counts[0x7F81:].any()):  # above +inf: NaN bit patterns
        raise FloatingPointError("NaN in the adapter weights: cannot rank entries for pruning")
    hi_counts = hi_counts.clone()
    hi_counts[0] -= excluded
    # above_or_in[h] = number of candidates whose top bits are >= h (non-increasing in h).
    above_or_in = hi_counts.flip(0).cumsum(0).flip(0)
    hi = int((above_or_in >= k).nonzero().max())
    above_hi = int(above_or_in[hi + 1]) if hi + 1 < above_or_in.numel() else 0
    return hi, above_hi


def _lo_threshold(lo_counts: torch.Tensor, hi: int, above_hi: int, excluded: int, k: int) -> _Threshold:
    """The exact threshold from the histogram of the low 16 bits inside bin ``hi``."""
    if hi == 0:
        lo_counts = lo_counts.clone()
        lo_counts[0] -= excluded
    need = k - above_hi
    lo_above_or_in = lo_counts.flip(0).cumsum(0).flip(0)
    lo = int((lo_above_or_in >= need).nonzero().max())
    above_lo = int(lo_above_or_in[lo + 1]) if lo + 1 < _LO_BINS else 0
    return _Threshold(bits=(hi << 16) | lo, ties=need - above_lo)


def _hi_hist(bits: torch.Tensor) -> torch.Tensor:
    return torch.bincount(bits >> 16, minlength=_HI_BINS)


def _lo_hist(bits: torch.Tensor, hi: int, out: torch.Tensor) -> None:
    """Add the low 16 bits of the entries in top-bits bin ``hi`` to the histogram ``out`` (``index_put_``: no
    512 KiB temporary per call)."""
    sel = bits[(bits >> 16) == hi]
    if sel.numel():
        lo = (sel & 0xFFFF).long()
        out.index_put_((lo,), torch.ones_like(lo), accumulate=True)


def _radix_threshold(
    bit_fns: Sequence[Callable[[], torch.Tensor]], excluded: Sequence[int], k: int
) -> _Threshold:
    """Exact bit pattern of the k-th largest candidate score over all matrices, streaming (two histogram passes).

    ``bit_fns[i]()`` gives matrix i's :func:`_masked_bits`; ``excluded[i]`` its number of non-candidates.
    """
    hi_counts = None
    for fn in bit_fns:
        counts = _hi_hist(fn())
        hi_counts = counts if hi_counts is None else hi_counts + counts
    assert hi_counts is not None
    hi, above_hi = _hi_bin(hi_counts, sum(excluded), k)
    lo_counts = torch.zeros(_LO_BINS, dtype=torch.int64, device=hi_counts.device)
    for fn in bit_fns:
        _lo_hist(fn(), hi, lo_counts)
    return _lo_threshold(lo_counts, hi, above_hi, sum(excluded), k)


def _select(
    bits: torch.Tensor, candidates: torch.Tensor, threshold: _Threshold, ties_left: int
) -> tuple[torch.Tensor, int]:
    """Flat keep mask of one matrix for the threshold; returns it and the ties still to keep after it."""
    keep = bits > threshold.bits  # non-candidates have bits 0 <= threshold: never kept here
    if ties_left > 0:
        equal = (bits == threshold.bits) & candidates.reshape(-1)
        n_equal = count_true(equal)
        if n_equal <= ties_left:
            keep |= equal
            ties_left -= n_equal
        elif n_equal:
            keep[equal.nonzero().reshape(-1)[:ties_left]] = True
            ties_left = 0
    return keep, ties_left


def keep_top_k(
    scores: torch.Tensor, candidates: torch.Tensor, k: int, n_candidates: int | None = None
) -> torch.Tensor:
    """Bool mask (shape of ``scores``) of the ``k`` highest-scoring candidates (all candidates when fewer).

    Exact in the count; ties broken towards the lower flat (row-major) index. ``scores`` must be >= 0.
    """
    n_cand = count_true(candidates) if n_candidates is None else n_candidates
    if k >= n_cand:
        return candidates.clone().reshape(scores.shape)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    bits = _masked_bits(scores, candidates)
    threshold = _radix_threshold([lambda: bits], [candidates.numel() - n_cand], k)
    keep, _ = _select(bits, candidates, threshold, threshold.ties)
    return keep.reshape(scores.shape)


def iter_global_keep_masks(
    score_fns: Sequence[Callable[[], torch.Tensor]], candidates: Sequence[torch.Tensor], k: int
) -> Iterator[torch.Tensor]:
    """Like :func:`global_keep_masks`, yielding matrix i's mask as soon as it is final (after the threshold is
    known), so a caller can apply it and drop it before the next one is built."""
    if len(score_fns) != len(candidates):
        raise ValueError("one score function per candidate mask")
    n_cands = [count_true(c) for c in candidates]
    if k >= sum(n_cands):
        yield from (c.clone() for c in candidates)
        return
    if k <= 0:
        yield from (torch.zeros_like(c, dtype=torch.bool) for c in candidates)
        return

    def bits_fn(i: int) -> Callable[[], torch.Tensor]:
        return lambda: _masked_bits(score_fns[i](), candidates[i])

    fns = [bits_fn(i) for i in range(len(score_fns))]
    threshold = _radix_threshold(fns, [c.numel() - n for c, n in zip(candidates, n_cands)], k)
    ties_left = threshold.ties
    for fn, cand in zip(fns, candidates):
        keep, ties_left = _select(fn(), cand, threshold, ties_left)
        yield keep.reshape(cand.shape)


def global_keep_masks(
    score_fns: Sequence[Callable[[], torch.Tensor]], candidates: Sequence[torch.Tensor], k: int
) -> list[torch.Tensor]:
    """Keep the ``k`` highest-scoring candidates over all matrices with one threshold (global scope).

    ``score_fns[i]()`` returns matrix i's non-negative scores; it is called three times per matrix (two histogram
    passes, one selection pass) so that at most one matrix's scores (plus its int32 bits) exist at a time: no
    concatenation, no sort. Ties at the threshold go to the lower matrix index, then the lower flat index; the
    result equals ``torch.nn.utils.prune.global_unstructured`` (L1) on tie-free scores.
    """
    return list(iter_global_keep_masks(score_fns, candidates, k))
