"""The optimizer's learning-rate schedule (one warmup + decay per phase: each IMP round, then the final
retraining, with per-phase rates) and the AdamW implementation choice."""

from __future__ import annotations

import math


def lr_factor(step: int, segments: list[int], warmup_ratio: float, min_ratio: float, kind: str) -> float:
    """LR multiplier at optimizer ``step`` for a schedule that restarts at each segment boundary.

    ``segments`` are the lengths in optimizer steps of consecutive phases (one per IMP round, then the final
    retraining); within each: linear warmup over ``warmup_ratio`` of the phase, then ``kind`` decay (cosine,
    linear, constant) down to ``min_ratio``. Past the last segment the last value is kept.
    """
    length = segments[-1]
    for seg in segments:
        if step < seg:
            length = seg
            break
        step -= seg
    else:  # past the planned steps: hold the final value
        step = segments[-1] - 1
    length = max(1, length)
    warm = int(round(warmup_ratio * length))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if kind == "constant":
        return 1.0
    progress = (step - warm) / max(1, length - warm)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def phase_lr_scales(
    base_lr: float, round_lr: float | None, final_lr: float | None, n_segments: int, n_rounds: int
) -> list[float]:
    """Per-segment multiplier of the adapter weights' learning rate: ``round_lr / base_lr`` for the first
    ``n_rounds`` segments (the IMP rounds), ``final_lr / base_lr`` for the rest (the final retraining, or the only
    phase of a method without rounds); a ``None`` rate keeps ``base_lr`` (multiplier 1)."""
    base = float(base_lr)

    def scale(rate: float | None) -> float:
        return 1.0 if rate is None or base == 0 else float(rate) / base

    return [scale(round_lr) if i < n_rounds else scale(final_lr) for i in range(n_segments)]


def segment_at(step: int, segments: list[int]) -> int:
    """Index of the segment (lengths in steps) that optimizer ``step`` falls in; past the end, the last one."""
    for index, length in enumerate(segments):
        if step < length:
            return index
        step -= length
    return max(0, len(segments) - 1)


ADAMW_IMPLS = {"fused": {"fused": True}, "loop": {"foreach": False}, "foreach": {"foreach": True}}


def adamw_impl_kwargs(impl: str) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments of ``optim.impl``.

    ``fused`` is the default: on the dense RIGSA round's 106 M entries (SmolLM2-135M's 210 block matrices) its step
    took 0.23x the time of the per-tensor loop (torch's CPU default) and 0.34x on the sparse storage's kept values
    (``python -m bench.run --only optimizer``, 1 thread); it equals the loop up to fp32 rounding (not bitwise).
    """
    from rigsa_lightning.config.errors import ConfigError

    if impl not in ADAMW_IMPLS:
        raise ConfigError(
            "optim.impl", f"unknown AdamW implementation {impl!r}", f"use one of {list(ADAMW_IMPLS)}"
        )
    return dict(ADAMW_IMPLS[impl])
